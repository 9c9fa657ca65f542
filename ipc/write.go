//go:build linux

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

	"golang.org/x/sys/unix"
)

// Writing. Frames are never interleaved: a writer holds the write lock
// (wlock) from the first byte of a frame to the last. Three rules keep
// that from blocking anyone for long:
//
//   - The reader goroutine never waits long to write (reply). If
//     another writer holds the lock, or the socket buffer stays full for
//     two writeSlices, the rest of its reply is finished by a background
//     goroutine and the reader goes on reading. Otherwise two peers
//     answering each other's requests could both stop reading while
//     each waits for the other to read.
//   - A caller whose context ends in the middle of a frame gets its
//     error at once, but the frame is finished in the background with
//     the Conn's WriteTimeout, so one impatient caller does not break
//     the stream for everybody (finishLater).
//   - Every reply must be written within WriteTimeout of being ready,
//     its wait for the lock included; one that is not closes the Conn
//     with ErrStalled (the peer is not reading its replies), which also
//     ends the wait of everything queued behind it. Replies are held
//     (budget.go) until written, and the reader stops reading when the
//     Conn holds too much, so what waits is bounded too.
//
// The lock is a channel of capacity 1 rather than a sync.Mutex: it
// hands itself to waiters in the order they came, so a reply queued
// behind callers is not starved, and a waiter can give up at its
// deadline.

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

// writeFrame writes one frame for a caller. The waits for the write
// lock and for room in the socket buffer end when ctx ends or, if ctx
// has no deadline and timeout is positive, after timeout (each). It
// does not allocate unless it has to wait for the lock with a timeout
// or leave the frame to finishLater.
func (c *Conn) writeFrame(ctx context.Context, timeout time.Duration, h Header, p []byte) error {
	if err := c.lockW(ctx, timeout); err != nil {
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
	}
	if c.wclosed {
		c.unlockW()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: c.closedErr()}
	}
	left := c.setFrame(h, p)
	var deadline time.Time
	for {
		n, err := sendmsg(c.fd, &c.msg)
		if n > 0 {
			if left -= n; left == 0 {
				c.unlockW()
				runtime.KeepAlive(p)
				return nil
			}
			c.advance(n)
		}
		if err == nil || err == unix.EAGAIN {
			// A partial send, or a whole writeSlice (SO_SNDTIMEO) went by
			// without room: the peer reads slowly or not at all. Go on
			// unless the caller's time is up.
			if deadline.IsZero() {
				var ok bool
				if deadline, ok = ctx.Deadline(); !ok && timeout > 0 {
					deadline = time.Now().Add(timeout)
				}
			}
			if err = writeTimeUp(ctx, deadline); err == nil {
				c.waitWrite()
				continue
			}
			if left < HeaderSize+len(p) {
				c.finishLater(p, false, 0) // keeps the lock
				return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
			}
		} else {
			err = c.sendErr(err, left < HeaderSize+len(p), h)
		}
		c.unlockW()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
	}
}

// writeReply writes a reply from a goroutine other than the reader (a
// handler's result, or a reply the reader left to replyLater) and then
// releases the n bytes held for it. The reply must be written by
// deadline, the wait for the write lock included; if it is not, the
// Conn is closed with ErrStalled. With slot set, a handler slot is
// given back once the lock is taken (see answer).
func (c *Conn) writeReply(h Header, p []byte, n int64, deadline time.Time, slot bool) {
	defer c.release(n)
	err := c.lockW(context.Background(), max(time.Until(deadline), 1)) // > 0: a deadline
	if slot {
		<-c.sem
	}
	if err != nil {
		c.stalled(h, "waiting for earlier frames")
		return
	}
	defer c.unlockW()
	if c.wclosed {
		return
	}
	left := c.setFrame(h, p)
	for {
		k, err := sendmsg(c.fd, &c.msg)
		if k > 0 {
			if left -= k; left == 0 {
				runtime.KeepAlive(p)
				return
			}
			c.advance(k)
		}
		if err == nil || err == unix.EAGAIN {
			if time.Now().Before(deadline) {
				c.waitWrite()
				continue
			}
			c.stalled(h, "")
			return
		}
		c.sendErr(err, left < HeaderSize+len(p), h)
		return
	}
}

// stalled closes the Conn because a reply of type h could not be
// written within WriteTimeout.
func (c *Conn) stalled(h Header, while string) {
	if while != "" {
		while = ", " + while
	}
	c.abort(&OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: fmt.Errorf("%w: the peer is not reading its replies: a reply was not written within %v%s", ErrStalled, c.cfg.WriteTimeout, while)})
}

// reply writes a frame from the reader goroutine, waiting at most two
// writeSlices: what cannot go out by then is finished by finishLater.
// p may be a view of rbuf or big. The n bytes held for the reply are
// released once it is written, or has failed to be.
func (c *Conn) reply(h Header, p []byte, n int64) error {
	if !c.tryLockW() {
		// A caller is writing, perhaps waiting for the peer to read,
		// which the peer may only do once it has our reply.
		return c.replyLater(h, p, n)
	}
	if c.wclosed {
		c.unlockW()
		c.release(n)
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: c.closedErr()}
	}
	left := c.setFrame(h, p)
	for slices := 0; ; slices++ {
		k, err := sendmsg(c.fd, &c.msg)
		if k > 0 {
			if left -= k; left == 0 {
				c.unlockW()
				c.release(n)
				runtime.KeepAlive(p)
				return nil
			}
			c.advance(k)
		}
		if err == nil || err == unix.EAGAIN {
			// A peer that reads takes even a large frame within one
			// blocking send; one that does not has had two writeSlices.
			if slices == 0 {
				c.waitWrite()
				continue
			}
			c.finishLater(p, len(p) > 0 && len(c.big) > 0 && unsafe.SliceData(p) == unsafe.SliceData(c.big), n)
			return nil
		}
		err = c.sendErr(err, left < HeaderSize+len(p), h)
		c.unlockW()
		c.release(n)
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
	}
}

// replyLater writes a copy of a reply from a background goroutine, once
// the write lock is free, and releases the n bytes held for it then.
// At most MaxConcurrent wait at once; past that the reader waits too,
// which pushes back on the peer, but for no longer than WriteTimeout:
// then the Conn is closed with ErrStalled.
func (c *Conn) replyLater(h Header, p []byte, n int64) error {
	deadline := time.Now().Add(c.cfg.WriteTimeout)
	select {
	case c.wsem <- struct{}{}:
	default:
		t := time.NewTimer(c.cfg.WriteTimeout)
		select {
		case c.wsem <- struct{}{}:
			t.Stop()
		case <-t.C:
			c.release(n)
			c.stalled(h, "with "+strconv.Itoa(cap(c.wsem))+" replies queued")
			return c.closedErrOp(h)
		case <-c.kill:
			t.Stop()
			c.release(n)
			return c.closedErrOp(h)
		}
	}
	p = append([]byte(nil), p...)
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		defer func() { <-c.wsem }()
		c.writeReply(h, p, n, deadline, false)
	}()
	return nil
}

func (c *Conn) closedErrOp(h Header) error {
	return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: c.closedErr()}
}

// setFrame points the iovecs at h and p and returns the frame's size.
// The caller holds the write lock.
func (c *Conn) setFrame(h Header, p []byte) int {
	h.Length = uint32(len(p))
	PutHeader(c.whdr[:], h)
	c.msg.Iov = &c.iov[0]
	c.iov[0].Base = &c.whdr[0]
	c.iov[0].SetLen(HeaderSize)
	c.msg.Iovlen = 1
	if len(p) > 0 {
		c.iov[1].Base = unsafe.SliceData(p)
		c.iov[1].SetLen(len(p))
		c.msg.Iovlen = 2
	}
	return HeaderSize + len(p)
}

// sendErr classifies a failed sendmsg. Half a frame on the wire with no
// way to finish it loses the stream, so the Conn is closed.
func (c *Conn) sendErr(err error, partial bool, h Header) error {
	err = os.NewSyscallError("sendmsg", err)
	if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
		err = closeErr(err) // shut down by Close, or closed by the peer
	}
	if partial {
		c.abort(&OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: fmt.Errorf("frame left incomplete: %w", err)})
	}
	return err
}

// finishLater hands the rest of the frame described by c.msg, and the
// write lock with it, to a background goroutine, which writes it within
// the Conn's WriteTimeout (or closes the Conn with ErrStalled), unlocks
// and releases the held bytes, if any (n: the frame is a reply). The
// unsent part of p is copied first unless lend is set, in which case p
// is c.big, lent to the goroutine and given back through c.spare.
// Called with the lock held, so at most one runs at a time.
func (c *Conn) finishLater(p []byte, lend bool, n int64) {
	iov := unsafe.Slice(c.msg.Iov, c.msg.Iovlen)
	if last := &iov[len(iov)-1]; len(p) > 0 && int(last.Len) <= len(p) {
		rest := p[len(p)-int(last.Len):]
		if unsafe.SliceData(rest) == last.Base { // the last iovec is the payload's tail
			if lend {
				c.big = nil
			} else {
				rest = append([]byte(nil), rest...)
				last.Base = unsafe.SliceData(rest)
			}
			p = rest
		}
	}
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		deadline := time.Now().Add(c.cfg.WriteTimeout)
		for {
			n, err := sendmsg(c.fd, &c.msg)
			if n > 0 && c.advance(n) {
				break
			}
			if err == nil || err == unix.EAGAIN {
				if time.Now().Before(deadline) {
					c.waitWrite()
					continue
				}
				c.abort(&OpError{Op: "write", Addr: c.cfg.Addr, Err: fmt.Errorf("%w: the peer is not reading: a frame was left incomplete for %v", ErrStalled, c.cfg.WriteTimeout)})
				break
			}
			c.abort(&OpError{Op: "write", Addr: c.cfg.Addr, Err: fmt.Errorf("frame left incomplete: %w", os.NewSyscallError("sendmsg", err))})
			break
		}
		runtime.KeepAlive(p)
		c.unlockW()
		c.release(n)
		if lend {
			select {
			case c.spare <- p[:cap(p)][:0]:
			default:
			}
		}
	}()
}

// writeTimeUp reports ctx's error, or os.ErrDeadlineExceeded once the
// deadline (if any) has passed.
func writeTimeUp(ctx context.Context, deadline time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return os.ErrDeadlineExceeded
	}
	return nil
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
	c.msg.Iovlen = uint64(len(iov))
	return false
}
