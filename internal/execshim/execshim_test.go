//go:build linux

package execshim

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary imports this package, so it is a shim too: a test
// starts it with EnvTarget set, and its init execs the target.

func TestShimEnv(t *testing.T) {
	in := []string{"A=1", EnvTarget + "=/bin/x", "LISTEN_PID=1", "LISTEN_FDS=2", "B=LISTEN_PID=3"}
	got := shimEnv(in, 42)
	want := []string{"A=1", "LISTEN_FDS=2", "B=LISTEN_PID=3", "LISTEN_PID=42"}
	if !slices.Equal(got, want) {
		t.Errorf("shimEnv = %q, want %q", got, want)
	}
}

// shim runs this binary as a shim for target with args, LISTEN_PID=1
// inherited, and returns the process's stdout, stderr, pid and exit
// code.
func shim(t *testing.T, target string, args ...string) (stdout, stderr string, pid, code int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), Env(target), "LISTEN_PID=1", "LISTEN_FDS=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the shim did not finish")
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), errb.String(), cmd.Process.Pid, cmd.ProcessState.ExitCode()
}

// TestShimExecs: the target runs in the shim's process (same pid) with
// the same arguments, LISTEN_PID set to that pid and the shim's
// variable gone.
func TestShimExecs(t *testing.T) {
	t.Parallel()
	// sh -c takes the argument after the script as $0.
	out, errs, pid, code := shim(t, "/bin/sh", "-c", `echo "$$ $LISTEN_PID $LISTEN_FDS ${PAIRVISOR_EXEC_SHIM-unset} $0"`, "arg")
	want := strconv.Itoa(pid) + " " + strconv.Itoa(pid) + " 1 unset arg\n"
	if code != 0 || out != want {
		t.Errorf("shim → sh: exit %d, %q (stderr %q); want %q", code, out, errs, want)
	}
}

// TestShimExecFails: a target that cannot be executed ends the shim
// with 127 (missing) or 126 (not executable) and one line saying why.
func TestShimExecFails(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing")
	_, errs, _, code := shim(t, missing)
	if code != 127 || !strings.Contains(errs, "pairvisor exec shim: exec "+strconv.Quote(missing)) {
		t.Errorf("missing target: exit %d, stderr %q; want 127 and the reason", code, errs)
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, []byte("not a program"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, _, code = shim(t, plain)
	if code != 126 || !strings.Contains(errs, "permission denied") {
		t.Errorf("target not executable: exit %d, stderr %q; want 126 and the reason", code, errs)
	}
}

// BenchmarkExecShim measures what the shim adds to starting a program:
// /bin/true run directly, and through this (test) binary as its shim.
func BenchmarkExecShim(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"direct", func() *exec.Cmd { return exec.Command("/bin/true") }},
		{"shim", func() *exec.Cmd {
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), Env("/bin/true"))
			return cmd
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if err := c.cmd().Run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
