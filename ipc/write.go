package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
	"unsafe"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// Writing. Frames are never interleaved: a writer holds the write lock
// (wlock) from the first byte of a frame to the last, and every frame
// goes out through one loop, sendLocked, whose writers differ only in
// how long they may wait for the peer to make room (patience) and what
// they do when that runs out:
//
//   - A caller (writeFrame) waits until its context ends or, without a
//     deadline, its timeout. If the frame is half sent by then it gets
//     its error at once, but the frame is finished in the background
//     with the Conn's WriteTimeout (finishLater), so one impatient
//     caller does not break the stream for everybody.
//   - The holder of the read side (reply) never waits long to write:
//     if another writer holds the lock, its reply is written by a
//     background goroutine (replyLater); if the socket buffer stays
//     full for two writeSlices, the rest is finished by finishLater and
//     the reader goes on reading. Otherwise two peers answering each
//     other's requests could both stop reading while each waits for the
//     other to read.
//   - A reply written by any other goroutine (writeReply: a handler's
//     result, a replyLater copy), and finishLater itself, must be
//     written within WriteTimeout of being ready, its wait for the lock
//     included, or at least see the peer take some of the Conn's bytes
//     in every WriteTimeout (a stallWatch); one that does neither closes
//     the Conn with ErrStalled (the peer is not reading its replies),
//     which also ends the wait of everything queued behind it. A peer
//     that reads slowly — a client on a loaded machine taking a
//     megabyte reply a few kilobytes at a time — is never taken for one
//     that does not read. Replies are held (budget.go) until written,
//     and the reader stops reading when the Conn holds too much, so
//     what waits is bounded too.
//
// The lock is a channel of capacity 1 rather than a sync.Mutex: it
// hands itself to waiters in the order they came, so a reply queued
// behind callers is not starved, a waiter can give up at its deadline,
// and finishLater's goroutine may unlock what its writer locked.

// tryLockW takes the write lock if it is free.
func (c *Conn) tryLockW() bool {
	select {
	case c.wlock <- struct{}{}:
		return true
	default:
		return false
	}
}

// lockW takes the write lock, waiting at most until ctx ends or, if ctx
// has no deadline and timeout is positive, for timeout. It allocates
// only when it must wait with a timeout.
func (c *Conn) lockW(ctx context.Context, timeout time.Duration) error {
	if c.tryLockW() {
		return nil
	}
	var expired <-chan time.Time
	if _, ok := ctx.Deadline(); !ok && timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case c.wlock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-expired:
		return os.ErrDeadlineExceeded
	}
}

func (c *Conn) unlockW() { <-c.wlock }

// stallWatch is the stall verdict of one wait for the peer to read
// (WriteTimeout): the wait is over at deadline only if the peer took
// none of the Conn's bytes (Conn.sent) since the watch began or was last
// extended and no write has been in progress for long (Conn.Writing: a
// blocking sendmsg counts its bytes only when it returns, and it returns
// within a writeSlice once the peer stops taking them); otherwise the
// deadline moves
// WriteTimeout past the moment this was seen. So a peer is stalled once it has taken nothing
// for WriteTimeout, which is seen within twice that. Owned by the
// goroutine that waits.
type stallWatch struct {
	c        *Conn
	seen     uint64 // c.sent when the watch began or was extended
	deadline time.Time
}

// watchStall starts a stallWatch for a wait that began at start.
func (c *Conn) watchStall(start time.Time) stallWatch {
	return stallWatch{c: c, seen: c.sent.Load(), deadline: start.Add(c.cfg.WriteTimeout)}
}

// stalled reports whether the wait is over: the deadline has passed
// with no progress since the watch began or was extended. Progress
// extends the deadline.
func (w *stallWatch) stalled() bool {
	if w.c == nil || time.Now().Before(w.deadline) {
		return false
	}
	if n := w.c.sent.Load(); n != w.seen || w.c.Writing() {
		w.seen, w.deadline = n, time.Now().Add(w.c.cfg.WriteTimeout)
		return false
	}
	return true
}

// wait waits for the caller's event until the watch says the peer is
// stalled: try waits for the event or expired, whichever comes first,
// and reports whether it was the event. wait reports whether the event
// came (false: the peer is stalled).
func (w *stallWatch) wait(try func(expired <-chan time.Time) bool) bool {
	for {
		t := time.NewTimer(max(time.Until(w.deadline), 1))
		ok := try(t.C)
		t.Stop()
		if ok {
			return true
		}
		if w.stalled() {
			return false
		}
	}
}

// patience says how long a writer waits for room in the socket buffer.
// The zero value waits for ever.
type patience struct {
	ctx      context.Context // the wait ends with ctx
	timeout  time.Duration   // without a deadline in ctx: from the first wait
	deadline time.Time       // the wait ends then
	waits    int             // > 0: the wait ends after this many waitWrites
	stall    stallWatch      // with c set: the wait ends when the peer is stalled (WriteTimeout)
	slow     bool            // with stall: the peer was seen reading slowly; every send is capped (sendCapped)
}

// spent reports why the writer should stop waiting, or nil.
func (p *patience) spent() error {
	if p.waits > 0 {
		if p.waits--; p.waits == 0 {
			return errSlice
		}
	}
	timeUp := os.ErrDeadlineExceeded
	if p.ctx != nil {
		if err := p.ctx.Err(); err != nil {
			return err
		}
		if p.deadline.IsZero() {
			var ok bool
			if p.deadline, ok = p.ctx.Deadline(); !ok && p.timeout > 0 {
				p.deadline = time.Now().Add(p.timeout)
			}
		}
		if _, ok := p.ctx.Deadline(); ok {
			timeUp = context.DeadlineExceeded // ctx's, before its timer fires
		}
	}
	if !p.deadline.IsZero() && !time.Now().Before(p.deadline) {
		return timeUp
	}
	if p.stall.stalled() {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Results of sendLocked.
type sendResult uint8

const (
	sent      sendResult = iota // the whole frame is written
	gaveUp                      // the writer's patience ran out first
	sendError                   // sendmsg failed
)

// sendLocked is the one loop that writes frames: it writes the frame
// that setFrame (or finishLater) described in c.msg, with the write lock
// held. After each send that leaves part of the frame unsent it waits
// for room, for as long as pat allows. It does not allocate. It returns
// the result, whether any of the frame has been written, and the error
// (patience's or sendmsg's).
func (c *Conn) sendLocked(pat *patience) (res sendResult, started bool, err error) {
	short := pat.slow // a send left part of the frame: the peer reads slowly, if at all
	for {
		var n int
		c.writing.Store(int64(max(time.Since(connStart), 1))) // Writing: a blocking send may take long
		if short && pat.stall.c != nil {
			n, err = c.sendCapped(sendChunk)
		} else {
			n, err = c.sock.sendmsg(&c.msg)
		}
		c.writing.Store(0)
		if n > 0 {
			started = true
			c.sent.Add(uint64(n))
			if c.msg.Controllen != 0 {
				// The descriptors went with the first byte (fds.go).
				c.msg.Control, c.msg.Controllen = nil, 0
			}
			if c.advance(n) {
				return sent, true, nil
			}
		}
		if err != nil && err != unix.EAGAIN {
			return sendError, started, err
		}
		// A short send, or a whole writeSlice (SO_SNDTIMEO) went by
		// without room: the peer reads slowly or not at all.
		short = true
		if err := pat.spent(); err != nil {
			return gaveUp, started, err
		}
		c.sock.waitWrite()
	}
}

// sendChunk bounds one sendmsg(2) of a background writer once the peer
// has shown that it reads slowly (sendCapped).
const sendChunk = 256 << 10

// sendCapped is one sendmsg(2) of at most max bytes of the frame c.msg
// describes. A blocking sendmsg goes on for as long as the peer makes
// room within each SO_SNDTIMEO slice, and a peer that reads steadily
// keeps one call writing a large frame for seconds, with Conn.Sent
// (which stall watchers, such as a stopping worker handing its clients
// back, read) unchanged until it returns. Background writers, which
// only write to slow peers, cap their calls so that Sent moves with the
// peer. The iovecs are restored before it returns.
func (c *Conn) sendCapped(max int) (int, error) {
	iov := unsafe.Slice(c.msg.Iov, c.msg.Iovlen)
	total := 0
	for _, v := range iov {
		total += int(v.Len)
	}
	if total <= max {
		return c.sock.sendmsg(&c.msg)
	}
	n0 := int(iov[0].Len)
	if n0 >= max {
		iov[0].SetLen(max)
		c.msg.SetIovlen(1)
		n, err := c.sock.sendmsg(&c.msg)
		iov[0].SetLen(n0)
		c.msg.SetIovlen(len(iov))
		return n, err
	}
	n1 := int(iov[1].Len)
	iov[1].SetLen(max - n0)
	n, err := c.sock.sendmsg(&c.msg)
	iov[1].SetLen(n1)
	return n, err
}

// setFrame points the iovecs at h and p, and attaches ctl, the control
// message carrying the frame's descriptors (fds.go), if not nil. The
// caller holds the write lock.
func (c *Conn) setFrame(h wire.Header, p, ctl []byte) {
	c.msg.Control, c.msg.Controllen = nil, 0
	if ctl != nil {
		c.msg.Control = &ctl[0]
		c.msg.SetControllen(len(ctl))
	}
	h.Length = uint32(len(p))
	wire.PutHeader(c.whdr[:], h)
	c.msg.Iov = &c.iov[0]
	c.iov[0].Base = &c.whdr[0]
	c.iov[0].SetLen(wire.HeaderSize)
	c.msg.Iovlen = 1
	if len(p) > 0 {
		c.iov[1].Base = unsafe.SliceData(p)
		c.iov[1].SetLen(len(p))
		c.msg.Iovlen = 2
	}
}

// writeFrame writes one frame for a caller. The waits for the write
// lock and for room in the socket buffer end when ctx ends or, if ctx
// has no deadline and timeout is positive, after timeout (each). It
// does not allocate unless it has to wait for the lock with a timeout
// or leave the frame to finishLater.
func (c *Conn) writeFrame(ctx context.Context, timeout time.Duration, h wire.Header, p []byte) error {
	_, err := c.write(ctx, timeout, h, p, nil)
	return err
}

// write is writeFrame, also reporting, with an error, whether the frame
// was left to finishLater: then the peer gets it whole all the same.
// ctl, if not nil, carries the frame's descriptors (see setFrame).
func (c *Conn) write(ctx context.Context, timeout time.Duration, h wire.Header, p, ctl []byte) (finishing bool, err error) {
	if err := c.lockW(ctx, timeout); err != nil {
		return false, c.writeErr(h, err)
	}
	if c.wclosed {
		c.unlockW()
		return false, c.writeErr(h, c.closedErr())
	}
	c.setFrame(h, p, ctl)
	res, started, err := c.sendLocked(&patience{ctx: ctx, timeout: timeout})
	switch {
	case res == sent:
		c.unlockW()
		runtime.KeepAlive(p)
		return false, nil
	case res == gaveUp && started:
		c.finishLater(p, false, 0) // keeps the lock
		return true, c.writeErr(h, err)
	case res == sendError:
		err = c.sendErr(err, started, h)
	}
	c.unlockW()
	return false, c.writeErr(h, err)
}

// writeReply writes a reply from a goroutine other than the holder of
// the read side (a handler's result, or a reply left to replyLater) and
// then releases the n bytes held for it. The reply must be written
// within WriteTimeout of ready, the wait for the write lock included,
// or the peer must keep taking bytes meanwhile (a stallWatch); if
// neither, the Conn is closed with ErrStalled. With slot set, a
// handler slot is given back once the lock is taken (see answer). ctl,
// if not nil, carries the reply's descriptors (see setFrame).
func (c *Conn) writeReply(h wire.Header, p []byte, n int64, ready time.Time, slot bool, ctl []byte) {
	defer c.release(n)
	w := c.watchStall(ready)
	locked := c.tryLockW() || w.wait(func(expired <-chan time.Time) bool {
		select {
		case c.wlock <- struct{}{}:
			return true
		case <-expired:
			return false
		}
	})
	if slot {
		<-c.sem
	}
	if !locked {
		c.stalled(h, "waiting for earlier frames")
		return
	}
	defer c.unlockW()
	if c.wclosed {
		return
	}
	c.setFrame(h, p, ctl)
	switch res, started, err := c.sendLocked(&patience{stall: w}); res {
	case gaveUp:
		c.stalled(h, "")
	case sendError:
		c.sendErr(err, started, h)
	}
	runtime.KeepAlive(p)
}

// reply writes a frame from the holder of the read side, waiting at
// most two writeSlices: what cannot go out by then is finished by
// finishLater. p may be a view of the read buffer or big. The n bytes
// held for the reply are released once it is written, or has failed to
// be.
func (r *reader) reply(h wire.Header, p []byte, n int64) error {
	c := r.c
	if !c.tryLockW() {
		// A caller is writing, perhaps waiting for the peer to read,
		// which the peer may only do once it has our reply.
		return c.replyLater(h, p, n)
	}
	if c.wclosed {
		c.unlockW()
		c.release(n)
		return c.writeErr(h, c.closedErr())
	}
	c.setFrame(h, p, nil)
	// A peer that reads takes even a large frame within one blocking
	// send; one that does not has had two writeSlices.
	res, started, err := c.sendLocked(&patience{waits: 2})
	switch res {
	case sent:
		c.unlockW()
		c.release(n)
		runtime.KeepAlive(p)
		return nil
	case gaveUp:
		lend := len(p) > 0 && len(r.big) > 0 && unsafe.SliceData(p) == unsafe.SliceData(r.big)
		if c.finishLater(p, lend, n) && lend {
			r.big = nil
		}
		return nil
	}
	err = c.sendErr(err, started, h)
	c.unlockW()
	c.release(n)
	return c.writeErr(h, err)
}

// replyLater writes a copy of a reply from a background goroutine, once
// the write lock is free, and releases the n bytes held for it then.
// At most MaxConcurrent wait at once; past that the reader waits too,
// which pushes back on the peer, but for no longer than WriteTimeout:
// then the Conn is closed with ErrStalled.
func (c *Conn) replyLater(h wire.Header, p []byte, n int64) error {
	ready := time.Now()
	select {
	case c.wsem <- struct{}{}:
	default:
		killed := false
		w := c.watchStall(ready)
		if !w.wait(func(expired <-chan time.Time) bool {
			select {
			case c.wsem <- struct{}{}:
				return true
			case <-expired:
				return false
			case <-c.kill:
				killed = true
				return true
			}
		}) {
			c.release(n)
			c.stalled(h, "with "+strconv.Itoa(cap(c.wsem))+" replies queued")
			return c.writeErr(h, c.closedErr())
		}
		if killed {
			c.release(n)
			return c.writeErr(h, c.closedErr())
		}
	}
	p = append([]byte(nil), p...)
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		defer func() { <-c.wsem }()
		c.writeReply(h, p, n, ready, false, nil)
	}()
	return nil
}

// finishLater hands the rest of the frame described by c.msg, and the
// write lock with it, to a background goroutine, which writes it unless
// the peer takes none of it for the Conn's WriteTimeout (a stallWatch;
// then it closes the Conn with ErrStalled), unlocks
// and releases the n held bytes, if any (the frame is a reply). The
// unsent part of p is copied first unless lend is set: then p is the
// reader's big buffer, which the goroutine keeps and gives back through
// spare; finishLater reports whether it kept it. Called with the lock
// held, so at most one runs at a time.
func (c *Conn) finishLater(p []byte, lend bool, n int64) (kept bool) {
	iov := unsafe.Slice(c.msg.Iov, c.msg.Iovlen)
	if last := &iov[len(iov)-1]; len(p) > 0 && int(last.Len) <= len(p) {
		rest := p[len(p)-int(last.Len):]
		if unsafe.SliceData(rest) == last.Base { // the last iovec is the payload's tail
			if !lend {
				rest = append([]byte(nil), rest...)
				last.Base = unsafe.SliceData(rest)
			}
			kept = lend
			p = rest
		}
	}
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		switch res, _, err := c.sendLocked(&patience{stall: c.watchStall(time.Now()), slow: true}); res {
		case gaveUp:
			c.abort(&OpError{Op: "write", Addr: c.cfg.Addr, Err: fmt.Errorf("%w: the peer is not reading: a frame was left incomplete, and none of it taken for %v", ErrStalled, c.cfg.WriteTimeout)})
		case sendError:
			c.abort(&OpError{Op: "write", Addr: c.cfg.Addr, Err: fmt.Errorf("frame left incomplete: %w", os.NewSyscallError("sendmsg", err))})
		}
		runtime.KeepAlive(p)
		c.unlockW()
		c.release(n)
		if kept {
			select {
			case c.spare <- p[:cap(p)][:0]:
			default:
			}
		}
	}()
	return kept
}

// stalled closes the Conn because a reply of type h could not be
// written, and the peer took nothing, for WriteTimeout.
func (c *Conn) stalled(h wire.Header, while string) {
	if while != "" {
		while = ", " + while
	}
	c.abort(c.writeErr(h, fmt.Errorf("%w: the peer is not reading its replies: a reply was not written, and the peer took nothing, for %v%s", ErrStalled, c.cfg.WriteTimeout, while)))
}

// sendErr classifies a failed sendmsg. Half a frame on the wire with no
// way to finish it loses the stream, so the Conn is closed.
func (c *Conn) sendErr(err error, partial bool, h wire.Header) error {
	err = os.NewSyscallError("sendmsg", err)
	if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
		err = closeErr(err) // shut down by Close, or closed by the peer
	}
	if partial {
		c.abort(c.writeErr(h, fmt.Errorf("frame left incomplete: %w", err)))
	}
	return err
}

func (c *Conn) writeErr(h wire.Header, err error) error {
	return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
}

// advance drops n written bytes from the front of the iovecs and
// reports whether the frame is complete.
func (c *Conn) advance(n int) bool {
	iov := unsafe.Slice(c.msg.Iov, c.msg.Iovlen)
	for n > 0 && len(iov) > 0 {
		if l := int(iov[0].Len); n >= l {
			n -= l
			iov = iov[1:]
			continue
		}
		iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
		iov[0].Len -= uint64(n)
		n = 0
	}
	if len(iov) == 0 {
		return true
	}
	c.msg.Iov = &iov[0]
	c.msg.SetIovlen(len(iov))
	return false
}
