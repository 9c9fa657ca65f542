//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/worker"
)

// The test binary is also the supervisor binary: a test runs the CLI as
// a real process by starting os.Args[0] with cliEnv set, and TestMain
// then does exactly what main does instead of running the tests. The
// workers that `run` starts re-execute the same binary (os.Executable);
// the supervisor strips PAIRVISOR_ variables from their environment, so
// TestMain recognises them by the worker contract (PAIRVISOR_WORKER).
const cliEnv = "PAIRVISOR_CLI_TEST"

func TestMain(m *testing.M) {
	if os.Getenv(cliEnv) == "1" || os.Getenv(ipc.EnvWorker) != "" {
		os.Exit(cliMain())
	}
	flag.Parse()
	code := m.Run()
	if code == 0 {
		if err := checkNoChildren(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// testBinary is the path of this test binary (os.Args[0] may be
// relative, and some tests run the CLI in another directory).
func testBinary() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

// cliMain is main without the os.Exit.
func cliMain() int {
	w, err := worker.FromEnv()
	if err != nil {
		if !errors.Is(err, worker.ErrNotWorker) {
			fmt.Fprintln(os.Stderr, "supervisor:", err)
			return exitFail
		}
		fmt.Fprintln(os.Stderr, "supervisor: warning: not a worker, ignoring the PAIRVISOR_ environment:", err)
	}
	if w != nil {
		return workerMain(w)
	}
	return dispatch(os.Args[1:], os.Stdout, os.Stderr)
}

// checkNoChildren reports processes the tests started and left behind.
func checkNoChildren() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		kids := children()
		if len(kids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes left running by the tests: %s", strings.Join(kids, "; "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// children lists our child processes as "pid (comm) state".
func children() []string {
	var kids []string
	for _, p := range testutil.Children() {
		kids = append(kids, fmt.Sprintf("%d (%s) %s", p.PID, p.Comm, p.State))
	}
	return kids
}

// Bounds on waits. They are generous for -race on two cores; a healthy
// run takes a fraction of them.
const (
	cliWait = 30 * time.Second // a CLI process to finish
	cliPoll = 20 * time.Second // a condition polled for
)

// cliOpts are the optional settings of cliRun.
type cliOpts struct {
	stdin   io.Reader
	dir     string
	exe     string              // default: this test binary
	cred    *syscall.Credential // run as another user
	timeout time.Duration       // default cliWait
}

type cliResult struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

func cliCommand(o cliOpts, args ...string) *exec.Cmd {
	exe := o.exe
	if exe == "" {
		exe = testBinary()
	}
	cmd := exec.Command(exe, args...)
	// A -race binary sleeps a second at exit by default
	// (atexit_sleep_ms); that second times every process adds up.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), cliEnv+"=1", "GORACE="+gorace)
	cmd.Dir = o.dir
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	return cmd
}

// cliRun runs the CLI with args to completion and returns what it did.
func cliRun(tb testing.TB, o cliOpts, args ...string) cliResult {
	tb.Helper()
	cmd := cliCommand(o, args...)
	cmd.Stdin = o.stdin
	var stdout, stderr testutil.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	timeout := o.timeout
	if timeout == 0 {
		timeout = cliWait
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %q: %v", args, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		tb.Fatalf("supervisor %q did not finish within %v; killed\nstdout:\n%s\nstderr:\n%s", args, timeout, stdout.String(), stderr.String())
	}
	r := cliResult{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		tb.Fatalf("supervisor %q: %v", args, err)
	}
	return r
}

// cliWant runs the CLI and fails the test unless it exits with code.
func cliWant(tb testing.TB, code int, o cliOpts, args ...string) cliResult {
	tb.Helper()
	r := cliRun(tb, o, args...)
	if r.code != code {
		tb.Fatalf("supervisor %q: want exit %d, got %s", args, code, r)
	}
	return r
}

// cliProc is a CLI process running in the background.
type cliProc struct {
	args           []string
	cmd            *exec.Cmd
	stdout, stderr testutil.Buffer
	done           chan struct{}
	err            error // Wait's result, set before done is closed
}

// cliStart starts the CLI in the background. At cleanup it is killed if
// it is still running.
func cliStart(tb testing.TB, args ...string) *cliProc {
	tb.Helper()
	return cliStartOpts(tb, cliOpts{}, args...)
}

// cliStartOpts is cliStart with options (another user, another binary).
func cliStartOpts(tb testing.TB, o cliOpts, args ...string) *cliProc {
	tb.Helper()
	p := &cliProc{args: args, done: make(chan struct{})}
	p.cmd = cliCommand(o, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting %q: %v", args, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill() // its workers die too (parent-death signal)
			<-p.done
		}
	})
	return p
}

func (p *cliProc) pid() int { return p.cmd.Process.Pid }

func (p *cliProc) output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
}

func (p *cliProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the process to exit, returning its exit
// code.
func (p *cliProc) stop(tb testing.TB, sig os.Signal) int {
	tb.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		tb.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-p.done:
	case <-time.After(cliWait):
		p.cmd.Process.Kill()
		<-p.done
		tb.Fatalf("supervisor %q did not exit within %v of %v; killed\n%s", p.args, cliWait, sig, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitSocket polls until path accepts connections, failing early if
// the process exits.
func (p *cliProc) waitSocket(tb testing.TB, path string) {
	tb.Helper()
	deadline := time.Now().Add(cliPoll)
	for {
		if p.exited() {
			tb.Fatalf("supervisor %q exited (%v) before its socket was ready\n%s", p.args, p.err, p.output())
		}
		if c, err := ipc.Dial(tb.Context(), path, ipc.ConnConfig{TrustUIDs: []uint32{nobody.Uid}}); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("socket %s not ready within %v\n%s", path, cliPoll, p.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// poll calls cond until it is true, failing the test after cliPoll.
func poll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, cliPoll, 10*time.Millisecond, what, cond, detail)
}

// tempDir returns a short fresh directory (socket paths must fit in
// sun_path's 108 bytes), removed at cleanup.
func tempDir(tb testing.TB) string {
	tb.Helper()
	return testutil.ShortDir(tb, "pvc")
}

// requireRoot skips a test that runs a process as another user.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to run a process as another uid")
	}
}

// nobody is the user a test runs a client as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// exeForOthers copies this test binary where any user may run it (go
// builds it in a 0700 directory) and returns the copy's path. dir must
// be searchable by everyone.
func exeForOthers(tb testing.TB, dir string) string {
	tb.Helper()
	src, err := os.Open(testBinary())
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "supervisor")
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// worldDir returns a tempDir that other users may search, for sockets
// they connect to.
func worldDir(tb testing.TB) string {
	tb.Helper()
	dir := tempDir(tb)
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// gone reports whether no file exists at path.
func gone(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}
