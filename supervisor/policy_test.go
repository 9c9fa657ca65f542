//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Policy tests: the loop on a fake spawner and a fake clock (see
// policy_fakes_test.go). Each step waits for the loop to act, never for
// time to pass, so these run in milliseconds and say exactly when each
// thing happened on the supervisor's clock. The tests with real
// processes (supervisor_test.go, faults_test.go, lifecycle_*_test.go)
// check the same behaviours end to end.

var (
	exit0   = ExitReason{Kind: ExitCode, Code: 0}
	exit1   = ExitReason{Kind: ExitCode, Code: 1}
	exit3   = ExitReason{Kind: ExitCode, Code: 3}
	sigkill = ExitReason{Kind: ExitSignal, Signal: syscall.SIGKILL}
	sigterm = ExitReason{Kind: ExitSignal, Signal: syscall.SIGTERM}
)

// stopped returns r as part of a stop.
func stopped(r ExitReason) ExitReason { r.Stopped = true; return r }

// beforeHello returns r for a process that never said hello.
func beforeHello(r ExitReason) ExitReason { r.BeforeHello = true; return r }

// TestPolicyRestart: each restart policy against each way a ready
// worker can end.
func TestPolicyRestart(t *testing.T) {
	t.Parallel()
	ends := []struct {
		name   string
		st     ExitReason
		failed bool
	}{
		{"exit-0", exit0, false},
		{"exit-3", exit3, true},
		{"sigkill", sigkill, true},
	}
	for _, policy := range []RestartPolicy{RestartAlways, RestartOnFailure, RestartNever} {
		for _, end := range ends {
			t.Run(policy.String()+"/"+end.name, func(t *testing.T) {
				t.Parallel()
				r := startPolicy(t, Config{Restart: policy, BackoffMin: time.Second, BackoffMax: time.Second})
				fp := r.ready(1)[0]
				fp.exit(end.st)
				ws := slotOf(r.await("the end handled", func(st Status) bool {
					s := slotOf(st, 1).State
					return s == StateBackoff || s == StateExited
				}), 1)
				if ws.Exit != end.st || ws.LastExit != end.st.String() || ws.PID != 0 {
					t.Errorf("worker after %s: exit %+v (%q), pid %d; want %+v", end.name, ws.Exit, ws.LastExit, ws.PID, end.st)
				}
				wantFailures := uint64(0)
				if end.failed {
					wantFailures = 1
				}
				if restart := policy == RestartAlways || policy == RestartOnFailure && end.failed; !restart {
					if ws.State != StateExited {
						t.Errorf("state %s, want exited", ws.State)
					}
					// Nothing left to supervise: Run returns by itself.
					err := r.wait()
					if end.failed != errors.Is(err, ErrWorkersFailed) || !end.failed && err != nil {
						t.Errorf("Run returned %v after %s under %s", err, end.name, policy)
					}
					r.sp.none(t)
					return
				} else {
					if ws.State != StateBackoff || ws.NextStart == nil {
						t.Fatalf("state %s, next start %v; want backoff", ws.State, ws.NextStart)
					}
					r.clk.set(*ws.NextStart)
					r.sp.next(t).sayHello()
					ws = slotOf(r.await("the restarted worker ready", func(st Status) bool { return slotOf(st, 1).State == StateReady }), 1)
					if ws.Restarts != 1 || ws.Exit != end.st {
						t.Errorf("after the restart: %+v", ws)
					}
				}
				if err := r.stop(); err != nil {
					t.Fatal(err)
				}
				r.sp.none(t)
				if st := r.s.Stats(); st.Failures != wantFailures {
					t.Errorf("%d failures, want %d", st.Failures, wantFailures)
				}
			})
		}
	}
}

// TestPolicyBackoff: the delay before a restart doubles from BackoffMin
// up to BackoffMax, jittered within 50–100 % of each step, and resets
// once a worker stayed ready for HealthyAfter, not before.
func TestPolicyBackoff(t *testing.T) {
	t.Parallel()
	const healthy = 10 * time.Second
	r := startPolicy(t, Config{Restart: RestartAlways, BackoffMin: 100 * time.Millisecond, BackoffMax: 800 * time.Millisecond, HealthyAfter: healthy})
	restarts := 0
	// backoff waits for the slot to back off after its restarts-th
	// restart, checks the delay against step, and ends the backoff.
	backoff := func(step time.Duration) *fakeProc {
		t.Helper()
		ws := slotOf(r.await(fmt.Sprintf("backoff after %d restarts", restarts), func(st Status) bool {
			ws := slotOf(st, 1)
			return ws.State == StateBackoff && ws.Restarts == restarts
		}), 1)
		if d := ws.NextStart.Sub(r.clk.now()); d < step/2 || d > step {
			t.Errorf("backoff %d: delay %v, want %v–%v", restarts, d, step/2, step)
		}
		r.clk.set(*ws.NextStart)
		restarts++
		return r.sp.next(t)
	}
	fp := r.sp.next(t)
	for _, step := range []time.Duration{100, 200, 400, 800, 800} {
		fp.exit(exit1) // before its hello
		fp = backoff(step * time.Millisecond)
	}
	// Ready, but not for long enough: no reset.
	fp.sayHello()
	r.awaitReady()
	r.clk.advance(healthy - time.Millisecond)
	fp.exit(exit1)
	fp = backoff(800 * time.Millisecond)
	// Ready for HealthyAfter: the backoff starts over.
	fp.sayHello()
	r.awaitReady()
	r.clk.advance(healthy)
	fp.exit(exit1)
	fp = backoff(100 * time.Millisecond)
	fp.exit(exit1)
	backoff(200 * time.Millisecond)
	r.finish()
}

// TestPolicyCrashLoop: more than MaxRestarts restarts within
// RestartWindow stop every worker and make Run return ErrCrashLoop;
// restarts that left the window do not count.
func TestPolicyCrashLoop(t *testing.T) {
	t.Parallel()
	r := startPolicy(t, Config{Workers: 2, MaxRestarts: 2, RestartWindow: time.Minute, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond})
	fps := r.ready(2)
	slices.SortFunc(fps, func(a, b *fakeProc) int { return a.id - b.id })
	fp, other := fps[0], fps[1]
	// Failures at 0s, 40s and 70s: never more than two within a
	// minute. The one at 80s is the third since 40s.
	for i, at := range []time.Duration{0, 40 * time.Second, 70 * time.Second, 80 * time.Second} {
		r.clk.set(r.t0.Add(at))
		if i > 0 {
			fp = r.sp.next(t) // started when the backoff ended
		}
		fp.exit(exit1)
		if i == 3 {
			break
		}
		ws := slotOf(r.await(fmt.Sprintf("backoff after the failure at %v", at), func(st Status) bool {
			return slotOf(st, 1).State == StateBackoff && slotOf(st, 1).Restarts == i
		}), 1)
		if r.clk.now().Before(*ws.NextStart) {
			r.clk.set(*ws.NextStart)
		}
	}
	if err := r.wait(); !errors.Is(err, ErrCrashLoop) {
		t.Fatalf("Run: %v, want ErrCrashLoop", err)
	}
	st := r.s.Status()
	if ws := slotOf(st, 1); ws.State != StateFailed || ws.Restarts != 3 || ws.Exit != beforeHello(exit1) {
		t.Errorf("the crashing worker: %+v", ws)
	}
	if ws := slotOf(st, 2); ws.State != StateStopped || ws.Exit != stopped(exit0) {
		t.Errorf("the other worker: %+v, want stopped (it exits 0 on the shutdown request)", ws)
	}
	if !other.isEnded() {
		t.Error("the other worker still runs")
	}
	if s := r.s.Stats(); s.Failures != 4 || s.Restarts != 3 {
		t.Errorf("stats %+v, want 4 failures and 3 restarts", s)
	}
}

// TestPolicyHang: a ready worker is probed every PingInterval; a probe
// unanswered PingTimeout after its write, while nothing else arrives,
// is a miss, and PingMisses misses in a row get the worker killed and
// restarted. A worker that answers, or that keeps sending, is left
// alone.
func TestPolicyHang(t *testing.T) {
	t.Parallel()
	cfg := Config{PingInterval: time.Second, PingTimeout: time.Second, PingMisses: 3, BackoffMin: time.Second, BackoffMax: time.Second}
	// tick moves the clock to the k-th health tick, waits until the
	// loop has run it and no probe it asked for is still being written,
	// and checks that written probes have been, in all.
	tick := func(r *policyRun, k int, written uint64) {
		t.Helper()
		r.clk.set(r.t0.Add(time.Duration(k) * time.Second))
		var done uint64
		r.awaitSnap(fmt.Sprintf("tick %d and its probe written", k), func(sn *snapshot) bool {
			done = sn.counts.probesDone
			return sn.counts.ticks == uint64(k) && sn.counts.probesAsked == done
		})
		if done != written {
			t.Fatalf("after tick %d: %d probes written, want %d", k, done, written)
		}
	}
	// mute starts a worker that answers no probe and waits until it is
	// ready.
	mute := func(r *policyRun) *fakeProc {
		fp := r.sp.next(t)
		fp.conn.autoPong.Store(false)
		fp.sayHello()
		r.awaitReady()
		return fp
	}
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, cfg)
		fp := mute(r)
		for k := 1; k <= 3; k++ {
			tick(r, k, uint64(k)) // tick 1 sends probe 1; ticks 2 and 3 miss one and send the next
		}
		fp.noSignal(t)
		r.clk.set(r.t0.Add(4 * time.Second)) // the third miss
		fp.wantSignal(t, syscall.SIGKILL, r.t0.Add(4*time.Second))
		ws := r.backoff()
		if want := (ExitReason{Kind: ExitHung, Misses: 3, Signal: syscall.SIGKILL}); ws.Exit != want || ws.LastExit != "hung: 3 pings unanswered" {
			t.Errorf("exit %+v (%q), want %+v", ws.Exit, ws.LastExit, want)
		}
		if n := len(r.logs.find("ping missed")); n != 3 {
			t.Errorf("%d misses logged, want 3", n)
		}
		r.clk.set(*ws.NextStart)
		r.sp.next(t)
		r.awaitRestarts(1)
		if s := r.s.Stats(); s.Failures != 1 || s.Restarts != 1 || s.PingsSent != 3 || s.PingsAnswered != 0 {
			t.Errorf("stats %+v", s)
		}
		r.finish()
	})
	t.Run("answering", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, cfg)
		fp := r.ready(1)[0]
		for k := 1; k <= 10; k++ {
			tick(r, k, uint64(k))
		}
		fp.noSignal(t)
		if s := r.s.Stats(); s.PingsSent != 10 || s.PingsAnswered != 10 || s.Failures != 0 {
			t.Errorf("stats %+v", s)
		}
		if ws := slotOf(r.s.Status(), 1); ws.LastPingRTTUS <= 0 {
			t.Errorf("no ping RTT: %+v", ws)
		}
		r.finish()
	})
	t.Run("busy", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, cfg)
		fp := mute(r)
		tick(r, 1, 1)
		for k := 2; k <= 10; k++ {
			fp.conn.received.Add(1 << 20) // replies keep arriving; the pong waits behind them
			tick(r, k, 1)
		}
		fp.noSignal(t)
		// Silent from now on: three more misses.
		tick(r, 11, 2)
		tick(r, 12, 3)
		r.clk.set(r.t0.Add(13 * time.Second))
		fp.wantSignal(t, syscall.SIGKILL, r.t0.Add(13*time.Second))
		r.finish()
	})
}

// TestPolicyNoHello: a worker without a hello is killed when
// StartTimeout ends, never pinged, and restarted.
func TestPolicyNoHello(t *testing.T) {
	t.Parallel()
	r := startPolicy(t, Config{StartTimeout: 10 * time.Second, PingInterval: time.Second, BackoffMin: time.Second, BackoffMax: time.Second})
	fp := r.sp.next(t)
	r.await("the spawn seen", func(st Status) bool { return slotOf(st, 1).PID == fp.pd }) // StartTimeout runs from then
	for k := 1; k <= 9; k++ {
		r.clk.set(r.t0.Add(time.Duration(k) * time.Second))
	}
	r.clk.waitArmed(t, r.t0.Add(10*time.Second))
	fp.noSignal(t)
	r.clk.set(r.t0.Add(10 * time.Second))
	fp.wantSignal(t, syscall.SIGKILL, r.t0.Add(10*time.Second))
	ws := r.backoff()
	if want := (ExitReason{Kind: ExitNoHello, Timeout: 10 * time.Second, Signal: syscall.SIGKILL}); ws.Exit != want {
		t.Errorf("exit %+v (%q), want %+v", ws.Exit, ws.LastExit, want)
	}
	r.clk.set(*ws.NextStart)
	r.sp.next(t)
	r.awaitRestarts(1)
	if s := r.s.Stats(); s.PingsSent != 0 || s.Failures != 1 || s.Restarts != 1 {
		t.Errorf("stats %+v", s)
	}
	select {
	case <-r.s.Ready():
		t.Error("Ready closed though no worker said hello")
	default:
	}
	r.finish()
}

// TestPolicyRollingRestart: Reload replaces one worker at a time; the
// new one is routed before the old one is unrouted or asked to stop (a
// slot is never without a routed worker), and the next slot's
// replacement starts only once the old one is reaped.
func TestPolicyRollingRestart(t *testing.T) {
	t.Parallel()
	// history records, in order, every change of a slot's routed
	// channel (on the loop) and every shutdown request (on a tender).
	type event struct {
		slot     int
		routed   channel // a routing change, if not shutdown
		shutdown bool
	}
	var mu sync.Mutex
	var history []event
	last := map[int]channel{}
	r := startPolicy(t, Config{Workers: 2}, func(s *Supervisor, _ *fakeSpawner) {
		s.routed = func(rt *routes) {
			mu.Lock()
			defer mu.Unlock()
			for i, c := range rt.conns {
				if last[i] != c {
					last[i] = c
					history = append(history, event{slot: i, routed: c})
				}
			}
		}
	})
	old := r.ready(2)
	slices.SortFunc(old, func(a, b *fakeProc) int { return a.id - b.id })
	for i, fp := range old {
		// Set before Reload; read by the old worker's tender.
		fp.conn.onShutdown = func() {
			mu.Lock()
			history = append(history, event{slot: i, shutdown: true})
			mu.Unlock()
		}
	}
	res := make(chan error, 1)
	go func() { res <- r.s.Reload(context.Background()) }()
	var repl [2]*fakeProc
	for i := range repl {
		repl[i] = r.sp.next(t)
		if repl[i].id != i+1 {
			t.Fatalf("replacement %d is for worker %d", i+1, repl[i].id)
		}
		if i > 0 && slices.Contains(repl[i].alive, old[i-1].pd) {
			t.Errorf("worker %d's replacement started before worker %d's old process was reaped", i+1, i)
		}
		repl[i].sayHello()
		select {
		case <-old[i].conn.shutdowns:
		case <-time.After(policyWait):
			t.Fatalf("worker %d's old process was not asked to stop", i+1)
		}
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
	case <-time.After(policyWait):
		t.Fatal("Reload did not return")
	}
	for i, ws := range r.s.Status().Workers {
		if ws.State != StateReady || ws.PID != repl[i].pd || ws.Exit.Kind != ExitReplaced || ws.Restarts != 0 {
			t.Errorf("worker %d after Reload: %+v", i+1, ws)
		}
		old[i].noSignal(t)
	}
	r.finish()
	r.sp.none(t)
	mu.Lock()
	defer mu.Unlock()
	for i := range old {
		var got []string
		for _, e := range history {
			switch {
			case e.slot != i:
			case e.shutdown:
				got = append(got, "shutdown")
			case e.routed == channel(old[i].conn):
				got = append(got, "old")
			case e.routed == channel(repl[i].conn):
				got = append(got, "new")
			case e.routed == nil:
				got = append(got, "none")
			}
		}
		// Then "none" once the supervisor stops.
		if want := []string{"old", "new", "shutdown"}; len(got) < 3 || !slices.Equal(got[:3], want) {
			t.Errorf("worker %d: routing and shutdown in the order %q, want %q first", i+1, got, want)
		}
	}
}

// TestPolicyReloadCoalesces: Reload calls made during a rolling restart
// share one more run after it.
func TestPolicyReloadCoalesces(t *testing.T) {
	t.Parallel()
	const late = 5
	r := startPolicy(t, Config{})
	r.ready(1)
	res := make(chan error, late+1)
	go func() { res <- r.s.Reload(context.Background()) }()
	first := r.sp.next(t) // the first run waits for its hello
	for range late {
		go func() { res <- r.s.Reload(context.Background()) }()
	}
	r.awaitSnap("the late calls queued", func(sn *snapshot) bool { return sn.reloadsQueued == late })
	first.sayHello()
	r.sp.next(t).sayHello() // the second run's
	for range late + 1 {
		select {
		case err := <-res:
			if err != nil {
				t.Errorf("Reload: %v", err)
			}
		case <-time.After(policyWait):
			t.Fatal("a Reload did not return")
		}
	}
	if n := len(r.logs.find("rolling restart")); n != 2 {
		t.Errorf("%d rolling restarts, want 2", n)
	}
	r.finish()
	r.sp.none(t)
}

// TestPolicyReloadFails: a replacement that dies before its hello fails
// the rolling restart; the old worker keeps serving.
func TestPolicyReloadFails(t *testing.T) {
	t.Parallel()
	r := startPolicy(t, Config{})
	old := r.ready(1)[0]
	res := make(chan error, 1)
	go func() { res <- r.s.Reload(context.Background()) }()
	r.sp.next(t).exit(exit3)
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("Reload: nil, want an error")
		}
	case <-time.After(policyWait):
		t.Fatal("Reload did not return")
	}
	if ws := slotOf(r.s.Status(), 1); ws.PID != old.pd || ws.State != StateReady || ws.Exit.Kind != ExitNone {
		t.Errorf("after a failed Reload: %+v", ws)
	}
	old.noSignal(t)
	r.finish()
}

// TestPolicyStopOrder: a stop asks each worker to shut down, sends
// SIGTERM at half of StopTimeout and SIGKILL at its end, skipping the
// steps the worker no longer needs; Kill skips to SIGKILL.
func TestPolicyStopOrder(t *testing.T) {
	t.Parallel()
	const stop = 10 * time.Second
	for _, tc := range []struct {
		name       string
		shutdown   int
		ignoreTerm bool
		kill       bool
		want       []syscall.Signal // and when: at half of StopTimeout, then at its end
		exit       ExitReason
	}{
		{"clean", exitOnShutdown, false, false, nil, stopped(exit0)},
		{"sigterm", ignoreShutdown, false, false, []syscall.Signal{syscall.SIGTERM}, stopped(sigterm)},
		{"sigkill", ignoreShutdown, true, false, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}, stopped(sigkill)},
		{"lingers", answerAndLinger, true, false, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}, stopped(sigkill)},
		{"kill", ignoreShutdown, true, true, []syscall.Signal{syscall.SIGKILL}, stopped(sigkill)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := startPolicy(t, Config{StopTimeout: stop})
			fp := r.sp.next(t)
			fp.shutdown = tc.shutdown
			fp.ignoreTerm.Store(tc.ignoreTerm)
			fp.sayHello()
			r.awaitReady()
			r.cancel()
			select {
			case at := <-fp.conn.shutdowns:
				if !at.Equal(r.t0) {
					t.Errorf("shutdown request at %v, want at once", at.Sub(r.t0))
				}
			case <-time.After(policyWait):
				t.Fatal("no shutdown request")
			}
			fp.noSignal(t)
			if tc.kill {
				r.s.Kill()
			}
			for i, sig := range tc.want {
				at := r.t0.Add(time.Duration(i+1) * stop / 2)
				if tc.kill {
					at = r.t0
				} else {
					r.clk.waitArmed(t, at)
					r.clk.set(at)
				}
				fp.wantSignal(t, sig, at)
			}
			if err := r.wait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			fp.noSignal(t)
			if ws := slotOf(r.s.Status(), 1); ws.State != StateStopped || ws.Exit != tc.exit || ws.PID != 0 {
				t.Errorf("after the stop: %+v, want stopped with %+v", ws, tc.exit)
			}
			fp.conn.mu.Lock()
			closes := fp.conn.closes
			fp.conn.mu.Unlock()
			if closes == 0 {
				t.Error("the channel was never closed")
			}
			if s := r.s.Stats(); s.Failures != 0 || s.Restarts != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
	t.Run("starting", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, Config{StopTimeout: stop})
		fp := r.sp.next(t)
		r.cancel()
		fp.wantSignal(t, syscall.SIGKILL, r.t0)
		if err := r.wait(); err != nil {
			t.Fatal(err)
		}
		if len(fp.conn.shutdowns) != 0 {
			t.Error("a worker without hello was sent a shutdown request")
		}
		if ws := slotOf(r.s.Status(), 1); ws.Exit != stopped(beforeHello(sigkill)) || ws.LastExit != "stopped: killed by signal SIGKILL before it was ready" {
			t.Errorf("after the stop: %+v", ws)
		}
	})
}

// TestPolicySpawnFailures: the supervisor's own shortage at spawn is
// retried with its own backoff and is no failure of the worker: with
// MaxRestarts 1, four failed attempts after one crash leave Run
// running. A worker that cannot be started (a bad executable) is a
// failure.
func TestPolicySpawnFailures(t *testing.T) {
	t.Parallel()
	t.Run("own", func(t *testing.T) {
		t.Parallel()
		short := func(id, attempt int) error {
			if attempt >= 2 && attempt <= 5 {
				return &ownSpawnError{fmt.Errorf("fake: %w", syscall.EMFILE)}
			}
			return nil
		}
		r := startPolicy(t, Config{MaxRestarts: 1, RestartWindow: time.Hour, BackoffMin: 100 * time.Millisecond, BackoffMax: 10 * time.Second},
			func(_ *Supervisor, sp *fakeSpawner) { sp.fail = short })
		r.ready(1)[0].exit(exit1)
		ws := r.backoff()
		r.clk.set(*ws.NextStart)
		for i, step := range []time.Duration{100, 200, 400, 800} {
			step *= time.Millisecond
			r.awaitSnap(fmt.Sprintf("spawn failure %d", i+1), func(sn *snapshot) bool {
				return sn.counts.spawnFailures == uint64(i+1) && sn.workers[0].State == StateBackoff
			})
			ws := slotOf(r.s.Status(), 1)
			if d := ws.NextStart.Sub(r.clk.now()); d < step/2 || d > step {
				t.Errorf("retry %d in %v, want %v–%v", i+1, d, step/2, step)
			}
			r.clk.set(*ws.NextStart)
		}
		r.sp.next(t).sayHello()
		r.awaitReady()
		ws = slotOf(r.s.Status(), 1)
		if s := r.s.Stats(); s.SpawnFailures != 4 || s.Failures != 1 || s.Restarts != 1 || ws.Restarts != 1 || ws.Exit != exit1 {
			t.Errorf("stats %+v, worker %+v; want 4 spawn failures, and the crash's 1 failure and 1 restart", s, ws)
		}
		if n := len(r.logs.find("cannot start a worker: the supervisor is short of resources; retrying")); n != 1 {
			t.Errorf("%d lines about the shortage within a few seconds, want 1", n)
		}
		if recs := r.logs.find("worker started after the supervisor's own shortage"); len(recs) != 1 || recs[0]["failed_attempts"] != 4.0 {
			t.Errorf("recovery lines: %v", recs)
		}
		if err := r.stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		bad := errors.New("fake: exec format error")
		r := startPolicy(t, Config{BackoffMin: time.Second, BackoffMax: time.Second},
			func(_ *Supervisor, sp *fakeSpawner) {
				sp.fail = func(id, attempt int) error {
					if attempt == 1 {
						return bad
					}
					return nil
				}
			})
		ws := r.backoff()
		if ws.Exit.Kind != ExitSpawnFailed || !errors.Is(ws.Exit.Err, bad) {
			t.Errorf("exit %+v", ws.Exit)
		}
		r.clk.set(*ws.NextStart)
		r.sp.next(t)
		r.awaitRestarts(1)
		if s := r.s.Stats(); s.Failures != 1 || s.SpawnFailures != 0 || s.Restarts != 1 {
			t.Errorf("stats %+v", s)
		}
		r.finish()
	})
}

// TestPolicyStopSignalGrace: a worker killed by a stop signal the
// supervisor did not send waits stopGrace for Run's own stop; with it
// the exit is part of the stop, without it a failure.
func TestPolicyStopSignalGrace(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	for _, withStop := range []bool{true, false} {
		t.Run(fmt.Sprint("with-stop=", withStop), func(t *testing.T) {
			t.Parallel()
			r := startPolicy(t, Config{stopGrace: grace, BackoffMin: time.Second, BackoffMax: time.Second})
			r.ready(1)[0].exit(sigterm)
			r.clk.waitArmed(t, r.t0.Add(grace))
			if withStop {
				if err := r.stop(); err != nil {
					t.Fatal(err)
				}
				r.sp.none(t)
				if ws := slotOf(r.s.Status(), 1); ws.State != StateStopped || ws.Exit != stopped(sigterm) {
					t.Errorf("after the stop: %+v", ws)
				}
				if s := r.s.Stats(); s.Failures != 0 {
					t.Errorf("stats %+v", s)
				}
				return
			}
			r.clk.set(r.t0.Add(grace))
			ws := r.backoff()
			if ws.Exit != sigterm {
				t.Errorf("exit %+v", ws.Exit)
			}
			r.clk.set(*ws.NextStart)
			r.sp.next(t)
			r.awaitRestarts(1)
			if s := r.s.Stats(); s.Failures != 1 || s.Restarts != 1 {
				t.Errorf("stats %+v", s)
			}
			r.finish()
		})
	}
}

// TestPolicyChannelClosed: a worker whose channel closes is given
// exitGrace to exit; one that lives on is stopped (no shutdown request
// can reach it: SIGTERM at half of StopTimeout). A protocol violation is
// a failure whatever the exit status.
func TestPolicyChannelClosed(t *testing.T) {
	t.Parallel()
	t.Run("lives-on", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, Config{StopTimeout: 10 * time.Second, BackoffMin: time.Second, BackoffMax: time.Second})
		fp := r.ready(1)[0]
		fp.conn.closeWith(ipc.ErrPeerClosed)
		r.clk.waitArmed(t, r.t0.Add(exitGrace))
		r.clk.set(r.t0.Add(exitGrace))
		r.clk.waitArmed(t, r.t0.Add(exitGrace+5*time.Second))
		r.clk.set(r.t0.Add(exitGrace + 5*time.Second))
		fp.wantSignal(t, syscall.SIGTERM, time.Time{})
		ws := r.backoff()
		if want := (ExitReason{Kind: ExitChannelClosed, Signal: syscall.SIGTERM}); ws.Exit != want || ws.LastExit != "channel closed: killed by signal SIGTERM" {
			t.Errorf("exit %+v (%q), want %+v", ws.Exit, ws.LastExit, want)
		}
		if len(fp.conn.shutdowns) != 0 {
			t.Error("a shutdown request was sent on a closed channel")
		}
		r.finishWith(1)
	})
	t.Run("protocol", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, Config{BackoffMin: time.Second, BackoffMax: time.Second})
		fp := r.ready(1)[0]
		fp.conn.closeWith(&wire.FrameError{Err: wire.ErrBadMagic})
		r.awaitUnrouted(1) // the loop saw the channel close before the exit
		fp.exit(exit0)
		ws := r.backoff()
		if ws.Exit.Kind != ExitProtocol || ws.Exit.Code != 0 || !errors.Is(ws.Exit.Err, wire.ErrBadMagic) {
			t.Errorf("exit %+v", ws.Exit)
		}
		r.finishWith(1)
	})
	t.Run("bad-hello", func(t *testing.T) {
		t.Parallel()
		r := startPolicy(t, Config{BackoffMin: time.Second, BackoffMax: time.Second})
		fp := r.sp.next(t)
		fp.helloErr = &wire.FrameError{Err: ipc.ErrVersion}
		fp.sayHello()
		fp.wantSignal(t, syscall.SIGKILL, time.Time{})
		ws := r.backoff()
		if ws.Exit.Kind != ExitProtocol || !ws.Exit.BeforeHello || ws.Exit.Signal != syscall.SIGKILL || !errors.Is(ws.Exit.Err, ipc.ErrVersion) {
			t.Errorf("exit %+v", ws.Exit)
		}
		r.finish()
	})
}

// TestExitReasonString: the String forms Status and the logs show.
func TestExitReasonString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		r    ExitReason
		want string
	}{
		{ExitReason{}, ""},
		{exit3, "exited with status 3"},
		{beforeHello(exit3), "exited with status 3 before it was ready"},
		{ExitReason{Kind: ExitSignal, Signal: syscall.SIGSEGV, CoreDumped: true}, "killed by signal SIGSEGV (core dumped)"},
		{stopped(sigkill), "stopped: killed by signal SIGKILL"},
		{stopped(beforeHello(sigterm)), "stopped: killed by signal SIGTERM before it was ready"},
		{ExitReason{Kind: ExitHung, Misses: 3, Signal: syscall.SIGKILL}, "hung: 3 pings unanswered"},
		{ExitReason{Kind: ExitNoHello, Timeout: 300 * time.Millisecond, Signal: syscall.SIGKILL}, "no hello within 300ms: killed"},
		{ExitReason{Kind: ExitChannelClosed, Code: 0}, "channel closed: exited with status 0"},
		{ExitReason{Kind: ExitReplaced}, "replaced by rolling restart"},
		{ExitReason{Kind: ExitSpawnFailed, Err: errors.New("boom")}, "spawn failed: boom"},
		{ExitReason{Kind: ExitProtocol, Err: errors.New("bad magic")}, "protocol violation: bad magic"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r, got, tc.want)
		}
		if b, _ := tc.r.MarshalText(); string(b) != tc.want {
			t.Errorf("%+v: MarshalText %q, want %q", tc.r, b, tc.want)
		}
	}
}
