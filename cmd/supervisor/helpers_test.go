//go:build linux

package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Helpers that run the CLI as a process and look at what it did.

// Bounds on waits. They are generous for -race on two cores; a healthy
// run takes a fraction of them.
const (
	cliWait = 30 * time.Second // a CLI process to finish
	cliPoll = 20 * time.Second // a condition polled for
)

// cliOpts are the optional settings of a CLI process.
type cliOpts struct {
	stdin io.Reader
	exe   string              // default: this test binary
	cred  *syscall.Credential // run as another user
	env   []string            // added to the environment
}

type cliResult struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// cliCommand returns the command that runs the CLI with args.
func cliCommand(tb testing.TB, o cliOpts, args ...string) *exec.Cmd {
	tb.Helper()
	cmd := harness.Command(tb, "cli", args...)
	if o.exe != "" {
		cmd.Path, cmd.Args[0] = o.exe, o.exe
	}
	cmd.Stdin = o.stdin
	cmd.Env = append(cmd.Env, o.env...)
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	return cmd
}

// cliRun runs the CLI with args to completion and returns what it did.
func cliRun(tb testing.TB, o cliOpts, args ...string) cliResult {
	tb.Helper()
	start := time.Now()
	p := testutil.StartProcess(tb, cliCommand(tb, o, args...))
	err := p.Wait(tb, cliWait)
	r := cliResult{code: p.ExitCode(), stdout: p.Stdout.String(), stderr: p.Stderr.String(), elapsed: time.Since(start)}
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

// cliProc is a CLI process running in the background. At the end of the
// test it is killed if it is still running (its workers die too, by
// their parent-death signal).
type cliProc struct {
	*testutil.Process
	args []string
}

// cliStart starts the CLI in the background.
func cliStart(tb testing.TB, args ...string) *cliProc {
	tb.Helper()
	return cliStartOpts(tb, cliOpts{}, args...)
}

// cliStartOpts is cliStart with options (another user, another binary).
func cliStartOpts(tb testing.TB, o cliOpts, args ...string) *cliProc {
	tb.Helper()
	return &cliProc{Process: testutil.StartProcess(tb, cliCommand(tb, o, args...)), args: args}
}

// stop sends sig and waits for the process to exit, returning its exit
// code.
func (p *cliProc) stop(tb testing.TB, sig os.Signal) int {
	tb.Helper()
	return p.Stop(tb, sig, cliWait)
}

// stopOK sends sig and fails the test unless the process exits 0 and
// leaves neither the socket file sock nor its lock file behind.
func (p *cliProc) stopOK(tb testing.TB, sig os.Signal, sock string) {
	tb.Helper()
	if code := p.stop(tb, sig); code != exitOK {
		tb.Errorf("supervisor %q exited %d after %v, want 0\n%s", p.args, code, sig, p.Output())
	}
	if !gone(sock) || !gone(sock+".lock") {
		tb.Errorf("socket or lock file left after %v: %s", sig, sock)
	}
}

// replaceWorker kills worker pid of run and waits until status lists n
// ready workers without it.
func (p *cliProc) replaceWorker(tb testing.TB, sock string, n, pid int) {
	tb.Helper()
	syscall.Kill(pid, syscall.SIGKILL)
	poll(tb, "the killed worker's replacement", func() bool {
		return !slices.Contains(readyWorkers(tb, sock, n), pid)
	}, p.Output)
}

// waitSocket polls until path accepts connections, failing early if
// the process exits.
func (p *cliProc) waitSocket(tb testing.TB, path string) {
	tb.Helper()
	poll(tb, "socket "+path+" to accept connections", func() bool {
		if p.Exited() {
			tb.Fatalf("supervisor %q exited (%v) before its socket was ready\n%s", p.args, p.Err(), p.Output())
		}
		c, err := ipc.Dial(tb.Context(), path, ipc.ConnConfig{TrustUIDs: []uint32{nobody.Uid}})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, p.Output)
}

// poll calls cond until it is true, failing the test after cliPoll.
func poll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, cliPoll, 10*time.Millisecond, what, cond, detail)
}

// statusJSON runs status --json and decodes it, both loosely (to check
// the field names) and into the documented type.
func statusJSON(tb testing.TB, socket string) (map[string]any, statusDoc) {
	tb.Helper()
	r := cliWant(tb, exitOK, cliOpts{}, "status", "--socket", socket, "--json")
	var loose map[string]any
	var doc statusDoc
	if err := json.Unmarshal([]byte(r.stdout), &loose); err != nil {
		tb.Fatalf("status --json is not JSON: %v\n%s", err, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		tb.Fatalf("status --json: %v\n%s", err, r)
	}
	return loose, doc
}

// readyWorkers polls status until n workers are ready and returns their
// pids.
func readyWorkers(tb testing.TB, sock string, n int) []int {
	tb.Helper()
	var doc statusDoc
	poll(tb, fmt.Sprintf("%d ready workers", n), func() bool {
		_, doc = statusJSON(tb, sock)
		ready := 0
		for _, w := range doc.Workers {
			if w.State == supervisor.StateReady && w.PID > 0 {
				ready++
			}
		}
		return len(doc.Workers) == n && ready == n
	}, func() string { return fmt.Sprintf("last status: %+v", doc) })
	var pids []int
	for _, w := range doc.Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

// startRun starts `run` with args on a fresh socket, waits for its
// socket and its n workers, and returns the process, the socket and
// the workers' pids.
func startRun(tb testing.TB, n int, args ...string) (*cliProc, string, []int) {
	tb.Helper()
	sock := filepath.Join(tempDir(tb), "s")
	run := cliStart(tb, append([]string{"run", "--workers", fmt.Sprint(n), "--socket", sock}, args...)...)
	run.waitSocket(tb, sock)
	return run, sock, readyWorkers(tb, sock, n)
}

// rawEcho sends p with an external client command (reading stdin,
// writing stdout) and checks that exactly p comes back.
func rawEcho(t *testing.T, p []byte, tool string, args ...string) {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(p)
	c := testutil.StartProcess(t, cmd)
	if err := c.Wait(t, cliWait); err != nil {
		t.Fatalf("%s %q: %v\n%s", tool, args, err, c.Output())
	}
	if got := c.Stdout.String(); got != string(p) {
		t.Errorf("%s %q: got %d bytes back, want the %d sent\nstderr:\n%s", tool, args, len(got), len(p), c.Stderr.String())
	}
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

// processGone reports whether no process pid exists (a zombie exists).
func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// tempDir returns a short fresh directory (socket paths must fit in
// sun_path's 108 bytes), removed at cleanup.
func tempDir(tb testing.TB) string {
	tb.Helper()
	return testutil.ShortDir(tb, "pvc")
}

// nobody is the user a test runs a client as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// otherUser skips the test unless it runs as root, which may run a
// process as nobody. It returns a fresh directory that every user may
// search, for sockets nobody connects to, and a copy of this test
// binary in it that nobody may run (go builds it in a 0700 directory).
func otherUser(tb testing.TB) (dir, exe string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to run a process as another uid")
	}
	dir = tempDir(tb)
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir, testutil.CopyExecutable(tb, dir, "supervisor")
}

// abstractName returns an abstract socket name no other test or run
// uses.
func abstractName(prefix string) string {
	return fmt.Sprintf("@pv-%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano())
}

// gone reports whether no file exists at path.
func gone(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}
