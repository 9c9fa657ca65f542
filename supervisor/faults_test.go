//go:build linux

package supervisor

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestHungWorkerIsReplaced: a worker that stops answering pings is
// killed after PingMisses of them and replaced.
func TestHungWorkerIsReplaced(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "echo", 2)
	cfg.PingInterval = 20 * time.Millisecond
	cfg.PingTimeout = 300 * time.Millisecond
	cfg.PingMisses = 3
	r := startSupervisor(t, cfg)
	r.waitReady()
	before := r.s.Status()
	victim := before.Workers[0].PID
	kill(t, victim, syscall.SIGSTOP)
	start := time.Now()
	st := r.waitStatus("the hung worker replaced", func(st Status) bool {
		return st.Workers[0].State == StateReady && st.Workers[0].PID != victim
	})
	if d := time.Since(start); d < time.Duration(cfg.PingMisses-1)*cfg.PingTimeout {
		t.Errorf("hung worker replaced after %v, before %d pings could time out", d, cfg.PingMisses)
	}
	ws := st.Workers[0]
	if want := (ExitReason{Kind: ExitHung, Misses: 3, Signal: syscall.SIGKILL}); ws.Restarts != 1 || ws.Exit != want {
		t.Errorf("worker 1 after SIGSTOP: %+v", ws)
	}
	if w2 := st.Workers[1]; w2.PID != before.Workers[1].PID || w2.Restarts != 0 {
		t.Errorf("worker 2 was disturbed: %+v", w2)
	}
	if len(r.logs.find("worker hung; killing it")) != 1 {
		t.Error("no log line about the hung worker")
	}
	checkReaped(t, victim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 4 {
		if _, err := r.s.Echo(ctx, []byte{byte(i)}, nil); err != nil {
			t.Fatalf("Echo after the replacement: %v", err)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestNoHelloIsKilled: a worker that never says hello is killed when
// StartTimeout ends and started again.
func TestNoHelloIsKilled(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "no-hello", 1)
	cfg.StartTimeout = 300 * time.Millisecond
	r := startSupervisor(t, cfg)
	first := r.waitStatus("a starting worker", func(st Status) bool {
		return st.Workers[0].State == StateStarting && st.Workers[0].PID != 0
	}).Workers[0].PID
	ws := r.waitStatus("a second attempt", func(st Status) bool {
		ws := st.Workers[0]
		return ws.Restarts >= 1 && ws.PID != 0 && ws.PID != first
	}).Workers[0]
	if ws.Exit.Kind != ExitNoHello || ws.Exit.Timeout != 300*time.Millisecond {
		t.Errorf("last exit %+v (%q), want no hello within 300ms", ws.Exit, ws.LastExit)
	}
	checkReaped(t, first)
	select {
	case <-r.s.Ready():
		t.Error("Ready closed though no worker said hello")
	default:
	}
	if s := r.s.Stats(); s.PingsSent != 0 {
		t.Errorf("workers without a hello were pinged: %+v", s)
	}
	// A stop while a worker is starting does not wait for its hello.
	start := time.Now()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stop took %v", d)
	}
}

// TestNoOrphansWhenSupervisorDies: workers die with their supervisor,
// even when it gets no chance to stop them.
func TestNoOrphansWhenSupervisorDies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := dir + "/pids"
	out, err := os.Create(dir + "/output")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	role(t, "echo") // the helper's workers' role
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), role(t, "supervisor-helper"), envFile+"="+file)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	helperOutput := func() string { b, _ := os.ReadFile(dir + "/output"); return string(b) }
	defer func() {
		cmd.Process.Kill()
		select {
		case <-waited:
		case <-time.After(stopWait):
			t.Errorf("helper %d not reaped", cmd.Process.Pid)
		}
	}()

	var wpids []int
	deadline := time.After(readyWait)
	for wpids == nil {
		select {
		case err := <-waited:
			waited <- err
			t.Fatalf("helper exited early: %v\n%s", err, helperOutput())
		case <-deadline:
			t.Fatalf("helper wrote no pids within %v\n%s", readyWait, helperOutput())
		case <-time.After(5 * time.Millisecond): // polling for the file
		}
		if b, err := os.ReadFile(file); err == nil {
			for _, f := range strings.Fields(string(b)) {
				n, _ := strconv.Atoi(f)
				wpids = append(wpids, n)
			}
		}
	}
	if len(wpids) != 2 {
		t.Fatalf("helper reported pids %v, want 2", wpids)
	}
	for _, pid := range wpids {
		if p, ok := testutil.ReadProc(pid); !ok || p.PPID != cmd.Process.Pid || !alive(pid) {
			t.Fatalf("pid %d is not a live worker of the helper %d: %+v", pid, cmd.Process.Pid, p)
		}
	}
	kill(t, cmd.Process.Pid, syscall.SIGKILL)
	select {
	case err := <-waited:
		waited <- err
	case <-time.After(stopWait):
		t.Fatal("SIGKILLed helper not reaped")
	}
	for _, pid := range wpids {
		waitGone(t, pid, 2*time.Second)
	}
}

// TestWorkersSurviveThreadChurn: the parent-death signal is tied to the
// thread that forked a worker. Threads that end must not take workers
// with them: a goroutine that returns while locked to its thread makes
// the runtime destroy that thread. Threads are churned while workers
// are spawned (at start and in rolling restarts), which kills some of
// them if they are forked from ordinary threads, and again once they
// run.
func TestWorkersSurviveThreadChurn(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	churned := make(chan struct{})
	go func() {
		defer close(churned)
		for {
			select {
			case <-stop:
				return
			default:
			}
			churnThreads(20)
		}
	}()
	defer func() {
		select {
		case <-churned:
		default:
			close(stop)
			<-churned
		}
	}()
	r := startSupervisor(t, testConfig(t, "echo", 3))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		if err := r.s.Reload(ctx); err != nil {
			t.Fatalf("Reload %d while threads churn: %v", i, err)
		}
	}
	close(stop)
	<-churned
	if s := r.s.Stats(); s.Failures != 0 || s.Restarts != 0 {
		t.Fatalf("workers died while threads churned: %+v; status %+v", s, r.s.Status())
	}

	// Now churn with every worker running, and check each thread did die.
	before := pids(r.s.Status())
	for range 3 {
		for _, tid := range churnThreads(50) {
			if tid == os.Getpid() {
				continue // the main thread is parked, never destroyed
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, err := os.Stat("/proc/self/task/" + strconv.Itoa(tid)); errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("thread %d not destroyed after its locked goroutine returned", tid)
				}
				time.Sleep(time.Millisecond) // polling /proc
			}
		}
	}
	for i := range 9 {
		if _, err := r.s.Echo(ctx, []byte{byte(i)}, nil); err != nil {
			t.Fatalf("Echo after the churn: %v", err)
		}
	}
	for i, pid := range before {
		if !alive(pid) {
			t.Errorf("worker %d (pid %d) died when threads ended", i+1, pid)
		}
	}
	st := r.s.Status()
	for i, ws := range st.Workers {
		if ws.PID != before[i] || ws.Restarts != 0 || ws.State != StateReady {
			t.Errorf("worker %d after the churn: %+v, want pid %d, no restart", i+1, ws, before[i])
		}
	}
	if s := r.s.Stats(); s.Failures != 0 {
		t.Errorf("failures after the churn: %+v", s)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// churnThreads runs n goroutines at once, each locked to its own
// thread, and lets them return while still locked, which destroys the
// threads. It returns their thread ids.
func churnThreads(n int) []int {
	release := make(chan struct{})
	tids := make(chan int, n)
	exited := make(chan struct{}, n)
	for range n {
		go func() {
			defer func() { exited <- struct{}{} }()
			runtime.LockOSThread() // never unlocked
			tids <- syscall.Gettid()
			<-release
		}()
	}
	var got []int
	for range n {
		got = append(got, <-tids)
	}
	close(release)
	for range n {
		<-exited
	}
	return got
}

// TestRestartCyclesLeakNothing runs a worker through 500 crash/restart
// cycles and checks that descriptors, goroutines and children are back
// where they started. It is not parallel: it counts process-wide. It
// counts work, not time: it waits as long as restarts keep coming,
// giving each its own generous deadline.
func TestRestartCyclesLeakNothing(t *testing.T) {
	const cycles = 500
	before := testutil.TakeSnapshot()

	cfg := testConfig(t, "crash-after-hello", 2)
	cfg.BackoffMin, cfg.BackoffMax = time.Millisecond, time.Millisecond
	cfg.Logger = hclog.NewNullLogger()
	r := startSupervisor(t, cfg)
	seen, deadline := uint64(0), time.Now().Add(eventWait)
	for seen < cycles {
		if err, ok := r.result(); ok {
			t.Fatalf("Run returned: %v", err)
		}
		if n := r.s.Stats().Restarts; n > seen {
			seen, deadline = n, time.Now().Add(eventWait)
		} else if time.Now().After(deadline) {
			t.Fatalf("no restart for %v after %d of them", eventWait, seen)
		}
		time.Sleep(10 * time.Millisecond) // polling the counter
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if s := r.s.Stats(); s.Failures < cycles {
		t.Errorf("stats: %+v, want at least %d failures", s, cycles)
	}

	if err := before.Check(5 * time.Second); err != nil {
		t.Fatalf("after %d restarts: %v", cycles, err)
	}
}
