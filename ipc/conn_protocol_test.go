//go:build linux

package ipc_test

// The rules of docs/PROTOCOL.md that issue 11 settled, each checked on
// the wire: which id an error frame carries, id 0, the hello, version
// negotiation, cancel frames (version 2) and handlers that panic.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// readUntilEOF reads frames from raw until the Conn closes its end.
func readUntilEOF(tb testing.TB, raw *os.File) []wire.Header {
	tb.Helper()
	var hs []wire.Header
	for {
		h, _, err := wire.ReadFrame(raw, 0)
		if err == io.EOF {
			return hs
		}
		if err != nil {
			tb.Fatalf("reading frames until EOF: %v (after %v)", err, hs)
		}
		hs = append(hs, h)
	}
}

// wantConnError reads the next frame from raw, which must be an error
// about the connection (id 0, reply flag) with code, followed by EOF.
func wantConnError(tb testing.TB, raw *os.File, code wire.Code) {
	tb.Helper()
	h, p := readRaw(tb, raw)
	if h.Type != wire.TypeError || !h.IsReply() || h.ID != 0 || wire.ParseError(p).Code != code {
		tb.Fatalf("got %+v %q, want an error frame with id 0 and code %d", h, p, code)
	}
	if rest := readUntilEOF(tb, raw); len(rest) > 0 {
		tb.Fatalf("frames after the connection's error: %v", rest)
	}
}

// TestViolationErrorIDZero: whatever frame breaks the protocol, request
// or reply, the error frame about it carries id 0, never the frame's id.
// The frames at fault here carry the id of the Conn's own request 1, in
// flight: an error frame with that id would, at the peer, answer the
// peer's own request 1, which has nothing to do with it.
func TestViolationErrorIDZero(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		frame func(id uint64) []byte
		want  error
		code  wire.Code
	}{
		{"reply-too-large", func(id uint64) []byte { return header(wire.TypeMessage, wire.FlagReply, 0xFFFFFFFF, id) }, wire.ErrFrameTooLarge, wire.CodeTooLarge},
		{"reply-bad-flags", func(id uint64) []byte { return header(wire.TypeMessage, wire.FlagReply|0x40, 0, id) }, wire.ErrBadFlags, wire.CodeProtocol},
		{"reply-wrong-type", func(id uint64) []byte {
			return wire.AppendFrame(nil, wire.Header{Type: wire.TypeStatus, Flags: wire.FlagReply, ID: id}, nil)
		}, ipc.ErrUnexpected, wire.CodeProtocol},
		{"reply-hello", func(id uint64) []byte { return header(wire.TypeHello, wire.FlagReply, 0, id) }, ipc.ErrUnexpected, wire.CodeProtocol},
		{"reply-cancel", func(id uint64) []byte { return header(wire.TypeCancel, wire.FlagReply, 0, id) }, ipc.ErrUnexpected, wire.CodeProtocol},
		{"request-unknown-type", func(id uint64) []byte { return header(10, 0, 0, id) }, wire.ErrUnknownType, wire.CodeProtocol},
		{"request-error", func(id uint64) []byte {
			return wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, ID: id}, wire.AppendError(nil, wire.CodeInternal, "x"))
		}, ipc.ErrUnexpected, wire.CodeProtocol},
		{"request-hello", func(id uint64) []byte {
			return wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, ID: id}, rawHello(1, 2))
		}, ipc.ErrUnexpected, wire.CodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, raw := rawPeerVersions(t, ipc.ConnConfig{}, 1, 2)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Call(ctxTimeout(t, waitTimeout), wire.TypeMessage, []byte("x"), nil)
				errc <- err
			}()
			req, _ := readRaw(t, raw)
			writeRaw(t, raw, tc.frame(req.ID))
			wantConnError(t, raw, tc.code)
			if err := recv(t, errc, "the call's end"); !errors.Is(err, ipc.ErrClosed) || !errors.Is(err, tc.want) {
				t.Errorf("call in flight: %v, want ErrClosed and %v", err, tc.want)
			}
			waitDone(t, c)
			wantOpFrameError(t, c.Err(), tc.want)
		})
	}
}

// TestReservedIDZero: a request with id 0 breaks the protocol (id 0 is
// for hellos and errors about the connection); so does a cancel frame.
func TestReservedIDZero(t *testing.T) {
	t.Parallel()
	for _, typ := range []wire.Type{wire.TypePing, wire.TypeEcho, wire.TypeMessage, wire.TypeShutdown, wire.TypeStatus, wire.TypeCancel} {
		t.Run(typ.String(), func(t *testing.T) {
			t.Parallel()
			c, raw := rawPeerVersions(t, ipc.ConnConfig{Handler: func(context.Context, ipc.Request) ([]byte, error) { return nil, nil }}, 1, 2)
			writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: typ}, nil))
			wantConnError(t, raw, wire.CodeProtocol)
			waitDone(t, c)
			wantOpFrameError(t, c.Err(), ipc.ErrUnexpected)
		})
	}
}

// TestUnknownReplyIDIgnored: replies whose id names no request of ours
// in flight, error replies and a reply with id 0 included, are read and
// dropped; the connection goes on.
func TestUnknownReplyIDIgnored(t *testing.T) {
	t.Parallel()
	c, raw := rawPeerVersions(t, ipc.ConnConfig{}, 1, 2)
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: 77}, wire.AppendError(nil, wire.CodeInternal, "stray")))
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, Flags: wire.FlagReply, ID: 78}, []byte("stray")))
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, Flags: wire.FlagReply}, nil))
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil))
	if h, _ := readRaw(t, raw); h != (wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, ID: 1}) {
		t.Fatalf("got %+v, want the pong to 1", h)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("stray replies closed the Conn: %v", err)
	}
}

// TestHelloRules: the hellos a Conn refuses, and the error it sends for
// each (after its own hello, which goes out first), and one it accepts.
func TestHelloRules(t *testing.T) {
	t.Parallel()
	long := append(header(wire.TypeHello, 0, wire.MaxHelloPayload+1, 0), rawHello(1, 2)...)
	long = append(long, make([]byte, wire.MaxHelloPayload+1-len(rawHello(1, 2)))...)
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
		code  wire.Code
	}{
		{"inverted", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(3, 2)), wire.ErrBadPayload, wire.CodeProtocol},
		{"lowest-zero", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(0, 2)), wire.ErrBadPayload, wire.CodeProtocol},
		{"short", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, []byte{1, 0, 2, 0}), wire.ErrBadPayload, wire.CodeProtocol},
		{"too-long", long, wire.ErrFrameTooLarge, wire.CodeTooLarge},
		{"nonzero-id", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, ID: 3}, rawHello(1, 2)), ipc.ErrUnexpected, wire.CodeProtocol},
		{"no-common-version", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(3, 9)), ipc.ErrVersion, wire.CodeVersion},
		{"cancel-first", wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, nil), ipc.ErrUnexpected, wire.CodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fc, raw, err := ipc.Socketpair()
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			writeRaw(t, raw, tc.frame)
			c, err := ipc.NewConn(ctxTimeout(t, waitTimeout), fc, ipc.ConnConfig{})
			if err == nil {
				c.Close()
				t.Fatal("NewConn succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewConn: %v, want %v", err, tc.want)
			}
			if h, _ := readRaw(t, raw); h.Type != wire.TypeHello {
				t.Fatalf("first frame %+v, want the Conn's hello", h)
			}
			wantConnError(t, raw, tc.code)
		})
	}

	// A name that is not UTF-8 is no reason to refuse: it is for humans.
	fc, raw, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hello := append(rawHello(1, 2)[:8], "raw\xff\xfe.1"...)
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, hello))
	c, err := ipc.NewConn(ctxTimeout(t, waitTimeout), fc, ipc.ConnConfig{})
	if err != nil {
		t.Fatalf("hello with a name that is not UTF-8: %v", err)
	}
	defer c.Close()
	if got := c.Peer().Name; got != "raw\uFFFD.1" {
		t.Errorf("Peer().Name = %q, want the invalid bytes replaced by U+FFFD", got)
	}
}

// TestVersionNegotiated: each side offers up to its MaxVersion, and both
// use the higher version both offer.
func TestVersionNegotiated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ a, b, offerA, offerB, want uint16 }{
		{0, 0, 2, 2, 2},
		{1, 0, 1, 2, 1},
		{0, 1, 2, 1, 1},
		{1, 1, 1, 1, 1},
		{2, 9, 2, 2, 2}, // lowered to what the package speaks
	} {
		a, b := pair(t, ipc.ConnConfig{MaxVersion: tc.a}, ipc.ConnConfig{MaxVersion: tc.b})
		if a.Version() != tc.want || b.Version() != tc.want {
			t.Errorf("MaxVersion %d and %d: versions %d and %d, want %d", tc.a, tc.b, a.Version(), b.Version(), tc.want)
		}
		if pa, pb := b.Peer(), a.Peer(); pa.MinVersion != 1 || pa.MaxVersion != tc.offerA || pb.MinVersion != 1 || pb.MaxVersion != tc.offerB {
			t.Errorf("MaxVersion %d and %d: hellos offered %d..%d and %d..%d, want 1..%d and 1..%d",
				tc.a, tc.b, pa.MinVersion, pa.MaxVersion, pb.MinVersion, pb.MaxVersion, tc.offerA, tc.offerB)
		}
	}
}

// TestCancelSent: a call whose context ends sends a cancel frame for its
// request (not for a ping) if, and only if, both sides speak version 2.
// The raw peer answers nothing; when the Conn has closed, the frames it
// sent after the requests are exactly the cancels due.
func TestCancelSent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		ours    uint16 // our MaxVersion
		peerMax uint16 // the raw peer's highest version
		cancels bool
	}{
		{"v2-v2", 0, 2, true},
		{"v2-v1peer", 0, 1, false},
		{"v1-v2peer", 1, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, raw := rawPeerVersions(t, ipc.ConnConfig{MaxVersion: tc.ours}, 1, tc.peerMax)
			var want, got []uint64
			// next reads the next frame that is not a cancel; cancels are
			// written in the background and may come before it.
			next := func() wire.Header {
				for {
					h, _ := readRaw(t, raw)
					if h.Type != wire.TypeCancel {
						return h
					}
					if h.Flags != 0 || h.Length != 0 {
						t.Errorf("malformed cancel frame %+v", h)
					}
					got = append(got, h.ID)
				}
			}
			for _, typ := range []wire.Type{wire.TypeMessage, wire.TypePing, wire.TypeEcho} {
				ctx, cancel := context.WithCancel(context.Background())
				errc := make(chan error, 1)
				go func() {
					_, err := c.Call(ctx, typ, nil, nil)
					errc <- err
				}()
				h := next()
				if h.Type != typ {
					t.Fatalf("got %+v, want the %s request", h, typ)
				}
				if tc.cancels && typ != wire.TypePing {
					want = append(want, h.ID)
				}
				cancel()
				if err := recv(t, errc, "the cancelled call's end"); !errors.Is(err, context.Canceled) {
					t.Fatalf("%s call: %v, want context.Canceled", typ, err)
				}
			}
			// Close would cut short cancels still queued: wait until
			// whatever was queued is written.
			testutil.Poll(t, waitTimeout, time.Millisecond, "the queued cancels to be written", func() bool { return !ipc.CancelsPending(c) }, nil)
			c.Close()
			for _, h := range readUntilEOF(t, raw) {
				if h.Type != wire.TypeCancel || h.Flags != 0 || h.Length != 0 {
					t.Errorf("unexpected frame %+v", h)
					continue
				}
				got = append(got, h.ID)
			}
			if !slices.Equal(got, want) {
				t.Errorf("cancel frames for %v, want %v", got, want)
			}
		})
	}
}

// TestCancelReceived: on a version 2 connection a cancel frame cancels
// the context of the Handler working on that request, which is still
// answered; a cancel for an unknown id is ignored; an id may be used
// again once its reply is out, but not while its request is in flight.
func TestCancelReceived(t *testing.T) {
	t.Parallel()
	blk := newBlocker(0)
	c, raw := rawPeerVersions(t, ipc.ConnConfig{Handler: blk.handle}, 1, 2)
	if v := c.Version(); v != 2 {
		t.Fatalf("Version() = %d, want 2", v)
	}
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 5}, []byte(msgBlock)))
	recv(t, blk.started, "handler start")
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 99}, nil)) // unknown: ignored
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 5}, nil))
	recv(t, blk.returned, "the cancelled handler's return") // blk.release is never closed
	h, p := readRaw(t, raw)
	if re := wire.ParseError(p); h.Type != wire.TypeError || !h.IsReply() || h.ID != 5 || re.Code != wire.CodeInternal || !strings.Contains(re.Message, "canceled") {
		t.Fatalf("reply to the cancelled request: %+v %q, want an error reply to 5 saying it was cancelled", h, p)
	}
	testutil.Poll(t, waitTimeout, time.Millisecond, "the cancelled request to be unregistered", func() bool { return ipc.ActiveRequests(c) == 0 }, nil)

	// A cancel after the reply, and the id used again: fine.
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 5}, nil))
	for range 2 {
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 5}, []byte("again")))
		if h, p := readRaw(t, raw); h != (wire.Header{Type: wire.TypeMessage, Flags: wire.FlagReply, Length: 5, ID: 5}) || string(p) != "again" {
			t.Fatalf("message 5 again: %+v %q", h, p)
		}
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Conn closed: %v", err)
	}

	// Two requests with one id in flight at once: a protocol error.
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 6}, []byte(msgBlock)))
	recv(t, blk.started, "handler start")
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 6}, []byte("x")))
	h, p = readRaw(t, raw)
	if h.Type != wire.TypeError || h.ID != 0 || wire.ParseError(p).Code != wire.CodeProtocol {
		t.Fatalf("second request 6 in flight: %+v %q, want a protocol error about the connection", h, p)
	}
	recv(t, blk.returned, "the handler's return as the Conn closes")
	waitDone(t, c)
	wantOpFrameError(t, c.Err(), ipc.ErrUnexpected)
}

// TestCancelFrameRules: cancel frames a receiver refuses.
func TestCancelFrameRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		peerMax uint16
		frame   []byte
		want    error
	}{
		{"on-version-1", 1, wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, nil), wire.ErrUnknownType},
		{"with-payload", 2, wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, []byte{1}), wire.ErrBadPayload},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, raw := rawPeerVersions(t, ipc.ConnConfig{}, 1, tc.peerMax)
			writeRaw(t, raw, tc.frame)
			wantConnError(t, raw, wire.CodeProtocol)
			waitDone(t, c)
			wantOpFrameError(t, c.Err(), tc.want)
		})
	}
}

// TestCancelAcrossProcesses: a call that gives up cancels the handler in
// the helper process, over version 2; with either side held to version
// 1, no cancel frame is sent (the helper, which exits non-zero after a
// frame it does not expect, must exit 0 when we close).
func TestCancelAcrossProcesses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, role string
		ours       uint16
		want       uint16
	}{
		{"v2-v2", "serve", 0, 2},
		{"v2-v1helper", "serve-v1", 0, 1},
		{"v1-v2helper", "serve", 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan string, 2)
			c, _ := dialHelper(t, tc.role, ipc.ConnConfig{MaxVersion: tc.ours, Handler: func(ctx context.Context, req ipc.Request) ([]byte, error) {
				got <- string(req.Payload)
				return nil, nil
			}})
			if v := c.Version(); v != tc.want {
				t.Fatalf("Version() = %d, want %d", v, tc.want)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := c.Call(ctx, wire.TypeMessage, []byte(msgBlockReport), nil)
				errc <- err
			}()
			if p := recv(t, got, "the helper's handler start"); p != msgBlocked {
				t.Fatalf("helper said %q, want %q", p, msgBlocked)
			}
			cancel()
			if err := recv(t, errc, "the cancelled call's end"); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled call: %v", err)
			}
			if tc.want >= 2 {
				if p := recv(t, got, "the helper's report of the cancel"); p != msgCancelled {
					t.Fatalf("helper said %q, want %q", p, msgCancelled)
				}
			}
			// The Conn still works both ways.
			if got, err := c.Call(ctxTimeout(t, waitTimeout), wire.TypeMessage, []byte("after"), nil); err != nil || string(got) != "after" {
				t.Fatalf("message after the cancel: %q, %v", got, err)
			}
			// Cleanup closes c and wants the helper to exit 0.
		})
	}
}

// TestHandlerPanic: a Handler that panics, or ends its goroutine, answers
// that request with CodeCrashed and logs the panic and its stack; the
// Conn serves on, whatever the version, and nothing is left registered
// or held. A shutdown whose Handler panics still drains the Conn.
func TestHandlerPanic(t *testing.T) {
	t.Parallel()
	for _, ver := range []uint16{1, 2} {
		t.Run(fmt.Sprintf("v%d", ver), func(t *testing.T) {
			t.Parallel()
			var logs testutil.Buffer
			log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Error})
			a, b := pair(t, ipc.ConnConfig{MaxVersion: ver}, ipc.ConnConfig{Logger: log, Handler: panicky})
			ctx := ctxTimeout(t, waitTimeout)
			for _, tc := range []struct{ payload, log string }{
				{"panic", "handler panicked"},
				{"goexit", "runtime.Goexit"},
			} {
				_, err := a.Call(ctx, wire.TypeMessage, []byte(tc.payload), nil)
				var re *wire.RemoteError
				if !errors.As(err, &re) || re.Code != wire.CodeCrashed || errors.Is(err, ipc.ErrClosed) {
					t.Fatalf("%s: %v, want an error reply with code %d", tc.payload, err, wire.CodeCrashed)
				}
				if s := logs.String(); !strings.Contains(s, tc.log) || !strings.Contains(s, "ipc_test.panicky") {
					t.Errorf("%s: log %q lacks %q or the stack", tc.payload, s, tc.log)
				}
			}
			if !strings.Contains(logs.String(), "boom") {
				t.Errorf("log %q lacks the panic value", logs.String())
			}
			if got, err := a.Call(ctx, wire.TypeMessage, []byte("fine"), nil); err != nil || string(got) != "fine" {
				t.Fatalf("message after the panics: %q, %v", got, err)
			}
			_, err := a.Call(ctx, wire.TypeShutdown, nil, nil)
			if re := (*wire.RemoteError)(nil); !errors.As(err, &re) || re.Code != wire.CodeCrashed {
				t.Fatalf("shutdown whose handler panics: %v, want code %d", err, wire.CodeCrashed)
			}
			if _, err := a.Call(ctx, wire.TypeMessage, []byte("late"), nil); !isCode(err, wire.CodeShutdown) {
				t.Errorf("message after the shutdown: %v, want code %d", err, wire.CodeShutdown)
			}
			if n := ipc.ActiveRequests(b); n != 0 {
				t.Errorf("%d requests still registered", n)
			}
			b.Close()
			if left := ipc.LeftoverBytes(b); left != 0 {
				t.Errorf("%d bytes still held after the Conn closed", left)
			}
		})
	}
}

// panicky is a Handler that panics for "panic", ends its goroutine for
// "goexit", panics on shutdown, and echoes anything else.
func panicky(ctx context.Context, req ipc.Request) ([]byte, error) {
	switch {
	case req.Type == wire.TypeShutdown, string(req.Payload) == "panic":
		panic("boom")
	case string(req.Payload) == "goexit":
		runtime.Goexit()
	}
	return req.Payload, nil
}

func isCode(err error, code wire.Code) bool {
	var re *wire.RemoteError
	return errors.As(err, &re) && re.Code == code
}
