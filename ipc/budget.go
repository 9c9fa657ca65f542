package ipc

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Memory held on a peer's behalf. A Conn counts every byte it holds for
// its peer: a request's payload from before it is read until its reply
// is written, and every reply (echo, pong, error, a Handler's result,
// the copies replyLater and finishLater make) until it is written. The
// reader reserves a frame's bytes before it reads the payload; whoever
// writes the reply releases them. Two bounds apply:
//
//   - The Conn's own, ConnConfig.MaxBuffered. When it is reached the
//     reader stops reading: the peer's sends block in its kernel,
//     which is the back-pressure a peer that reads its replies never
//     meets. A peer that does not read them releases nothing; after
//     WriteTimeout without a release, or a byte of theirs taken, the
//     Conn closes with ErrStalled.
//   - A Budget shared by many Conns, for a server's admission control.
//     Waiting for it could mean waiting for other peers that do not
//     read, so a request that finds no room within budgetWait is
//     skipped unread and refused with CodeUnavailable.
//
// The counters are atomics: holding and releasing costs two atomic adds
// per request and nothing else while there is room.

// budgetWait bounds how long the reader waits for room in a shared
// Budget before it refuses the request. Long enough to ride out a burst
// (other Conns' replies go out at hundreds of MB/s), short enough that
// the Conn's other frames (pings) are not held up noticeably.
const budgetWait = 100 * time.Millisecond

// errNoBudget is the message of the CodeUnavailable error sent for a
// request refused for want of room in the shared Budget.
const errNoBudget = "server busy: no room to buffer the request; try again later"

// Budget bounds the bytes held by all the Conns that share it (see
// [ConnConfig.Budget]), on top of each Conn's own MaxBuffered: a server
// gives one Budget to all its connections so that many clients that do
// not read cannot add up to more memory than the Budget's limit.
//
// A Conn takes a request's bytes, and room for its reply, from the
// Budget before it reads the request's payload, and gives them back
// once the reply is written or the Conn has closed. When the Budget has
// no room, the Conn waits a short while (100 ms) for other Conns to give
// some back and then skips the request unread and answers it with
// [wire.CodeUnavailable]; the client may try again. Pongs and error replies
// are small and are counted without waiting. A request larger than the
// limit is taken only while nothing else is held.
//
// A Budget is safe for concurrent use by any number of Conns.
type Budget struct {
	limit   int64
	used    atomic.Int64
	waiters atomic.Int32

	mu   sync.Mutex
	wake chan struct{} // closed and replaced when bytes come back with waiters
}

// NewBudget returns a Budget of limit bytes. A limit of zero or less
// means no bound, as a nil Budget does.
func NewBudget(limit int64) *Budget {
	return &Budget{limit: limit, wake: make(chan struct{})}
}

// take takes n bytes if there is room, without waiting.
func (b *Budget) take(n int64) bool {
	for {
		u := b.used.Load()
		if b.limit > 0 && u > 0 && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// acquire takes n bytes, waiting at most wait for room, or until stop is
// closed. It reports whether it took them.
func (b *Budget) acquire(n int64, wait time.Duration, stop <-chan struct{}) bool {
	if b.take(n) {
		return true
	}
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		b.mu.Lock()
		wake := b.wake
		b.mu.Unlock()
		if b.take(n) { // after registering and taking wake: no lost wake-up
			return true
		}
		select {
		case <-wake:
		case <-t.C:
			return false
		case <-stop:
			return false
		}
	}
}

// force takes n bytes whether or not there is room.
func (b *Budget) force(n int64) { b.used.Add(n) }

// release gives back n bytes and wakes the Conns waiting for room.
func (b *Budget) release(n int64) {
	b.used.Add(-n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.wake)
		b.wake = make(chan struct{})
		b.mu.Unlock()
	}
}

// frameCost is what a frame with a payload of n bytes counts.
func frameCost(n int) int64 { return int64(wire.HeaderSize + n) }

// requestCost is what a request for the Handler counts when the reader
// takes it in (n), and how much of that is room for its reply (hint):
// an echo's reply is its payload, any other's is unknown until the
// Handler returns and counts as a bare header until then (answer
// settles the difference).
func requestCost(h wire.Header) (n, hint int64) {
	hint = wire.HeaderSize
	if h.Type == wire.TypeEcho {
		hint = frameCost(int(h.Length))
	}
	return frameCost(int(h.Length)) + hint, hint
}

// admit reserves n bytes for a frame the reader is about to take in. It
// waits for room under the Conn's MaxBuffered (back-pressure), and
// aborts the Conn with ErrStalled if nothing is released meanwhile for
// WriteTimeout. Then, if the Conn shares a Budget, it takes n from it:
// with shared set waiting at most budgetWait, and reporting false (with
// nothing reserved) if there was no room; without, at once whether or
// not there is room, for small replies that must not be refused.
// Background reader only (requests are its alone; see serve.go).
func (c *Conn) admit(n int64, shared bool) (bool, error) {
	for {
		held := c.held.Load()
		if held == 0 || held+n <= c.cfg.MaxBuffered {
			break
		}
		if err := c.waitRoom(held); err != nil {
			return false, err
		}
	}
	c.addHeld(n)
	b := c.cfg.Budget
	switch {
	case b == nil:
	case !shared:
		b.force(n)
	case !b.acquire(n, budgetWait, c.kill):
		c.unhold(n)
		return false, nil
	}
	return true, nil
}

// waitRoom waits until some of the held bytes are released. If none is,
// and the peer takes none of the Conn's bytes either (a stallWatch:
// a large reply going out slowly releases nothing until its end), for
// WriteTimeout, the peer is not reading its replies, and the Conn is
// aborted with ErrStalled. held is the amount the caller saw.
func (c *Conn) waitRoom(held int64) error {
	c.roomWait.Store(true)
	defer c.roomWait.Store(false)
	if c.held.Load() < held { // released before roomWait was seen
		return nil
	}
	killed := false
	w := c.watchStall(time.Now())
	if !w.wait(func(expired <-chan time.Time) bool {
		select {
		case <-c.room:
			return true
		case <-c.kill:
			killed = true
			return true
		case <-expired:
			return false
		}
	}) {
		err := &OpError{Op: "read", Addr: c.cfg.Addr, Err: fmt.Errorf("%w: the peer is not reading its replies: %d bytes of them held and none written for %v", ErrStalled, held, c.cfg.WriteTimeout)}
		c.abort(err)
		return err
	}
	if killed {
		return &OpError{Op: "read", Addr: c.cfg.Addr, Err: c.closedErr()}
	}
	return nil
}

// addHeld counts n more bytes held and keeps the peak.
func (c *Conn) addHeld(n int64) {
	v := c.held.Add(n)
	for p := c.peak.Load(); v > p && !c.peak.CompareAndSwap(p, v); p = c.peak.Load() {
	}
}

// force holds n more bytes without waiting, in the Budget too: for
// replies that already exist (a Handler's result larger than its
// reservation, a protocol error sent as the Conn closes).
func (c *Conn) force(n int64) {
	c.addHeld(n)
	if b := c.cfg.Budget; b != nil {
		b.force(n)
	}
}

// unhold gives back n bytes of the Conn's own bound and wakes the
// reader if it waits for room.
func (c *Conn) unhold(n int64) {
	c.held.Add(-n)
	if c.roomWait.Load() {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// release gives back n held bytes: the Conn's and the Budget's.
func (c *Conn) release(n int64) {
	if n == 0 {
		return
	}
	c.unhold(n)
	if b := c.cfg.Budget; b != nil {
		b.release(n)
	}
}

// giveBack releases whatever is still held once every goroutine of the
// Conn has ended, so that a shared Budget never loses bytes to a Conn
// that is gone. Nothing should be left; tests check leftover.
func (c *Conn) giveBack() {
	if n := c.held.Load(); n != 0 {
		c.leftover = n
		c.release(n)
	}
}
