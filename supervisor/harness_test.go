//go:build linux

package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Bounds for the waits in these tests. They are generous: a worker is
// the race-enabled test binary, started on a loaded 2-core machine.
const (
	readyWait = 20 * time.Second // spawn to every hello
	stopWait  = 15 * time.Second // cancel to Run's return
	eventWait = 15 * time.Second // a restart, a state change
)

// syncBuffer is a bytes.Buffer safe for concurrent use, for log output.
type syncBuffer struct {
	testutil.Buffer
}

// records parses the hclog JSON lines written so far.
func (b *syncBuffer) records() []map[string]any {
	var recs []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			recs = append(recs, rec)
		}
	}
	return recs
}

// find returns the records whose message is msg.
func (b *syncBuffer) find(msg string) []map[string]any {
	var found []map[string]any
	for _, rec := range b.records() {
		if rec["@message"] == msg {
			found = append(found, rec)
		}
	}
	return found
}

// testConfig is a config with short intervals for n workers in role.
func testConfig(t *testing.T, roleName string, n int) Config {
	return Config{
		Workers:      n,
		Env:          []string{role(t, roleName)},
		PingInterval: 50 * time.Millisecond,
		PingTimeout:  time.Second,
		PingMisses:   3,
		StartTimeout: readyWait,
		StopTimeout:  time.Second,
		BackoffMin:   10 * time.Millisecond,
		BackoffMax:   50 * time.Millisecond,
	}
}

// run is a supervisor running in the background of a test.
type run struct {
	t      *testing.T
	s      *Supervisor
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error // Run's result

	mu       sync.Mutex
	finished bool
	err      error
}

// startSupervisor starts a supervisor for cfg, logging as JSON at debug
// level into run.logs unless cfg has a logger. It stops the supervisor
// when the test ends.
func startSupervisor(t *testing.T, cfg Config) *run {
	t.Helper()
	logs := &syncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Debug})
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{t: t, s: s, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		if _, ok := r.result(); !ok {
			cancel()
			select {
			case err := <-r.done:
				r.record(err)
			case <-time.After(stopWait):
				t.Errorf("Run did not return within %v of the end of the test; killing", stopWait)
				s.Kill()
				select {
				case err := <-r.done:
					r.record(err)
				case <-time.After(stopWait):
					t.Errorf("Run did not return after Kill either")
				}
			}
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logTail(logs.String(), 200))
		}
	})
	return r
}

func (r *run) record(err error) {
	r.mu.Lock()
	r.finished, r.err = true, err
	r.mu.Unlock()
}

func (r *run) result() (error, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err, r.finished
}

// waitReady waits until every worker has said hello.
func (r *run) waitReady() {
	r.t.Helper()
	select {
	case <-r.s.Ready():
	case err := <-r.done:
		r.record(err)
		r.t.Fatalf("Run returned before the workers were ready: %v", err)
	case <-time.After(readyWait):
		r.t.Fatalf("workers not ready within %v: %+v", readyWait, r.s.Status())
	}
}

// waitReadyWhile waits until every worker has said hello, for as long
// as progress keeps changing: it fails only when neither came within
// readyWait of progress's last change. It is for workers whose hello
// comes after work whose size the test chose (a flood of output that
// the relay must read first), which no fixed bound fits on every
// machine; the test then lifts StartTimeout, this wait being its bound.
func (r *run) waitReadyWhile(what string, progress func() int) {
	r.t.Helper()
	last := progress()
	for {
		select {
		case <-r.s.Ready():
			return
		case err := <-r.done:
			r.record(err)
			r.t.Fatalf("Run returned before the workers were ready: %v", err)
		case <-time.After(readyWait):
			if now := progress(); now != last {
				last = now
				continue
			}
			r.t.Fatalf("workers not ready, and no progress in %s, within %v: %+v", what, readyWait, r.s.Status())
		}
	}
}

// wait waits for Run to return, at most d, and returns its result.
func (r *run) wait(d time.Duration) error {
	r.t.Helper()
	if err, ok := r.result(); ok {
		return err
	}
	select {
	case err := <-r.done:
		r.record(err)
		return err
	case <-time.After(d):
		r.t.Fatalf("Run did not return within %v; status %+v", d, r.s.Status())
		return nil
	}
}

// stop cancels Run's context and waits for Run to return.
func (r *run) stop() error {
	r.t.Helper()
	r.cancel()
	return r.wait(stopWait)
}

// waitStatus polls Status until cond holds and returns that status.
func (r *run) waitStatus(what string, cond func(Status) bool) Status {
	r.t.Helper()
	deadline := time.Now().Add(eventWait)
	for {
		st := r.s.Status()
		if cond(st) {
			return st
		}
		if err, ok := r.result(); ok {
			r.t.Fatalf("Run returned (%v) while waiting for %s; status %+v", err, what, st)
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %s within %v; status %+v", what, eventWait, st)
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronising
	}
}

// killedBy reports whether r is the end of a worker killed by sig that
// was no stop: the worker died of it, or, when its reaping lagged its
// channel's EOF by more than exitGrace, was reaped as one whose channel
// closed.
func killedBy(r ExitReason, sig syscall.Signal) bool {
	return (r.Kind == ExitSignal || r.Kind == ExitChannelClosed) && r.Signal == sig && !r.Stopped
}

// exitedWith reports whether r is the end of a worker that exited with
// code (directly, or as one whose channel closed first).
func exitedWith(r ExitReason, code int) bool {
	return (r.Kind == ExitCode || r.Kind == ExitChannelClosed) && r.Signal == 0 && r.Code == code
}

// pids returns the workers' pids.
func pids(st Status) []int {
	var p []int
	for _, w := range st.Workers {
		p = append(p, w.PID)
	}
	return p
}

// waitGone waits until pid has exited (gone, or a zombie of init's).
func waitGone(t *testing.T, pid int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for alive(pid) {
		if time.Now().After(deadline) {
			p, _ := testutil.ReadProc(pid)
			t.Fatalf("pid %d still running %v after it should have died: %+v", pid, d, p)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc
	}
}

// checkReaped fails unless pid was a worker that has been reaped: a
// reaped child leaves nothing behind in /proc, a zombie would.
func checkReaped(t *testing.T, pid int) {
	t.Helper()
	if p, ok := testutil.ReadProc(pid); ok && p.PPID == os.Getpid() {
		t.Errorf("worker pid %d not reaped: %+v", pid, p)
	}
}

// tempFile returns a path in a fresh temporary directory.
func tempFile(t *testing.T, name string) string {
	return filepath.Join(t.TempDir(), name)
}

// readPIDFile waits for a role to write pids to file and returns them.
func readPIDFile(t *testing.T, file string, want int) []int {
	t.Helper()
	deadline := time.Now().Add(readyWait)
	for {
		b, err := os.ReadFile(file)
		if err == nil {
			var pids []int
			for _, f := range strings.Fields(string(b)) {
				n, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("%s: %q is not a pid list", file, b)
				}
				pids = append(pids, n)
			}
			if len(pids) != want {
				t.Fatalf("%s holds %d pids, want %d: %q", file, len(pids), want, b)
			}
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written within %v", file, readyWait)
		}
		time.Sleep(5 * time.Millisecond) // polling for the file
	}
}

func kill(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("signal %v to pid %d: %v", sig, pid, err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func describe(b []byte) string {
	if len(b) <= 16 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%d bytes %q…", len(b), b[:16])
}

// logTail returns the last n lines of a log, each cut to 300 bytes.
func logTail(out string, n int) string {
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"…"}, lines[len(lines)-n:]...)
	}
	for i, l := range lines {
		if len(l) > 300 {
			lines[i] = l[:300] + "…"
		}
	}
	return strings.Join(lines, "\n")
}

// readyWorkerReport starts a supervisor of one roleName worker, waits
// until it is ready and returns the run and what the worker wrote to its
// envFile before its hello.
func readyWorkerReport(t *testing.T, roleName string) (*run, []byte) {
	t.Helper()
	file := tempFile(t, roleName)
	cfg := testConfig(t, roleName, 1)
	cfg.Env = append(cfg.Env, envFile+"="+file)
	r := startSupervisor(t, cfg)
	r.waitReady()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}
