package frontdoor

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Handing framed clients to workers (docs/PROTOCOL.md, "Handing clients
// to workers"). With Config.HandOff set, the server says hello to a
// framed client as always, and serves it until it sends an echo or a
// message: then its Conn detaches in front of that request
// (ipc.ConnConfig.DetachAt), and the server offers the connection, with
// its state, to HandOff, which passes it to a worker that serves the
// client directly, so that its requests and replies no longer pass
// through this process. A client that only pings, asks for the status
// or reloads never leaves the server. The client's goroutine
// (serveFramed) waits while a worker has the client, keeping the
// client's slot in the table and its own descriptor of the connection:
//
//   - when the worker is done (the client went away), it closes it;
//   - when the worker hands the client back because it is stopping, it
//     offers the client again, to another worker (at most maxHandOffs
//     times in a row; then it serves the client until its next echo or
//     message);
//   - when the worker hands it back because the client asked for
//     something only the server serves (status, reload:
//     wire.ClientHere), or nobody takes it, the server serves the
//     client on, resuming the connection where the worker left it
//     (after a refusal, it offers the client again at an echo or a
//     message once retryMin has passed, then retryMax at most);
//   - when the worker fails, or the server stops, the connection's
//     state is lost: it shuts the connection down, and the client sees
//     it end.
//
// Who may send what is decided here, from the credentials of accept:
// the worker is told whether the client may send control requests, and
// the state a worker hands back is taken with the server's own idea of
// who the client is.

// ErrNotTaken is what a Config.HandOff function returns, wrapped, when
// nobody took the client: nothing has read from or written to the
// connection, and the server serves it on.
var ErrNotTaken = errors.New("frontdoor: client not taken")

// HandOffFunc hands a framed client's connection to a worker (see
// Config.HandOff): conn is the server's descriptor, which stays the
// server's and open until the call returns, and state a wire.Client
// payload. It returns when the worker is done with the client: an empty
// reply (the connection ended), a wire.Client payload (the client is
// handed back), an error wrapping ErrNotTaken (nobody took it), or any
// other error (the connection's state is lost). Ending ctx ends the
// worker's service of the client.
type HandOffFunc func(ctx context.Context, conn *os.File, state []byte) (reply []byte, err error)

const (
	// maxHandOffs bounds how often one client is handed over in a row,
	// from a stopping worker to the next.
	maxHandOffs = 8

	// retryMin and retryMax bound the wait before a client that nobody
	// took is offered again: the wait doubles from retryMin at each
	// refusal.
	retryMin = time.Second
	retryMax = time.Minute
)

// handOff is the hand-over state of one framed client, owned by its
// goroutine (serveFramed); detachAt reads retryAt from the client's
// Conn, which runs only while serveFramed waits for it.
type handOff struct {
	s       *Server
	ours    wire.Client // who the client is, as the server knows it
	retryAt int64       // unix ns: do not offer the client before; 0: any time
	backoff time.Duration
}

func (s *Server) newHandOff(sl *connSlot) *handOff {
	ours := wire.Client{UID: sl.cred.uid, GID: sl.cred.gid, PID: uint32(max(sl.cred.pid, 0)), IdleMillis: uint32(min(s.cfg.IdleTimeout/time.Millisecond, 1<<32-1))}
	if sl.ctl {
		ours.Flags = wire.ClientControl
	}
	return &handOff{s: s, ours: ours, backoff: retryMin}
}

// detachAt is the client Conn's ConnConfig.DetachAt: it detaches in
// front of an echo or a message, unless the client was refused lately.
func (h *handOff) detachAt(t wire.Type) bool {
	if t != wire.TypeEcho && t != wire.TypeMessage {
		return false
	}
	return h.retryAt == 0 || time.Now().UnixNano() >= h.retryAt
}

// offer hands the client, whose connection is f (ours) and whose state
// is sess, to workers until one is done with it (done: f is closed) or
// the server is to serve it on, from the returned Session.
func (h *handOff) offer(ctx context.Context, f *os.File, sess ipc.Session, log hclog.Logger) (*ipc.Session, bool) {
	s := h.s
	st := h.established(sess.Version, wire.AppendHello(nil, sess.Peer), sess.NextID, sess.Buffered)
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // ends with hctx: the hand-overs are over, or the server stops
		select {
		case <-s.stop:
			cancel()
		case <-hctx.Done():
		}
	}()
	for i := 1; ; i++ {
		s.withWorkers.Add(1)
		reply, err := s.cfg.HandOff(hctx, f, wire.AppendClient(nil, st))
		s.withWorkers.Add(-1)
		switch {
		case errors.Is(err, ErrNotTaken):
			h.retryAt = time.Now().Add(h.backoff).UnixNano()
			h.backoff = min(2*h.backoff, retryMax)
			return sessionOf(st), false
		case err != nil:
			log.Warn("client lost: its worker failed, or the server is stopping", "error", err)
			shutdownFile(f)
			f.Close()
			return nil, true
		}
		s.handedOff.Add(1)
		h.retryAt, h.backoff = 0, retryMin
		if len(reply) == 0 {
			f.Close()
			return nil, true
		}
		back, err := wire.ParseClient(reply)
		if err != nil || back.Flags&wire.ClientEstablished == 0 {
			log.Warn("client lost: its worker handed it back in a malformed state", "error", err)
			shutdownFile(f)
			f.Close()
			return nil, true
		}
		st = h.established(back.Version, back.Hello, back.NextID, back.Buffered)
		if back.Flags&wire.ClientHere != 0 || i >= maxHandOffs {
			return sessionOf(st), false
		}
	}
}

// established is the state of the client, hellos exchanged, with the
// server's idea of who it is.
func (h *handOff) established(version uint16, hello []byte, nextID uint64, buffered []byte) wire.Client {
	st := h.ours
	st.Flags |= wire.ClientEstablished
	st.Version, st.Hello, st.NextID, st.Buffered = version, hello, nextID, buffered
	return st
}

// sessionOf returns the Session a client in state st (established) is
// resumed from.
func sessionOf(st wire.Client) *ipc.Session {
	peer, _ := wire.ParseHello(st.Hello) // AppendHello or ParseClient made it
	return &ipc.Session{Version: st.Version, Peer: peer, NextID: st.NextID, Buffered: st.Buffered}
}

// shutdownFile shuts the connection of f down both ways: whoever else
// holds it (a worker) reads its end, and so does the client.
func shutdownFile(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	}
}
