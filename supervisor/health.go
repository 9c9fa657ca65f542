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
// without waking anybody. So supervising N idle workers costs one timer
// wake-up per interval plus the N pongs, not N timers and N parked
// callers.
//
// A probe's PingTimeout starts when its ping has been written, not when
// it was queued: under load the ping waits behind megabytes of requests
// on the same stream, and its pong behind their replies. A probe still
// unanswered at the first tick after PingTimeout counts as a miss only
// if nothing at all arrived from the worker meanwhile: a worker whose
// replies keep arriving is busy, not hung, and its probe is given
// another PingTimeout from then (ipc.Conn.Received tells, without a
// round trip). A hung or stopped worker sends nothing, so it is still
// found after PingMisses timeouts.

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

	// The probe in flight (slot goroutine only): its id, when its
	// PingTimeout began (its write completed, or bytes last arrived from
	// the worker while it was overdue), and conn.Received() then.
	cur   uint64
	since time.Time
	rx    uint64

	judged   atomic.Uint64 // pongs up to this id come too late
	answered atomic.Uint64 // the id of the last pong received
	sent     atomic.Int64  // when the probe was sent, as time.Since(base)
}

func newProber(s *Supervisor, sl *slot, conn *ipc.Conn) *prober {
	pr := &prober{s: s, sl: sl, conn: conn, base: time.Now()}
	pr.fn = pr.pong
	return pr
}

// pong records the answer to probe id. The round trip it records runs
// from the probe's send, its wait behind other frames included: that is
// what a caller waits.
func (pr *prober) pong(id uint64, err error) {
	if err != nil || id <= pr.judged.Load() {
		return
	}
	rtt := time.Since(pr.base) - time.Duration(pr.sent.Load())
	pr.s.stats.record(rtt)
	pr.sl.set(func(sl *slot) { sl.lastRTT = rtt })
	pr.answered.Store(id)
}

// Results of prober.check.
type verdict int

const (
	pending  verdict = iota // the probe in flight still has time
	answered                // the worker is alive: it answered, or is busy sending
	missed                  // it was not answered and nothing arrived, or none could be sent
)

// check judges the probe in flight, if any, and sends the next one once
// it is judged. A probe without its pong has PingTimeout from its write
// before it counts as missed, renewed for as long as bytes keep
// arriving from the worker; until then no other is sent.
func (pr *prober) check(ctx context.Context) verdict {
	v := answered
	if pr.cur != 0 {
		if pr.answered.Load() != pr.cur {
			if time.Since(pr.since) < pr.s.cfg.PingTimeout {
				return pending
			}
			if rx := pr.conn.Received(); rx != pr.rx {
				// Overdue, but the worker is sending: its pong waits
				// behind replies. Keep waiting for it.
				pr.since, pr.rx = time.Now(), rx
				return answered
			}
			v = missed
		}
		pr.conn.Forget(pr.cur)
		pr.judged.Store(pr.cur)
	}
	pr.sent.Store(int64(time.Since(pr.base)))
	id, err := pr.conn.Probe(ctx, pr.fn)
	pr.cur = id
	if err != nil {
		return missed
	}
	pr.since, pr.rx = time.Now(), pr.conn.Received()
	pr.s.stats.sent.Add(1)
	return v
}
