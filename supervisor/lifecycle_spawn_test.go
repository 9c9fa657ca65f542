//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

func init() {
	helperRoles["fd-starved-supervisor"] = fdStarvedSupervisor
}

// starvedReport is what the fd-starved-supervisor helper saw.
type starvedReport struct {
	Problem       string // why the helper gave up, if it did
	RunErr        string // Run's result, "" for nil
	Hogged        int    // descriptors taken to starve the supervisor
	WhileStarved  Stats  // once the spawn failures were counted
	Final         Stats  // after the recovery
	Recovered     bool   // a new worker became ready once fds were freed
	EchoErr       string // an echo through the recovered worker
	FailureLines  int    // "cannot start a worker" log lines
	RecoveryLines int    // "worker started after the supervisor's own shortage" lines
	Log           string // the tail of the supervisor's log
}

// fdStarvedSupervisor runs a supervisor of one echo worker with
// MaxRestarts 1 under a low RLIMIT_NOFILE, takes every free descriptor,
// kills the worker, and once several respawns have failed for want of
// descriptors frees them again. It reports what it saw.
func fdStarvedSupervisor(file string) int {
	var rep starvedReport
	logs := &syncBuffer{}
	defer func() {
		rep.Log = logTail(logs.String(), 60)
		if err := writeReport(file, rep); err != nil {
			fmt.Println("fd-starved-supervisor:", err)
		}
	}()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		rep.Problem = err.Error()
		return 0
	}
	lim.Cur = min(lim.Max, 256)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		rep.Problem = err.Error()
		return 0
	}
	s, err := New(Config{
		Workers:       1,
		Env:           []string{envRole + "=echo"},
		PingInterval:  50 * time.Millisecond,
		PingTimeout:   5 * time.Second,
		StartTimeout:  readyWait,
		StopTimeout:   time.Second,
		BackoffMin:    5 * time.Millisecond,
		BackoffMax:    20 * time.Millisecond,
		MaxRestarts:   1,
		RestartWindow: time.Hour,
		Logger:        hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Debug}),
	})
	if err != nil {
		rep.Problem = err.Error()
		return 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var runErr error
	returned := func() bool {
		select {
		case runErr = <-done:
			done <- runErr
			return true
		default:
			return false
		}
	}
	finish := func(problem string) int {
		rep.Problem = problem
		cancel()
		select {
		case runErr = <-done:
		case <-time.After(stopWait):
		}
		if runErr != nil {
			rep.RunErr = runErr.Error()
		}
		return 0
	}
	select {
	case <-s.Ready():
	case <-time.After(readyWait):
		return finish("worker not ready")
	}
	victim := s.Status().Workers[0].PID

	var hog []int
	defer func() {
		for _, fd := range hog {
			unix.Close(fd)
		}
	}()
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EMFILE) {
			break
		}
		if err != nil {
			return finish("opening /dev/null: " + err.Error())
		}
		hog = append(hog, fd)
	}
	rep.Hogged = len(hog)
	// The worker's death frees its channel, pipes and pidfds; a
	// respawn needs more than that.
	syscall.Kill(victim, syscall.SIGKILL)
	if !await(eventWait, func() bool { return s.Stats().SpawnFailures >= 3 || returned() }) {
		return finish("no spawn failures")
	}
	rep.WhileStarved = s.Stats()
	if returned() {
		return finish("Run returned while the supervisor was short of descriptors")
	}
	for _, fd := range hog {
		unix.Close(fd)
	}
	hog = nil
	rep.Recovered = await(eventWait, func() bool {
		ws := s.Status().Workers[0]
		return returned() || ws.State == StateReady && ws.PID != victim && ws.PID != 0
	}) && !returned()
	ectx, ecancel := context.WithTimeout(ctx, eventWait)
	if got, err := s.Echo(ectx, []byte("after"), nil); err != nil || string(got) != "after" {
		rep.EchoErr = fmt.Sprintf("%q, %v", got, err)
	}
	ecancel()
	rep.Final = s.Stats()
	rep.FailureLines = len(logs.find("cannot start a worker: the supervisor is short of resources; retrying"))
	rep.RecoveryLines = len(logs.workerRecords(1, "worker started after the supervisor's own shortage"))
	return finish("")
}

// TestOwnSpawnFailureIsNotAWorkerFailure: when the supervisor itself
// runs out of descriptors, respawning a worker fails with EMFILE. That
// is no failure of the worker: with MaxRestarts 1, one worker death
// and any number of failed respawns leave the supervisor running, it
// logs the shortage (not once per attempt), and the worker comes back
// once descriptors are free.
func TestOwnSpawnFailureIsNotAWorkerFailure(t *testing.T) {
	t.Parallel()
	role(t, "echo") // the helper's workers
	var rep starvedReport
	runHelper(t, "fd-starved-supervisor", &rep)
	if rep.Problem != "" || rep.RunErr != "" {
		t.Fatalf("helper: %s; Run returned %q\nhelper's supervisor log:\n%s", rep.Problem, rep.RunErr, rep.Log)
	}
	if !rep.Recovered || rep.EchoErr != "" {
		t.Errorf("no working worker once descriptors were freed (echo: %s)", rep.EchoErr)
	}
	ws := rep.WhileStarved
	if ws.SpawnFailures < 3 || ws.Failures != 1 || ws.Restarts != 1 {
		t.Errorf("stats while starved: %+v; want ≥3 spawn failures, 1 failure, 1 restart", ws)
	}
	if f := rep.Final; f.Failures != 1 || f.Restarts != 1 {
		t.Errorf("stats after recovery: %+v; want the one failure and restart of the killed worker", f)
	}
	if rep.FailureLines < 1 || uint64(rep.FailureLines) >= rep.Final.SpawnFailures {
		t.Errorf("%d log lines for %d spawn failures; want at least one, fewer than the failures", rep.FailureLines, rep.Final.SpawnFailures)
	}
	if rep.RecoveryLines != 1 {
		t.Errorf("%d log lines about the recovery, want 1", rep.RecoveryLines)
	}
	if !strings.Contains(rep.Log, "too many open files") {
		t.Errorf("the log does not name the shortage")
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("report: %+v", rep)
	}
}

// TestSpawnFailureLogIsRateBounded drives the log limiter with a fake
// clock: one line per failure at most, one per spawnLogEvery at most,
// each saying how many were left out.
func TestSpawnFailureLogIsRateBounded(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	s, err := New(Config{Logger: hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true})})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	s.cfg.now = func() time.Time { return now }
	fail := errors.New("too many open files")
	for range 100 { // 100 failures within a second
		s.logSpawnFailure(1, fail, time.Millisecond)
		now = now.Add(10 * time.Millisecond)
	}
	now = now.Add(spawnLogEvery)
	s.logSpawnFailure(2, fail, time.Millisecond)
	recs := logs.find("cannot start a worker: the supervisor is short of resources; retrying")
	if len(recs) != 2 {
		t.Fatalf("%d lines for 101 failures, want 2: %v", len(recs), recs)
	}
	if recs[0]["not_logged_since_last"] != 0.0 || recs[1]["not_logged_since_last"] != 99.0 || recs[1]["worker"] != 2.0 {
		t.Errorf("lines: %v", recs)
	}
}
