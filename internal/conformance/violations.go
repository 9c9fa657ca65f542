package conformance

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Checks of how the channel ends: the worker's answer to a protocol
// violation, and its exit status when the channel ends without a
// SHUTDOWN. Each runs on a worker of its own, which closes.

// A violation is a rule a check breaks on purpose, and what the worker
// must answer: an ERROR with id 0 and code, then close, then exit with a
// non-zero status (its channel ended without a SHUTDOWN).
type violation struct {
	name string
	// first, if set, is sent in place of our hello (a hello check);
	// else a valid hello offering versions up to version (0: ours) goes
	// first, and then frame.
	first   func() []byte
	version uint16
	frame   func() []byte
	code    wire.Code
	// needs is the highest version the worker must speak for the check
	// to apply (2 for CANCEL rules). A check at version 1 needs the
	// worker to speak version 1.
	needs uint16
}

func helloFrame(h wire.Header, lo, hi uint16) []byte {
	return wire.AppendFrame(nil, h, wire.AppendHello(nil, wire.Hello{MinVersion: lo, MaxVersion: hi, Name: "check-worker"}))
}

var violations = []violation{
	{name: "unknown type", frame: func() []byte {
		return wire.AppendFrame(nil, wire.Header{Type: 14, ID: 1}, nil)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "undefined flag bits", frame: func() []byte {
		return wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: 0x80, ID: 1}, nil)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "oversize length", frame: func() []byte {
		b := make([]byte, wire.HeaderSize)
		wire.PutHeader(b, wire.Header{Type: wire.TypeEcho, ID: 1, Length: wire.MaxPayload + 1})
		return b
	}, code: wire.CodeTooLarge, needs: 1},
	{name: "second HELLO", frame: func() []byte {
		return helloFrame(wire.Header{Type: wire.TypeHello}, 1, 1)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "bad magic", frame: func() []byte {
		b := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil)
		b[0] = 0x00
		return b
	}, code: wire.CodeProtocol, needs: 1},
	{name: "request with id 0", frame: func() []byte {
		return wire.AppendFrame(nil, wire.Header{Type: wire.TypePing}, nil)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "CANCEL on a version 1 connection", version: 1, frame: func() []byte {
		return wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, nil)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "CANCEL with a payload", frame: func() []byte {
		return wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, []byte("x"))
	}, code: wire.CodeProtocol, needs: 2},
	{name: "hello with lowest above highest", first: func() []byte {
		return helloFrame(wire.Header{Type: wire.TypeHello}, 2, 1)
	}, code: wire.CodeProtocol, needs: 1},
	{name: "hello with no common version", first: func() []byte {
		return helloFrame(wire.Header{Type: wire.TypeHello}, 0xFFFF, 0xFFFF)
	}, code: wire.CodeVersion, needs: 1},
	{name: "hello over 264 bytes", first: func() []byte {
		// The header alone: the worker answers it without the payload.
		b := make([]byte, wire.HeaderSize)
		wire.PutHeader(b, wire.Header{Type: wire.TypeHello, Length: wire.MaxHelloPayload + 1})
		return b
	}, code: wire.CodeTooLarge, needs: 1},
	{name: "hello with a non-zero id", first: func() []byte {
		return helloFrame(wire.Header{Type: wire.TypeHello, ID: 1}, 1, wire.ProtocolVersion)
	}, code: wire.CodeProtocol, needs: 1},
}

// violation breaks rule v and checks the worker's ERROR, its close and
// its exit status.
func (c *checker) violation(v violation) {
	name := "violation: " + v.name
	if (v.version == 1 && c.skipV1(name)) || (v.needs >= 2 && c.skipV2(name)) {
		return
	}
	w, conn, err := c.startRaw(name)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	defer w.kill()
	defer conn.Close()
	if v.first != nil {
		err = writeWithin(conn, c.cfg.Timeout, v.first())
	} else if _, _, err = hello(conn, c.cfg.Timeout, v.version); err == nil {
		err = writeWithin(conn, c.cfg.Timeout, v.frame())
	}
	if err != nil {
		c.fail(name, "before the violation: %v", err)
		return
	}
	e, err := c.errorThenClose(conn, v.first != nil)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	if e.Code != v.code {
		c.fail(name, "ERROR code %d (%v), want %d (%v): %q", e.Code, e.Code, v.code, v.code, e.Message)
		return
	}
	if why := c.exitNonZero(w); why != "" {
		c.fail(name, "ERROR %d %q, closed, but %s", e.Code, e.Message, why)
		return
	}
	c.pass(name, fmt.Sprintf("ERROR %d %q with id 0, closed, exit non-zero", e.Code, e.Message))
}

// errorThenClose reads the worker's answer to a violation: an ERROR
// reply with id 0 (before it, only the worker's hello if helloFirst),
// then the end of the stream.
func (c *checker) errorThenClose(conn *os.File, helloFirst bool) (*wire.RemoteError, error) {
	deadline := time.Now().Add(c.cfg.Timeout)
	conn.SetReadDeadline(deadline)
	defer conn.SetReadDeadline(time.Time{})
	var e *wire.RemoteError
	for {
		h, p, err := readFrame(conn)
		switch {
		case e == nil && errors.Is(err, io.EOF):
			return nil, errors.New("the worker closed the connection without an ERROR")
		case e == nil && timedOut(err):
			return nil, fmt.Errorf("no ERROR within %v", c.cfg.Timeout)
		case e == nil && err != nil:
			return nil, err
		case timedOut(err):
			return nil, fmt.Errorf("ERROR %d %q, but the worker did not close the connection within %v", e.Code, e.Message, c.cfg.Timeout)
		case err != nil:
			return e, nil // closed (a reset or a cut frame after the ERROR is a close too)
		case e != nil:
			continue // whatever follows the ERROR until the close
		case h.Type == wire.TypeHello && helloFirst:
			helloFirst = false
			continue
		case h.Type != wire.TypeError:
			return nil, fmt.Errorf("the worker answered with %s, want an ERROR with id 0, then a close", describe(h, p))
		case !h.IsReply():
			return nil, fmt.Errorf("the worker sent %s without the REPLY flag: an ERROR is always a reply", describe(h, p))
		case h.ID != 0:
			return nil, fmt.Errorf("the worker sent %s: an ERROR about a violation carries id 0 (it is about the connection; the offending frame's id may be one of the receiver's own)", describe(h, p))
		}
		e = wire.ParseError(p)
	}
}

// exitNonZero waits for the worker to exit, and says what is wrong if it
// did not exit, or exited 0, or was killed.
func (c *checker) exitNonZero(w *worker) string {
	code, sig, ok := w.waitExit(c.cfg.Timeout)
	switch {
	case !ok:
		return fmt.Sprintf("the worker was still running %v after its channel ended", c.cfg.Timeout)
	case sig:
		return fmt.Sprintf("the worker was killed by signal %d", code)
	case code == 0:
		return "the worker exited 0: a worker whose channel ends without a SHUTDOWN must exit non-zero (the supervisor's restart policy reads the status)"
	}
	return ""
}

// eof checks that the worker exits, with a non-zero status, when its
// channel ends without a SHUTDOWN.
func (c *checker) eof() {
	const name = "EOF without SHUTDOWN: exit non-zero"
	w, conn, err := c.startRaw(name)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	defer w.kill()
	if _, _, err := hello(conn, c.cfg.Timeout, 0); err != nil {
		conn.Close()
		c.fail(name, "hello: %v", err)
		return
	}
	conn.Close()
	if why := c.exitNonZero(w); why != "" {
		c.fail(name, "%s", why)
		return
	}
	c.pass(name, fmt.Sprintf("exit status %d", w.state.ExitCode()))
}

// connError checks that an ERROR with id 0 from the supervisor ends the
// connection: the worker closes without answering, and exits non-zero.
func (c *checker) connError() {
	const name = "ERROR with id 0 from the supervisor: close, exit non-zero"
	w, conn, err := c.startRaw(name)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	defer w.kill()
	defer conn.Close()
	if _, _, err := hello(conn, c.cfg.Timeout, 0); err != nil {
		c.fail(name, "hello: %v", err)
		return
	}
	bye := wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, wire.CodeProtocol, "check-worker: the connection ends here (a check)"))
	if err := writeWithin(conn, c.cfg.Timeout, bye); err != nil {
		c.fail(name, "%v", err)
		return
	}
	var sent []string
	for {
		h, p, err := readWithin(conn, c.cfg.Timeout)
		if err == nil {
			sent = append(sent, describe(h, p))
			continue
		}
		if timedOut(err) {
			c.fail(name, "the worker did not close the connection within %v", c.cfg.Timeout)
			return
		}
		break
	}
	if len(sent) > 0 {
		c.fail(name, "the worker answered it with %s: the receiver of an ERROR with id 0 closes without answering", strings.Join(sent, ", "))
		return
	}
	if why := c.exitNonZero(w); why != "" {
		c.fail(name, "closed, but %s", why)
		return
	}
	c.pass(name, fmt.Sprintf("closed without answering; exit status %d", w.state.ExitCode()))
}
