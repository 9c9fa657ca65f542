package supervisor

import (
	"sync/atomic"
	"time"
)

// Health checks. The loop ticks every PingInterval; at each tick it
// judges the probe in flight of every ready worker and has the
// worker's tender send the next one (a ping whose pong the channel's
// reader goroutine records in the prober, prober.pong, without waking
// anybody). So supervising N idle workers costs one timer wake-up per
// interval plus the N pongs, not N timers and N parked callers.
//
// A probe's PingTimeout starts when its ping has been written (the
// tender reports that), not when it was queued: under load the ping
// waits behind megabytes of requests on the same stream, and its pong
// behind their replies. A probe still unanswered at the first tick
// after PingTimeout counts as a miss only if nothing at all arrived
// from the worker meanwhile: a worker whose replies keep arriving is
// busy, not hung, and its probe is given another PingTimeout from then
// (channel.Received tells, without a round trip). A hung or stopped
// worker sends nothing, so it is still found after PingMisses
// timeouts. The same goes for a worker serving handed-over clients,
// whose work does not pass through its channel: a probe overdue while
// the worker is seen moving the bytes queued on its clients'
// connections is given another PingTimeout (clientLoad.activity).

// prober health-checks one worker process. Its plain fields are the
// loop's; the atomics are shared with the channel's reader goroutine
// (pong) and the tender (sent). Request ids grow, so a pong for a probe
// that was already judged is told by its id.
type prober struct {
	s    *Supervisor
	base time.Time
	fn   func(uint64, error) // pong, bound once

	// The probe in flight (loop only): whether the tender is still
	// writing it, its id, when its PingTimeout began (its write
	// completed, or bytes last arrived from the worker while it was
	// overdue), and the channel's Received() then.
	writing bool
	cur     uint64
	since   time.Time
	rx      uint64
	act     uint64 // and the moves seen on its handed-over clients (clientLoad.activity)

	judged   atomic.Uint64 // pongs up to this id come too late
	answered atomic.Uint64 // the id of the last pong received
	sent     atomic.Int64  // when the probe was sent, as time.Since(base)
	rtt      atomic.Int64  // the last pong's round trip
}

func newProber(s *Supervisor) *prober {
	pr := &prober{s: s, base: time.Now()}
	pr.fn = pr.pong
	return pr
}

// pong records the answer to probe id, on the channel's reader
// goroutine. The round trip it records runs from the probe's send, its
// wait behind other frames included: that is what a caller waits.
func (pr *prober) pong(id uint64, err error) {
	if err != nil || id <= pr.judged.Load() {
		return
	}
	rtt := time.Since(pr.base) - time.Duration(pr.sent.Load())
	pr.s.stats.record(rtt)
	pr.rtt.Store(int64(rtt))
	pr.answered.Store(id)
}

// markSent records the time a probe is sent; the tender calls it right
// before writing the probe.
func (pr *prober) markSent() { pr.sent.Store(int64(time.Since(pr.base))) }

// Results of prober.judge.
type verdict int

const (
	pending  verdict = iota // the probe in flight still has time
	answered                // the worker is alive: it answered, or is busy sending
	missed                  // it was not answered and nothing arrived
)

// judge judges the probe in flight, if any, at now. It reports whether
// the next probe is due: once the one in flight is judged (or there is
// none). A probe without its pong has PingTimeout from its write before
// it counts as missed, renewed for as long as bytes keep arriving from
// the worker; until then no other is sent.
func (pr *prober) judge(now time.Time, c channel, timeout time.Duration) (v verdict, next bool) {
	if pr.writing {
		return pending, false
	}
	v = answered
	if pr.cur != 0 {
		if pr.answered.Load() != pr.cur {
			if now.Sub(pr.since) < timeout {
				return pending, false
			}
			rx, act := c.Received(), pr.s.clients.activity(c)
			if rx != pr.rx || act != pr.act {
				// Overdue, but the worker is sending: its pong waits
				// behind replies. Or it is serving its handed-over
				// clients (their bytes move), and is starved of CPU.
				// Keep waiting for it.
				pr.since, pr.rx, pr.act = now, rx, act
				return answered, false
			}
			v = missed
		}
		c.Forget(pr.cur)
		pr.judged.Store(pr.cur)
		pr.cur = 0
	}
	return v, true
}

// written records that the tender wrote probe id at now.
func (pr *prober) written(now time.Time, id uint64, c channel) {
	pr.writing = false
	pr.cur, pr.since, pr.rx, pr.act = id, now, c.Received(), pr.s.clients.moved(c)
}
