package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Clients handed over by the supervisor (protocol version 3,
// docs/PROTOCOL.md "Handing clients to workers"). A supervisor serving
// a socket path may pass a framed client's connection to a worker with
// a CLIENT request; the worker then serves that client directly, with
// its own Handler, until the client goes away (the request's reply is
// then empty), and hands it back when it must stop (a shutdown request
// on the channel) or when the client asks for something only the
// supervisor serves, status or reload (the reply then carries the
// connection's state; the supervisor still has the connection). Each
// CLIENT request is served by one goroutine of the channel's, which
// owns the client's Conn from the hello (or resume) to the reply.

// DefaultMaxClients is Config.MaxClients' default.
const DefaultMaxClients = 1024

const (
	// clientHandshake bounds a handed-over client's hello.
	clientHandshake = 5 * time.Second

	// clientDetachWait bounds the hand-back of one client when the
	// worker stops while nothing moves: the requests it has taken in
	// must be answered, and their replies written, by then, or the
	// client's connection is closed. A client that is taking the bytes
	// of a reply (Conn.Sent grows) is given another clientDetachWait
	// each time, however slowly it reads on a loaded machine: a slow
	// client of a healthy worker is handed back, never cut off (its
	// Conn's WriteTimeout ends one that stops reading).
	clientDetachWait = time.Second

	// clientPollAbove: past this many clients, a worker serves new ones
	// through the runtime's poller rather than a thread each (as the
	// supervisor's front door does).
	clientPollAbove = 16

	// clientBudget bounds what all of a worker's clients together hold
	// in its memory (as the front door's default TotalBuffered).
	clientBudget = 8 * ipc.DefaultMaxBuffered
)

// clientSet is a worker's handed-over clients.
type clientSet struct {
	cfg    *Config
	name   string
	log    hclog.Logger
	max    int // negative: takes none
	budget *ipc.Budget

	mu       sync.Mutex
	n        int
	draining bool
	drain    chan struct{} // closed when the channel's shutdown request arrives
}

func newClientSet(cfg *Config, name string, log hclog.Logger) *clientSet {
	max := cfg.MaxClients
	if max == 0 {
		max = DefaultMaxClients
	}
	return &clientSet{cfg: cfg, name: name, log: log, max: max, budget: ipc.NewBudget(clientBudget), drain: make(chan struct{})}
}

// slots is the channel's ConnConfig.MaxConcurrent: room for the
// application's requests and for every client (each CLIENT request
// holds a handler slot for the client's life).
func (cs *clientSet) slots() int { return ipc.DefaultMaxConcurrent + max(cs.max, 0) }

// watch ends the clients' service when the channel's shutdown request
// arrives; it returns when the channel is done.
func (cs *clientSet) watch(c *ipc.Conn) {
	select {
	case <-c.Draining():
		cs.mu.Lock()
		cs.draining = true
		close(cs.drain)
		cs.mu.Unlock()
	case <-c.Done():
	}
}

// add counts a new client in, or says why not.
func (cs *clientSet) add() *wire.RemoteError {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	switch {
	case cs.max < 0:
		return &wire.RemoteError{Code: wire.CodeUnsupported, Message: "this worker takes no clients (MaxClients < 0)"}
	case cs.draining:
		return &wire.RemoteError{Code: wire.CodeShutdown, Message: "worker shutting down"}
	case cs.n >= cs.max:
		return &wire.RemoteError{Code: wire.CodeUnavailable, Message: fmt.Sprintf("serving %d clients already", cs.n)}
	}
	cs.n++
	return nil
}

func (cs *clientSet) remove() {
	cs.mu.Lock()
	cs.n--
	cs.mu.Unlock()
}

// serve answers a CLIENT request: it serves the client whose connection
// came with it until the client goes away (an empty reply), or hands it
// back (the connection's state). It refuses (codes 1, 2, 3, 6) without
// touching the connection, whose descriptor it closes.
func (cs *clientSet) serve(ctx context.Context, req ipc.Request) ([]byte, error) {
	if len(req.Files) != 1 {
		closeAll(req.Files)
		return nil, &wire.RemoteError{Code: wire.CodeBadRequest, Message: fmt.Sprintf("a client request carries one descriptor, this one %d", len(req.Files))}
	}
	f := req.Files[0]
	st, err := wire.ParseClient(req.Payload)
	if err != nil {
		f.Close()
		return nil, &wire.RemoteError{Code: wire.CodeBadRequest, Message: err.Error()}
	}
	if re := cs.add(); re != nil {
		f.Close()
		return nil, re
	}
	defer cs.remove()
	control := st.Flags&wire.ClientControl != 0
	log := cs.log.With("client_uid", st.UID, "client_pid", st.PID)
	cfg := ipc.ConnConfig{
		Name:        cs.name,
		MaxVersion:  2, // as the supervisor's front door: clients pass no descriptors
		Handler:     cs.handler(control, st.UID),
		Detachable:  true, // a stopping worker hands its clients back
		DetachAt:    supervisorOnly,
		IdleTimeout: time.Duration(st.IdleMillis) * time.Millisecond,
		Budget:      cs.budget,
		Poll:        cs.count() > clientPollAbove,
		Logger:      log,
		Addr:        "client",
	}
	var c *ipc.Conn
	if st.Flags&wire.ClientEstablished != 0 {
		peer, _ := wire.ParseHello(st.Hello) // ParseClient checked it
		c, err = ipc.Resume(f, ipc.Session{Version: st.Version, Peer: peer, NextID: st.NextID, Buffered: st.Buffered}, cfg)
	} else {
		hctx, cancel := context.WithTimeout(ctx, clientHandshake)
		c, err = ipc.NewConnPrefixed(hctx, f, st.Buffered, cfg)
		cancel()
	}
	if err != nil {
		log.Debug("handed-over client failed its hello", "error", err)
		return nil, nil // the connection is closed: done with it
	}
	var (
		df   *os.File
		sess ipc.Session
	)
	select {
	case <-c.Done():
		if !errors.Is(c.Err(), ipc.ErrDetached) {
			return nil, nil // the client went away, or broke the protocol
		}
		df, sess, err = c.Detach(ctx) // detached by itself (DetachAt): at once
	case <-cs.drain:
		df, sess, err = detachMoving(ctx, c)
		if err != nil {
			c.Close() // ends a detach still under way
			if errors.Is(c.Err(), ipc.ErrDetached) {
				df, sess, err = c.Detach(ctx) // it made it after all
			}
		}
	case <-ctx.Done():
		// The supervisor gave up on the client (it is stopping), or the
		// channel closed: the client's connection ends here.
		c.Close()
		return nil, ctx.Err()
	}
	if err != nil || df == nil {
		log.Debug("could not hand a client back; it is closed", "error", err)
		return nil, nil
	}
	df.Close() // the supervisor has the connection too
	back := wire.Client{
		Flags:      wire.ClientEstablished | st.Flags&wire.ClientControl,
		Version:    sess.Version,
		UID:        st.UID,
		GID:        st.GID,
		PID:        st.PID,
		IdleMillis: st.IdleMillis,
		NextID:     sess.NextID,
		Hello:      wire.AppendHello(nil, sess.Peer),
		Buffered:   sess.Buffered,
	}
	select {
	case <-cs.drain:
	default:
		back.Flags |= wire.ClientHere // a request only the supervisor serves is next
	}
	return wire.AppendClient(nil, back), nil
}

// detachMoving detaches c (Conn.Detach), waiting clientDetachWait at a
// time for as long as the client takes bytes from c meanwhile: a reply
// going out slowly is let finish. It returns Detach's error once a wait
// went by with nothing sent, or ctx ended.
func detachMoving(ctx context.Context, c *ipc.Conn) (*os.File, ipc.Session, error) {
	for {
		sent := c.Sent()
		dctx, cancel := context.WithTimeout(ctx, clientDetachWait)
		df, sess, err := c.Detach(dctx)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) || c.Sent() == sent && !c.Writing() {
			return df, sess, err
		}
	}
}

func (cs *clientSet) count() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.n
}

// supervisorOnly: the requests a handed-over client's Conn leaves to
// the supervisor, handing the client back in front of them.
func supervisorOnly(t wire.Type) bool { return t == wire.TypeStatus || t == wire.TypeReload }

// handler answers a handed-over client's requests: messages with the
// worker's handler, if the client may send them (as the supervisor's
// front door would: ControlUIDs and ControlGIDs); shutdown is not
// served (code 2, or 9 for a client without the right).
func (cs *clientSet) handler(control bool, uid uint32) ipc.Handler {
	return func(ctx context.Context, req ipc.Request) ([]byte, error) {
		closeAll(req.Files) // none: clients speak version 2
		switch {
		case (req.Type == wire.TypeMessage || req.Type == wire.TypeShutdown) && !control:
			return nil, &wire.RemoteError{Code: wire.CodeDenied, Message: fmt.Sprintf("%s requests are for the server's own uid, root and the control uids and gids; uid %d is none of them", req.Type, uid)}
		case req.Type != wire.TypeMessage:
			return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: req.Type.String() + " is not served here"}
		case cs.cfg.FilesHandler != nil:
			reply, files, err := cs.cfg.FilesHandler(ctx, req.Payload, nil)
			closeAll(files) // nothing to send them on
			return reply, err
		case cs.cfg.Handler == nil:
			return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: "worker has no message handler"}
		}
		return cs.cfg.Handler(ctx, req.Payload)
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// clientName is the name a worker gives itself in a client's hello.
func clientName(id int) string { return "worker." + strconv.Itoa(id) }
