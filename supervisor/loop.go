package supervisor

// The loop: one goroutine owns all supervision state.
//
// Goroutines and what each owns:
//
//   - The loop (Supervisor.loop, run on Run's goroutine) owns every
//     slot and every proc record: which process is in which slot, its
//     phase (spawning, hello, verify, ready, closing, killed, stopping),
//     every deadline (start timeout, ping verdicts, exit grace, stop
//     escalation, backoff, spawn retries, the stop-signal grace), the
//     restart counters and backoff steps, the crash-loop window, the
//     rolling restart in progress and the Reload calls queued for the
//     next one, the spawn-failure log limiter, readiness (Ready) and
//     the stop order. Nothing else reads or writes those fields. It
//     reads the time only through Config's clock (now, at), arming
//     one timer for its earliest deadline.
//   - One tender per process (Supervisor.tend) runs the process's
//     blocking steps, in order: spawner.start, the hello, a rolling
//     restart's verification ping, then the operations the loop queues
//     on proc.ops (a health probe's write, the shutdown request, Close),
//     until the channel's Done. It owns the channel's blocking calls.
//   - The spawner's goroutines (for the real one: the spawn thread, each
//     process's wait goroutine and two output relays, the orphan
//     sweeper; see process.go and reap_linux.go) own the OS side: fork,
//     exec, reaping, signalling, adopted orphans.
//   - Each channel's reader goroutine (package ipc) records health
//     pongs into the process's prober (atomics) without waking anyone.
//   - Callers: Call and Echo read the routing table (Supervisor.routes);
//     Status and Stats read the published snapshot (Supervisor.snap);
//     Reload sends a request on Supervisor.reqs; Kill closes killCh.
//
// Hand-offs, all one way:
//
//   - tender → loop: evSpawned, evSpawnFailed, evHello, evVerified,
//     evProbed, evClosed on Supervisor.events; the spawner's wait
//     goroutine → loop: evExited (through the exited callback). Every
//     sender selects on loopDone too (Supervisor.send), so none blocks
//     on a loop that has returned; the loop returns only once every
//     process it started is reaped, and Run then waits for the tenders.
//   - loop → tender: proc.ops, buffered for the three operations that
//     can be outstanding at once (one probe, one stop, one close), so
//     the loop never blocks on a busy tender; and the contexts it
//     cancels (proc.ctx for the process's life, helloCtx at the start
//     timeout, verifyCtx at the verification's PingTimeout, the stop
//     context at SIGTERM time or Kill), which end a blocked step.
//   - loop → spawner: start (from the tender), handle.signal (from the
//     loop: SIGKILL for a hung worker or one without hello, SIGTERM and
//     SIGKILL in a stop). The real spawner tells the orphan sweeper of
//     each worker it starts and reaps.
//   - loop → callers: the routing table is replaced (atomic pointer)
//     whenever a worker becomes routable or stops being so, and the old
//     table's changed channel is closed, waking callers that wait for a
//     worker; the status snapshot likewise after every loop iteration
//     that changed something, the timer for the next deadline armed
//     before it (tests on the fake clock advance it only after seeing
//     a snapshot), and also before a worker is routed (route), so that
//     a caller it served never reads it as not ready yet. Reload's
//     answer goes back on its own buffered channel.
//   - tender and reader → loop: the prober's atomics (when the probe
//     was sent, written by the tender; the answered id and round trip,
//     by the reader), read by the loop at each health tick.
//   - tender and reader → Stats: stats, an atomic count of the pings
//     sent (by the tenders) and the round-trip histogram under its own
//     lock (by the readers); the loop's counters reach Stats through
//     the snapshot.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// exitGrace is how long a worker whose channel closed has to exit on
// its own before it is stopped.
const exitGrace = 500 * time.Millisecond

// spawnRetryMax caps the delay between attempts to start a worker that
// the supervisor's own shortage prevented (or BackoffMax, if lower).
const spawnRetryMax = time.Second

// spawnLogEvery bounds the log lines about such attempts: one per
// failed attempt at most, and at most one per spawnLogEvery for the
// whole supervisor, which counts those it left out.
const spawnLogEvery = 10 * time.Second

// procRole is what a process is to its slot.
type procRole uint8

const (
	roleCur         procRole = iota // the slot's process
	roleReplacement                 // a rolling restart's new process, not yet handed over
	roleReplaced                    // a process a rolling restart replaced, being stopped
)

// phase is where a process is in its life, as the loop sees it.
type phase uint8

const (
	phSpawning phase = iota // the tender is starting it
	phHello                 // started; waiting for its hello (deadline: StartTimeout)
	phVerify                // a replacement said hello; waiting for its pong (deadline: PingTimeout)
	phReady                 // routed (if the slot's) and health-checked
	phClosing               // its channel closed; waiting for it to exit (deadline: exitGrace)
	phKilled                // sent SIGKILL (hung, no hello, stop while starting); waiting for the reaping
	phStopping              // being stopped (deadlines: SIGTERM, then SIGKILL)
)

// proc is the loop's record of one worker process, from the decision
// to start it to its reaping. The fields after the first group are the
// loop's only; the first group is set before the tender starts and
// never changed.
type proc struct {
	sl        *slot
	ops       chan op            // loop → tender
	ctx       context.Context    // the process's life; cancelled when it is reaped
	cancel    context.CancelFunc //
	helloCtx  context.Context    // ends the wait for the hello
	endHello  context.CancelFunc //
	verifyCtx context.Context    // ends a replacement's verification ping; nil for others
	endVerify context.CancelFunc //

	role      procRole
	phase     phase
	deadline  time.Time // of the phase's next step; zero: none
	h         handle    // nil until spawned
	pid       int
	log       hclog.Logger
	started   time.Time  // when it was spawned
	conn      channel    // once it said hello
	connDone  bool       // the channel closed (the tender has ended)
	closeSent bool       // opClose queued
	readyAt   time.Time  // when it became ready
	everReady bool       //
	probe     *prober    // while ready
	misses    int        // pings missed in a row
	verdict   ExitReason // why the supervisor ends it; Kind ExitNone if it does not
	signalled bool       // a signal of ours reached it before its reaping
	stopStep  int        // 0: not stopping; 1: shutdown asked; 2: SIGTERM sent; 3: SIGKILL sent
	stopEnd   context.CancelFunc
	exited    bool // reaped
	exitEarly bool // reaped before the loop heard it was spawned
	dropped   bool // a replacement stopped because its slot's worker had ended

	// ReadyNotify's watchdog: when it runs out (zero: not armed) and
	// its interval (WATCHDOG_USEC= from the worker may change it).
	wdAt    time.Time
	wdEvery time.Duration
	wdOff   bool // the worker turned it off (WATCHDOG_USEC=0)
	// HealthCmd: when the next runs (zero: none due), whether one runs,
	// and the misses in a row.
	hcAt         time.Time
	hcRunning    bool
	hcMisses     int
	reloading    bool      // sent RELOADING=1, no READY=1 since (deadline: StartTimeout)
	selfStopping bool      // sent STOPPING=1 (deadline: StopTimeout)
	stopBegan    time.Time // when stopProc began its stop
}

// op is an operation the loop asks a process's tender to run.
type op struct {
	kind opKind
	ctx  context.Context // opStop: bounds the shutdown request
	log  hclog.Logger    // opStop: the process's
	pr   *prober         // opProbe: the process's prober
}

type opKind uint8

const (
	opProbe opKind = iota // write a health probe
	opStop                // send the shutdown request, then close the channel
	opClose               // close the channel
)

// Events sent to the loop.
type (
	evSpawned struct {
		p *proc
		h handle
	}
	evSpawnFailed struct {
		p   *proc
		err error
	}
	evHello struct {
		p   *proc
		c   channel
		err error
	}
	evVerified struct {
		p   *proc
		err error
	}
	evProbed struct {
		p   *proc
		id  uint64
		err error
	}
	evClosed struct{ p *proc } // the channel closed; the tender has ended
	evExited struct{ p *proc } // the process is reaped, its output drained
	evNotice struct {
		p *proc
		n notice
	}
	evHealth struct {
		p   *proc
		err error // nil: the health command passed
	}
)

// reloadReq asks the loop for a rolling restart; the answer goes to res
// (buffered).
type reloadReq struct{ res chan error }

// pingReq is closed by the loop (Ping).
type pingReq chan struct{}

// signalReq asks the loop to signal every worker (Signal); the count
// signalled goes to res (buffered).
type signalReq struct {
	sig syscall.Signal
	res chan int
}

// ask is a caller's request to a loop (a Supervisor's or a Group's):
// it hands req to the loop through reqs, unless the loop has returned
// (loopDone: ErrNotRunning), and waits for the answer on res, the
// request's own channel, which the loop sends to or closes. ctx ends
// either wait. Whatever the loop answers after ctx has ended goes to a
// buffered channel (or a closed one) and blocks nothing.
func ask[T any](ctx context.Context, reqs chan<- any, loopDone <-chan struct{}, req any, res <-chan T) (T, error) {
	var zero T
	select {
	case reqs <- req:
	case <-loopDone:
		return zero, ErrNotRunning
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	select {
	case v := <-res:
		return v, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// send hands ev to the loop, or drops it if the loop has returned.
func (s *Supervisor) send(ev any) bool {
	select {
	case s.events <- ev:
		return true
	case <-s.loopDone:
		return false
	}
}

// loop supervises until ctx ends (or a crash loop), then stops every
// worker, and returns once every process it started is reaped.
func (s *Supervisor) loop(ctx context.Context) {
	s.nextTick = s.now().Add(s.cfg.PingInterval)
	for _, sl := range s.slots {
		s.startSlot(sl)
	}
	done, kill := ctx.Done(), s.killCh
	var wake <-chan time.Time
	var armed time.Time
	for {
		s.fireDue()
		if s.stopping && len(s.procs) == 0 {
			break
		}
		if next := s.earliest(); !next.Equal(armed) {
			armed, wake = next, nil
			if !next.IsZero() {
				wake = s.cfg.at(next)
			}
		}
		s.publish()
		select {
		case ev := <-s.events:
			s.handle(ev)
		case r := <-s.reqs:
			switch r := r.(type) {
			case reloadReq:
				s.reload(r)
			case pingReq:
				close(r)
			case signalReq:
				r.res <- s.signalAll(r.sig)
			}
		case <-done:
			done = nil
			s.beginStop()
		case <-kill:
			kill = nil
			s.killAll()
		case <-wake:
			armed, wake = time.Time{}, nil
		}
	}
	s.publish()
}

func (s *Supervisor) now() time.Time { return s.cfg.now() }

// handle applies one event.
func (s *Supervisor) handle(ev any) {
	switch ev := ev.(type) {
	case evSpawned:
		s.spawned(ev.p, ev.h)
	case evSpawnFailed:
		s.spawnFailed(ev.p, ev.err)
	case evHello:
		s.helloed(ev.p, ev.c, ev.err)
	case evVerified:
		s.verified(ev.p, ev.err)
	case evProbed:
		s.probed(ev.p, ev.id, ev.err)
	case evClosed:
		s.closed(ev.p)
	case evNotice:
		s.noticed(ev.p, ev.n)
	case evHealth:
		s.healthChecked(ev.p, ev.err)
	case evExited:
		if ev.p.h == nil {
			ev.p.exitEarly = true // handled once spawned
			return
		}
		s.exited(ev.p)
	}
}

// fireDue runs every step whose deadline has come.
func (s *Supervisor) fireDue() {
	now := s.now()
	for fired := true; fired; {
		fired = false
		if !s.stopping && !now.Before(s.nextTick) {
			s.nextTick = s.nextTick.Add(s.cfg.PingInterval)
			if !s.nextTick.After(now) {
				s.nextTick = now.Add(s.cfg.PingInterval)
			}
			s.tick(now)
			fired = true
		}
		for _, sl := range s.slots {
			if g := sl.grace; g != nil && !now.Before(g.until) {
				sl.grace = nil
				s.slotEnded(sl, g.p.pid, g.reason, true, g.uptime)
				fired = true
			}
			if !sl.nextStart.IsZero() && !now.Before(sl.nextStart) {
				sl.nextStart = time.Time{}
				if !sl.retrying {
					sl.restarts++
					s.counts.restarts++
				}
				sl.retrying = false
				s.startSlot(sl)
				fired = true
			}
		}
		for p := range s.procs {
			if !p.deadline.IsZero() && !now.Before(p.deadline) {
				p.deadline = time.Time{}
				s.expired(p, now)
				fired = true
			}
			if !p.wdAt.IsZero() && !now.Before(p.wdAt) {
				p.wdAt = time.Time{}
				s.hung(p, ExitReason{Kind: ExitHung, Check: CheckWatchdog, Timeout: p.wdEvery})
				fired = true
			}
			if !p.hcAt.IsZero() && !now.Before(p.hcAt) {
				p.hcAt = time.Time{}
				s.runHealthCmd(p)
				fired = true
			}
		}
	}
}

// earliest returns the next deadline, zero if there is none.
func (s *Supervisor) earliest() time.Time {
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if !s.stopping {
		at(s.nextTick)
	}
	for _, sl := range s.slots {
		at(sl.nextStart)
		if sl.grace != nil {
			at(sl.grace.until)
		}
	}
	for p := range s.procs {
		at(p.deadline)
		at(p.wdAt)
		at(p.hcAt)
	}
	return next
}

// expired runs the step of p's phase whose deadline has come.
func (s *Supervisor) expired(p *proc, now time.Time) {
	switch p.phase {
	case phHello:
		switch s.cfg.Ready {
		case ReadyStarted:
			s.becameReady(p) // alive for ReadyAfter
		case ReadyNotify:
			p.verdict = ExitReason{Kind: ExitNotReady, Timeout: s.cfg.StartTimeout}
			p.log.Error("worker not ready in time; killing it", "reason", p.verdict)
			s.kill(p)
		default:
			p.verdict = ExitReason{Kind: ExitNoHello, Timeout: s.cfg.StartTimeout}
			s.kill(p)
		}
	case phVerify:
		p.endVerify() // the tender's ping fails: evVerified
	case phReady:
		s.readyExpired(p)
	case phClosing:
		p.log.Warn("channel closed while the worker runs; stopping it", "error", p.conn.Err())
		if p.verdict.Kind == ExitNone {
			p.verdict = ExitReason{Kind: ExitChannelClosed}
		}
		s.stopProc(p)
	case phStopping:
		half := s.cfg.StopTimeout / 2
		switch p.stopStep {
		case 1:
			p.log.Warn("worker did not stop; sending "+sigName(s.cfg.StopSignal), "timeout", half)
			p.stopEnd()
			s.signal(p, s.cfg.StopSignal)
			p.stopStep, p.deadline = 2, now.Add(half)
		case 2:
			p.log.Warn("worker ignored "+sigName(s.cfg.StopSignal)+"; sending SIGKILL", "timeout", half)
			s.signal(p, syscall.SIGKILL)
			p.stopStep = 3
		}
	}
}

// startSlot starts a process for sl.
func (s *Supervisor) startSlot(sl *slot) {
	sl.cur = s.spawn(sl, roleCur)
	sl.setState(StateStarting, s.now())
	s.dirty = true
}

// spawn records a new process for sl and starts its tender.
func (s *Supervisor) spawn(sl *slot, r procRole) *proc {
	p := &proc{sl: sl, role: r, ops: make(chan op, 3)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.helloCtx, p.endHello = context.WithCancel(p.ctx)
	if r == roleReplacement {
		p.verifyCtx, p.endVerify = context.WithCancel(p.ctx)
	}
	s.procs[p] = struct{}{}
	s.tenders.Add(1)
	go s.tend(p)
	return p
}

// tend runs p's blocking steps (see the comment at the top of this
// file). It ends once p's channel has closed, or at once if p never got
// one.
func (s *Supervisor) tend(p *proc) {
	defer s.tenders.Done()
	h, err := s.sp.start(p.sl.id, func() { s.send(evExited{p}) })
	if err != nil {
		s.send(evSpawnFailed{p, err})
		return
	}
	s.send(evSpawned{p, h})
	if s.cfg.Ready == ReadyNotify {
		s.tenders.Add(1)
		go s.listenNotify(p, h)
	}
	c, err := h.hello(p.helloCtx)
	if !s.send(evHello{p, c, err}) {
		// The loop has returned and will never close c: do it here,
		// or a descendant of the worker holding the other end would
		// keep this tender, and Run, waiting.
		if c != nil {
			c.Close()
		}
		return
	}
	if err != nil {
		return
	}
	if p.verifyCtx != nil && s.cfg.Ready == ReadyHello {
		_, err := c.Ping(p.verifyCtx)
		s.send(evVerified{p, err})
	}
	for {
		select {
		case o := <-p.ops:
			switch o.kind {
			case opProbe:
				s.stats.sent.Add(1) // before the write: a pong is never counted before its ping
				o.pr.markSent()
				id, err := c.Probe(p.ctx, o.pr.fn)
				if err != nil {
					s.stats.sent.Add(^uint64(0))
				}
				s.send(evProbed{p, id, err})
			case opStop:
				if _, err := c.Call(o.ctx, wire.TypeShutdown, nil, nil); err != nil {
					o.log.Debug("shutdown request failed", "error", err)
				}
				c.Close() // EOF tells the worker too
			case opClose:
				c.Close()
			}
		case <-c.Done():
			s.send(evClosed{p})
			return
		}
	}
}

// spawned: p's process runs.
func (s *Supervisor) spawned(p *proc, h handle) {
	now := s.now()
	p.h, p.pid, p.started = h, h.pid(), now
	p.log = s.log.Named(s.workerLogName(p.sl.id)).With("worker", p.sl.id, "pid", p.pid)
	p.log.Info("starting")
	start := s.cfg.StartTimeout
	if s.cfg.Ready == ReadyStarted {
		start = s.cfg.ReadyAfter
	}
	p.phase, p.deadline = phHello, now.Add(start)
	sl := p.sl
	if p.role == roleCur {
		sl.pid, sl.since = p.pid, now
		s.dirty = true
		if sl.spawnFailures > 0 {
			p.log.Info("worker started after the supervisor's own shortage", "failed_attempts", sl.spawnFailures)
			sl.spawnFailures, sl.spawnRetry = 0, 0
		}
	}
	switch {
	case p.exitEarly:
		s.exited(p)
	case s.stopping:
		s.kill(p)
	}
}

// spawnFailed: p's process could not be started.
func (s *Supervisor) spawnFailed(p *proc, err error) {
	delete(s.procs, p)
	p.cancel()
	sl := p.sl
	if p.role == roleReplacement {
		sl.repl = nil
		if s.rolling != nil && s.rolling.p == p {
			s.rolling.p = nil
			s.finishRolling(fmt.Errorf("supervisor: rolling restart of worker %d: %w", sl.id, err))
		}
		return
	}
	sl.cur = nil
	s.dirty = true
	var own *ownSpawnError
	switch {
	case s.stopping:
		sl.setState(StateStopped, s.now())
	case errors.As(err, &own):
		// The supervisor could not start the worker: neither a
		// failure of the worker nor a restart of it. Try again.
		s.retrySpawn(sl, err)
	default:
		s.log.Error("worker failed to start", "worker", sl.id, "error", err)
		s.slotEnded(sl, 0, ExitReason{Kind: ExitSpawnFailed, Err: err}, true, 0)
	}
}

// helloed: p's hello arrived (c), or the channel failed first (err).
func (s *Supervisor) helloed(p *proc, c channel, err error) {
	if s.cfg.Ready != ReadyHello {
		s.optionalHello(p, c, err)
		return
	}
	if err != nil {
		if p.exited || p.phase != phHello {
			return
		}
		// The worker is ending, or broke the protocol: it will not
		// serve.
		if isProtocolError(err) {
			p.verdict = ExitReason{Kind: ExitProtocol, Err: err, BeforeHello: true}
		}
		s.kill(p)
		return
	}
	p.conn = c
	switch {
	case p.exited || p.phase != phHello: // killed meanwhile (which a stop does to a starting worker)
		s.closeConn(p)
	case p.role == roleReplacement:
		p.phase, p.deadline = phVerify, s.now().Add(s.cfg.PingTimeout)
	default:
		s.ready(p)
	}
}

// ready routes p, its slot's new process, and starts health-checking
// it.
func (s *Supervisor) ready(p *proc) {
	now := s.now()
	sl := p.sl
	p.phase, p.deadline = phReady, time.Time{}
	p.everReady, p.readyAt = true, now
	sl.setState(StateReady, now)
	sl.rtt = 0
	s.dirty = true
	p.log.Info("ready", "startup", now.Sub(p.started).Round(time.Microsecond), "restarts", sl.restarts)
	s.armHealth(p, now)
	if p.conn != nil && !p.connDone {
		p.probe = newProber(s)
		s.route(sl.id-1, p.conn)
	}
	if !sl.wasReady {
		sl.wasReady = true
		if s.upCount++; s.upCount == len(s.slots) {
			s.log.Info("all workers ready", "workers", len(s.slots), "elapsed", now.Sub(s.startedAt).Round(time.Microsecond))
			s.publish() // whoever Ready wakes sees every worker ready in Status
			close(s.allUp)
		}
	}
}

// closed: p's channel closed and its tender ended.
func (s *Supervisor) closed(p *proc) {
	p.connDone = true
	if p.probe != nil && p.probe.writing {
		// The tender ended with a probe still queued (it saw the channel
		// close first) and will not report it: it is done, unwritten,
		// and no miss.
		s.probed(p, 0, ipc.ErrClosed)
	}
	if s.cfg.Ready != ReadyHello {
		// The channel was optional: the worker lives on without it.
		s.unroute(p)
		p.probe = nil
		return
	}
	if p.exited || p.role != roleCur || p.phase != phReady {
		return
	}
	// Usually the worker is exiting and closed its end on the way out.
	// If it lives on, it cannot be reached any more, so it is stopped.
	s.unroute(p)
	if err := p.conn.Err(); isProtocolError(err) {
		p.verdict = ExitReason{Kind: ExitProtocol, Err: err}
	}
	p.phase, p.deadline = phClosing, s.now().Add(exitGrace)
}

// kill ends p with SIGKILL at once: hung, no hello, or stopped while
// starting.
func (s *Supervisor) kill(p *proc) {
	s.unroute(p)
	p.endHello()
	p.phase, p.deadline = phKilled, time.Time{}
	p.wdAt, p.hcAt = time.Time{}, time.Time{}
	s.signal(p, syscall.SIGKILL)
}

// signal sends sig to p's process (group and descendants).
func (s *Supervisor) signal(p *proc, sig syscall.Signal) {
	if p.h.signal(sig) {
		p.signalled = true
	}
}

// stopProc ends p gracefully: the shutdown request at once, SIGTERM to
// its group at half of StopTimeout, SIGKILL at the end of it, or
// SIGKILL at once after Kill. A process without a channel yet is
// killed at once.
func (s *Supervisor) stopProc(p *proc) {
	switch p.phase {
	case phSpawning, phKilled, phStopping:
		return // killed once spawned (s.stopping), or on its way
	case phHello:
		if s.cfg.Ready == ReadyHello {
			s.kill(p)
			return
		}
		p.endHello() // a program that may never speak the protocol is asked to stop by signal
	}
	s.unroute(p)
	p.wdAt, p.hcAt = time.Time{}, time.Time{}
	if p.role == roleCur && p.phase == phReady && s.stopping {
		p.sl.setState(StateStopping, s.now())
		s.dirty = true
	}
	p.phase, p.stopStep = phStopping, 1
	p.stopBegan = s.now()
	p.deadline = p.stopBegan.Add(s.cfg.StopTimeout / 2)
	p.log.Info("stopping", "timeout", s.cfg.StopTimeout)
	var ctx context.Context
	ctx, p.stopEnd = context.WithCancel(p.ctx)
	if p.conn != nil && !p.connDone && !p.closeSent {
		p.ops <- op{kind: opStop, ctx: ctx, log: p.log}
	} else if p.conn == nil {
		// A worker that never had a channel (it does not speak the
		// protocol): the stop signal at once, SIGKILL at the end of
		// StopTimeout.
		p.stopEnd()
		s.signal(p, s.cfg.StopSignal)
		p.stopStep, p.deadline = 2, s.now().Add(s.cfg.StopTimeout)
	}
	if s.killed {
		s.killNow(p)
	}
}

// killNow skips the rest of p's graceful stop.
func (s *Supervisor) killNow(p *proc) {
	p.stopEnd()
	p.stopStep, p.deadline = 3, time.Time{}
	s.signal(p, syscall.SIGKILL)
}

// killAll makes the stops in progress, and those to come, skip their
// graceful steps.
func (s *Supervisor) killAll() {
	s.killed = true
	for p := range s.procs {
		if p.phase == phStopping && p.stopStep < 3 {
			s.killNow(p)
		}
	}
}

// closeConn has p's tender close its channel, once.
func (s *Supervisor) closeConn(p *proc) {
	if p.conn != nil && !p.connDone && !p.closeSent {
		p.closeSent = true
		p.ops <- op{kind: opClose}
	}
}

// exited: p's process is reaped.
func (s *Supervisor) exited(p *proc) {
	p.exited = true
	delete(s.procs, p)
	p.cancel()
	s.closeConn(p)
	s.unroute(p)
	p.deadline = time.Time{}
	st := p.h.status()
	if p.stopStep > 0 {
		p.log.Info("stopped", "reason", st)
	}
	switch p.role {
	case roleCur:
		s.curEnded(p, st)
	case roleReplacement:
		s.replacementEnded(p, st)
	case roleReplaced:
		s.replacedEnded(p)
	}
}

// curEnded: the slot's process ended with status st.
func (s *Supervisor) curEnded(p *proc, st ExitReason) {
	sl := p.sl
	sl.cur, sl.rtt = nil, 0
	s.dirty = true
	var uptime time.Duration
	if p.everReady {
		uptime = s.now().Sub(p.readyAt)
	}
	r, failed := st, !st.success()
	switch {
	case s.stopping && p.verdict.Kind == ExitNone:
		// An exit once the stop began is part of the stop, whatever
		// its status.
		r.Stopped, r.BeforeHello, failed = true, !p.everReady, false
		if p.stopStep == 0 {
			p.log.Info("worker exited as the supervisor stopped", "reason", r)
		}
	case p.verdict.Kind != ExitNone:
		r, failed = p.verdict.with(st), true
		if r.Kind == ExitChannelClosed {
			failed = !st.success() || p.signalled
		}
		p.log.Warn("worker exited", "reason", r)
	default:
		r.BeforeHello = !p.everReady
		switch {
		case r.BeforeHello && !failed:
			p.log.Info("worker exited before it was ready", "reason", r)
		case r.BeforeHello:
			p.log.Error("worker failed to start", "reason", r)
		case failed:
			p.log.Warn("worker exited", "reason", r)
		default:
			p.log.Info("worker exited", "reason", r)
		}
	}
	// A worker that a stop signal we did not send ended may have gone
	// down with the supervisor's own stop: systemd (KillMode=
	// control-group), a terminal's Ctrl-C and a kill of the process
	// group signal every process at once, and the worker may die before
	// Run's context ends. It is given stopGrace for that; otherwise
	// someone stopped the worker alone, which is a failure like any
	// other.
	if !r.Stopped && (p.verdict.Kind == ExitNone || p.verdict.Kind == ExitChannelClosed) &&
		st.stopSignalled() && (!p.everReady || !p.signalled) {
		p.log.Debug("worker ended by a stop signal; waiting to see whether the supervisor stops too", "reason", r, "grace", s.cfg.stopGrace)
		st.BeforeHello = r.BeforeHello
		sl.grace = &pendingEnd{p: p, reason: r, status: st, uptime: uptime, until: s.now().Add(s.cfg.stopGrace)}
		return
	}
	s.slotEnded(sl, p.pid, r, failed, uptime)
}

// slotEnded applies the restart policy to sl, whose process pid ended
// for reason r after uptime ready.
func (s *Supervisor) slotEnded(sl *slot, pid int, r ExitReason, failed bool, uptime time.Duration) {
	now := s.now()
	sl.exit, sl.pid = r, 0
	s.dirty = true
	if r.Stopped || s.stopping {
		sl.setState(StateStopped, now)
		return
	}
	if failed {
		s.counts.failures++
	}
	if !(s.cfg.Restart == RestartAlways || s.cfg.Restart == RestartOnFailure && failed) {
		s.log.Info("worker ended; not restarting", "worker", sl.id, "pid", pid, "reason", r, "policy", s.cfg.Restart.String())
		sl.setState(StateExited, now)
		if p := sl.repl; p != nil {
			// A rolling restart's replacement has no worker left to
			// replace in a slot that stays empty.
			p.dropped = true
			s.stopProc(p)
		}
		s.stopIfAllEnded()
		return
	}
	if s.crashLoop() {
		err := fmt.Errorf("%w: more than %d restarts within %v", ErrCrashLoop, s.cfg.MaxRestarts, s.cfg.RestartWindow)
		s.log.Error("giving up: workers keep failing", "error", err, "worker", sl.id, "pid", pid, "last_exit", r)
		sl.setState(StateFailed, now)
		s.crashErr = err
		s.beginStop()
		return
	}
	if uptime >= s.cfg.HealthyAfter {
		sl.backoff = s.cfg.BackoffMin
	}
	delay := jitter(sl.backoff)
	sl.backoff = min(2*sl.backoff, s.cfg.BackoffMax)
	sl.nextStart, sl.retrying = now.Add(delay), false
	sl.setState(StateBackoff, now)
	s.log.Info("backing off", "worker", sl.id, "pid", pid, "delay", delay, "reason", r)
}

// signalAll sends sig to every running worker process (and its group
// and descendants) and returns how many it reached.
func (s *Supervisor) signalAll(sig syscall.Signal) int {
	n := 0
	for p := range s.procs {
		if p.h != nil && !p.exited && p.h.signal(sig) {
			n++
		}
	}
	return n
}

// stopIfAllEnded ends Run once every worker has ended for good (the
// restart policy restarts none of them): nothing is left to supervise.
// Run then returns nil if each exited with status 0, else an error
// wrapping ErrWorkersFailed.
func (s *Supervisor) stopIfAllEnded() {
	failed := 0
	for _, sl := range s.slots {
		if sl.state != StateExited || sl.cur != nil || sl.repl != nil {
			return
		}
		if !sl.exit.success() {
			failed++
		}
	}
	if failed > 0 {
		s.crashErr = fmt.Errorf("%w: %d of %d workers ended without success", ErrWorkersFailed, failed, len(s.slots))
	}
	s.log.Info("every worker has ended and none is restarted; stopping", "failed", failed)
	s.beginStop()
}

// jitter returns a delay of 50–100 % of step.
func jitter(step time.Duration) time.Duration { return step/2 + rand.N(step/2+1) }

// retrySpawn schedules the next attempt to start sl's worker after err,
// a shortage of the supervisor's own (descriptors, memory, processes),
// with jittered exponential backoff from BackoffMin up to
// spawnRetryMax.
func (s *Supervisor) retrySpawn(sl *slot, err error) {
	now := s.now()
	s.counts.spawnFailures++
	sl.spawnFailures++
	step := max(sl.spawnRetry, s.cfg.BackoffMin)
	sl.spawnRetry = min(2*step, max(min(s.cfg.BackoffMax, spawnRetryMax), s.cfg.BackoffMin))
	delay := jitter(step)
	s.logSpawnFailure(sl.id, err, delay)
	sl.pid = 0
	sl.nextStart, sl.retrying = now.Add(delay), true
	sl.setState(StateBackoff, now)
}

// logSpawnFailure logs a shortage that kept the supervisor from starting
// worker id, unless another was logged within spawnLogEvery.
func (s *Supervisor) logSpawnFailure(id int, err error, retry time.Duration) {
	now := s.now()
	if !s.spawnLogAt.IsZero() && now.Sub(s.spawnLogAt) < spawnLogEvery {
		s.spawnLogSuppressed++
		return
	}
	left := s.spawnLogSuppressed
	s.spawnLogAt, s.spawnLogSuppressed = now, 0
	s.log.Error("cannot start a worker: the supervisor is short of resources; retrying",
		"worker", id, "error", err, "retry_in", retry, "not_logged_since_last", left)
}

// crashLoop records a restart and reports whether the limit is passed.
func (s *Supervisor) crashLoop() bool {
	if s.cfg.MaxRestarts <= 0 {
		return false
	}
	now := s.now()
	keep := s.restartAt[:0]
	for _, t := range s.restartAt {
		if now.Sub(t) < s.cfg.RestartWindow {
			keep = append(keep, t)
		}
	}
	s.restartAt = append(keep, now)
	return len(s.restartAt) > s.cfg.MaxRestarts
}

// tick judges every ready worker's health probe and sends the next.
func (s *Supervisor) tick(now time.Time) {
	s.counts.ticks++
	s.dirty = true
	for _, sl := range s.slots {
		p := sl.cur
		if p == nil || p.phase != phReady || p.probe == nil {
			continue
		}
		v, next := p.probe.judge(now, p.conn, s.cfg.PingTimeout)
		switch v {
		case answered:
			p.misses = 0
			if rtt := time.Duration(p.probe.rtt.Load()); rtt != sl.rtt {
				sl.rtt = rtt
				s.dirty = true
			}
		case missed:
			s.missed(p)
		}
		if next && p.phase == phReady {
			p.probe.writing = true
			p.ops <- op{kind: opProbe, pr: p.probe}
			s.counts.probesAsked++
		}
	}
}

// probed: p's tender wrote probe id, or failed to.
func (s *Supervisor) probed(p *proc, id uint64, err error) {
	if p.probe == nil {
		return
	}
	s.counts.probesDone++
	if s.counts.probesDone == s.counts.probesAsked {
		// Published once the tick's probes are all out, not after each
		// probe: with 256 workers that was 256 snapshots of 256 workers
		// a second, 2 % of a core and 50 MB of heap for nothing. (A
		// probe lost with its channel counts as done: see closed.)
		s.dirty = true
	}
	if err != nil {
		p.probe.writing, p.probe.cur = false, 0
		// A channel that closed under the probe is the worker ending,
		// which evClosed and evExited report; only a write that could
		// not go out is a miss.
		if p.phase == phReady && !errors.Is(err, ipc.ErrClosed) {
			s.missed(p)
		}
		return
	}
	p.probe.written(s.now(), id, p.conn)
}

// missed counts a missed ping of p and kills p as hung after
// PingMisses of them in a row.
func (s *Supervisor) missed(p *proc) {
	p.misses++
	p.log.Warn("ping missed", "misses", p.misses, "timeout", s.cfg.PingTimeout)
	if p.misses < s.cfg.PingMisses {
		return
	}
	s.hung(p, ExitReason{Kind: ExitHung, Check: CheckPing, Misses: p.misses})
}

// hung kills p, which failed its health check as r says.
func (s *Supervisor) hung(p *proc, r ExitReason) {
	if p.exited || p.phase != phReady {
		return
	}
	p.verdict = r
	p.log.Error("worker hung; killing it", "reason", p.verdict)
	if p.role == roleCur {
		p.sl.setState(StateHung, s.now())
	}
	s.dirty = true
	s.kill(p)
}

// beginStop stops every worker: Run's context ended, or a crash loop.
func (s *Supervisor) beginStop() {
	if s.stopping {
		return
	}
	s.stopping = true
	s.routesStopping()
	s.abortReloads()
	now := s.now()
	for _, sl := range s.slots {
		if g := sl.grace; g != nil {
			sl.grace = nil
			r := g.status
			r.Stopped = true
			g.p.log.Info("worker exited as the supervisor stopped", "reason", r)
			sl.exit, sl.pid = r, 0
		}
		sl.nextStart = time.Time{}
		if sl.cur == nil && sl.state != StateFailed && sl.state != StateExited {
			sl.setState(StateStopped, now)
		}
		if sl.cur != nil {
			s.stopProc(sl.cur)
		}
		if sl.repl != nil {
			s.stopProc(sl.repl)
		}
	}
	s.dirty = true
}

func (sl *slot) setState(st State, now time.Time) {
	if sl.state != st {
		sl.state, sl.since = st, now
	}
}

// isProtocolError reports whether err says the worker broke the wire
// protocol.
// isProtocolError reports whether the channel broke through the
// worker's fault: a malformed frame, or a worker that stopped reading
// (ErrStalled). Such a worker exits 0 once we close its channel, which
// must still count as a failure, or on-failure would leave its slot
// empty.
func isProtocolError(err error) bool {
	var fe *wire.FrameError
	return errors.As(err, &fe) || errors.Is(err, ipc.ErrStalled)
}

func (s *Supervisor) workerLogName(id int) string { return workerLogName(s.cfg.Name, id) }

func workerLogName(name string, id int) string { return name + "." + strconv.Itoa(id) }

// sigName names sig as the logs show it ("SIGTERM").
func sigName(sig syscall.Signal) string { return unix.SignalName(sig) }
