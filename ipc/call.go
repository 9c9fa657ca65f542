package ipc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Requests sent by this side and the wait for their replies. The comment
// at the top of conn.go describes followers and leaders.

// A call is a request of ours waiting for its reply.
type call struct {
	typ   wire.Type
	dst   []byte
	reply []byte
	files []int // descriptors that came with the reply (fds.go)
	err   error

	// done carries one send per event, and state says which event the
	// last send announced; it is stored just before the send, so that a
	// spinning follower can poll it (spinWait).
	done  chan struct{}
	state atomic.Int32

	lead    *reader // the read side, passed to this call (pmu)
	waiting bool    // a follower, counted in Conn.nwait (pmu)

	probe func(uint64, error) // instead of done, for Probe
	id    uint64              // for probe
}

// Values of call.state.
const (
	stateWait int32 = iota // no event yet
	stateLead              // the read side was passed to the call (lead)
	stateDone              // reply, err set
)

// spinning is set while a follower polls for its reply (see spinWait).
// It is the one package-level variable: the processors it rations are
// the process's, not a Conn's.
var spinning atomic.Bool

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func (c *Conn) putCall(cl *call) {
	if cl.files != nil { // nobody took them
		closeFDs(cl.files)
		cl.files = nil
	}
	cl.dst, cl.reply, cl.err, cl.probe, cl.id, cl.lead, cl.waiting = nil, nil, nil, nil, 0, nil, false
	cl.state.Store(stateWait)
	callPool.Put(cl)
}

// Ping sends a ping and waits for the pong, returning the round-trip
// time. It does not allocate.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if _, err := c.Call(ctx, wire.TypePing, nil, nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// Probe sends a ping and returns without waiting for the pong. done
// runs with the ping's id and a nil error when the pong arrives, or an
// error wrapping [ErrClosed] if the Conn closes first; it runs on the
// goroutine that reads the pong (the Conn's background reader, or a
// caller reading its own reply), so it must return quickly and must not
// call back into the Conn except for Forget. Probe returns the ping's
// id once the ping is written. ctx (or, if it has no deadline, the
// WriteTimeout) bounds only the write, its wait behind other frames
// included. Health checks use it: a goroutine that pings many peers does
// not have to wake for each pong, and Probe allocates nothing (unless it
// must wait behind other frames with the WriteTimeout as its bound).
func (c *Conn) Probe(ctx context.Context, done func(id uint64, err error)) (uint64, error) {
	cl := callPool.Get().(*call)
	cl.typ, cl.probe = wire.TypePing, done
	c.pmu.Lock()
	if c.closed {
		err := c.err
		c.pmu.Unlock()
		c.putCall(cl)
		return 0, &OpError{Op: "call ping", Addr: c.cfg.Addr, Err: closeErr(err)}
	}
	c.nextID++
	id := c.nextID
	cl.id = id
	c.pending[id] = cl
	c.pmu.Unlock()
	if err := c.writeFrame(ctx, c.cfg.WriteTimeout, wire.Header{Type: wire.TypePing, ID: id}, nil); err != nil {
		if c.unregister(id) {
			c.putCall(cl)
		}
		return 0, err
	}
	// Nobody waits to read the pong: if the read side is idle, the
	// background reader takes it now rather than after linger.
	c.pmu.Lock()
	if r := c.idle; r != nil {
		c.idle = nil
		c.toBg <- r
	}
	c.pmu.Unlock()
	return id, nil
}

// Forget drops the probe with this id if its pong has not arrived yet,
// so that its callback never runs, and reports whether it did.
func (c *Conn) Forget(id uint64) bool {
	c.pmu.Lock()
	cl, ok := c.pending[id]
	ok = ok && cl.probe != nil
	if ok {
		delete(c.pending, id)
	}
	c.pmu.Unlock()
	if ok {
		c.putCall(cl)
	}
	return ok
}

// Echo sends payload and returns what the peer sent back, read into dst
// when it is large enough (otherwise into a new slice).
func (c *Conn) Echo(ctx context.Context, payload, dst []byte) ([]byte, error) {
	return c.Call(ctx, wire.TypeEcho, payload, dst)
}

// Call sends a request of type t and waits for its reply. The reply's
// payload is read straight into dst when cap(dst) is large enough, and
// into a new slice otherwise. Call may run concurrently with any number
// of other calls; one that is alone in waiting reads its reply itself.
//
// Call returns when the reply arrives, the Conn closes, or ctx ends; a
// Call reading its own reply notices ctx ending within 20 ms. An error
// reply is returned as a *[wire.RemoteError]. When ctx ends first, Call
// forgets the request, so that its reply is dropped when it comes, and
// on a version 2 connection has a cancel frame sent for it (after Call
// has returned), which cancels the context of the peer's handler; pings
// are not cancelled, as no handler runs for them. If ctx ends while the
// reply is already being read into dst, Call cannot hand dst back until
// the read is done, so it closes the Conn (reason [ErrStalled]) to end
// the read at once; with a nil dst it simply abandons the reply.
func (c *Conn) Call(ctx context.Context, t wire.Type, payload, dst []byte) ([]byte, error) {
	reply, files, err := c.call(ctx, t, payload, dst, nil)
	if files != nil { // the peer sent some; Call does not take them
		closeFDs(files)
	}
	return reply, err
}

// call is Call, and CallFiles with ctl, the control message carrying
// the request's descriptors (nil for none). It returns the descriptors
// that came with the reply, which the caller owns, only with a reply.
func (c *Conn) call(ctx context.Context, t wire.Type, payload, dst, ctl []byte) ([]byte, []int, error) {
	if len(payload) > int(c.cfg.MaxPayload) {
		return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: &wire.FrameError{Err: wire.ErrFrameTooLarge, Detail: fmt.Sprintf("payload of %d bytes exceeds the limit of %d", len(payload), c.cfg.MaxPayload)}}
	}
	cl := callPool.Get().(*call)
	cl.typ, cl.dst = t, dst
	c.pmu.Lock()
	if c.closed {
		err := closeErr(c.err)
		c.pmu.Unlock()
		callPool.Put(cl)
		return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.pmu.Unlock()

	h := wire.Header{Type: t, ID: id}
	if ctl != nil {
		h.Flags = wire.FlagFiles
	}
	if finishing, err := c.write(ctx, 0, h, payload, ctl); err != nil {
		c.pmu.Lock()
		mine := c.claim(id) != nil
		if mine && finishing {
			// The request still reaches the peer: tell it we gave up.
			c.cancelLocked(t, id)
		}
		c.pmu.Unlock()
		if mine {
			c.putCall(cl)
		}
		return nil, nil, err
	}
	if err := c.await(ctx, cl, id); err != nil {
		return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
	}
	reply, files, err := cl.reply, cl.files, cl.err
	cl.files = nil
	c.putCall(cl)
	if err != nil {
		closeFDs(files)
		return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
	}
	return reply, files, nil
}

// await waits for the reply to cl, request id: it leads (reads the reply
// itself) when the read side is idle or passed to it, and follows
// otherwise. It returns nil once cl is done, or ctx's error; then cl
// belongs to whoever still holds it (see giveUp).
func (c *Conn) await(ctx context.Context, cl *call, id uint64) error {
	for {
		c.pmu.Lock()
		if r := c.idle; r != nil && c.pending[id] == cl && ctx.Err() == nil {
			c.idle = nil
			c.byCall = true
			c.pmu.Unlock()
			c.lead(ctx, r, cl)
			continue
		}
		if c.pending[id] == cl && !cl.waiting && cl.state.Load() == stateWait {
			cl.waiting = true
			c.nwait.Add(1)
		}
		byCall := c.byCall
		c.pmu.Unlock()
		if err := c.follow(ctx, cl, id, !byCall); err != nil {
			return err
		}
		if cl.state.Load() == stateDone {
			return nil
		}
		// The read side was passed to us.
		c.pmu.Lock()
		r := cl.lead
		cl.lead = nil
		cl.state.Store(stateWait)
		c.pmu.Unlock()
		c.lead(ctx, r, cl)
	}
}

// lead reads frames as the holder of the read side until cl is done, or
// until reading on would mean waiting for something other than replies
// or past ctx, and then passes the read side on.
func (c *Conn) lead(ctx context.Context, r *reader, cl *call) {
	why := stopEnded
	if err := c.sock.lead(true); err != nil {
		r.err = &OpError{Op: "read", Addr: c.cfg.Addr, Err: err}
	} else {
		r.first = true
		why = r.run(ctx, cl)
		r.first = false
	}
	c.pmu.Lock()
	c.handOn(r, why)
	c.pmu.Unlock()
}

// follow waits for the next event of cl until its done channel fires or
// ctx ends: parked, after spinning for a moment if canSpin is set. It
// is, while the background reader holds the read side: spinning spares
// a wake-up when the reader hands over a reply, but a caller reading on
// its own thread needs the processor more (docs/BENCHMARKS.md).
func (c *Conn) follow(ctx context.Context, cl *call, id uint64, canSpin bool) error {
	if cl.state.Load() != stateWait {
		<-cl.done // sent right after state was stored
		return nil
	}
	spun := false // spun for spinFor in vain
	if canSpin && c.spin.Load() {
		switch spinWait(cl) {
		case spinGot:
			return nil
		case spinMissed:
			spun = true
		}
		// spinBusy: another goroutine polls or spins; this one parks
		// as if it had not tried, and says nothing of the reply's pace.
	}
	var parked time.Time
	if !spun {
		parked = time.Now()
	}
	select {
	case <-cl.done:
		// Spin for the next reply only if this one came quickly.
		if canSpin {
			c.spin.Store(!spun && time.Since(parked) < spinFor)
		}
		return nil
	case <-ctx.Done():
		return c.giveUp(ctx, cl, id)
	}
}

// giveUp abandons cl, request id, whose caller's ctx has ended, and
// returns ctx's error. Unless a reader has claimed the reply, cl leaves
// pending and back to the pool, the peer is told (cancelLocked), and if
// the read side had been passed to cl, it is passed on. A claimed reply
// that is being read into the caller's dst cannot be abandoned: the
// Conn is closed (ErrStalled) to end the read, and giveUp waits for
// that.
func (c *Conn) giveUp(ctx context.Context, cl *call, id uint64) error {
	c.pmu.Lock()
	if c.pending[id] == cl {
		delete(c.pending, id)
		if cl.waiting {
			cl.waiting = false
			c.nwait.Add(-1)
		}
		c.cancelLocked(cl.typ, id)
		if r := cl.lead; r != nil {
			<-cl.done // sent under pmu when the read side was passed
			c.handOn(r, stopGaveUp)
		}
		c.pmu.Unlock()
		c.putCall(cl)
		return ctx.Err()
	}
	c.pmu.Unlock()
	if cl.dst != nil {
		// The reader is filling dst right now, unless it has just
		// finished.
		select {
		case <-cl.done:
		default:
			c.abort(&OpError{Op: "read", Addr: c.cfg.Addr, Err: ErrStalled})
			<-cl.done
		}
		c.putCall(cl)
	} else if c.ver >= 3 {
		// The reply being read may bring descriptors, which must be
		// closed. The reader hands it over soon (it finishes every
		// call it claimed, with an error if the Conn ends first), and
		// this goroutine ends then.
		go func() {
			<-cl.done
			c.putCall(cl)
		}()
	}
	return ctx.Err()
}

// spinWait polls cl's state for up to spinFor, and reports whether an
// event came (then it has received it), or why not. A round trip to another process
// takes some 15–30 µs on the reference machine; parking the follower
// and having the reader wake it through the scheduler adds a futex
// wake-up of another thread to every one. Polling for a short while
// lets the reader hand the reply over with a plain channel send instead.
// Followers still park for replies that take longer, and a Conn whose
// replies are slow (an idle worker's health ping, a busy handler) stops
// spinning until a parked call sees a quick reply again (Conn.spin).
func spinWait(cl *call) spinResult {
	// One spinner at a time per process: with many callers waiting, the
	// processors are better spent on the readers delivering replies.
	if !spinning.CompareAndSwap(false, true) {
		return spinBusy
	}
	defer spinning.Store(false)
	start := time.Now()
	for i := 1; cl.state.Load() == stateWait; i++ {
		if i&63 == 0 && time.Since(start) > spinFor {
			return spinMissed
		}
	}
	<-cl.done // sent right after state was stored
	return spinGot
}

// spinResult is how a follower's spinWait ended.
type spinResult uint8

const (
	spinGot    spinResult = iota // the event came, and was received
	spinMissed                   // nothing came within spinFor
	spinBusy                     // another goroutine was polling or spinning: no try
)

// unregister removes a pending call whose request could not be written
// and reports whether it was still there (false: a reader has claimed
// it, and will finish it).
func (c *Conn) unregister(id uint64) bool {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.claim(id) != nil
}

// claim removes the call waiting for reply id from pending and returns
// it, or nil if there is none. Called with pmu held.
func (c *Conn) claim(id uint64) *call {
	cl := c.pending[id]
	if cl == nil {
		return nil
	}
	delete(c.pending, id)
	if cl.waiting {
		cl.waiting = false
		c.nwait.Add(-1)
	}
	return cl
}

// finish hands a completed call to its waiter: a caller in await, or a
// Probe's callback.
func (c *Conn) finish(cl *call) {
	if f := cl.probe; f != nil {
		id, err := cl.id, cl.err
		c.putCall(cl)
		f(id, err)
		return
	}
	cl.state.Store(stateDone)
	cl.done <- struct{}{}
}
