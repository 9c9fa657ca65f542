//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc"
)

// exitGrace is how long a worker whose channel closed has to exit on
// its own before it is stopped.
const exitGrace = 500 * time.Millisecond

// pollAbove: supervisors of more workers than this wait for their
// channels through the runtime poller (ipc.ConnConfig.Poll).
const pollAbove = 16

// Sentinel errors.
var (
	// ErrCrashLoop is returned by Run when workers restarted more than
	// Config.MaxRestarts times within Config.RestartWindow.
	ErrCrashLoop = errors.New("supervisor: crash loop")

	// ErrNoWorker is returned by Call when no worker is ready before
	// the context ends.
	ErrNoWorker = errors.New("supervisor: no ready worker")

	// ErrNotRunning is returned by calls made after Run returned, and
	// by calls still waiting for a worker when Run begins to stop.
	// (Calls made before Run wait for a worker like any other.)
	ErrNotRunning = errors.New("supervisor: not running")

	// ErrAlreadyRun is returned by a second call to Run.
	ErrAlreadyRun = errors.New("supervisor: Run called twice")
)

// Supervisor keeps Config.Workers worker processes running, each
// connected by its own socketpair, and routes requests to them.
type Supervisor struct {
	cfg   Config
	log   hclog.Logger
	slots []*slot

	spawnReqs chan spawnRequest
	sweeper   *sweeper

	reloadMu      sync.Mutex
	reloadPending []chan error  // Reload callers waiting for a run to start
	reloadClosed  bool          // the reload loop has ended
	reloadKick    chan struct{} // a request is pending

	killCtx   context.Context // cancelled by Kill
	kill      context.CancelFunc
	ran       atomic.Bool
	stopped   atomic.Bool   // Run has returned
	stopping  chan struct{} // closed when Run's context ends
	startedAt atomic.Pointer[time.Time]

	tickMu sync.Mutex
	tickCh chan struct{} // closed and replaced at every health tick

	rr      atomic.Uint64
	readyMu sync.Mutex
	readyCh chan struct{} // closed and replaced whenever a worker becomes ready
	allUp   chan struct{} // closed once every worker has been ready once
	upCount atomic.Int32

	limiterMu sync.Mutex
	restartAt []time.Time

	spawnLogMu         sync.Mutex
	spawnLogAt         time.Time // when a spawn failure was last logged
	spawnLogSuppressed int       // failures not logged since

	stats stats
}

// New returns a Supervisor for cfg. It starts nothing until Run.
//
// Workers inherit exactly fds 0–2 and the channel on fd 3, whatever the
// program holds: before each fork, Run marks every other descriptor of
// the process from 3 up close-on-exec (see the package doc), so one the
// program inherited or opened without close-on-exec stays out of
// workers and their children (and, from then on, out of any child the
// program starts without naming it in exec.Cmd.ExtraFiles).
func New(cfg Config) (*Supervisor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Supervisor{
		cfg:        cfg,
		log:        cfg.Logger,
		spawnReqs:  make(chan spawnRequest),
		sweeper:    newSweeper(cfg.Logger),
		reloadKick: make(chan struct{}, 1),
		stopping:   make(chan struct{}),
		readyCh:    make(chan struct{}),
		tickCh:     make(chan struct{}),
		allUp:      make(chan struct{}),
	}
	s.killCtx, s.kill = context.WithCancel(context.Background())
	for i := range cfg.Workers {
		s.slots = append(s.slots, &slot{id: i + 1, state: StateStarting, replace: make(chan *handover)})
	}
	return s, nil
}

// Run starts the workers and supervises them until ctx ends, then stops
// them all gracefully (shutdown message, SIGTERM, SIGKILL; see
// Config.StopTimeout). It returns only once every worker is reaped and
// every goroutine it started has ended: nil after a stop through ctx,
// however many workers failed or were restarted before it, and an
// error wrapping [ErrCrashLoop] when the restart limit was hit. Run may
// be called once.
//
// While it runs, the process is a child subreaper and Run kills and
// reaps the orphans it adopts (see "Orphans" in the package doc).
func (s *Supervisor) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return ErrAlreadyRun
	}
	startedAt := s.cfg.now()
	s.startedAt.Store(&startedAt)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	spawnerDone := make(chan struct{})
	go s.spawnLoop(spawnerDone)

	// Become a child subreaper, so a worker's descendant that leaves
	// its tree is re-parented to us rather than to init.
	sweepStop, sweepDone := make(chan struct{}), make(chan struct{})
	adopting := false
	if err := orphanSupport(); err != nil {
		s.log.Warn("cannot adopt workers' orphaned descendants on this system", "error", err)
	} else if err := acquireSubreaper(); err != nil {
		s.log.Warn("cannot become a child subreaper", "error", err)
	} else {
		adopting = true
		go func() { defer close(sweepDone); s.sweeper.run(sweepStop) }()
	}

	s.log.Info("starting", "workers", s.cfg.Workers, "executable", s.cfg.Executable)
	var wg sync.WaitGroup
	for _, sl := range s.slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runSlot(ctx, cancel, sl)
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); s.reloadLoop(ctx) }()
	go func() { defer wg.Done(); s.healthLoop(ctx) }()
	wg.Add(1)
	go func() {
		// No worker becomes ready once ctx ends: release the callers
		// waiting for one.
		defer wg.Done()
		<-ctx.Done()
		close(s.stopping)
	}()
	wg.Wait()
	s.stopped.Store(true)
	close(s.spawnReqs)
	<-spawnerDone
	if adopting {
		// Sweep the last orphans while they still come to us (their
		// children too), stop adopting (if no other Run goes on), and
		// sweep what came meanwhile: no orphan is left alive.
		close(sweepStop)
		<-sweepDone
		releaseSubreaper()
		s.sweeper.drain()
	}

	if err := context.Cause(ctx); errors.Is(err, ErrCrashLoop) {
		return err
	}
	s.log.Info("stopped")
	return nil
}

// spawnLoop starts every worker from one goroutine locked to its OS
// thread for the supervisor's whole life. Linux sends a child its
// parent-death signal when the *thread* that forked it exits, and the Go
// runtime retires threads as it pleases; starting children from an
// ordinary goroutine would let them be killed at random. The goroutine
// returns (and its thread exits) only after Run has reaped every worker.
func (s *Supervisor) spawnLoop(done chan<- struct{}) {
	defer close(done)
	runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
	useRange := true
	for req := range s.spawnReqs {
		// A worker inherits exactly 0–2 and fd 3, whatever else the
		// program holds without close-on-exec.
		if err := markInheritedCloexec(&useRange); err != nil {
			req.err <- &ownSpawnError{fmt.Errorf("marking descriptors close-on-exec: %w", err)}
			continue
		}
		req.err <- req.cmd.Start()
	}
}

// Kill makes a running stop skip the graceful steps: workers still
// running get SIGKILL at once. Run still reaps them before returning.
// It is idempotent; the CLI calls it on a second SIGINT.
func (s *Supervisor) Kill() {
	s.kill()
}

// Ready returns a channel closed once every worker has said hello at
// least once.
func (s *Supervisor) Ready() <-chan struct{} { return s.allUp }

// exit is how one incarnation of a worker ended.
type exit struct {
	pid      int           // the process that ended; 0 if none started
	reason   string        // for logs and status
	failed   bool          // counts as a failure for the restart policy
	stopped  bool          // ended because the supervisor stopped it
	ownSpawn error         // not started: the supervisor's own shortage
	uptime   time.Duration // time it spent ready
}

// runSlot keeps one worker slot filled until ctx ends, restarting under
// the policy with backoff.
func (s *Supervisor) runSlot(ctx context.Context, cancel context.CancelCauseFunc, sl *slot) {
	backoff := s.cfg.BackoffMin
	for {
		e := s.incarnate(ctx, sl)
		if e.stopped || ctx.Err() != nil {
			sl.set(func(sl *slot) { sl.state, sl.pid, sl.nextStart = StateStopped, 0, time.Time{} })
			return
		}
		if e.ownSpawn != nil {
			// The supervisor could not start the worker: neither a
			// failure of the worker nor a restart of it. Try again.
			if !s.retrySpawn(ctx, sl, e.ownSpawn) {
				sl.set(func(sl *slot) { sl.state, sl.nextStart = StateStopped, time.Time{} })
				return
			}
			continue
		}
		if e.failed {
			s.stats.failures.Add(1)
		}
		restart := s.cfg.Restart == RestartAlways || s.cfg.Restart == RestartOnFailure && e.failed
		if !restart {
			s.log.Info("worker ended; not restarting", "worker", sl.id, "pid", e.pid, "reason", e.reason, "policy", s.cfg.Restart.String())
			sl.set(func(sl *slot) { sl.state, sl.pid = StateExited, 0 })
			<-ctx.Done()
			sl.set(func(sl *slot) { sl.state = StateStopped })
			return
		}
		if s.crashLoop() {
			err := fmt.Errorf("%w: more than %d restarts within %v", ErrCrashLoop, s.cfg.MaxRestarts, s.cfg.RestartWindow)
			s.log.Error("giving up: workers keep failing", "error", err, "worker", sl.id, "pid", e.pid, "last_exit", e.reason)
			sl.set(func(sl *slot) { sl.state, sl.pid = StateFailed, 0 })
			cancel(err)
			return
		}
		if e.uptime >= s.cfg.HealthyAfter {
			backoff = s.cfg.BackoffMin
		}
		delay := backoff/2 + rand.N(backoff/2+1) // jitter: 50–100 % of the step
		backoff = min(2*backoff, s.cfg.BackoffMax)
		next := s.cfg.now().Add(delay)
		sl.set(func(sl *slot) { sl.state, sl.pid, sl.nextStart = StateBackoff, 0, next })
		s.log.Info("backing off", "worker", sl.id, "pid", e.pid, "delay", delay, "reason", e.reason)
		select {
		case <-ctx.Done():
			sl.set(func(sl *slot) { sl.state = StateStopped })
			return
		case <-s.cfg.after(delay):
		}
		sl.set(func(sl *slot) { sl.restarts++; sl.nextStart = time.Time{} })
		s.stats.restarts.Add(1)
	}
}

// spawnRetryMax caps the delay between attempts to start a worker that
// the supervisor's own shortage prevented (or BackoffMax, if lower).
const spawnRetryMax = time.Second

// spawnLogEvery bounds the log lines about such attempts: one per
// failed attempt at most, and at most one per spawnLogEvery for the
// whole supervisor, which counts those it left out.
const spawnLogEvery = 10 * time.Second

// retrySpawn waits before the next attempt to start sl's worker after
// err, a shortage of the supervisor's own (descriptors, memory,
// processes), with jittered exponential backoff from BackoffMin up to
// spawnRetryMax. It returns false if ctx ended first.
func (s *Supervisor) retrySpawn(ctx context.Context, sl *slot, err error) bool {
	s.stats.spawnFailures.Add(1)
	sl.spawnFailures++
	step := max(sl.spawnRetry, s.cfg.BackoffMin)
	sl.spawnRetry = min(2*step, max(min(s.cfg.BackoffMax, spawnRetryMax), s.cfg.BackoffMin))
	delay := step/2 + rand.N(step/2+1)
	s.logSpawnFailure(sl.id, err, delay)
	next := s.cfg.now().Add(delay)
	sl.set(func(sl *slot) { sl.state, sl.pid, sl.nextStart = StateBackoff, 0, next })
	select {
	case <-ctx.Done():
		return false
	case <-s.cfg.after(delay):
		sl.set(func(sl *slot) { sl.nextStart = time.Time{} })
		return true
	}
}

// logSpawnFailure logs a shortage that kept the supervisor from starting
// worker id, unless another was logged within spawnLogEvery.
func (s *Supervisor) logSpawnFailure(id int, err error, retry time.Duration) {
	s.spawnLogMu.Lock()
	now := s.cfg.now()
	if !s.spawnLogAt.IsZero() && now.Sub(s.spawnLogAt) < spawnLogEvery {
		s.spawnLogSuppressed++
		s.spawnLogMu.Unlock()
		return
	}
	left := s.spawnLogSuppressed
	s.spawnLogAt, s.spawnLogSuppressed = now, 0
	s.spawnLogMu.Unlock()
	s.log.Error("cannot start a worker: the supervisor is short of resources; retrying",
		"worker", id, "error", err, "retry_in", retry, "not_logged_since_last", left)
}

// crashLoop records a restart and reports whether the limit is passed.
func (s *Supervisor) crashLoop() bool {
	if s.cfg.MaxRestarts <= 0 {
		return false
	}
	s.limiterMu.Lock()
	defer s.limiterMu.Unlock()
	now := s.cfg.now()
	keep := s.restartAt[:0]
	for _, t := range s.restartAt {
		if now.Sub(t) < s.cfg.RestartWindow {
			keep = append(keep, t)
		}
	}
	s.restartAt = append(keep, now)
	return len(s.restartAt) > s.cfg.MaxRestarts
}

// incarnate runs one worker process in sl from spawn to reap.
func (s *Supervisor) incarnate(ctx context.Context, sl *slot) exit {
	sl.set(func(sl *slot) { sl.state = StateStarting })
	p, err := s.start(ctx, sl, false)
	if err != nil {
		var own *ownSpawnError
		var early *exitedEarly
		switch {
		case ctx.Err() != nil:
			return exit{reason: "stopped while starting", stopped: true}
		case errors.As(err, &own):
			return exit{reason: err.Error(), ownSpawn: err}
		case errors.As(err, &early) && stopSignalled(early.state) &&
			s.awaitStop(ctx, s.log.With("worker", sl.id, "pid", early.pid), early.Error()):
			reason := "stopped: " + describeExit(early.state) + " before its hello"
			sl.set(func(sl *slot) { sl.lastExit = reason })
			return exit{pid: early.pid, reason: reason, stopped: true}
		}
		s.log.Error("worker failed to start", "worker", sl.id, "error", err)
		sl.set(func(sl *slot) { sl.lastExit = err.Error() })
		return exit{reason: err.Error(), failed: true}
	}
	if sl.spawnFailures > 0 {
		p.log.Info("worker started after the supervisor's own shortage", "failed_attempts", sl.spawnFailures)
		sl.spawnFailures, sl.spawnRetry = 0, 0
	}
	e := s.supervise(ctx, sl, p)
	sl.set(func(sl *slot) { sl.lastExit = e.reason })
	return e
}

// exitedEarly reports a worker that ended before its hello.
type exitedEarly struct {
	pid   int
	state *os.ProcessState
	msg   string
}

func (e *exitedEarly) Error() string { return e.msg }

// stopSignalled reports whether st says a stop signal ended the
// process: killed by SIGTERM or SIGINT, or exited with 128 plus one of
// them, as shells and many programs do on those signals.
func stopSignalled(st *os.ProcessState) bool {
	if st == nil {
		return false
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return false
	}
	switch {
	case ws.Signaled():
		return ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT
	case ws.Exited():
		return ws.ExitStatus() == 128+int(syscall.SIGTERM) || ws.ExitStatus() == 128+int(syscall.SIGINT)
	}
	return false
}

// awaitStop decides whether a worker ended by a stop signal that the
// supervisor did not send went down with the supervisor's own stop:
// systemd (KillMode=control-group), a terminal's Ctrl-C and a kill of
// the process group signal every process at once, and the worker may
// die before ctx ends. It reports true if ctx ends within the grace
// period (stopSignalGrace); false means someone stopped the worker
// alone, which is then a failure like any other.
func (s *Supervisor) awaitStop(ctx context.Context, log hclog.Logger, reason string) bool {
	if ctx.Err() != nil {
		return true
	}
	log.Debug("worker ended by a stop signal; waiting to see whether the supervisor stops too", "reason", reason, "grace", s.cfg.stopGrace)
	t := time.NewTimer(s.cfg.stopGrace)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}

// start spawns a worker and waits for its hello. On error the process,
// if any, is killed and reaped.
func (s *Supervisor) start(ctx context.Context, sl *slot, replacing bool) (*process, error) {
	p, end, err := s.spawn(sl.id)
	if err != nil {
		return nil, err
	}
	if !replacing {
		sl.set(func(sl *slot) { sl.pid = p.pid; sl.since = s.cfg.now() })
	}
	p.log.Info("starting")
	hctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	conn, err := ipc.NewConn(hctx, end, ipc.ConnConfig{
		Name:    "supervisor",
		Handler: s.cfg.Handler,
		Logger:  p.log,
		// Past a few workers, a thread blocked in read(2) per channel
		// costs more in wake-ups than it saves in latency.
		Poll: len(s.slots) > pollAbove,
	})
	if err != nil {
		p.signalGroup(syscall.SIGKILL)
		<-p.exited
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case hctx.Err() != nil:
			return nil, fmt.Errorf("worker %d (pid %d) sent no hello within %v: killed", sl.id, p.pid, s.cfg.StartTimeout)
		default:
			return nil, &exitedEarly{pid: p.pid, state: p.state, msg: fmt.Sprintf("worker %d (pid %d) %s before its hello", sl.id, p.pid, p.exitReason())}
		}
	}
	p.conn = conn
	return p, nil
}

// supervise health-checks a ready worker until it ends, is declared
// hung, or ctx ends (then it is stopped gracefully). The exit names the
// process in the slot at the end, a rolling restart's replacement if
// there was one.
func (s *Supervisor) supervise(ctx context.Context, sl *slot, p *process) (e exit) {
	defer func() { e.pid = p.pid }()
	ready := s.cfg.now()
	uptime := func() time.Duration { return s.cfg.now().Sub(ready) }
	p.log.Info("ready", "startup", ready.Sub(p.started).Round(time.Microsecond), "restarts", sl.status().Restarts)
	sl.set(func(sl *slot) { sl.state, sl.since = StateReady, ready })
	sl.cur.Store(p)
	s.notifyReady(sl)
	defer sl.cur.Store(nil)

	// An exit once the stop began, or by a stop signal that came with
	// it, is part of the stop, whatever its status.
	partOfStop := func() bool {
		return ctx.Err() != nil || p.endedOnItsOwn() && stopSignalled(p.state) && s.awaitStop(ctx, p.log, p.exitReason())
	}
	ended := func() exit {
		sl.cur.Store(nil)
		p.conn.Close()
		reason := p.exitReason()
		if partOfStop() {
			p.log.Info("worker exited as the supervisor stopped", "reason", reason)
			return exit{reason: "stopped: " + reason, stopped: true, uptime: uptime()}
		}
		if p.failed() {
			p.log.Warn("worker exited", "reason", reason)
		} else {
			p.log.Info("worker exited", "reason", reason)
		}
		return exit{reason: reason, failed: p.failed(), uptime: uptime()}
	}
	pr := newProber(s, p.probes, p.conn)
	tick := s.nextTick()
	misses := 0
	for {
		select {
		case <-p.exited:
			return ended()
		case <-p.conn.Done():
			// Usually the worker is exiting and closed its end on the
			// way out. If it lives on, it cannot be reached any more,
			// so it is stopped.
			sl.cur.Store(nil)
			t := time.NewTimer(exitGrace)
			select {
			case <-p.exited:
				t.Stop()
				return ended()
			case <-t.C:
			}
			p.log.Warn("channel closed while the worker runs; stopping it", "error", p.conn.Err())
			s.stop(p)
			if partOfStop() {
				return exit{reason: "stopped: " + p.exitReason(), stopped: true, uptime: uptime()}
			}
			failed := p.failed() || !p.endedOnItsOwn()
			return exit{reason: "channel closed: " + p.exitReason(), failed: failed, uptime: uptime()}
		case <-ctx.Done():
			sl.cur.Store(nil)
			sl.set(func(sl *slot) { sl.state = StateStopping })
			s.stop(p)
			return exit{reason: "stopped: " + p.exitReason(), stopped: true, uptime: uptime()}
		case h := <-sl.replace:
			old := p
			p, ready, misses = h.p, h.ready, 0
			pr = newProber(s, p.probes, p.conn)
			sl.cur.Store(p)
			sl.set(func(sl *slot) {
				sl.pid, sl.since, sl.lastExit = p.pid, ready, "replaced by rolling restart"
			})
			p.log.Info("ready", "startup", ready.Sub(p.started).Round(time.Microsecond), "replacing_pid", old.pid)
			s.stop(old)
			close(h.done)
		case <-tick:
			tick = s.nextTick()
			switch pr.check(ctx) {
			case pending:
				continue
			case answered:
				misses = 0
				continue
			}
			if ctx.Err() != nil {
				continue
			}
			misses++
			p.log.Warn("ping missed", "misses", misses, "timeout", s.cfg.PingTimeout)
			if misses >= s.cfg.PingMisses {
				reason := fmt.Sprintf("hung: %d pings unanswered", misses)
				p.log.Error("worker hung; killing it", "reason", reason)
				sl.cur.Store(nil)
				sl.set(func(sl *slot) { sl.state = StateHung })
				p.signalGroup(syscall.SIGKILL)
				<-p.exited
				p.conn.Close()
				return exit{reason: reason, failed: true, uptime: uptime()}
			}
		}
	}
}

// stop ends p gracefully: the shutdown message, then SIGTERM to its
// group at half of StopTimeout, then SIGKILL at the end of it (or at
// once after Kill). It returns once p is reaped.
func (s *Supervisor) stop(p *process) {
	half := s.cfg.StopTimeout / 2
	termAt := time.Now().Add(half)
	p.log.Info("stopping", "timeout", s.cfg.StopTimeout)
	defer func() { p.log.Info("stopped", "reason", p.exitReason()) }()
	if p.conn != nil {
		sctx, cancel := context.WithTimeout(s.killCtx, half)
		if _, err := p.conn.Call(sctx, ipc.TypeShutdown, nil, nil); err != nil {
			p.log.Debug("shutdown request failed", "error", err)
		}
		cancel()
		p.conn.Close() // EOF tells the worker too
	}
	t := time.NewTimer(time.Until(termAt))
	defer t.Stop()
	select {
	case <-p.exited:
		return
	case <-t.C:
		p.log.Warn("worker did not stop; sending SIGTERM", "timeout", half)
		p.signalGroup(syscall.SIGTERM)
	case <-s.killCtx.Done():
	}
	t.Reset(half)
	select {
	case <-p.exited:
		return
	case <-t.C:
		p.log.Warn("worker ignored SIGTERM; sending SIGKILL", "timeout", half)
	case <-s.killCtx.Done():
	}
	p.signalGroup(syscall.SIGKILL)
	<-p.exited
}

func (s *Supervisor) notifyReady(sl *slot) {
	s.readyMu.Lock()
	close(s.readyCh)
	s.readyCh = make(chan struct{})
	s.readyMu.Unlock()
	if sl.wasReady {
		return
	}
	sl.wasReady = true
	if int(s.upCount.Add(1)) == len(s.slots) {
		s.log.Info("all workers ready", "workers", len(s.slots), "elapsed", s.cfg.now().Sub(*s.startedAt.Load()).Round(time.Microsecond))
		close(s.allUp)
	}
}

// pick returns a ready worker, round robin, or nil. It passes over
// workers in skip and those whose channel has closed but whose slot has
// not noticed yet.
func (s *Supervisor) pick(skip []*process) *process {
	n := uint64(len(s.slots))
	start := s.rr.Add(1)
	for i := range n {
		if p := s.slots[(start+i)%n].cur.Load(); p != nil && p.conn.Err() == nil && !slices.Contains(skip, p) {
			return p
		}
	}
	return nil
}

// Call sends a request to one ready worker, chosen round robin, and
// returns its reply. When no worker is ready, Call waits for one until
// ctx ends. Ping, echo and status requests that fail because their
// worker went away (a restart, a rolling restart) are retried on
// another worker, so callers do not see restarts.
func (s *Supervisor) Call(ctx context.Context, t ipc.Type, payload, dst []byte) ([]byte, error) {
	retry := t == ipc.TypePing || t == ipc.TypeEcho || t == ipc.TypeStatus
	var failed []*process // workers that went away under this call
	for attempt := 0; ; attempt++ {
		if s.stopped.Load() {
			return nil, ErrNotRunning
		}
		p := s.pick(failed)
		if p == nil {
			s.readyMu.Lock()
			changed := s.readyCh
			s.readyMu.Unlock()
			if p = s.pick(failed); p == nil { // none became ready meanwhile
				select {
				case <-changed:
					continue
				case <-s.stopping:
					return nil, ErrNotRunning
				case <-ctx.Done():
					return nil, fmt.Errorf("%w: %w", ErrNoWorker, ctx.Err())
				}
			}
		}
		reply, err := p.conn.Call(ctx, t, payload, dst)
		if err == nil || !retry || ctx.Err() != nil || attempt > 2*len(s.slots) {
			return reply, err
		}
		var re *ipc.RemoteError
		if !errors.Is(err, ipc.ErrClosed) && !(errors.As(err, &re) && re.Code == ipc.CodeShutdown) {
			return reply, err
		}
		failed = append(failed, p)
	}
}

// Echo sends payload to a ready worker and returns its echo, read into
// dst when it is large enough.
func (s *Supervisor) Echo(ctx context.Context, payload, dst []byte) ([]byte, error) {
	return s.Call(ctx, ipc.TypeEcho, payload, dst)
}

// Status returns a snapshot of the supervisor and every worker.
func (s *Supervisor) Status() Status {
	st := Status{PID: os.Getpid()}
	if t := s.startedAt.Load(); t != nil {
		st.StartedAt = *t
		st.UptimeSeconds = s.cfg.now().Sub(*t).Seconds()
	}
	for _, sl := range s.slots {
		st.Workers = append(st.Workers, sl.status())
	}
	return st
}

// Stats returns the health-check and failure counters.
func (s *Supervisor) Stats() Stats { return s.stats.snapshot() }
