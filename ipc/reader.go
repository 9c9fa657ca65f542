package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// The read side of a Conn: see "The read side" at the top of conn.go.

// reader is the read side. Whoever holds it (the background reader, or a
// leading caller) is the only goroutine that reads from the socket or
// touches these fields; it is passed on only by handOn.
type reader struct {
	c *Conn

	buf  []byte // read buffer: buf[r:w] is read and not yet consumed
	r, w int
	big  []byte // large payloads answered inline; lent to finishLater at times

	part partial // a reply whose payload is partly read

	// Received file descriptors (fds.go): batches not yet claimed by a
	// frame, oldest first, and the frame being handled's.
	files   []fileBatch
	inFiles []int

	hello    bool // the peer's hello has been read
	draining bool // a shutdown request arrived: refuse later requests
	served   bool // the background reader has handed a reply to a Call
	slow     bool // a leader found nothing to read for ioSlice; nothing has arrived since
	large    bool // the last frame's payload was large: read the next header alone (fill)
	first    bool // the next read is a new leader's first (poll)

	// poll's state: whether the background reader polls (a leader's is
	// Conn.spin; bgSpin is atomic only to share poll's signature), and
	// the pace of each one's polls while it does not.
	bgPolls    bool // the background reader may poll (poll): blocking mode, GOMAXPROCS > 1
	bgSpin     atomic.Bool
	bgRepoll   repoll
	leadRepoll repoll

	lastYield time.Time
	idleSince time.Time // when the read side was last left idle

	err error // why the stream ended; once set, only teardown follows
}

// partial is a reply (or a skipped frame) whose payload a leader had
// begun to read when it passed the read side on; the next holder
// finishes it first.
type partial struct {
	active bool
	kind   partKind
	cl     *call  // whose reply; nil for partDiscard and partConnErr
	buf    []byte // the payload; buf[:got] is read
	got    int
	left   int   // partDiscard: bytes still to skip
	files  []int // partReply: the descriptors that came with it
}

type partKind uint8

const (
	partReply   partKind = iota // cl's reply, into buf (cl.dst or a new slice)
	partError                   // an error reply to cl
	partConnErr                 // an error frame with id 0: the peer is closing
	partDiscard                 // a reply nobody waits for any more
)

// Why reader.run returned.
type stop uint8

const (
	stopEnded    stop = iota // r.err is set: the stream ended or broke
	stopOwnReply             // the leader's call is done
	stopRequest              // a leader met a request (left unread in buf)
	stopSlow                 // a leader found nothing to read for ioSlice
	stopGaveUp               // a caller holding the read side gave up: its context ended
	stopPassed               // the background reader has passed the read side on
	stopBoundary             // (handOn) the background reader, about to block in read(2)
	stopDetach               // the background reader, between frames: detach (detach.go)
)

func newReader(c *Conn, prefix []byte) *reader {
	r := &reader{c: c, buf: make([]byte, readBufSize)}
	// With one P, a background reader that polls would keep the
	// handlers it has just started from running until it sleeps.
	r.bgPolls = c.sock.leads() && runtime.GOMAXPROCS(0) > 1
	r.bgSpin.Store(true)
	r.w = copy(r.buf, prefix)
	return r
}

// handOn passes the read side on from its holder, which stopped for
// reason why, and reports whether the background reader (the caller,
// for stopBoundary) keeps it. Called with pmu held.
//
// The read side goes to a waiting follower if there is one, so that it
// reads its own reply; else it is left idle for the next caller, if
// nothing is buffered and, for the background reader, it has just
// handed a reply to a caller (who is likely to call again); else to the
// background reader. Calls still writing their requests find it idle
// and lead; a Probe's pong is read by the next caller, or by the
// background reader after linger. It always goes to the background
// reader once the stream has ended or the Conn is closing (teardown),
// with a request to answer, or with a frame half read after a leader
// found nothing to read for ioSlice.
func (c *Conn) handOn(r *reader, why stop) (keep bool) {
	bg := why == stopBoundary
	r.slow = r.slow || why == stopSlow
	c.byCall = false
	switch why {
	case stopOwnReply, stopGaveUp, stopBoundary:
		if r.err != nil || !c.sock.leads() || c.killed() {
			break
		}
		if f := c.follower(); f != nil {
			f.waiting = false
			c.nwait.Add(-1)
			f.lead = r
			f.state.Store(stateLead)
			f.done <- struct{}{}
			c.byCall = true
			return false
		}
		if r.r == r.w && !r.part.active && (!bg || r.served) {
			r.served = false
			r.idleSince = time.Now()
			c.idle = r
			return false
		}
	}
	if bg {
		return true
	}
	c.toBg <- r
	return false
}

// follower returns a call that waits for its reply, if any. Called with
// pmu held.
func (c *Conn) follower() *call {
	if c.nwait.Load() == 0 {
		return nil
	}
	for _, cl := range c.pending {
		if cl.waiting {
			return cl
		}
	}
	return nil
}

// background is the background reader goroutine: it holds the read side
// from the start, reads whenever no caller does, and tears the Conn down
// at the end.
func (c *Conn) background(r *reader) {
	for {
		why := stopEnded
		if err := c.sock.lead(false); err != nil {
			r.err = &OpError{Op: "read", Addr: c.cfg.Addr, Err: err}
		} else if r.err == nil {
			why = r.run(context.Background(), nil) // ctx matters only to a leader
		}
		if why == stopEnded {
			c.teardown(r)
			return
		}
		if why == stopDetach {
			c.detachTeardown(r) // detach.go
			return
		}
		r = c.waitRead()
	}
}

// waitRead waits until the background reader gets the read side back:
// passed to it, left idle for linger, or idle when the Conn closes. It
// looks at an idle read side every linger, at one held by a caller every
// 8 linger: an idle wait costs no wake-up per call, only a timer while
// calls go on.
func (c *Conn) waitRead() *reader {
	t := c.linger
	t.Reset(linger)
	defer t.Stop()
	for {
		select {
		case r := <-c.toBg:
			return r
		case <-c.kill:
			c.pmu.Lock()
			r := c.idle
			c.idle = nil
			c.pmu.Unlock()
			if r == nil {
				// Its holder sees the shutdown and passes it on.
				r = <-c.toBg
			}
			return r
		case <-t.C:
			// While a caller holds the read side, look again less often:
			// it hands the read side on itself, unless it leaves it idle.
			wait := 8 * linger
			c.pmu.Lock()
			r := c.idle
			if r != nil {
				d := time.Since(r.idleSince)
				if d >= linger {
					c.idle = nil
					c.pmu.Unlock()
					return r
				}
				wait = linger - d
			}
			c.pmu.Unlock()
			t.Reset(wait)
		}
	}
}

// run reads and handles frames as the holder of the read side: for lead
// (a caller, whose context is ctx) until lead is done or ctx has ended,
// and for the background reader (lead nil) until the stream ends or, at
// a frame boundary with nothing buffered, handOn passes the read side
// on. A leader leaves requests to the background reader (stopRequest).
// The background reader does not pass the read side back to a follower
// that gave it up for want of data (stopSlow) until data has come.
func (r *reader) run(ctx context.Context, lead *call) stop {
	c := r.c
	for {
		if r.part.active {
			if err := r.finishPart(); err != nil {
				return r.stopOn(err)
			}
		}
		if lead == nil && !r.draining && c.detachWant.Load() {
			return stopDetach
		}
		if lead != nil {
			if lead.state.Load() == stateDone {
				return stopOwnReply
			}
			if ctx.Err() != nil {
				return stopGaveUp
			}
		} else if r.r == r.w && r.hello && !r.slow && (r.served || c.nwait.Load() > 0) && c.sock.leads() {
			c.pmu.Lock()
			keep := c.handOn(r, stopBoundary)
			c.pmu.Unlock()
			if !keep {
				return stopPassed
			}
		}
		wk := c.sock.wk
		if wk != nil && lead == nil {
			wk.boundary = true
		}
		err := r.fillHeader()
		if wk != nil {
			wk.boundary = false
		}
		if err == errWake {
			if !r.draining {
				return stopDetach
			}
			c.sock.unwake() // a draining Conn runs to its end
			continue
		}
		if err != nil {
			switch {
			case err == errSlice:
			case err == io.EOF && r.r == r.w:
				err = ErrPeerClosed
			case err == io.EOF:
				err = r.readErr(&wire.FrameError{Err: wire.ErrTruncated, Detail: fmt.Sprintf("stream ended after %d of %d header bytes", r.w-r.r, wire.HeaderSize)})
			default:
				err = r.readErr(err)
			}
			return r.stopOn(err)
		}
		h, err := wire.ParseHeader(r.buf[r.r:r.w], c.cfg.MaxPayload)
		if err != nil {
			return r.stopOn(r.protocolErr(err))
		}
		if lead != nil && !h.IsReply() {
			return stopRequest
		}
		if lead == nil && r.hello && !h.IsReply() && !r.draining && c.cfg.DetachAt != nil && c.cfg.DetachAt(h.Type) {
			c.detachWant.Store(true)
			return stopDetach // the request stays unread
		}
		if h.Flags&wire.FlagFiles != 0 || len(r.files) != 0 {
			if err := r.claimFiles(h); err != nil {
				return r.stopOn(err)
			}
		}
		r.r += wire.HeaderSize
		r.large = h.Length >= alignThreshold
		switch {
		case !r.hello:
			err = r.readHello(h)
		case h.IsReply():
			err = r.deliver(h)
		case h.Type == wire.TypeHello || h.Type == wire.TypeError:
			err = r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s frame without the reply flag after the handshake", h.Type)})
		case h.ID == 0:
			err = r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s request with id 0, which is reserved", h.Type)})
		case h.Type == wire.TypePing:
			err = r.answerInline(h, wire.MaxPingPayload)
		case h.Type == wire.TypeEcho && !c.cfg.ForwardEcho:
			err = r.answerInline(h, c.cfg.MaxPayload)
		case h.Type == wire.TypeCancel:
			err = r.cancelRequest(h)
		case h.Type == wire.TypeClient && c.ver < 3:
			err = r.protocolErr(&wire.FrameError{Err: wire.ErrUnknownType, Detail: fmt.Sprintf("type byte %d (client) on a version %d connection", uint8(h.Type), c.ver)})
		default:
			err = r.dispatch(h)
		}
		if r.inFiles != nil { // nobody took them: a ping, a refused request, ...
			closeFDs(r.takeFiles())
		}
		if err != nil {
			return r.stopOn(err)
		}
	}
}

// stopOn turns an error of run's into its reason to stop: errSlice
// leaves the read side to the background reader; any other error ends
// the stream.
func (r *reader) stopOn(err error) stop {
	if err == errSlice {
		return stopSlow
	}
	r.err = err
	return stopEnded
}

// deliver reads a reply and hands it to the call waiting for it. A reply
// that no call waits for (its caller gave up) is read and dropped,
// unless it is an error with id 0: the peer's word on the connection,
// which ends it.
func (r *reader) deliver(h wire.Header) error {
	c := r.c
	if h.Type == wire.TypeHello || h.Type == wire.TypeCancel {
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s frame with the reply flag", h.Type)})
	}
	c.pmu.Lock()
	cl := c.claim(h.ID)
	c.pmu.Unlock()
	n := int(h.Length)
	p := partial{active: true, cl: cl}
	switch {
	case cl == nil && h.Type == wire.TypeError && h.ID == 0:
		p.kind, p.buf = partConnErr, make([]byte, n)
	case cl == nil: // its caller gave up
		p.kind, p.left = partDiscard, n
	case h.Type == wire.TypeError:
		p.kind, p.buf = partError, make([]byte, n)
	case h.Type != cl.typ:
		err := r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s reply to %s request %d", h.Type, cl.typ, h.ID)})
		cl.err = closeErr(err)
		c.finish(cl)
		return err
	default:
		p.kind, p.buf = partReply, cl.dst
		if cap(p.buf) < n {
			p.buf = make([]byte, n)
		}
		p.buf = p.buf[:n]
		p.files = r.takeFiles()
	}
	if p.kind == partDiscard {
		k := min(p.left, r.w-r.r)
		r.r += k
		p.left -= k
	} else {
		p.got = copy(p.buf, r.buf[r.r:r.w])
		r.r += p.got
	}
	r.part = p
	return r.finishPart()
}

// finishPart reads the rest of r.part's payload and completes it. On
// errSlice it keeps what it has read, for the next holder to finish.
func (r *reader) finishPart() error {
	p := &r.part
	var err error
	if p.kind == partDiscard {
		err = r.skip(&p.left)
	} else {
		err = r.readInto(p.buf, &p.got)
	}
	if err == errSlice {
		return err
	}
	cl, buf, kind, files := p.cl, p.buf, p.kind, p.files
	*p = partial{}
	if err != nil {
		closeFDs(files)
		err = r.readErr(err)
		if cl != nil {
			cl.err = closeErr(err) // the Conn closes on any error here
			r.c.finish(cl)
		}
		return err
	}
	switch kind {
	case partReply:
		cl.reply, cl.files = buf, files
	case partError:
		cl.err = wire.ParseError(buf)
	case partConnErr:
		return &OpError{Op: "read", Addr: r.c.cfg.Addr, Err: wire.ParseError(buf)}
	case partDiscard:
		return nil
	}
	if cl.probe == nil {
		r.served = true
	}
	r.c.finish(cl)
	return nil
}

// readHello reads the peer's first frame, which must be a hello: no
// reply flag, id 0, a payload of 8 to wire.MaxHelloPayload bytes with a
// valid version range. An error reply in its place is the peer's refusal
// of the connection, which ends it without an answer.
func (r *reader) readHello(h wire.Header) error {
	c := r.c
	switch {
	case h.Type == wire.TypeError && h.IsReply():
		p, err := r.readPayload(h)
		if err != nil {
			return err
		}
		return &OpError{Op: "hello", Addr: c.cfg.Addr, Err: wire.ParseError(p)}
	case h.Type != wire.TypeHello:
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("first frame is %s, want hello", h.Type)})
	case h.IsReply():
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: "hello with the reply flag"})
	case h.ID != 0:
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("hello with id %d, want 0", h.ID)})
	case h.Length > wire.MaxHelloPayload:
		return r.protocolErr(&wire.FrameError{Err: wire.ErrFrameTooLarge, Detail: fmt.Sprintf("hello payload of %d bytes exceeds the limit of %d", h.Length, wire.MaxHelloPayload)})
	}
	p, err := r.readPayload(h)
	if err != nil {
		return err
	}
	peer, err := wire.ParseHello(p)
	if err != nil {
		return r.protocolErr(err)
	}
	v, err := negotiate(c.ourHello(0), peer)
	if err != nil {
		c.sendConnError(wire.CodeVersion, err.Error())
		return &OpError{Op: "hello", Addr: c.cfg.Addr, Err: err}
	}
	c.peer, c.ver = peer, v
	r.hello = true
	close(c.helloDone)
	return nil
}

func (r *reader) readErr(err error) error {
	if oe, ok := err.(*OpError); ok {
		return oe // already said (a protocol error found while reading)
	}
	if err == io.EOF {
		err = &wire.FrameError{Err: wire.ErrTruncated, Detail: "stream ended inside a frame"}
	} else if errors.Is(err, unix.EAGAIN) {
		err = fmt.Errorf("%w: nothing received for %v", ErrIdle, r.c.cfg.IdleTimeout)
	}
	return &OpError{Op: "read", Addr: r.c.cfg.Addr, Err: err}
}

// fill makes at least n bytes (n <= len(buf)) available in buf[r:w],
// reading as much as buf takes.
func (r *reader) fill(n int) error { return r.fillTo(n, false) }

// fillHeader makes the next header available in buf[r:w]. After a
// large frame it reads no more than the header: the next frame is
// likely large too, and its payload is better read straight into its
// destination, aligned, than into buf and then copied (see readInto).
func (r *reader) fillHeader() error { return r.fillTo(wire.HeaderSize, r.large) }

func (r *reader) fillTo(n int, exact bool) error {
	if r.w-r.r >= n {
		return nil
	}
	if r.r == r.w {
		r.r, r.w = 0, 0
	} else if r.r+n > len(r.buf) {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	end := len(r.buf)
	if exact {
		end = r.r + n
	}
	for r.w-r.r < n {
		k, err := r.read(r.buf[r.w:end])
		if err != nil {
			return err
		}
		r.w += k
	}
	return nil
}

// read is one read(2) into p. It yields the processor every yieldEvery
// so that the runtime does not take the P of a goroutine that only ever
// sits in system calls (docs/BENCHMARKS.md).
//
// In blocking mode a read that would wait first polls the socket for up
// to spinFor (see poll): a leader's first read, while the replies it
// waits for come quickly, and every read of the background reader,
// while what it reads comes quickly.
func (r *reader) read(p []byte) (int, error) {
	now := time.Now()
	if now.Sub(r.lastYield) > yieldEvery {
		r.lastYield = now
		runtime.Gosched()
	}
	var (
		n   int
		err error
	)
	switch {
	case r.first:
		r.first = false
		n, err = r.poll(p, now, &r.c.spin, &r.leadRepoll, true)
	case r.bgPolls && !r.c.sock.leading:
		n, err = r.poll(p, now, &r.bgSpin, &r.bgRepoll, false)
	default:
		n, err = r.c.sock.read(p)
	}
	if err == unix.ECONNRESET {
		// A unix stream peer that closes with data still unread in its
		// receive queue (one that crashed or was killed, typically)
		// makes our read fail with ECONNRESET instead of returning EOF.
		return 0, io.EOF
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	r.slow = false
	r.c.received.Add(uint64(n))
	if rf := r.c.sock.rf; rf != nil && (len(rf.got) > 0 || rf.trunc) {
		if err := r.arrived(n); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// poll is a read that polls the socket with non-blocking reads for up
// to spinFor (from now, when the read began) before it sleeps in
// read(2). Data that comes within spinFor is then caught without a
// thread being put to sleep and woken, which on the reference machine
// saves more than the polling costs (docs/BENCHMARKS.md): for a leader,
// the peer's reply; for the background reader, the peer's next request
// (or the rest of a frame), which spares the peer's side its wake-up
// of this one.
//
// spin says whether polling pays: a poll that finds nothing turns it
// off, one that catches data after a wait turns it on; data that was
// there at once says nothing. While it is off, reads poll now and then
// all the same, paced by re (see repoll), and for a leader (quick) a
// read in read(2) that returns within spinFor turns it on: a leader's
// first read waits for the reply to the request it has just written,
// which is rarely there at once, so a quick return means a quick peer.
// Without those, one late reply (a peer that lost its CPU for a moment)
// would end polling for good on a machine where being woken from
// read(2) alone takes longer than spinFor. A leader's spin is
// Conn.spin, which the followers' spinWait shares; the background
// reader's is reader.bgSpin. Only one goroutine of the process polls or
// spins at a time (spinning): the others sleep in read(2) at once, and
// a read that was due to poll then polls at the next read instead.
func (r *reader) poll(p []byte, now time.Time, spin *atomic.Bool, re *repoll, quick bool) (int, error) {
	c := r.c
	on := spin.Load()
	try := on || re.due()
	if try && !spinning.CompareAndSwap(false, true) {
		if !on {
			re.again() // it was due: the next read polls instead
		}
		try = false
	}
	if try {
		n, got, err := r.spinRead(p, now.Add(spinFor))
		spinning.Store(false)
		switch {
		case got == pollNothing && on:
			spin.Store(false)
			re.restart()
		case got == pollNothing:
			re.paid(false)
		case got == pollCaught:
			if !on {
				spin.Store(true)
			}
			re.paid(true)
		}
		if err == unix.EAGAIN {
			return c.sock.read(p)
		}
		return n, err
	}
	n, err := c.sock.read(p)
	if quick && err == nil && !on && time.Since(now) < spinFor {
		spin.Store(true)
	}
	return n, err
}

// pollResult is what spinRead found.
type pollResult uint8

const (
	pollReady   pollResult = iota // data was there at once
	pollCaught                    // data came while polling
	pollNothing                   // nothing came within spinFor
)

// spinRead reads p without blocking until something comes or deadline
// passes (unix.EAGAIN, pollNothing). Between tries it yields the CPU
// to other threads: the peer may have been woken on this CPU. (Not to
// other goroutines: runtime.Gosched here would wake an idle P's thread,
// which doubled the ping's round trip.)
func (r *reader) spinRead(p []byte, deadline time.Time) (int, pollResult, error) {
	got := pollReady
	for {
		n, err := r.c.sock.readNow(p)
		if err != unix.EAGAIN {
			return n, got, err
		}
		if !time.Now().Before(deadline) {
			return n, pollNothing, err
		}
		got = pollCaught
		yieldThread()
	}
}

// repoll paces the polls of a reader whose polling is off: the first
// repollMin reads after polling stopped, then twice as far apart after
// each poll that finds nothing, up to repollMax reads, and back to
// repollMin once a poll catches data. So a stream that turned slow for
// a moment is polled again soon, and one that stays slow (a client that
// sends a request every few milliseconds) costs one fruitless poll per
// repollMax reads. Holder of the read side only.
type repoll struct {
	skipped int
	shift   uint8
}

// due counts a read while polling is off and reports whether it polls.
func (re *repoll) due() bool {
	re.skipped++
	if re.skipped < repollMin<<re.shift {
		return false
	}
	re.skipped = 0
	return true
}

// again makes the next read poll: this one was due but could not.
func (re *repoll) again() { re.skipped = repollMin<<re.shift - 1 }

// restart starts the pace over: polling has just stopped.
func (re *repoll) restart() { re.skipped, re.shift = 0, 0 }

// paid records whether a poll made while polling was off caught data.
func (re *repoll) paid(ok bool) {
	switch {
	case ok:
		re.shift = 0
	case repollMin<<re.shift < repollMax:
		re.shift++
	}
}

// readInto reads into p[*got:] straight from the socket until p is full,
// counting progress in *got so that a read cut short (errSlice) can be
// resumed. The destination of a large read is first brought to a 64-byte
// boundary: the kernel copies to unaligned memory at about half speed
// on the reference machine (docs/BENCHMARKS.md).
func (r *reader) readInto(p []byte, got *int) error {
	for *got < len(p) {
		q := p[*got:]
		if len(q) >= alignThreshold {
			if off := int(uintptr(unsafe.Pointer(unsafe.SliceData(q))) & 63); off != 0 {
				q = q[:64-off]
			}
		}
		n, err := r.read(q)
		*got += n
		if err != nil {
			return err
		}
	}
	return nil
}

// skip skips *left payload bytes, counting progress in *left.
func (r *reader) skip(left *int) error {
	for *left > 0 {
		if r.r == r.w {
			if err := r.fill(1); err != nil {
				return err
			}
		}
		k := min(*left, r.w-r.r)
		r.r += k
		*left -= k
	}
	return nil
}

// discard skips n payload bytes (background reader only).
func (r *reader) discard(n int) error {
	if err := r.skip(&n); err != nil {
		return r.readErr(err)
	}
	return nil
}

// readPayload reads h's payload into a new slice (background reader
// only: it never stops half way).
func (r *reader) readPayload(h wire.Header) ([]byte, error) {
	n := int(h.Length)
	if n == 0 {
		return nil, nil
	}
	p := make([]byte, n)
	m := copy(p, r.buf[r.r:r.w])
	r.r += m
	if err := r.readInto(p, &m); err != nil {
		return nil, r.readErr(err)
	}
	return p, nil
}

// payloadView returns the next n bytes, valid until the next read: a
// slice of buf when they fit, else of big (background reader only).
func (r *reader) payloadView(n int) ([]byte, error) {
	if n <= len(r.buf) {
		if err := r.fill(n); err != nil {
			return nil, err
		}
		p := r.buf[r.r : r.r+n]
		r.r += n
		return p, nil
	}
	if r.big == nil {
		select {
		case r.big = <-r.c.spare: // lent to finishLater, now back
		default:
		}
	}
	if cap(r.big) < n {
		r.big = make([]byte, n)
	}
	p := r.big[:n]
	m := copy(p, r.buf[r.r:r.w])
	r.r += m
	return p, r.readInto(p, &m)
}

// negotiate returns the highest version both hellos speak.
func negotiate(a, b wire.Hello) (uint16, error) {
	v := min(a.MaxVersion, b.MaxVersion)
	if v < max(a.MinVersion, b.MinVersion) {
		return 0, &wire.FrameError{Err: ErrVersion, Detail: fmt.Sprintf("we speak %d..%d, peer %q speaks %d..%d", a.MinVersion, a.MaxVersion, b.Name, b.MinVersion, b.MaxVersion)}
	}
	return v, nil
}
