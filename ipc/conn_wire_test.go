//go:build linux

package ipc_test

// The wire as the peer sees it: answers to hand-written frames, refused
// hellos, garbage, the payload limit, and what NewConn accepts.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// TestRawPeer speaks the protocol by hand to check the wire behaviour of
// a Conn's answers.
func TestRawPeer(t *testing.T) {
	t.Parallel()
	t.Run("pong", func(t *testing.T) {
		t.Parallel()
		_, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 42}, []byte("abc")))
		h, p := readRaw(t, raw)
		if h != (wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, Length: 3, ID: 42}) || string(p) != "abc" {
			t.Fatalf("pong: %+v %q", h, p)
		}
	})
	t.Run("echo", func(t *testing.T) {
		t.Parallel()
		_, raw := rawPeer(t, ipc.ConnConfig{})
		payload := randBytes(1, 100<<10) // larger than the Conn's read buffer
		// The reply comes back while we write, so write from another
		// goroutine.
		werr := make(chan error, 1)
		go func() {
			_, err := raw.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 1 << 60}, payload))
			werr <- err
		}()
		h, p := readRaw(t, raw)
		if err := recv(t, werr, "end of write"); err != nil {
			t.Fatal(err)
		}
		if h.Type != wire.TypeEcho || !h.IsReply() || h.ID != 1<<60 || !bytes.Equal(p, payload) {
			t.Fatalf("echo reply %+v with %d bytes", h, len(p))
		}
	})
	t.Run("stray-reply", func(t *testing.T) {
		t.Parallel()
		c, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 999}, make([]byte, 50<<10)))
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil))
		if h, _ := readRaw(t, raw); h.Type != wire.TypePing || h.ID != 1 {
			t.Fatalf("got %+v, want the pong", h)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("a reply nobody waits for closed the Conn: %v", err)
		}
	})
	t.Run("no-handler", func(t *testing.T) {
		t.Parallel()
		_, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeReload, ID: 5}, nil))
		h, p := readRaw(t, raw)
		if h.Type != wire.TypeError || !h.IsReply() || h.ID != 5 || wire.ParseError(p).Code != wire.CodeUnsupported {
			t.Fatalf("reload to a Conn without a handler: %+v %q", h, p)
		}
	})
	t.Run("big-ping", func(t *testing.T) {
		// A ping over 64 bytes is refused, its payload skipped; the
		// connection goes on.
		t.Parallel()
		c, raw := rawPeer(t, ipc.ConnConfig{})
		big := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 6}, make([]byte, 100<<10))
		werr := make(chan error, 1)
		go func() { // larger than the socket buffer: the Conn reads while we write
			_, err := raw.Write(append(big, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 7}, []byte("ok"))...))
			werr <- err
		}()
		h, p := readRaw(t, raw)
		if h.Type != wire.TypeError || !h.IsReply() || h.ID != 6 || wire.ParseError(p).Code != wire.CodeTooLarge {
			t.Fatalf("oversized ping: got %+v %q, want an error reply to 6 with code %d", h, p, wire.CodeTooLarge)
		}
		if h, p = readRaw(t, raw); h != (wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, Length: 2, ID: 7}) || string(p) != "ok" {
			t.Fatalf("after the refused ping: %+v %q, want the pong to 7", h, p)
		}
		if err := recv(t, werr, "end of write"); err != nil {
			t.Fatal(err)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("an oversized ping closed the Conn: %v", err)
		}
	})
	t.Run("wrong-reply-type", func(t *testing.T) {
		t.Parallel()
		c, raw := rawPeer(t, ipc.ConnConfig{})
		errc := make(chan error, 1)
		pctx := ctxTimeout(t, waitTimeout)
		go func() {
			_, err := c.Ping(pctx)
			errc <- err
		}()
		h, _ := readRaw(t, raw)
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: h.ID}, nil))
		if err := recv(t, errc, "ping result"); !errors.Is(err, ipc.ErrUnexpected) {
			t.Errorf("ping answered by an echo reply: %v, want ErrUnexpected", err)
		}
		waitDone(t, c)
		wantOpFrameError(t, c.Err(), ipc.ErrUnexpected)
	})
}

// TestHandshakeRefused covers hellos a Conn must refuse.
func TestHandshakeRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
		code  wire.Code // of the error frame sent back; 0 for none
	}{
		{"version", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(3, 4)), ipc.ErrVersion, wire.CodeVersion},
		{"bad-hello", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(0, 1)), wire.ErrBadPayload, wire.CodeProtocol},
		{"hello-reply", wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, Flags: wire.FlagReply}, rawHello(1, 1)), ipc.ErrUnexpected, wire.CodeProtocol},
		{"error", wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, wire.CodeShutdown, "going away")), nil, 0},
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
			if tc.want == nil {
				var re *wire.RemoteError
				if !errors.As(err, &re) || re.Code != wire.CodeShutdown || re.Message != "going away" {
					t.Fatalf("NewConn: %v, want the peer's error", err)
				}
			} else if !errors.Is(err, tc.want) {
				t.Fatalf("NewConn: %v, want %v", err, tc.want)
			}
			var frames []string
			for {
				h, p, err := wire.ReadFrame(raw, 0)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				s := h.Type.String()
				if h.Type == wire.TypeError {
					s += fmt.Sprint(uint16(wire.ParseError(p).Code))
				}
				frames = append(frames, s)
			}
			want := "hello"
			if tc.code != 0 {
				want += fmt.Sprintf(" error%d", tc.code)
			}
			if got := strings.Join(frames, " "); got != want {
				t.Errorf("peer received %q, want %q", got, want)
			}
		})
	}
}

func TestGarbage(t *testing.T) {
	t.Parallel()
	for _, g := range garbageCases {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			h, f := startHelper(t, "garbage-"+g.name)
			ctx := ctxTimeout(t, waitTimeout)
			c, err := ipc.NewConn(ctx, f, ipc.ConnConfig{})
			if g.afterHello {
				if err != nil {
					t.Fatalf("NewConn: %v", err)
				}
				waitDone(t, c)
				err = c.Err()
				_, cerr := c.Ping(ctx)
				if !errors.Is(cerr, ipc.ErrClosed) || !errors.Is(cerr, g.want) {
					t.Errorf("Ping after a protocol error: %v, want ErrClosed and %v", cerr, g.want)
				}
			} else if err == nil {
				c.Close()
				t.Fatal("NewConn succeeded")
			}
			wantOpFrameError(t, err, g.want)
			h.exitOK(t)
		})
	}
}

func TestMaxPayload(t *testing.T) {
	t.Parallel()
	const limit = 1024
	a, b := pair(t, ipc.ConnConfig{MaxPayload: limit}, ipc.ConnConfig{})
	ctx := ctxTimeout(t, waitTimeout)

	// Refused before anything is sent; the Conn stays open.
	_, err := a.Echo(ctx, make([]byte, limit+1), nil)
	wantOpFrameError(t, err, wire.ErrFrameTooLarge)
	if !strings.Contains(err.Error(), "exceeds the limit of 1024") {
		t.Errorf("error %q does not give the limit", err)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("Conn closed by a refused call: %v", err)
	}
	if got, err := a.Echo(ctx, make([]byte, limit), nil); err != nil || len(got) != limit {
		t.Fatalf("echo at the limit: %d bytes, %v", len(got), err)
	}

	// A peer that sends more than our limit is told so, in an error
	// about the connection (id 0), and we close. Its call fails with
	// that error, and so does its Conn.
	_, err = b.Echo(ctx, make([]byte, limit+1), nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeTooLarge || !errors.Is(err, ipc.ErrClosed) {
		t.Errorf("oversized echo to a limited peer: %v, want ErrClosed with error code %d", err, wire.CodeTooLarge)
	}
	waitDone(t, a)
	wantOpFrameError(t, a.Err(), wire.ErrFrameTooLarge)
	waitDone(t, b)
	if err := b.Err(); !errors.As(err, &re) || re.Code != wire.CodeTooLarge {
		t.Errorf("peer: Err() = %v, want the error frame of code %d", err, wire.CodeTooLarge)
	}
}

func TestNewConnNotSocket(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c, err := ipc.NewConn(ctxTimeout(t, waitTimeout), r, ipc.ConnConfig{Addr: "pipe"})
	if err == nil {
		c.Close()
		t.Fatal("NewConn accepted a pipe")
	}
	var oe *ipc.OpError
	if !errors.Is(err, ipc.ErrNotSocket) || !errors.As(err, &oe) || oe.Addr != "pipe" {
		t.Errorf("NewConn on a pipe: %v", err)
	}
	if err := r.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("NewConn left its file open (Close: %v)", err)
	}
}
