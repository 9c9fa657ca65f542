package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// Moving an established connection from one Conn to another, perhaps in
// another process: Detach stops a Conn at a frame boundary without
// closing its socket and returns the socket and the connection's state
// (a Session); Resume serves them on. A supervisor's front door hands
// its clients to workers this way (docs/PROTOCOL.md, "Handing clients
// to workers"), and a stopping worker hands them back.
//
// The background reader is the one that stops: at the top of its loop,
// between frames, when a detach was asked for (Detach), or before it
// takes in a request whose type ConnConfig.DetachAt names, leaving that
// request unread. It then tears the Conn down without shutting the
// socket down (detachTeardown): pending calls fail, every request it
// took in is answered and every reply written, then it duplicates the
// socket's descriptor for the new owner, closes its own, and keeps the
// bytes it had read and not yet handled as Session.Buffered. A reader
// asleep in read(2) (blocking mode) waits at most detachTick at a time
// on a detachable Conn, so that it sees a detach; in polled mode Detach
// wakes it through the poller (sock.wake).
//
// A Conn whose peer has asked for a shutdown (it is draining) does not
// detach: it goes on until it closes, and Detach reports that.

// detachTick bounds one read(2) of the background reader of a
// detachable Conn in blocking mode, so that a detach is seen this soon
// when nothing arrives.
const detachTick = 100 * time.Millisecond

// errWake is returned by sock.read to the background reader, between
// frames, once a detach has been asked for.
var errWake = errors.New("ipc: woken for a detach")

// Session is the state of an established connection, moved from the
// Conn that served it ([Conn.Detach]) to the one that serves it on
// ([Resume]).
type Session struct {
	Version uint16     // the negotiated protocol version
	Peer    wire.Hello // the peer's hello
	// NextID is the next request id of this side: the new owner goes
	// on from it, so that a late reply to a call of the old owner is
	// never taken for one of its own.
	NextID uint64
	// Buffered are bytes already read from the socket that belong to
	// frames not yet handled, at most 16 KiB: the new owner reads them
	// first.
	Buffered []byte
}

// sockWake is the part of a detachable sock that lets a detach reach
// its background reader (see the top of this file). tick, idleFor and
// boundary belong to the holder of the read side; woken and past are
// set by wake from any goroutine.
type sockWake struct {
	woken    atomic.Bool
	past     atomic.Bool   // polled: wake set a deadline in the past
	boundary bool          // the read side is between frames: errWake may stop it
	idleFor  time.Duration // blocking: ticks without data since the last read

	// dupHook, if set (by tests, before the Conn detaches), runs in
	// detach between the dup and the close, with mu held.
	dupHook func()
}

// wake asks the background reader to look at a detach: at once in
// polled mode, within detachTick in blocking mode. Any goroutine.
func (s *sock) wake() {
	if s.wk == nil {
		return
	}
	s.wk.woken.Store(true)
	s.mu.Lock()
	if s.fd >= 0 && s.file != nil {
		s.wk.past.Store(true)
		s.file.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
}

// unwake forgets a wake that the reader did not act on (the Conn is
// draining). Holder of the read side.
func (s *sock) unwake() {
	if s.wk != nil {
		s.wk.woken.Store(false)
	}
}

// bgTimeout is the background reader's read timeout in blocking mode:
// IdleTimeout (or none), and at most detachTick when detachable.
func (s *sock) bgTimeout() time.Duration {
	if s.wk == nil {
		return s.idle
	}
	if s.idle > 0 {
		return min(s.idle, detachTick)
	}
	return detachTick
}

// readBlocking is one read in blocking mode for the background reader
// of a detachable sock: it goes on reading across detachTick timeouts,
// counting them against IdleTimeout, unless a wake comes while the read
// side is between frames (errWake).
func (s *sock) readBlocking(p []byte) (int, error) {
	for {
		if s.wk.boundary && s.wk.woken.Load() {
			return 0, errWake
		}
		n, err := s.readFD(p)
		if err != unix.EAGAIN {
			s.wk.idleFor = 0
			return n, err
		}
		s.wk.idleFor += detachTick
		if s.idle > 0 && s.wk.idleFor >= s.idle {
			return 0, err // idle
		}
	}
}

// readPolled is sock.read in polled mode for a detachable sock.
func (s *sock) readPolled(p []byte) (int, error) {
	for {
		if s.idle > 0 {
			s.file.SetReadDeadline(time.Now().Add(s.idle))
		} else if s.wk.past.Swap(false) {
			s.file.SetReadDeadline(time.Time{})
		}
		if s.wk.boundary && s.wk.woken.Load() {
			return 0, errWake
		}
		s.rp = p
		err := s.rc.Read(s.readFn)
		s.rp = nil
		if err == nil {
			return s.rn, s.rerr
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, err
		}
		if !s.wk.woken.Load() {
			return 0, unix.EAGAIN // as SO_RCVTIMEO reports it: idle
		}
		// Woken in the middle of a frame: read on; the reader stops at
		// the next boundary.
	}
}

// Draining returns a channel that is closed when the peer's shutdown
// request arrives: from then on the Conn refuses new requests, and it
// answers the shutdown once every earlier request is answered. A
// Handler that serves long-lived requests (a worker's handed-off
// clients) ends them when it is closed, so that the shutdown can be
// answered.
func (c *Conn) Draining() <-chan struct{} { return c.drainCh }

// markDraining closes drainCh, once.
func (c *Conn) markDraining() { c.drainOnce.Do(func() { close(c.drainCh) }) }

// detached is what a detached Conn leaves for Detach to return.
type detached struct {
	file *os.File // nil once Detach has returned it
	sess Session
}

// Detach stops the Conn at the next frame boundary without closing the
// connection and returns its socket (in blocking mode, and so outside
// the runtime's poller), which the caller owns, and the
// state another Conn needs to serve it on ([Resume]). It waits until
// every request the Conn has taken in is answered and its reply
// written; calls of this side still waiting fail with an error wrapping
// [ErrDetached] (so detach only connections you make no calls on, or
// whose calls have returned), and the Conn is done.
//
// Detach needs [ConnConfig].Detachable, or a Conn that has detached by
// itself (DetachAt); it fails at once otherwise. It returns ctx's
// error if ctx ends first: the detach goes on, and a later Detach
// returns its result. It returns an error wrapping [ErrClosed] if the
// Conn closed another way first: it was closed, the stream broke, or
// the peer asked for a shutdown, which is let run to its end. A Conn
// that detached by itself (DetachAt) is done with [Conn.Err] wrapping
// ErrDetached; Detach then returns its socket at once. The socket is
// returned once; later calls return the Session and a nil file.
func (c *Conn) Detach(ctx context.Context) (*os.File, Session, error) {
	switch {
	case c.sock.wk != nil:
		c.detachWant.Store(true)
		c.sock.wake()
	case c.cfg.DetachAt == nil || c.Err() == nil:
		return nil, Session{}, &OpError{Op: "detach", Addr: c.cfg.Addr, Err: errors.New("the Conn is not detachable (ConnConfig.Detachable), and has not detached by itself (DetachAt)")}
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, Session{}, &OpError{Op: "detach", Addr: c.cfg.Addr, Err: ctx.Err()}
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	d := c.detached
	if d == nil {
		return nil, Session{}, &OpError{Op: "detach", Addr: c.cfg.Addr, Err: closeErr(c.err)}
	}
	f := d.file
	d.file = nil
	return f, d.sess, nil
}

// detachTeardown ends the Conn with its socket open, for Detach. The
// background reader runs it, holding the read side at a frame boundary
// (r.buf[r.r:r.w] are the bytes read and not handled).
func (c *Conn) detachTeardown(r *reader) {
	errDet := &OpError{Op: "detach", Addr: c.cfg.Addr, Err: ErrDetached}
	c.pmu.Lock()
	if c.err == nil {
		c.err = errDet
	}
	c.closed = true
	pending := c.pending
	c.pending = nil
	for _, cl := range pending {
		cl.waiting = false
	}
	c.nwait.Store(0)
	next := c.nextID + 1
	c.pmu.Unlock()
	for _, cl := range pending {
		cl.err = closeErr(errDet)
		c.finish(cl)
	}
	// Every request taken in is answered, and its reply written (or
	// the Conn failed or was closed meanwhile: then it is not
	// detached, and the handlers still at work are cancelled). The
	// goroutine ends when the last of them has answered.
	answered := make(chan struct{})
	go func() { c.inflight.Wait(); close(answered) }()
	select {
	case <-answered:
	case <-c.kill:
		c.cancel()
		<-answered
	}
	c.handlers.Wait()
	c.writers.Wait()

	var f *os.File
	c.wlock <- struct{}{}
	if !c.wclosed {
		var err error
		if f, err = c.sock.detach(c.killed); err != nil {
			c.pmu.Lock()
			c.err = &OpError{Op: "detach", Addr: c.cfg.Addr, Err: err}
			c.pmu.Unlock()
		}
	}
	c.wclosed = true
	if f == nil {
		c.sock.shutdown(false) // not detached: the connection ends here
	}
	c.sock.close() // closed already if detached
	<-c.wlock
	r.dropFiles()
	c.cancel()
	c.giveBack()
	c.pmu.Lock()
	if f != nil {
		c.detached = &detached{file: f, sess: Session{Version: c.ver, Peer: c.peer, NextID: next, Buffered: append([]byte(nil), r.buf[r.r:r.w]...)}}
	} else if c.err == errDet {
		c.err = closeErr(c.closedErr0())
	}
	c.pmu.Unlock()
	close(c.done)
}

// detach duplicates the socket's descriptor for a new owner and closes
// its own, unless the fd is closed or killed reports that the Conn has
// started closing: then it returns nil, and the caller shuts the
// connection down. Both happen under mu, which shutdown takes too, so
// that the socket it returns is never shut down by this Conn: shutdown
// acts on the socket, every duplicate of it included, and the Conn's
// Close (or an abort) may run in another goroutine at any time. Those
// close kill before they call shutdown, so a shutdown that waits for mu
// here was either seen by killed, or finds the fd closed. The caller
// holds the write lock.
func (s *sock) detach(killed func() bool) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 || killed() {
		return nil, nil
	}
	fd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	// Blocking, so that os.NewFile leaves it out of the runtime's
	// poller: whoever holds it while another process serves the
	// connection (a front door, during a hand-over) must not be woken
	// by the traffic of that connection.
	unix.SetNonblock(fd, false)
	if s.wk != nil && s.wk.dupHook != nil {
		s.wk.dupHook()
	}
	s.closeLocked()
	return os.NewFile(uintptr(fd), "pairvisor-detached"), nil
}

// closedErr0 is why a Conn that was to detach closed instead: closed
// by Close, or failed. Called with pmu held.
func (c *Conn) closedErr0() error {
	if c.sock.closedByUs() {
		return ErrClosed
	}
	return &OpError{Op: "detach", Addr: c.cfg.Addr, Err: errors.New("the connection failed while detaching")}
}

// Resume serves an established connection on: f is its socket (taken
// over and closed in every case, as by [NewConn]) and s the state
// [Conn.Detach] returned, perhaps in another process. No hellos are
// exchanged: the Conn speaks s.Version with the peer of s.Peer, reads
// s.Buffered before the socket, and numbers its requests from s.NextID.
// s.Version must be one that cfg allows (see [ConnConfig].MaxVersion
// and MaxFiles). The socket's timeouts (SO_RCVTIMEO, SO_SNDTIMEO), which
// the detached Conn set for itself, are set for this one, as NewConn
// sets those of an inherited socket.
func Resume(f *os.File, s Session, cfg ConnConfig) (*Conn, error) {
	if len(s.Buffered) > readBufSize {
		f.Close()
		return nil, &OpError{Op: "resume", Addr: cfg.Addr, Err: fmt.Errorf("%d bytes buffered, at most %d", len(s.Buffered), readBufSize)}
	}
	fd, err := takeSocket(f)
	if err != nil {
		return nil, &OpError{Op: "resume", Addr: cfg.Addr, Err: err}
	}
	return newConn(context.Background(), fd, cfg, s.Buffered, &s)
}
