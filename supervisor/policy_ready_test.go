//go:build linux

package supervisor

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Policy tests of the Ready modes, the watchdog and the health command,
// on the fake spawner and clock.

// TestPolicyReadyStarted: a ReadyStarted worker is ready once it has
// lived ReadyAfter, not before; one that dies sooner failed to start.
func TestPolicyReadyStarted(t *testing.T) {
	t.Parallel()
	const secs = 3 * time.Second
	r := startPolicy(t, Config{Ready: ReadyStarted, ReadyAfter: secs, BackoffMin: time.Second, BackoffMax: time.Second})
	fp := r.sp.next(t)
	r.clk.waitArmed(t, r.t0.Add(secs))
	if st := slotOf(r.s.Status(), 1).State; st != StateStarting {
		t.Fatalf("state %s before ReadyAfter, want starting", st)
	}
	r.clk.set(r.t0.Add(secs))
	r.awaitReady()
	fp.exit(exit1)
	ws := r.backoff()
	r.clk.set(*ws.NextStart)
	fp = r.sp.next(t)
	// The loop publishes the start after the spawner has handed the
	// process over: until then Status still shows the first backoff.
	r.await("the restarted worker starting", func(st Status) bool { return slotOf(st, 1).PID == fp.pd })
	fp.exit(exit3) // before ReadyAfter
	ws = r.backoff()
	if !ws.Exit.BeforeHello || ws.LastExit != "exited with status 3 before it was ready" {
		t.Errorf("early exit: %+v", ws)
	}
	r.finishWith(2)
}

// TestPolicyReadyNotify: READY=1 makes a ReadyNotify worker ready;
// STATUS= and ERRNO= show in Status; RELOADING=1 takes it out of
// readiness until READY=1; EXTEND_TIMEOUT_USEC= extends the start
// timeout; one never ready within StartTimeout is killed (ExitNotReady).
func TestPolicyReadyNotify(t *testing.T) {
	t.Parallel()
	const start = 10 * time.Second
	r := startPolicy(t, Config{Ready: ReadyNotify, StartTimeout: start, BackoffMin: time.Second, BackoffMax: time.Second})
	fp := r.sp.next(t)
	fp.notify(notice{extend: 15 * time.Second, status: "loading", hasStatus: true})
	r.await("the status text", func(st Status) bool { return slotOf(st, 1).StatusText == "loading" })
	r.clk.waitArmed(t, r.t0.Add(15*time.Second))
	r.clk.set(r.t0.Add(start)) // the first timeout passes, extended
	fp.notify(notice{ready: true, status: "serving", hasStatus: true, errno: 0, hasErrno: true})
	ws := slotOf(r.await("ready", func(st Status) bool { return slotOf(st, 1).State == StateReady }), 1)
	if ws.StatusText != "serving" {
		t.Errorf("status text %q", ws.StatusText)
	}
	fp.notify(notice{reloading: true})
	r.await("reloading", func(st Status) bool { return slotOf(st, 1).State == StateReloading })
	fp.notify(notice{ready: true})
	r.awaitReady()
	fp.noSignal(t)

	fp.exit(exit1)
	ws = r.backoff()
	r.clk.set(*ws.NextStart)
	fp = r.sp.next(t)
	at := r.clk.now().Add(start)
	r.clk.waitArmed(t, at)
	r.clk.set(at)
	fp.wantSignal(t, syscall.SIGKILL, at)
	ws = r.backoff()
	if ws.Exit.Kind != ExitNotReady || ws.Exit.Timeout != start {
		t.Errorf("exit %+v, want not-ready after %v", ws.Exit, start)
	}
	r.finishWith(2)
}

// TestPolicyWatchdog: a ready ReadyNotify worker must send WATCHDOG=1
// within each Watchdog interval (WATCHDOG_USEC= changes it); one that
// stops is killed as hung, and so is one that sends WATCHDOG=trigger.
func TestPolicyWatchdog(t *testing.T) {
	t.Parallel()
	const wd = 2 * time.Second
	r := startPolicy(t, Config{Ready: ReadyNotify, Watchdog: wd, BackoffMin: time.Second, BackoffMax: time.Second})
	fp := r.sp.next(t)
	fp.notify(notice{ready: true})
	r.awaitReady()
	for i := 1; i <= 3; i++ {
		r.clk.waitArmed(t, r.clk.now().Add(wd))
		r.clk.advance(wd - time.Millisecond)
		fp.notify(notice{watchdog: true})
		r.clk.waitArmed(t, r.clk.now().Add(wd)) // re-armed from now
	}
	fp.noSignal(t)
	fp.notify(notice{watchdog: true, watchdogEvery: 5 * time.Second, hasWatchdogEvery: true})
	at := r.clk.now().Add(5 * time.Second)
	r.clk.waitArmed(t, at)
	r.clk.set(at)
	fp.wantSignal(t, syscall.SIGKILL, at)
	ws := r.backoff()
	if ws.Exit.Kind != ExitHung || ws.Exit.Check != CheckWatchdog || ws.LastExit != "hung: watchdog not fed within 5s" {
		t.Errorf("exit %+v (%q)", ws.Exit, ws.LastExit)
	}

	r.clk.set(*ws.NextStart)
	fp = r.sp.next(t)
	fp.notify(notice{ready: true})
	r.awaitReady()
	fp.notify(notice{trigger: true})
	fp.wantSignal(t, syscall.SIGKILL, time.Time{})
	ws = r.backoff()
	if ws.Exit.Check != CheckWatchdogTrigger {
		t.Errorf("exit %+v", ws.Exit)
	}
	r.finishWith(2)
}

// TestPolicyHealthCommand: the health command runs each HealthInterval
// while a worker is ready; HealthMisses failures in a row declare it
// hung; a pass resets the count.
func TestPolicyHealthCommand(t *testing.T) {
	t.Parallel()
	const every = 10 * time.Second
	results := make(chan error)
	calls := make(chan int, 10)
	r := startPolicy(t, Config{Ready: ReadyStarted, ReadyAfter: time.Second, HealthCmd: []string{"check"}, HealthInterval: every, HealthMisses: 2, BackoffMin: time.Second, BackoffMax: time.Second},
		func(s *Supervisor, _ *fakeSpawner) {
			s.checker = func(ctx context.Context, id, pid int, _ hclog.Logger) error {
				calls <- id
				select {
				case err := <-results:
					return err
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		})
	fp := r.sp.next(t)
	r.clk.waitArmed(t, r.t0.Add(time.Second))
	r.clk.set(r.t0.Add(time.Second))
	r.awaitReady()
	fail := errors.New("exit status 1")
	for i, res := range []error{fail, nil, fail, fail} {
		at := r.clk.now().Add(every)
		r.clk.waitArmed(t, at)
		r.clk.set(at)
		select {
		case <-calls:
		case <-time.After(policyWait):
			t.Fatalf("health command %d not run", i)
		}
		results <- res
		if i < 3 {
			fp.noSignal(t)
		}
	}
	fp.wantSignal(t, syscall.SIGKILL, time.Time{})
	ws := r.backoff()
	if ws.Exit.Kind != ExitHung || ws.Exit.Check != CheckCommand || ws.Exit.Misses != 2 {
		t.Errorf("exit %+v", ws.Exit)
	}
	r.finishWith(1)
}

// TestPolicyStopWithoutChannel: a worker without a channel is sent
// StopSignal at once on stop, and SIGKILL at the end of StopTimeout.
func TestPolicyStopWithoutChannel(t *testing.T) {
	t.Parallel()
	const stop = 4 * time.Second
	r := startPolicy(t, Config{Ready: ReadyStarted, ReadyAfter: time.Second, StopTimeout: stop, StopSignal: syscall.SIGINT})
	fp := r.sp.next(t)
	fp.ignoreTerm.Store(true)
	r.clk.waitArmed(t, r.t0.Add(time.Second))
	r.clk.set(r.t0.Add(time.Second))
	r.awaitReady()
	r.cancel()
	now := r.clk.now()
	fp.wantSignal(t, syscall.SIGINT, now)
	r.clk.waitArmed(t, now.Add(stop))
	r.clk.set(now.Add(stop))
	fp.wantSignal(t, syscall.SIGKILL, now.Add(stop))
	if err := r.wait(); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyPingWedged: Ping answers while the loop runs, times out
// while the loop is stuck (here in a signal that does not return), and
// answers again once it is free; Signal reaches every worker.
func TestPolicyPingWedged(t *testing.T) {
	t.Parallel()
	r := startPolicy(t, Config{Workers: 2})
	fps := r.ready(2)
	ctx, cancel := context.WithTimeout(context.Background(), policyWait)
	defer cancel()
	if err := r.s.Ping(ctx); err != nil {
		t.Fatalf("Ping of a running loop: %v", err)
	}
	if n, err := r.s.Signal(ctx, syscall.SIGUSR1); err != nil || n != 2 {
		t.Fatalf("Signal: %d, %v; want 2 workers", n, err)
	}
	for _, fp := range fps {
		fp.wantSignal(t, syscall.SIGUSR1, time.Time{})
	}

	block := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(block) }) }
	t.Cleanup(unblock)
	fps[0].block, fps[0].blocked = block, make(chan struct{})
	sent := make(chan error, 1)
	go func() { _, err := r.s.Signal(context.Background(), syscall.SIGUSR2); sent <- err }()
	select {
	case <-fps[0].blocked:
	case <-time.After(policyWait):
		t.Fatal("the loop never signalled the worker")
	}
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if err := r.s.Ping(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping of a wedged loop: %v, want DeadlineExceeded", err)
	}
	unblock()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := r.s.Ping(ctx); err != nil {
		t.Fatalf("Ping once free: %v", err)
	}
	r.finish()
}

// TestConfigRejected: New refuses values out of range instead of
// silently using the defaults.
func TestConfigRejected(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]Config{
		"negative workers":         {Workers: -1},
		"negative ping interval":   {PingInterval: -time.Second},
		"negative stop timeout":    {StopTimeout: -1},
		"negative ping misses":     {PingMisses: -2},
		"negative max restarts":    {MaxRestarts: -1},
		"backoff max below min":    {BackoffMin: time.Second, BackoffMax: time.Millisecond},
		"unknown ready mode":       {Ready: ReadyMode(9)},
		"unknown restart policy":   {Restart: RestartPolicy(7)},
		"watchdog without notify":  {Watchdog: time.Second},
		"empty health command":     {HealthCmd: []string{""}},
		"negative health interval": {HealthCmd: []string{"true"}, HealthInterval: -1},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: New returned %v, want ErrConfig", name, err)
		}
	}
	if _, err := New(Config{Executable: "no-such-program-xyz"}); !errors.Is(err, ErrExecutable) {
		t.Errorf("missing executable: %v, want ErrExecutable", err)
	}
}

// TestPolicyNotifyDeadlines: a worker that said RELOADING=1 must say
// READY=1 within StartTimeout, and one that said STOPPING=1 must exit
// within StopTimeout; EXTEND_TIMEOUT_USEC cannot stretch a stop
// forever.
func TestPolicyNotifyDeadlines(t *testing.T) {
	t.Parallel()
	const start, stop = 10 * time.Second, 4 * time.Second
	cfg := Config{Ready: ReadyNotify, StartTimeout: start, StopTimeout: stop, BackoffMin: time.Second, BackoffMax: time.Second}
	t.Run("reloading", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, cfg)
		fp := r.sp.next(t)
		fp.notify(notice{ready: true})
		r.awaitReady()
		fp.notify(notice{reloading: true})
		r.await("reloading", func(st Status) bool { return slotOf(st, 1).State == StateReloading })
		at := r.clk.now().Add(start)
		r.clk.waitArmed(t, at)
		r.clk.set(at)
		fp.wantSignal(t, syscall.SIGKILL, at)
		if ws := r.backoff(); ws.Exit.Kind != ExitNotReady {
			t.Errorf("exit %+v", ws.Exit)
		}
		r.finishWith(1)
	})
	t.Run("stopping", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, cfg)
		fp := r.sp.next(t)
		fp.ignoreTerm.Store(true)
		fp.notify(notice{ready: true})
		r.awaitReady()
		fp.notify(notice{stopping: true})
		r.await("stopping", func(st Status) bool { return slotOf(st, 1).State == StateStopping })
		at := r.clk.now().Add(stop)
		r.clk.waitArmed(t, at)
		r.clk.set(at)
		fp.wantSignal(t, syscall.SIGTERM, at) // no channel: the stop signal at once
		// Asking for more time again and again gets at most another
		// StopTimeout before SIGKILL.
		fp.notify(notice{extend: time.Hour})
		kill := at.Add(2 * stop)
		r.clk.waitArmed(t, kill)
		r.clk.set(kill)
		fp.wantSignal(t, syscall.SIGKILL, kill)
		r.backoff()
		r.finish()
	})
}

// TestPolicyAllEndedDuringReload: Run returns when the last worker ends
// for good while its rolling restart's replacement is still starting.
func TestPolicyAllEndedDuringReload(t *testing.T) {
	t.Parallel()
	r := startPolicy(t, Config{})
	fp := r.ready(1)[0]
	go r.s.Reload(context.Background())
	repl := r.sp.next(t)
	fp.exit(exit0) // on-failure: not restarted
	repl.wantSignal(t, syscall.SIGKILL, time.Time{})
	if err := r.wait(); err != nil {
		t.Fatalf("Run returned %v, want nil (the worker exited 0)", err)
	}
}
