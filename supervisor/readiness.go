package supervisor

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Readiness and health beyond the hello (Config.Ready, Watchdog,
// HealthCmd). Everything here runs on the loop except listenNotify and
// the health command's goroutine, which report to it by event.

// notice is one sd_notify datagram from a worker (ReadyNotify), as the
// loop sees it: only what it acts on.
type notice struct {
	ready, reloading, stopping bool
	watchdog, trigger          bool
	status                     string
	hasStatus                  bool
	watchdogEvery              time.Duration // WATCHDOG_USEC=
	hasWatchdogEvery           bool          //
	extend                     time.Duration // EXTEND_TIMEOUT_USEC=; 0: absent
	errno                      int
	hasErrno                   bool
}

// errNoNotices is what handle.notice returns once the process's notify
// socket is closed (the process was reaped), or if it has none.
var errNoNotices = errors.New("supervisor: no notify socket")

// listenNotify forwards p's sd_notify datagrams to the loop until the
// process is reaped (its socket then closes) or the loop returns.
func (s *Supervisor) listenNotify(p *proc, h handle) {
	defer s.tenders.Done()
	for {
		n, err := h.notice()
		if err != nil {
			return
		}
		if !s.send(evNotice{p, n}) {
			return
		}
	}
}

// optionalHello: outside ReadyHello the channel is optional. A worker
// that says hello gets requests and pings while it is ready; one that
// does not (a program that knows nothing of the protocol) is not
// faulted for it.
func (s *Supervisor) optionalHello(p *proc, c channel, err error) {
	if err != nil {
		if !p.exited && p.log != nil {
			p.log.Debug("worker does not speak the protocol on its channel", "error", err)
		}
		return
	}
	p.conn = c
	switch {
	case p.exited || p.phase == phKilled || p.phase == phStopping:
		s.closeConn(p)
	case p.phase == phReady && p.role == roleCur && !p.reloading:
		p.probe = newProber(s)
		s.route(p.sl.id-1, c)
	}
}

// becameReady: a process outside ReadyHello is ready (READY=1, or alive
// for ReadyAfter). A rolling restart's replacement takes over its slot
// at once: it has no channel to verify.
func (s *Supervisor) becameReady(p *proc) {
	if p.exited || p.phase != phHello {
		return
	}
	if p.role == roleReplacement {
		s.handover(p)
		return
	}
	s.ready(p)
}

// armHealth starts the health checks that run while p is ready: the
// watchdog and the health command.
func (s *Supervisor) armHealth(p *proc, now time.Time) {
	if s.cfg.Ready == ReadyNotify && s.cfg.Watchdog > 0 {
		if p.wdEvery == 0 && !p.wdOff {
			p.wdEvery = s.cfg.Watchdog
		}
		if p.wdEvery > 0 {
			p.wdAt = now.Add(p.wdEvery)
		}
	}
	if len(s.cfg.HealthCmd) > 0 {
		p.hcAt = now.Add(s.cfg.HealthInterval)
	}
}

// noticed applies an sd_notify datagram from p.
func (s *Supervisor) noticed(p *proc, n notice) {
	if p.exited {
		return
	}
	now := s.now()
	sl := p.sl
	cur := p.role == roleCur
	if n.hasStatus && cur && sl.statusText != n.status {
		sl.statusText = n.status
		s.dirty = true
	}
	if n.hasErrno && cur {
		sl.errno = n.errno
		s.dirty = true
	}
	if n.extend > 0 && (p.phase == phHello || p.phase == phStopping || p.reloading || p.selfStopping) {
		d := now.Add(n.extend)
		if p.phase == phStopping {
			// A stop can be extended, but not forever: a worker that
			// keeps asking would otherwise never be killed.
			d = minTime(d, p.stopBegan.Add(2*s.cfg.StopTimeout))
		}
		if d.After(p.deadline) {
			p.deadline = d
		}
	}
	if n.hasWatchdogEvery {
		// As under systemd, 0 turns the watchdog off.
		p.wdEvery = n.watchdogEvery
		switch {
		case p.wdEvery == 0:
			p.wdAt, p.wdOff = time.Time{}, true
		case !p.wdAt.IsZero() || p.phase == phReady && s.cfg.Watchdog > 0:
			p.wdAt = now.Add(p.wdEvery)
		}
	}
	if n.watchdog && !p.wdAt.IsZero() {
		p.wdAt = now.Add(p.wdEvery)
	}
	if n.trigger {
		s.hung(p, ExitReason{Kind: ExitHung, Check: CheckWatchdogTrigger})
		return
	}
	switch {
	case n.stopping && p.phase == phReady && !p.selfStopping:
		// The worker is going down on its own; its exit decides the
		// rest, if it comes within StopTimeout (as systemd's
		// TimeoutStopSec applies after STOPPING=1).
		p.log.Info("worker says it is stopping")
		s.unroute(p)
		p.selfStopping, p.reloading = true, false
		p.wdAt, p.deadline = time.Time{}, now.Add(s.cfg.StopTimeout)
		if cur {
			sl.setState(StateStopping, now)
			s.dirty = true
		}
	case n.reloading && p.phase == phReady && !p.reloading && !p.selfStopping:
		// Ready again within StartTimeout (EXTEND_TIMEOUT_USEC may
		// extend it), or not ready at all.
		p.log.Info("worker says it is reloading")
		p.reloading = true
		p.deadline = now.Add(s.cfg.StartTimeout)
		s.unroute(p)
		if cur {
			sl.setState(StateReloading, now)
			s.dirty = true
		}
	}
	if n.ready {
		switch {
		case p.phase == phHello:
			s.becameReady(p)
		case p.reloading && p.phase == phReady:
			p.reloading, p.deadline = false, time.Time{}
			p.log.Info("worker reloaded")
			if cur {
				sl.setState(StateReady, now)
				s.dirty = true
				if p.conn != nil && !p.connDone {
					s.route(sl.id-1, p.conn)
				}
			}
		}
	}
}

// readyExpired: p, ready, let a deadline of its own pass: it said
// RELOADING=1 and not READY=1 within StartTimeout, or STOPPING=1 and did
// not exit within StopTimeout.
func (s *Supervisor) readyExpired(p *proc) {
	switch {
	case p.reloading:
		p.verdict = ExitReason{Kind: ExitNotReady, Timeout: s.cfg.StartTimeout}
		p.log.Error("worker did not finish reloading in time; killing it", "reason", p.verdict)
		if p.role == roleCur {
			p.sl.setState(StateHung, s.now())
			s.dirty = true
		}
		s.kill(p)
	case p.selfStopping:
		p.log.Warn("worker said it was stopping but has not exited; stopping it", "timeout", s.cfg.StopTimeout)
		s.stopProc(p)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// runHealthCmd starts p's health command, unless one still runs.
func (s *Supervisor) runHealthCmd(p *proc) {
	if p.exited || p.phase != phReady || p.hcRunning {
		return
	}
	p.hcRunning = true
	s.tenders.Add(1)
	go func() {
		defer s.tenders.Done()
		err := s.checker(p.ctx, p.sl.id, p.pid, p.log)
		s.send(evHealth{p, err})
	}()
}

// healthChecked: p's health command passed (err nil) or failed.
func (s *Supervisor) healthChecked(p *proc, err error) {
	p.hcRunning = false
	if p.exited || p.phase != phReady {
		return
	}
	if err == nil {
		if p.hcMisses > 0 {
			p.log.Info("health command passes again", "after_misses", p.hcMisses)
		}
		p.hcMisses = 0
	} else {
		p.hcMisses++
		p.log.Warn("health command failed", "misses", p.hcMisses, "error", err)
		if p.hcMisses >= s.cfg.HealthMisses {
			s.hung(p, ExitReason{Kind: ExitHung, Check: CheckCommand, Misses: p.hcMisses})
			return
		}
	}
	p.hcAt = s.now().Add(s.cfg.HealthInterval)
}

// A checker runs the health command for worker id (pid) and returns nil
// if it passed; ctx ends with the process.
type checker func(ctx context.Context, id, pid int, log hclog.Logger) error
