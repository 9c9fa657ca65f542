package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Checks of rules whose breach the worker must answer without closing:
// they share one worker process and one raw connection, in order. A
// check that fails may leave the connection in any state, so the next
// one starts on a fresh worker.

// rawSession is a worker under check and our raw end of its channel,
// after the hello exchange. Its owner closes it (close), which closes
// the connection and kills and reaps the worker.
type rawSession struct {
	c    *checker
	w    *worker
	conn *os.File
}

// startRaw starts a worker for check name and takes the parent's end
// of its channel as a raw connection. The caller owns both: it kills
// the worker and closes the connection. On error neither is left.
func (c *checker) startRaw(name string) (*worker, *os.File, error) {
	w, err := c.start(name)
	if err != nil {
		return nil, nil, err
	}
	conn, err := w.raw()
	if err != nil {
		w.kill()
		return nil, nil, err
	}
	return w, conn, nil
}

// openSession starts a worker for check name and exchanges hellos.
func (c *checker) openSession(name string) (*rawSession, error) {
	w, conn, err := c.startRaw(name)
	if err != nil {
		return nil, err
	}
	if _, _, err := hello(conn, c.cfg.Timeout, 0); err != nil {
		conn.Close()
		w.kill()
		return nil, fmt.Errorf("hello: %w", err)
	}
	return &rawSession{c: c, w: w, conn: conn}, nil
}

func (s *rawSession) close() {
	s.conn.Close()
	s.w.kill()
}

func (s *rawSession) send(frames ...[]byte) error {
	if err := writeWithin(s.conn, s.c.cfg.Timeout, frames...); err != nil {
		return fmt.Errorf("writing to the worker: %w", err)
	}
	return nil
}

// next reads the worker's next frame, saying what went wrong if none
// came. Requests of the worker's own (it may send some, as a supervisor
// may) are answered as a supervisor answers them, PING and ECHO with
// their payload and the rest with code 2, and its CANCELs ignored: they
// are not what a check waits for.
func (s *rawSession) next() (wire.Header, []byte, error) {
	for {
		h, p, err := readWithin(s.conn, s.c.cfg.Timeout)
		switch {
		case errors.Is(err, io.EOF):
			return h, nil, errors.New("the worker closed the connection")
		case timedOut(err):
			return h, nil, fmt.Errorf("nothing from the worker within %v", s.c.cfg.Timeout)
		case err != nil:
			return h, nil, err
		case h.IsReply() || h.ID == 0 || h.Type == wire.TypeHello || h.Type == wire.TypeError:
			return h, p, nil
		case h.Type == wire.TypeCancel:
			continue
		}
		rh := wire.Header{Type: h.Type, Flags: wire.FlagReply, ID: h.ID}
		if h.Type != wire.TypePing && h.Type != wire.TypeEcho {
			rh.Type, p = wire.TypeError, wire.AppendError(nil, wire.CodeUnsupported, "check-worker serves only ping and echo")
		}
		if err := s.send(wire.AppendFrame(nil, rh, p)); err != nil {
			return h, nil, err
		}
	}
}

// syncPayload is what our synchronising pings carry.
var syncPayload = []byte("check-worker sync")

// A frame is one frame from the worker.
type frame struct {
	h wire.Header
	p []byte
}

func (f frame) String() string { return describe(f.h, f.p) }

// sync sends a ping with id and returns the frames the worker sent
// before its pong: so, the worker still answers, and anything it sent
// about what came before the ping is in hand.
func (s *rawSession) sync(id uint64) ([]frame, error) {
	if err := s.send(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: id}, syncPayload)); err != nil {
		return nil, err
	}
	var before []frame
	for {
		h, p, err := s.next()
		if err != nil {
			return before, fmt.Errorf("no pong to a ping sent after it: %w", err)
		}
		if h.Type == wire.TypePing && h.IsReply() && h.ID == id {
			if !bytes.Equal(p, syncPayload) {
				return before, fmt.Errorf("the pong to a ping sent after it carries %d bytes, not the ping's %d", len(p), len(syncPayload))
			}
			return before, nil
		}
		before = append(before, frame{h, p})
	}
}

// A sessionCheck is one check on a shared connection. run returns the
// detail of a pass, or why it failed.
type sessionCheck struct {
	name    string
	version uint16 // the protocol version it needs (1: any)
	run     func(s *rawSession) (string, error)
}

// Ids of our requests in the session: each check uses its own, and
// never one of the reply ids below.
const (
	idUnknownSync = 1 + iota
	idBigPing
	idBigPingSync
	idCancelUnknownSync
	idCancelled
	idCancelledSync
	idCancelledSync2

	idNever = 1 << 40 // ids no request ever had
)

var sessionChecks = []sessionCheck{
	{"reply with an unknown id is dropped", 1, func(s *rawSession) (string, error) {
		err := s.send(
			wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: idNever}, random(100)),
			wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: idNever + 1}, wire.AppendError(nil, wire.CodeUnavailable, "check-worker: a reply to nothing")),
			wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, Flags: wire.FlagReply, ID: idNever + 2}, nil))
		if err != nil {
			return "", err
		}
		before, err := s.sync(idUnknownSync)
		switch {
		case err != nil:
			return "", err
		case len(before) > 0:
			return "", fmt.Errorf("the worker answered with %s; a reply whose id matches no request in flight is read and dropped", before[0])
		}
		return "echo, error and message replies to ids never used: dropped; a ping after them answered", nil
	}},
	{"PING over 64 bytes: code 5 on its own id, connection open", 1, func(s *rawSession) (string, error) {
		if err := s.send(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: idBigPing}, random(wire.MaxPingPayload+1))); err != nil {
			return "", err
		}
		h, p, err := s.next()
		if err != nil {
			return "", fmt.Errorf("no answer to a ping of %d bytes: %w", wire.MaxPingPayload+1, err)
		}
		e := wire.ParseError(p)
		switch {
		case h.Type != wire.TypeError || !h.IsReply():
			return "", fmt.Errorf("a ping of %d bytes was answered with %s, want an error reply with code 5 (too large)", wire.MaxPingPayload+1, describe(h, p))
		case h.ID == 0:
			return "", fmt.Errorf("answered with an error about the connection, %s: an oversize ping is refused on its own id and the connection goes on", describe(h, p))
		case h.ID != idBigPing || e.Code != wire.CodeTooLarge:
			return "", fmt.Errorf("answered with %s, want code 5 (too large) on id %d", describe(h, p), idBigPing)
		}
		before, err := s.sync(idBigPingSync)
		switch {
		case err != nil:
			return "", err
		case len(before) > 0:
			return "", fmt.Errorf("after the error the worker sent %s", before[0])
		}
		return fmt.Sprintf("error 5 %q on the ping's id; the next ping answered", e.Message), nil
	}},
	{"CANCEL of an unknown id is ignored", 2, func(s *rawSession) (string, error) {
		if err := s.send(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: idNever + 3}, nil)); err != nil {
			return "", err
		}
		before, err := s.sync(idCancelUnknownSync)
		switch {
		case err != nil:
			return "", err
		case len(before) > 0:
			return "", fmt.Errorf("the worker answered with %s; a CANCEL is never answered, and one for an id the worker does not know is ignored", before[0])
		}
		return "not answered; a ping after it answered", nil
	}},
	{"CANCEL of an in-flight MESSAGE: exactly one reply", 2, func(s *rawSession) (string, error) {
		// The CANCEL follows the request at once: the handler may have
		// answered already, may see the cancel, or may ignore it; in
		// every case the request gets one reply, and the connection
		// goes on.
		err := s.send(
			wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: idCancelled}, []byte("check-worker: a message it cancels")),
			wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: idCancelled}, nil))
		if err != nil {
			return "", err
		}
		before, err := s.sync(idCancelledSync)
		if err != nil {
			return "", err
		}
		var reply *frame
		for _, f := range before {
			if reply != nil {
				return "", fmt.Errorf("after %s the worker sent %s", reply, f)
			}
			reply = &f
		}
		if reply == nil {
			// Not answered yet: the handler is still at work.
			h, p, err := s.next()
			if err != nil {
				return "", fmt.Errorf("no reply to the cancelled message: %w", err)
			}
			reply = &frame{h, p}
		}
		if h := reply.h; h.ID != idCancelled || !h.IsReply() || (h.Type != wire.TypeMessage && h.Type != wire.TypeError) {
			return "", fmt.Errorf("the worker answered a message (id %d) and its CANCEL with %s, want one message or error reply with id %d", idCancelled, reply, idCancelled)
		}
		before, err = s.sync(idCancelledSync2)
		switch {
		case err != nil:
			return "", err
		case len(before) > 0:
			return "", fmt.Errorf("after %s the worker sent %s: a cancelled request is answered once", reply, before[0])
		}
		return "answered once: " + reply.String(), nil
	}},
}

// session runs sessionChecks, skipping those of a version the worker
// does not speak.
func (c *checker) session() {
	var s *rawSession
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	for _, sc := range sessionChecks {
		if sc.version >= 2 && c.skipV2(sc.name) {
			continue
		}
		if s == nil {
			var err error
			if s, err = c.openSession(sc.name); err != nil {
				c.fail(sc.name, "%v", err)
				continue
			}
		}
		detail, err := sc.run(s)
		if err != nil {
			c.fail(sc.name, "%v", err)
			s.close()
			s = nil
			continue
		}
		c.pass(sc.name, detail)
	}
}
