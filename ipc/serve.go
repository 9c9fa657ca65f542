package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Requests from the peer. Only the background reader takes them in (a
// leader leaves them to it), so everything here that may wait (for room
// in a budget, a handler slot, the write lock) waits on the background
// reader's time, never a caller's.

// Request is a request passed to a [Handler]. The handler owns Payload.
type Request struct {
	Type    wire.Type
	Payload []byte

	// Files are the file descriptors that came with the request
	// (protocol version 3), close-on-exec. The handler owns them, as
	// Payload: the Conn never closes them.
	Files []*os.File

	reply *replyFiles // the files of the reply (AttachFiles); nil below version 3
}

// Handler answers requests that a Conn does not answer itself: message,
// status, shutdown, reload and, with [ConnConfig.ForwardEcho], echo. A
// shutdown request reaches the Handler only after every request that
// arrived before it has been answered, and later ones are refused.
//
// Each call runs in its own goroutine. ctx is cancelled when the Conn
// closes and, on a version 2 connection, when the peer cancels the
// request (its caller gave up); a handler should return soon after,
// and whatever it returns then is still sent, and dropped by the peer.
// A returned *[wire.RemoteError] is sent as is; any other error is sent
// as [wire.CodeInternal] with the error's text. A Handler that panics
// (or calls runtime.Goexit) answers its request with
// [wire.CodeCrashed]; the panic and its stack are logged at error level
// on [ConnConfig].Logger, and the Conn serves on. A Handler must not
// call Close on its own Conn (Close waits for handlers to return).
type Handler func(ctx context.Context, req Request) ([]byte, error)

// answerInline answers a ping or an echo from the read buffer, without
// copying or allocating (unless the peer is not reading; see reply).
// The reply is held (budget.go) from before its payload is read until
// it is written. An echo that finds no room in the shared Budget is
// skipped and refused; a pong is too small to be refused. A ping over
// limit (wire.MaxPingPayload) is skipped unread and refused with
// CodeTooLarge; the connection goes on.
func (r *reader) answerInline(h wire.Header, limit uint32) error {
	c := r.c
	if h.Length > limit {
		return r.refuseUnread(h, wire.CodeTooLarge, fmt.Sprintf("%s payload of %d bytes exceeds the limit of %d", h.Type, h.Length, limit))
	}
	n := frameCost(int(h.Length))
	ok, err := c.admit(n, h.Type != wire.TypePing)
	if err != nil {
		return err
	}
	if !ok {
		return r.refuseUnread(h, wire.CodeUnavailable, errNoBudget)
	}
	p, err := r.payloadView(int(h.Length))
	if err != nil {
		c.release(n)
		return r.readErr(err)
	}
	return r.reply(wire.Header{Type: h.Type, Flags: wire.FlagReply, ID: h.ID}, p, n)
}

// dispatch runs the Handler for a request in its own goroutine.
//
// A shutdown request drains the Conn: requests that arrive after it are
// refused with CodeShutdown (pings and echoes are still answered), and
// its own reply goes out only once every request that arrived before it
// has been answered, after the Handler (if any) has seen it. So a peer
// that closes when it gets the shutdown reply loses no reply.
//
// Refused requests are skipped unread. A request handed to the Handler
// is held (budget.go) with room for its reply from before its payload
// is read until the reply is written, and keeps its handler slot until
// the reply's turn to be written comes.
func (r *reader) dispatch(h wire.Header) error {
	c := r.c
	switch {
	case r.draining:
		return r.refuseUnread(h, wire.CodeShutdown, "shutting down")
	case h.Type == wire.TypeShutdown:
		n, hint := requestCost(h)
		ok, err := c.admit(n, true)
		if err != nil {
			return err
		}
		if !ok {
			return r.refuseUnread(h, wire.CodeUnavailable, errNoBudget)
		}
		p, err := r.readPayload(h)
		if err != nil {
			c.release(n)
			return err
		}
		ctx, cancel, err := r.track(h)
		if err != nil {
			c.release(n)
			return err
		}
		r.draining = true
		c.markDraining()
		fds := r.takeFiles()
		c.handlers.Add(1)
		go func() {
			defer c.handlers.Done()
			c.inflight.Wait()
			c.handle(ctx, cancel, h, p, fds, n, hint, false)
		}()
		return nil
	case c.cfg.Handler == nil:
		return r.refuseUnread(h, wire.CodeUnsupported, fmt.Sprintf("no handler for %s requests", h.Type))
	}
	select {
	case c.sem <- struct{}{}:
	default:
		return r.refuseUnread(h, wire.CodeUnavailable, fmt.Sprintf("more than %d requests in flight", c.cfg.MaxConcurrent))
	}
	n, hint := requestCost(h)
	ok, err := c.admit(n, true)
	if !ok || err != nil {
		<-c.sem
		if err != nil {
			return err
		}
		return r.refuseUnread(h, wire.CodeUnavailable, errNoBudget)
	}
	p, err := r.readPayload(h)
	if err == nil {
		var (
			ctx    context.Context
			cancel context.CancelFunc
		)
		if ctx, cancel, err = r.track(h); err == nil {
			fds := r.takeFiles()
			c.handlers.Add(1)
			c.inflight.Add(1)
			go func() {
				defer c.handlers.Done()
				defer c.inflight.Done() // after the reply is written
				c.handle(ctx, cancel, h, p, fds, n, hint, true)
			}()
			return nil
		}
	}
	<-c.sem
	c.release(n)
	return err
}

// track returns the context for the Handler's call on request h. On a
// version 1 connection it is the Conn's own (cancel is nil): nothing
// cancels a single request there. On version 2 it is a child of it,
// registered under the request's id so that the peer's cancel frame can
// end it, until handle unregisters it. A request whose id is already
// registered breaks the rule that ids are unique among a sender's
// requests in flight: a protocol error.
func (r *reader) track(h wire.Header) (context.Context, context.CancelFunc, error) {
	c := r.c
	if c.ver < 2 {
		return c.ctx, nil, nil
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.amu.Lock()
	_, dup := c.active[h.ID]
	if !dup {
		c.active[h.ID] = cancel
	}
	c.amu.Unlock()
	if dup {
		cancel()
		return nil, nil, r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s request %d while request %d is in flight", h.Type, h.ID, h.ID)})
	}
	return ctx, cancel, nil
}

// cancelRequest acts on the peer's cancel frame h (version 2): the
// Handler's context for the request with h's id is cancelled. A cancel
// for a request that is not with the Handler (unknown, answered
// already, or answered by the Conn itself) is ignored. The request is
// still answered, with whatever the Handler returns.
func (r *reader) cancelRequest(h wire.Header) error {
	c := r.c
	switch {
	case c.ver < 2:
		return r.protocolErr(&wire.FrameError{Err: wire.ErrUnknownType, Detail: fmt.Sprintf("type byte %d (cancel) on a version %d connection", uint8(h.Type), c.ver)})
	case h.Length != 0:
		return r.protocolErr(&wire.FrameError{Err: wire.ErrBadPayload, Detail: fmt.Sprintf("cancel frame with a payload of %d bytes, want none", h.Length)})
	}
	c.amu.Lock()
	cancel := c.active[h.ID]
	c.amu.Unlock()
	if cancel != nil {
		cancel()
	}
	return nil
}

// handle runs the Handler (if any) for request h, whose payload is p
// and descriptors fds (the Handler's from now on), with ctx (see track),
// and writes its answer (see answer) with the files the Handler
// attached. A Handler that panics, or ends its goroutine with
// runtime.Goexit, is answered for with CodeCrashed, and logged.
func (c *Conn) handle(ctx context.Context, cancel context.CancelFunc, h wire.Header, p []byte, fds []int, n, hint int64, slot bool) {
	var (
		resp     []byte
		err      error
		returned bool
		req      = Request{Type: h.Type, Payload: p, Files: filesOf(fds)}
	)
	if c.ver >= 3 {
		req.reply = new(replyFiles)
	}
	defer func() {
		if !returned {
			v := recover()
			if v == nil {
				c.log.Error("handler ended its goroutine without returning (runtime.Goexit)", "type", h.Type.String(), "id", h.ID, "stack", string(debug.Stack()))
			} else {
				c.log.Error("handler panicked", "type", h.Type.String(), "id", h.ID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
			resp, err = nil, &wire.RemoteError{Code: wire.CodeCrashed, Message: fmt.Sprintf("the %s handler crashed (the receiver's log has the details)", h.Type)}
		}
		if cancel != nil {
			// Unregistered before the reply is written: the peer may
			// reuse the id as soon as it has the reply.
			c.amu.Lock()
			delete(c.active, h.ID)
			c.amu.Unlock()
			cancel()
		}
		var (
			ctl  []byte
			dups []int
		)
		if files := req.reply.take(); len(files) > 0 {
			if err != nil {
				closeFiles(files) // an error reply carries no descriptors
			} else if ctl, dups, err = replyRights(files); err != nil {
				resp, err = nil, fmt.Errorf("attaching files to the reply: %w", err)
			}
		}
		c.answer(h, resp, err, n, hint, slot, ctl)
		closeFDs(dups)
	}()
	if c.cfg.Handler == nil {
		closeFiles(req.Files)
	} else {
		resp, err = c.cfg.Handler(ctx, req)
	}
	returned = true
}

// answer writes a handler's result as the reply to request h. n bytes
// are held for the request, hint of them for its reply; the difference
// to the real reply is settled first, and everything is released once
// the reply is written (or the Conn closes). With slot set, the handler
// slot is given back as soon as the reply's turn to be written comes:
// a peer that sends its next request only after this reply must find a
// slot free, while replies waiting their turn keep theirs, so that at
// most MaxConcurrent of them wait. ctl, if not nil, carries the
// reply's descriptors (fds.go); an error reply goes without them.
func (c *Conn) answer(h wire.Header, resp []byte, err error, n, hint int64, slot bool, ctl []byte) {
	ready := time.Now()
	rh := wire.Header{Type: h.Type, Flags: wire.FlagReply, ID: h.ID}
	if ctl != nil {
		rh.Flags |= wire.FlagFiles
	}
	if err != nil {
		ctl, rh.Flags = nil, wire.FlagReply
		var re *wire.RemoteError
		if !errors.As(err, &re) {
			re = &wire.RemoteError{Code: wire.CodeInternal, Message: err.Error()}
		}
		rh.Type, resp = wire.TypeError, wire.AppendError(nil, re.Code, re.Message)
	} else if len(resp) > int(c.cfg.MaxPayload) {
		ctl, rh.Flags = nil, wire.FlagReply
		rh.Type, resp = wire.TypeError, wire.AppendError(nil, wire.CodeTooLarge, fmt.Sprintf("reply of %d bytes exceeds the limit of %d", len(resp), c.cfg.MaxPayload))
	}
	if d := frameCost(len(resp)) - hint; d > 0 {
		c.force(d)
		n += d
	} else if d < 0 {
		c.release(-d)
		n += d
	}
	c.writeReply(rh, resp, n, ready, slot, ctl)
}

// closingWait bounds the wait of an error sent as the Conn closes (a
// protocol violation, a refused hello) for the write lock and for room
// in the socket buffer.
const closingWait = 100 * time.Millisecond

// sendConnError writes an error about the connection (id 0), which is
// closing, waiting at most closingWait for the write lock and for room.
// Failing to write it means the Conn is closing anyway.
func (c *Conn) sendConnError(code wire.Code, msg string) {
	c.writeFrame(context.Background(), closingWait, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, code, msg))
}

// refuseUnread skips request h's payload without reading it into
// memory and answers it with an error.
func (r *reader) refuseUnread(h wire.Header, code wire.Code, msg string) error {
	if err := r.discard(int(h.Length)); err != nil {
		return err
	}
	return r.refuse(h.ID, code, msg)
}

// refuse answers a request with an error. The error reply is held like
// any other (it is small: it waits for room in the Conn's bound but not
// in a shared Budget).
func (r *reader) refuse(id uint64, code wire.Code, msg string) error {
	p := wire.AppendError(nil, code, msg)
	n := frameCost(len(p))
	if _, err := r.c.admit(n, false); err != nil {
		return err
	}
	return r.reply(wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: id}, p, n)
}

// protocolErr tells the peer what it did wrong, in an error with id 0,
// which is about the connection rather than a request (an id would name
// one of the peer's requests, and the frame at fault may be a reply,
// whose id is one of ours), and returns err for the holder of the read
// side to close the Conn with. The Conn closes right after, so the
// holder of the read side may wait for the write lock here, but only
// for closingWait: the error is sent on a best-effort basis.
func (r *reader) protocolErr(err error) error {
	code := wire.CodeProtocol
	if errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, ErrTooManyFiles) {
		code = wire.CodeTooLarge
	}
	r.c.sendConnError(code, err.Error())
	return &OpError{Op: "read", Addr: r.c.cfg.Addr, Err: err}
}
