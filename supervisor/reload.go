package supervisor

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// Reload replaces every ready worker, one at a time: it starts the new
// worker, waits for its hello and a pong, routes requests to it, and
// only then stops the old one, so callers of [Supervisor.Call] see no
// failed request; it moves on to the next worker once the old one is
// reaped. Slots that are not ready (starting, backing off) are skipped:
// they start afresh anyway.
//
// Reloads are coalesced: requests made while a rolling restart runs
// share the one run that starts after it, so a storm of them costs at
// most two. Reload returns the result of the first run that started
// after it was called, once that run is done, or ctx's error if ctx ends
// first (the run happens anyway). It returns [ErrNotRunning] once Run
// began to stop; called before Run, it waits for Run. It is safe to
// call from any goroutine.
func (s *Supervisor) Reload(ctx context.Context) error {
	res := make(chan error, 1)
	err, askErr := ask(ctx, s.reqs, s.loopDone, reloadReq{res}, res)
	if askErr != nil {
		return askErr
	}
	return err
}

// Ping returns nil once the supervision loop has taken a request from
// it, and ctx's error if it does not before ctx ends: a loop that is
// wedged does not answer, so a service manager's watchdog fed only
// after a Ping stops being fed (see cmd/supervisor's systemd support).
// It returns ErrNotRunning once Run has returned; called before Run, it
// waits for Run.
func (s *Supervisor) Ping(ctx context.Context) error {
	done := make(pingReq)
	_, err := ask(ctx, s.reqs, s.loopDone, done, (<-chan struct{})(done))
	return err
}

// Signal sends sig to every running worker, each with its process group
// and descendants, as the stop does, and returns how many workers it
// reached. The supervisor does not otherwise react: what a worker does
// with SIGUSR1 is its own affair (the CLI forwards SIGUSR1 and SIGUSR2
// this way, as tini does).
func (s *Supervisor) Signal(ctx context.Context, sig syscall.Signal) (int, error) {
	req := signalReq{sig: sig, res: make(chan int, 1)}
	return ask(ctx, s.reqs, s.loopDone, req, req.res)
}

// rolling is a rolling restart in progress. It is the loop's.
type rolling struct {
	batch []chan error // the Reload calls it answers
	i     int          // the slot being replaced
	p     *proc        // its replacement, until handed over or ended
	old   *proc        // the process it replaced, until reaped
	err   error        // the run failed; answered once p is reaped
}

// reload queues a Reload call for the next rolling restart, which
// starts at once if none runs.
func (s *Supervisor) reload(req reloadReq) {
	if s.stopping {
		req.res <- ErrNotRunning
		return
	}
	s.reloadQueue = append(s.reloadQueue, req.res)
	s.dirty = true
	if s.rolling == nil {
		s.startRolling()
	}
}

// startRolling starts a rolling restart for the queued Reload calls.
func (s *Supervisor) startRolling() {
	s.rolling = &rolling{batch: s.reloadQueue}
	s.reloadQueue = nil
	s.dirty = true
	s.log.Info("rolling restart", "requests", len(s.rolling.batch))
	s.advance()
}

// advance starts the replacement of the next ready worker, or ends the
// run when none is left.
func (s *Supervisor) advance() {
	r := s.rolling
	for ; r.i < len(s.slots); r.i++ {
		if sl := s.slots[r.i]; sl.cur != nil && sl.cur.phase == phReady && sl.repl == nil {
			r.p = s.spawn(sl, roleReplacement)
			sl.repl = r.p
			return
		}
	}
	s.finishRolling(nil)
}

// finishRolling answers the run's Reload calls with err and starts the
// next run if calls came meanwhile.
func (s *Supervisor) finishRolling(err error) {
	if err != nil {
		s.log.Error("rolling restart failed", "error", err)
	} else {
		s.log.Info("rolling restart done")
	}
	for _, res := range s.rolling.batch {
		res <- err
	}
	s.rolling = nil
	if len(s.reloadQueue) > 0 {
		s.startRolling()
	}
}

// abortReloads answers every Reload call, running or queued, with
// ErrNotRunning: Run is stopping. A replacement still starting is
// stopped with the other workers.
func (s *Supervisor) abortReloads() {
	if s.rolling != nil {
		for _, res := range s.rolling.batch {
			res <- ErrNotRunning
		}
		s.rolling = nil
	}
	for _, res := range s.reloadQueue {
		res <- ErrNotRunning
	}
	s.reloadQueue = nil
}

// verified: a replacement answered its first ping (err nil), or did not
// within PingTimeout.
func (s *Supervisor) verified(p *proc, err error) {
	p.endVerify()
	if p.exited || p.phase != phVerify {
		return
	}
	p.deadline = time.Time{}
	if err != nil {
		if r := s.rolling; r != nil && r.p == p {
			r.err = fmt.Errorf("supervisor: rolling restart of worker %d: new worker did not answer a ping: %w", p.sl.id, err)
		}
		s.stopProc(p)
		return
	}
	s.handover(p)
}

// handover makes the verified replacement p its slot's process, routes
// requests to it and only then stops the process it replaces.
func (s *Supervisor) handover(p *proc) {
	sl := p.sl
	old := sl.cur
	if old == nil || old.phase != phReady {
		// The slot's worker ended meanwhile; it restarts on its own.
		p.dropped = true
		s.stopProc(p)
		return
	}
	now := s.now()
	sl.repl, sl.cur = nil, p
	p.role, old.role = roleCur, roleReplaced
	p.phase, p.deadline = phReady, time.Time{}
	p.everReady, p.readyAt = true, now
	sl.pid, sl.rtt, sl.exit = p.pid, 0, ExitReason{Kind: ExitReplaced}
	sl.statusText, sl.errno = "", 0
	sl.setState(StateReady, now)
	sl.since = now
	s.dirty = true
	p.log.Info("ready", "startup", now.Sub(p.started).Round(time.Microsecond), "replacing_pid", old.pid)
	s.armHealth(p, now)
	if p.conn != nil && !p.connDone {
		p.probe = newProber(s)
		s.route(sl.id-1, p.conn)
	}
	if r := s.rolling; r != nil && r.p == p {
		r.p, r.old = nil, old
	}
	s.stopProc(old)
}

// replacementEnded: a replacement was reaped before its handover.
func (s *Supervisor) replacementEnded(p *proc, st ExitReason) {
	defer func() {
		if !s.stopping {
			// The slot's own worker may have ended for good meanwhile:
			// with its replacement gone, nothing may be left to run.
			s.stopIfAllEnded()
		}
	}()
	p.sl.repl = nil
	r := s.rolling
	if r == nil || r.p != p {
		return // the run was aborted
	}
	r.p = nil
	switch {
	case r.err != nil:
		s.finishRolling(r.err)
	case p.dropped:
		r.i++
		s.advance()
	default:
		reason := st
		if p.verdict.Kind != ExitNone {
			reason = p.verdict.with(st)
		}
		reason.BeforeHello = p.conn == nil && (reason.Kind == ExitCode || reason.Kind == ExitSignal)
		s.finishRolling(fmt.Errorf("supervisor: rolling restart of worker %d: new worker (pid %d) %v", p.sl.id, p.pid, reason))
	}
}

// replacedEnded: a replaced process was reaped; the run moves on.
func (s *Supervisor) replacedEnded(p *proc) {
	if r := s.rolling; r != nil && r.old == p {
		r.old = nil
		r.i++
		s.advance()
	}
}
