//go:build linux

package supervisor

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// Health checks. One goroutine ticks every PingInterval and wakes every
// slot goroutine at once (tick); each sends its worker a probe, a ping
// whose pong is recorded by the channel's reader goroutine (prober.pong)
// without waking anybody. A probe still unanswered at the first tick
// after PingTimeout, or answered later than PingTimeout, counts as a
// miss.
// So supervising N idle workers costs one timer wake-up per interval
// plus the N pongs, not N timers and N parked callers.

// healthLoop broadcasts a tick every PingInterval until ctx ends.
func (s *Supervisor) healthLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.tickMu.Lock()
			close(s.tickCh)
			s.tickCh = make(chan struct{})
			s.tickMu.Unlock()
		}
	}
}

// nextTick returns a channel closed at the next health tick.
func (s *Supervisor) nextTick() <-chan struct{} {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	return s.tickCh
}

// prober health-checks one worker process. check runs on the slot
// goroutine; pong on the channel's reader goroutine. Request ids grow,
// so a pong for a probe that was already judged is told by its id.
type prober struct {
	s    *Supervisor
	sl   *slot
	conn *ipc.Conn
	base time.Time
	fn   func(uint64, error) // pong, bound once
	cur  uint64              // the probe in flight (slot goroutine only)

	judged atomic.Uint64 // pongs up to this id come too late
	sent   atomic.Int64  // the probe's send time, as time.Since(base)
	ok     atomic.Bool   // it was answered within PingTimeout
}

func newProber(s *Supervisor, sl *slot, conn *ipc.Conn) *prober {
	pr := &prober{s: s, sl: sl, conn: conn, base: time.Now()}
	pr.fn = pr.pong
	return pr
}

// pong records the answer to probe id.
func (pr *prober) pong(id uint64, err error) {
	if err != nil || id <= pr.judged.Load() {
		return
	}
	rtt := time.Since(pr.base) - time.Duration(pr.sent.Load())
	pr.s.stats.record(rtt)
	pr.sl.set(func(sl *slot) { sl.lastRTT = rtt })
	if rtt <= pr.s.cfg.PingTimeout {
		pr.ok.Store(true)
	}
}

// Results of prober.check.
type verdict int

const (
	pending  verdict = iota // the probe in flight still has time
	answered                // it was answered in time; the next is sent
	missed                  // it was not, or none could be sent
)

// check judges the probe in flight, if any, and sends the next one. A
// probe without its pong is given PingTimeout before it counts as
// missed; until then no other is sent.
func (pr *prober) check(ctx context.Context) verdict {
	v := answered
	if pr.cur != 0 {
		if !pr.ok.Load() && time.Since(pr.base)-time.Duration(pr.sent.Load()) < pr.s.cfg.PingTimeout {
			return pending
		}
		pr.conn.Forget(pr.cur)
		pr.judged.Store(pr.cur)
		if !pr.ok.Load() {
			v = missed
		}
	}
	pr.ok.Store(false)
	pr.sent.Store(int64(time.Since(pr.base)))
	id, err := pr.conn.Probe(ctx, pr.fn)
	pr.cur = id
	if err != nil {
		return missed
	}
	pr.s.stats.sent.Add(1)
	return v
}
