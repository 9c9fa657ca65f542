//go:build linux

package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests run on the harness they test: TestMain is Main, and the
// roles below are this binary re-executed.

// childEnv marks a process as started by "code under test" here.
const childEnv = "PAIRVISOR_TESTUTIL_CHILD"

// wait bounds every wait for a helper in these tests.
const wait = 20 * time.Second

var harness = NewHarness(HarnessConfig{ChildEnv: childEnv, DefaultRole: "default"})

func init() {
	harness.Register("args", func(args ...string) int {
		fmt.Println(strings.Join(args, "|"))
		return 7
	})
	harness.Register("default", func(...string) int {
		fmt.Println("default role")
		return 0
	})
	harness.Register("env", func(...string) int {
		fmt.Printf("%s\n%s\n", os.Getenv("GODEBUG"), os.Getenv("GORACE"))
		return 0
	})
	harness.Register("lines", func(...string) int {
		fmt.Print("one\ntwo\nno newline")
		return 0
	})
	harness.Register("block", func(...string) int {
		for {
			time.Sleep(time.Hour) // until killed; select{} would be a deadlock
		}
	})
}

func TestMain(m *testing.M) { harness.Main(m) }

// fakeTB records the failures of a helper under test. Fatalf ends the
// goroutine, as testing's does; run the helper in runFake.
type fakeTB struct {
	testing.TB
	errors, fatal string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Errorf(format string, args ...any) { f.errors += fmt.Sprintf(format, args...) + "\n" }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB whose cleanups are t's.
func runFake(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestRoleRunsBeforeTests(t *testing.T) {
	p := StartProcess(t, harness.Command(t, "args", "a", "b c"))
	p.Wait(t, wait)
	if p.ExitCode() != 7 || p.Stdout.String() != "a|b c\n" || p.Stderr.String() != "" {
		t.Errorf("role args: exit %d, want 7 and its arguments on stdout\n%s", p.ExitCode(), p.Output())
	}
}

func TestRoleEnvironment(t *testing.T) {
	// Main set both options in this process; the helper inherits them,
	// and its own Main does not add them again.
	p := StartProcess(t, harness.Command(t, "env"))
	if err := p.Wait(t, wait); err != nil {
		t.Fatal(err)
	}
	godebug, gorace, _ := strings.Cut(strings.TrimSpace(p.Stdout.String()), "\n")
	if strings.Count(godebug, "execwait=2") != 1 || strings.Count(gorace, "atexit_sleep_ms=0") != 1 {
		t.Errorf("helper's GODEBUG %q and GORACE %q: want execwait=2 and atexit_sleep_ms=0 once each", godebug, gorace)
	}
}

func TestChildEnvPlaysDefaultRole(t *testing.T) {
	harness.Use(t, "default")
	cmd := exec.Command(Executable())
	cmd.Env = append(os.Environ(), childEnv+"=1") // no RoleEnv, as a supervisor strips it
	p := StartProcess(t, cmd)
	if err := p.Wait(t, wait); err != nil || p.Stdout.String() != "default role\n" {
		t.Errorf("marked child without a role: %v\n%s", err, p.Output())
	}
}

func TestUnknownRole(t *testing.T) {
	cmd := exec.Command(Executable())
	cmd.Env = append(os.Environ(), RoleEnv+"=no-such-role")
	p := StartProcess(t, cmd)
	p.Wait(t, wait)
	if p.ExitCode() != 2 || !strings.Contains(p.Stderr.String(), `unknown role "no-such-role"`) || p.Stdout.String() != "" {
		t.Errorf("unknown role: exit %d, want 2 and a message, no tests run\n%s", p.ExitCode(), p.Output())
	}

	// A marked child with no default role to play does not run the
	// tests either.
	h := NewHarness(HarnessConfig{ChildEnv: childEnv})
	env := map[string]string{childEnv: "1"}
	if name, f := h.role(func(k string) string { return env[k] }); name == "" || f != nil {
		t.Errorf("marked child without a default role plays %q (%v), want an unknown role", name, f != nil)
	}
	if name, _ := h.role(func(string) string { return "" }); name != "" {
		t.Errorf("unmarked process without a role plays %q, want the tests", name)
	}
}

func TestUnusedRoleFailsTheRun(t *testing.T) {
	h := NewHarness(HarnessConfig{})
	for _, r := range []string{"used", "unused-b", "unused-a"} {
		h.Register(r, func(...string) int { return 0 })
	}
	h.Use(t, "used")
	before := TakeSnapshot()
	var out Buffer
	if code := h.after(&out, 0, before, runFlags{}); code != 1 || !strings.Contains(out.String(), "used by no test: unused-a, unused-b\n") {
		t.Errorf("full run with unused roles: exit %d, output %q; want 1 naming both", code, out.String())
	}
	if code := h.after(&out, 0, before, runFlags{filtered: true}); code != 0 {
		t.Errorf("filtered run with unused roles: exit %d, want 0 (not every test ran)", code)
	}
	if code := h.after(&out, 3, before, runFlags{}); code != 3 {
		t.Errorf("failed run: exit %d, want the tests' 3", code)
	}
}

func TestLeakChecks(t *testing.T) {
	const short = 50 * time.Millisecond // the leak is there until undone: no race with it
	check := func(t *testing.T, before Snapshot, goroutines bool, want string) {
		t.Helper()
		err := before.check(short, goroutines)
		if want == "" && err != nil {
			t.Errorf("leak check: %v, want none", err)
		}
		if want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("leak check: %v, want one saying %q", err, want)
		}
	}

	t.Run("descriptor opened", func(t *testing.T) {
		before := TakeSnapshot()
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		check(t, before, true, fmt.Sprintf("+%d->/dev/null", f.Fd()))
		f.Close()
		check(t, before, true, "")
	})
	t.Run("descriptor closed", func(t *testing.T) {
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		before := TakeSnapshot()
		fd := f.Fd()
		f.Close()
		check(t, before, true, fmt.Sprintf("-%d->/dev/null", fd))
	})
	t.Run("goroutine", func(t *testing.T) {
		before := TakeSnapshot()
		release, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			<-release
		}()
		check(t, before, true, "1 goroutines left by the tests")
		check(t, before, false, "") // fuzzing: not looked at
		close(release)
		<-done
		check(t, before, true, "")
	})
	t.Run("child and zombie", func(t *testing.T) {
		before := TakeSnapshot()
		pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 0"}, &syscall.ProcAttr{Env: os.Environ()})
		if err != nil {
			t.Fatal(err)
		}
		check(t, before, true, fmt.Sprintf("child processes left (zombies included): %d (sh)", pid))
		check(t, TakeSnapshot(), true, "") // there at the snapshot: not a leak of what came after
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			t.Fatal(err)
		}
		check(t, before, true, "")
	})
}

func TestProcessLines(t *testing.T) {
	p := StartProcess(t, harness.Command(t, "lines"))
	for _, want := range []string{"one", "two"} {
		if got := p.Line(t, wait); got != want {
			t.Errorf("line %q, want %q", got, want)
		}
	}
	// The last line has no newline: Line fails once the process exits.
	f := runFake(t, func(tb testing.TB) { p.Line(tb, wait) })
	if !strings.Contains(f.fatal, "exited (<nil>) without another line") {
		t.Errorf("Line after the last newline: failure %q, want one saying the process exited", f.fatal)
	}
}

func TestProcessReapedAtCleanup(t *testing.T) {
	var p *Process
	t.Run("test", func(t *testing.T) {
		p = StartProcess(t, harness.Command(t, "block"))
	})
	if !p.Exited() || p.ExitCode() != -1 {
		t.Errorf("a process running at the end of its test: exited %v, status %d; want killed and reaped", p.Exited(), p.ExitCode())
	}
}

func TestProcessWaitTimeout(t *testing.T) {
	p := StartProcess(t, harness.Command(t, "block"))
	var err error
	f := runFake(t, func(tb testing.TB) { err = p.Wait(tb, 10*time.Millisecond) }) // it never exits by itself
	if !p.Exited() || err == nil || !strings.Contains(f.errors, "did not exit within 10ms; killed") || f.fatal != "" {
		t.Errorf("Wait on a process that does not exit: %v, errors %q, fatal %q; want it killed and the test failed", err, f.errors, f.fatal)
	}
	if code := p.Stop(t, syscall.SIGTERM, wait); code != -1 {
		t.Errorf("Stop of a process that has exited: status %d, want its -1", code)
	}
}

func TestReceive(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if v := Receive(t, ch, wait, "a value"); v != 7 {
		t.Errorf("Receive = %d, want 7", v)
	}
	f := runFake(t, func(tb testing.TB) { Receive(tb, ch, 10*time.Millisecond, "nothing") }) // none is sent
	if f.fatal != "timed out after 10ms waiting for nothing" {
		t.Errorf("Receive from a silent channel: failure %q", f.fatal)
	}
}

func TestCopyExecutable(t *testing.T) {
	exe := CopyExecutable(t, ShortDir(t, "tu"), "copy")
	cmd := harness.Command(t, "args", "from", "copy")
	cmd.Path, cmd.Args[0] = exe, exe
	p := StartProcess(t, cmd)
	p.Wait(t, wait)
	if st, err := os.Stat(exe); err != nil || st.Mode().Perm() != 0o755 || p.ExitCode() != 7 || p.Stdout.String() != "from|copy\n" {
		t.Errorf("the copy (%v, %v) ran with exit %d, want a 0755 file that plays roles\n%s", st.Mode(), err, p.ExitCode(), p.Output())
	}
}

func TestFullListener(t *testing.T) {
	path := filepath.Join(ShortDir(t, "tu"), "s")
	FullListener(t, path)
	err := unix.Connect(socket(t, unix.SOCK_NONBLOCK), &unix.SockaddrUnix{Name: path})
	if err != unix.EAGAIN {
		t.Errorf("connect to a full listener: %v, want EAGAIN", err)
	}
}
