//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Writing. Frames are never interleaved: a writer holds wmu from the
// first byte of a frame to the last. Two rules keep that from blocking
// anyone for long:
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

// writeFrame writes one frame for a caller or a handler goroutine. The
// wait for room in the socket buffer ends when ctx ends or, if ctx has
// no deadline and timeout is positive, after timeout. It does not
// allocate unless it has to leave the frame to finishLater.
func (c *Conn) writeFrame(ctx context.Context, timeout time.Duration, h Header, p []byte) error {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: c.closedErr()}
	}
	left := c.setFrame(h, p)
	var deadline time.Time
	for {
		n, err := sendmsg(c.fd, &c.msg)
		if n > 0 {
			if left -= n; left == 0 {
				c.wmu.Unlock()
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
				c.finishLater(p, false) // keeps wmu
				return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
			}
		} else {
			err = c.sendErr(err, left < HeaderSize+len(p), h)
		}
		c.wmu.Unlock()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
	}
}

// reply writes a frame from the reader goroutine, waiting at most two
// writeSlices: what cannot go out by then is finished by finishLater.
// p may be a view of rbuf or big.
func (c *Conn) reply(h Header, p []byte) error {
	if !c.wmu.TryLock() {
		// A caller is writing, perhaps waiting for the peer to read,
		// which the peer may only do once it has our reply.
		c.replyLater(h, p)
		return nil
	}
	if c.wclosed {
		c.wmu.Unlock()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: c.closedErr()}
	}
	left := c.setFrame(h, p)
	for slices := 0; ; slices++ {
		n, err := sendmsg(c.fd, &c.msg)
		if n > 0 {
			if left -= n; left == 0 {
				c.wmu.Unlock()
				runtime.KeepAlive(p)
				return nil
			}
			c.advance(n)
		}
		if err == nil || err == unix.EAGAIN {
			// A peer that reads takes even a large frame within one
			// blocking send; one that does not has had two writeSlices.
			if slices == 0 {
				c.waitWrite()
				continue
			}
			c.finishLater(p, len(p) > 0 && len(c.big) > 0 && unsafe.SliceData(p) == unsafe.SliceData(c.big))
			return nil
		}
		err = c.sendErr(err, left < HeaderSize+len(p), h)
		c.wmu.Unlock()
		return &OpError{Op: "write " + h.Type.String(), Addr: c.cfg.Addr, Err: err}
	}
}

// replyLater writes a copy of a reply from a background goroutine, once
// wmu is free. At most MaxConcurrent wait at once; past that the reader
// waits too, which pushes back on the peer.
func (c *Conn) replyLater(h Header, p []byte) {
	p = append([]byte(nil), p...)
	c.wsem <- struct{}{}
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		defer func() { <-c.wsem }()
		c.writeFrame(context.Background(), c.cfg.WriteTimeout, h, p)
	}()
}

// setFrame points the iovecs at h and p and returns the frame's size.
// The caller holds wmu.
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

// finishLater hands the rest of the frame described by c.msg, and wmu
// with it, to a background goroutine, which writes it within the
// Conn's WriteTimeout (or closes the Conn) and then unlocks wmu. The
// unsent part of p is copied first unless lend is set, in which case p
// is c.big, lent to the goroutine and given back through c.spare.
// Called with wmu held, so at most one runs at a time.
func (c *Conn) finishLater(p []byte, lend bool) {
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
				err = os.ErrDeadlineExceeded
			}
			c.abort(&OpError{Op: "write", Addr: c.cfg.Addr, Err: fmt.Errorf("frame left incomplete: %w", err)})
			break
		}
		runtime.KeepAlive(p)
		c.wmu.Unlock()
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
