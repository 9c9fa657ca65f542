//go:build linux

package worker

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Tests of FromEnv: who is a worker, and what taking over leaves.

func TestFromEnvNotAWorker(t *testing.T) {
	if _, ok := os.LookupEnv(contract.EnvWorker); ok {
		t.Setenv(contract.EnvWorker, "") // restored at the end
		os.Unsetenv(contract.EnvWorker)
	}
	t.Setenv(contract.EnvParentPID, "not-looked-at")
	t.Setenv("PAIRVISOR_SOMETHING", "else")
	w, err := FromEnv()
	if w != nil || err != nil {
		t.Fatalf("FromEnv without %s = %v, %v; want nil, nil", contract.EnvWorker, w, err)
	}
	if os.Getenv(contract.EnvParentPID) != "not-looked-at" || os.Getenv("PAIRVISOR_SOMETHING") != "else" {
		t.Error("FromEnv changed the environment of a process that is not a worker")
	}
}

// TestFromEnvRefuses covers the checks made before fd 3 is touched, so
// it can run in the test process itself.
func TestFromEnvRefuses(t *testing.T) {
	cases := []struct {
		name, id, ppid, want string
	}{
		{"wrong parent", "1", strconv.Itoa(os.Getppid() + 1), "parent"},
		{"parent not a number", "1", "x", "parent"},
		{"no parent", "1", "", "parent"},
		{"id zero", "0", strconv.Itoa(os.Getppid()), "not a worker id"},
		{"id not a number", "one", strconv.Itoa(os.Getppid()), "not a worker id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(contract.EnvWorker, c.id)
			t.Setenv(contract.EnvParentPID, c.ppid)
			t.Setenv("PAIRVISOR_OTHER", "x")
			w, err := FromEnv()
			if w != nil || err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNotWorker) {
				t.Fatalf("FromEnv = %v, %v; want an error wrapping ErrNotWorker about the %s", w, err, c.want)
			}
			for _, kv := range os.Environ() {
				if strings.HasPrefix(kv, "PAIRVISOR_") {
					t.Errorf("%s left in the environment after a refusal", kv)
				}
			}
		})
	}
}

// readReport reads the report of a child playing "report", which must
// then exit 0.
func readReport(t *testing.T, c *testutil.Process) report {
	t.Helper()
	var rep report
	if l := c.Line(t, childWait); json.Unmarshal([]byte(l), &rep) != nil {
		t.Fatalf("report %q\n%s", l, c.Output())
	}
	c.WaitOK(t, childWait)
	return rep
}

func TestFromEnvNotSocket(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep := readReport(t, startChild(t, "report", f, contractEnv("1")...))
	if !rep.Nil || !rep.NotSocket || !rep.NotWorker {
		t.Errorf("FromEnv with a regular file as fd 3: %+v, want nil and ErrNotSocket wrapped with ErrNotWorker", rep)
	}
}

func TestFromEnvTakesOver(t *testing.T) {
	t.Parallel()
	_, childEnd := socketpair(t)
	rep := readReport(t, startChild(t, "report", childEnd, append(contractEnv("7"), contract.EnvLogLevel+"=warn", "PAIRVISOR_EXTRA=1")...))
	if rep.Nil || rep.Err != "" || rep.ID != 7 || rep.Level != "warn" {
		t.Errorf("FromEnv in a worker: %+v, want worker 7 at level warn", rep)
	}
	if len(rep.Env) > 0 {
		t.Errorf("PAIRVISOR_ variables left after FromEnv: %q", rep.Env)
	}
	if !rep.CloExec {
		t.Error("fd 3 is not close-on-exec after FromEnv")
	}
}

// TestFromEnvChecksSocketPeer: a process whose parent is the one the
// environment names, but whose fd 3 was not created by that parent, is
// not a worker.
func TestFromEnvChecksSocketPeer(t *testing.T) {
	t.Parallel()
	sh, err := os.Stat("/bin/sh")
	if err != nil || sh.IsDir() {
		t.Skip("no /bin/sh")
	}
	t.Run("socket of the grandparent", func(t *testing.T) {
		t.Parallel()
		// We create the socketpair; a shell between us and the child
		// names itself as the parent, as a process that inherited the
		// variables and the socket from its own supervisor would.
		_, childEnd := socketpair(t)
		wrapper := []string{"/bin/sh", "-c", `PAIRVISOR_PARENT_PID=$$ "$0"; exit $?`}
		rep := readReport(t, startChildVia(t, wrapper, "report", childEnd, contract.EnvWorker+"=1", contract.EnvFD+"=3"))
		if rep.PPID == os.Getpid() {
			t.Fatalf("set-up: the child's parent is the test process, not the shell: %+v", rep)
		}
		if !rep.Nil || !rep.NotWorker {
			t.Errorf("FromEnv with the grandparent's socket on fd 3: %+v, want nil and ErrNotWorker", rep)
		}
		if len(rep.Env) > 0 {
			t.Errorf("PAIRVISOR_ variables left after a refusal: %q", rep.Env)
		}
	})
	t.Run("unconnected socket", func(t *testing.T) {
		t.Parallel()
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "unconnected")
		defer f.Close()
		rep := readReport(t, startChild(t, "report", f, contractEnv("1")...))
		if rep.PPID != os.Getpid() {
			t.Fatalf("set-up: the child's parent is %d, not us", rep.PPID)
		}
		if !rep.Nil || !rep.NotWorker || rep.NotSocket {
			t.Errorf("FromEnv with an unconnected socket on fd 3: %+v, want nil and ErrNotWorker (not ErrNotSocket)", rep)
		}
	})
}

// TestFD3CloseOnExecAtInit: fd 3 is close-on-exec from the package's
// init, before main (or anything main starts) could fork.
func TestFD3CloseOnExecAtInit(t *testing.T) {
	t.Parallel()
	_, childEnd := socketpair(t)
	c := startChild(t, "fd3-flags", childEnd, contractEnv("1")...)
	if l := c.Line(t, childWait); l != "cloexec: true" {
		t.Errorf("before FromEnv, the child said %q, want fd 3 close-on-exec", l)
	}
	c.WaitOK(t, childWait)
}
