//go:build linux

package ipc_test

// Calls: pings, echoes, messages through a Handler, many at once, and
// requests both ways on one Conn.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

func TestPing(t *testing.T) {
	t.Parallel()
	c, h := dialHelper(t, "serve", ipc.ConnConfig{Name: "test"})
	const want = 2 // without MaxFiles a Conn offers up to version 2 (3 passes descriptors)
	if p := c.Peer(); p.Name != "serve" || int(p.PID) != h.Cmd.Process.Pid || p.MinVersion != wire.MinProtocolVersion || p.MaxVersion != want {
		t.Errorf("Peer() = %+v, want serve, pid %d, versions %d..%d", p, h.Cmd.Process.Pid, wire.MinProtocolVersion, want)
	}
	if v := c.Version(); v != want {
		t.Errorf("Version() = %d, want %d", v, want)
	}
	ctx := ctxTimeout(t, waitTimeout)
	for range 100 {
		rtt, err := c.Ping(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rtt <= 0 {
			t.Fatalf("round trip of %v", rtt)
		}
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err() = %v on an open Conn", err)
	}
}

func TestEcho(t *testing.T) {
	t.Parallel()
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{})
	for _, size := range []int{0, 1, 64 << 10, 1 << 20} {
		payload := randBytes(uint64(size), size)
		for _, dst := range []struct {
			name string
			dst  []byte
		}{
			{"nil", nil},
			{"exact", make([]byte, 0, size)},
			{"larger", make([]byte, 7, size+100)},
			{"smaller", make([]byte, 0, size/2)},
		} {
			t.Run(fmt.Sprintf("%dB/dst=%s", size, dst.name), func(t *testing.T) {
				t.Parallel()
				got, err := c.Echo(ctxTimeout(t, waitTimeout), payload, dst.dst)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, payload) {
					t.Fatalf("echo of %d bytes came back as %d different bytes", size, len(got))
				}
				if size > 0 && cap(dst.dst) >= size && &got[0] != &dst.dst[:1][0] {
					t.Errorf("reply not read into the caller's dst (cap %d)", cap(dst.dst))
				}
			})
		}
	}
}

// TestConcurrentCalls runs 64 goroutines doing pings, echoes and messages
// on one Conn at once, each checking that it gets its own reply.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{})
	const goroutines, calls = 64, 40
	ctx := ctxTimeout(t, 2*waitTimeout)
	errc := make(chan error, goroutines)
	for g := range goroutines {
		go func() {
			errc <- func() error {
				dst := make([]byte, 0, 64<<10)
				for i := range calls {
					payload := fmt.Appendf(nil, "goroutine %d call %d ", g, i)
					payload = append(payload, randBytes(uint64(g*calls+i), (g*997+i*131)%(48<<10))...)
					var got []byte
					var err error
					switch i % 4 {
					case 0:
						_, err = c.Ping(ctx)
						got = payload
					case 1:
						got, err = c.Echo(ctx, payload, dst)
					case 2:
						got, err = c.Echo(ctx, payload, nil)
					case 3:
						got, err = c.Call(ctx, wire.TypeMessage, payload, nil)
					}
					if err != nil {
						return fmt.Errorf("goroutine %d call %d: %w", g, i, err)
					}
					if !bytes.Equal(got, payload) {
						return fmt.Errorf("goroutine %d call %d: got another reply (%.20q…)", g, i, got)
					}
				}
				return nil
			}()
		}()
	}
	for range goroutines {
		if err := recv(t, errc, "result from a calling goroutine"); err != nil {
			t.Error(err)
		}
	}
}

// TestPingDuringLargeEchoes checks that pings complete while several
// 1 MiB echoes are in flight on the same Conn.
func TestPingDuringLargeEchoes(t *testing.T) {
	t.Parallel()
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{})
	// The echoers stop at a flag, not by cancelling their context: a
	// context that ends while a frame is half written closes the Conn.
	ctx := ctxTimeout(t, 3*waitTimeout)
	var stop atomic.Bool
	var inFlight, echoes atomic.Int64
	const echoers = 4
	errc := make(chan error, echoers)
	for e := range echoers {
		go func() {
			payload := randBytes(uint64(e), 1<<20)
			dst := make([]byte, 0, len(payload))
			for !stop.Load() {
				inFlight.Add(1)
				got, err := c.Echo(ctx, payload, dst)
				inFlight.Add(-1)
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(got, payload) {
					errc <- errors.New("1 MiB echo came back different")
					return
				}
				echoes.Add(1)
			}
			errc <- nil
		}()
	}
	// Ping at least 50 times, and on until some pings overlapped an
	// echo: pings are quick, and the echoers may not have started yet.
	overlapped, pings := 0, 0
	pctx := ctxTimeout(t, waitTimeout)
	for ; pings < 50 || overlapped < 5 && pings < 100000; pings++ {
		before := inFlight.Load()
		if _, err := c.Ping(pctx); err != nil {
			t.Fatal(err)
		}
		if before > 0 && inFlight.Load() > 0 {
			overlapped++
		}
	}
	stop.Store(true)
	for range echoers {
		if err := recv(t, errc, "echo goroutine result"); err != nil {
			t.Error(err)
		}
	}
	if overlapped == 0 {
		t.Errorf("no ping overlapped a 1 MiB echo (%d echoes completed)", echoes.Load())
	}
	t.Logf("%d of %d pings overlapped an echo; %d echoes of 1 MiB", overlapped, pings, echoes.Load())
}

func TestHandler(t *testing.T) {
	t.Parallel()
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{})
	ctx := ctxTimeout(t, waitTimeout)

	for _, p := range []string{"", "hello", strings.Repeat("x", 100<<10)} {
		got, err := c.Call(ctx, wire.TypeMessage, []byte(p), nil)
		if err != nil || string(got) != p {
			t.Errorf("message of %d bytes: got %d bytes, %v", len(p), len(got), err)
		}
	}

	for _, tc := range []struct {
		typ     wire.Type
		payload string
		code    wire.Code
		msg     string
	}{
		{wire.TypeMessage, msgError + "42:no such thing", 42, "no such thing"},
		{wire.TypeMessage, msgError + "3:busy", wire.CodeUnavailable, "busy"},
		{wire.TypeMessage, msgFail + "it broke", wire.CodeInternal, "it broke"},
		{wire.TypeStatus, "", wire.CodeUnsupported, "serve answers messages only"},
	} {
		_, err := c.Call(ctx, tc.typ, []byte(tc.payload), nil)
		var re *wire.RemoteError
		if !errors.As(err, &re) {
			t.Errorf("%s %q: error %v (%T), want a *RemoteError", tc.typ, tc.payload, err, err)
			continue
		}
		if re.Code != tc.code || re.Message != tc.msg {
			t.Errorf("%s %q: got error %d %q, want %d %q", tc.typ, tc.payload, re.Code, re.Message, tc.code, tc.msg)
		}
		var oe *ipc.OpError
		if !errors.As(err, &oe) || oe.Op != "call "+tc.typ.String() {
			t.Errorf("%s %q: error %q does not name the call", tc.typ, tc.payload, err)
		}
	}
	if err := c.Err(); err != nil {
		t.Fatalf("error replies closed the Conn: %v", err)
	}
}

func TestNoHandler(t *testing.T) {
	t.Parallel()
	a, _ := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{})
	_, err := a.Call(ctxTimeout(t, waitTimeout), wire.TypeMessage, []byte("hi"), nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Fatalf("message to a Conn without a handler: %v, want error code %d", err, wire.CodeUnsupported)
	}
}

// TestHandlerCallback has the serve helper's handler call us back while
// our call to it is in flight: requests flow both ways on one Conn.
func TestHandlerCallback(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{Handler: func(ctx context.Context, req ipc.Request) ([]byte, error) {
		got <- string(req.Payload)
		return nil, nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, wire.TypeMessage, []byte(msgBlock), nil)
		errc <- err
	}()
	if p := recv(t, got, "call back from the helper's handler"); p != msgBlocked {
		t.Errorf("handler got %q, want %q", p, msgBlocked)
	}
	cancel()
	if err := recv(t, errc, "cancelled call"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call returned %v", err)
	}
}
