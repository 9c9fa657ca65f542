//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
)

// waitTimeout bounds every wait for something that should happen at
// once. Exceeding it means a hang, not a slow machine.
const waitTimeout = 10 * time.Second

func ctxTimeout(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// randBytes returns n pseudo-random bytes, the same for the same seed.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}).Read(b)
	return b
}

// pair returns two established Conns joined by a socketpair inside this
// process. Both are closed at cleanup.
func pair(tb testing.TB, a, b ipc.ConnConfig) (*ipc.Conn, *ipc.Conn) {
	tb.Helper()
	fa, fb, err := ipc.Socketpair()
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	type result struct {
		c   *ipc.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ipc.NewConn(ctx, fb, b)
		ch <- result{c, err}
	}()
	ca, err := ipc.NewConn(ctx, fa, a)
	rb := <-ch
	if err != nil || rb.err != nil {
		if ca != nil {
			ca.Close()
		}
		if rb.c != nil {
			rb.c.Close()
		}
		tb.Fatalf("NewConn: %v / %v", err, rb.err)
	}
	tb.Cleanup(func() {
		ca.Close()
		rb.c.Close()
	})
	return ca, rb.c
}

// rawPeer returns a Conn whose peer is the returned raw socket, on which
// the test speaks the protocol by hand. The hellos have been exchanged.
// Both are closed at cleanup.
func rawPeer(tb testing.TB, cfg ipc.ConnConfig) (*ipc.Conn, *os.File) {
	tb.Helper()
	fc, raw, err := ipc.Socketpair()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { raw.Close() })
	ch := make(chan error, 1)
	var c *ipc.Conn
	ctx := ctxTimeout(tb, waitTimeout)
	go func() {
		var err error
		c, err = ipc.NewConn(ctx, fc, cfg)
		ch <- err
	}()
	writeRaw(tb, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeHello}, rawHello(1, 1)))
	if h, _ := readRaw(tb, raw); h.Type != ipc.TypeHello || h.IsReply() {
		tb.Fatalf("first frame from a Conn is %v, want a hello", h)
	}
	if err := <-ch; err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, raw
}

func rawHello(lo, hi uint16) []byte {
	return ipc.AppendHello(nil, ipc.Hello{MinVersion: lo, MaxVersion: hi, PID: 1, Name: "raw"})
}

func writeRaw(tb testing.TB, f *os.File, b []byte) {
	tb.Helper()
	if _, err := f.Write(b); err != nil {
		tb.Fatal(err)
	}
}

func readRaw(tb testing.TB, f *os.File) (ipc.Header, []byte) {
	tb.Helper()
	h, p, err := ipc.ReadFrame(f, 0)
	if err != nil {
		tb.Fatalf("reading a frame from the Conn: %v", err)
	}
	return h, p
}

// waitStack waits until some goroutine's stack (header line included)
// contains all of parts.
func waitStack(tb testing.TB, parts ...string) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	buf := make([]byte, 1<<20)
	for {
		buf = buf[:runtime.Stack(buf[:cap(buf)], true)]
	stacks:
		for _, g := range strings.Split(string(buf), "\n\n") {
			for _, p := range parts {
				if !strings.Contains(g, p) {
					continue stacks
				}
			}
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no goroutine with %q in its stack within %v:\n%s", parts, waitTimeout, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitDone(tb testing.TB, c *ipc.Conn) {
	tb.Helper()
	select {
	case <-c.Done():
	case <-time.After(waitTimeout):
		tb.Fatalf("Conn not done %v after it should have closed", waitTimeout)
	}
}

// recv receives one value from ch within waitTimeout.
func recv[T any](tb testing.TB, ch <-chan T, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		tb.Fatalf("no %s within %v", what, waitTimeout)
		panic("unreachable")
	}
}

// wantOpFrameError checks that err is an *OpError around a *FrameError
// whose sentinel is want.
func wantOpFrameError(tb testing.TB, err, want error) {
	tb.Helper()
	if !errors.Is(err, want) {
		tb.Fatalf("error %q does not wrap %q", err, want)
	}
	var oe *ipc.OpError
	if !errors.As(err, &oe) {
		tb.Fatalf("error %q (%T) is not an *OpError", err, err)
	}
	var fe *ipc.FrameError
	if !errors.As(oe.Err, &fe) {
		tb.Fatalf("error %q: the *OpError does not wrap a *FrameError", err)
	}
	if fe.Err != want {
		tb.Fatalf("FrameError.Err = %q, want %q", fe.Err, want)
	}
	if fe.Detail == "" {
		tb.Errorf("FrameError %q has no detail", fe)
	}
}

// A blocker is a Handler whose "block" requests wait until released or
// until the Conn closes. It reports each blocked request on started.
type blocker struct {
	started  chan struct{}
	release  chan struct{}
	replySz  int
	returned chan struct{}
}

func newBlocker(replySize int) *blocker {
	return &blocker{started: make(chan struct{}, 100), release: make(chan struct{}), returned: make(chan struct{}, 100), replySz: replySize}
}

func (b *blocker) handle(ctx context.Context, req ipc.Request) ([]byte, error) {
	if string(req.Payload) != msgBlock {
		return req.Payload, nil
	}
	b.started <- struct{}{}
	defer func() { b.returned <- struct{}{} }()
	select {
	case <-b.release:
		return make([]byte, b.replySz), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	c, h := dialHelper(t, "serve", ipc.ConnConfig{Name: "test"})
	if p := c.Peer(); p.Name != "serve" || int(p.PID) != h.cmd.Process.Pid || p.MinVersion != ipc.MinProtocolVersion || p.MaxVersion != ipc.ProtocolVersion {
		t.Errorf("Peer() = %+v, want serve, pid %d, versions %d..%d", p, h.cmd.Process.Pid, ipc.MinProtocolVersion, ipc.ProtocolVersion)
	}
	if v := c.Version(); v != ipc.ProtocolVersion {
		t.Errorf("Version() = %d, want %d", v, ipc.ProtocolVersion)
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
						got, err = c.Call(ctx, ipc.TypeMessage, payload, nil)
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
	overlapped := 0
	pctx := ctxTimeout(t, waitTimeout)
	for range 50 {
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
	t.Logf("%d of 50 pings overlapped an echo; %d echoes of 1 MiB", overlapped, echoes.Load())
}

func TestHandler(t *testing.T) {
	t.Parallel()
	c, _ := dialHelper(t, "serve", ipc.ConnConfig{})
	ctx := ctxTimeout(t, waitTimeout)

	for _, p := range []string{"", "hello", strings.Repeat("x", 100<<10)} {
		got, err := c.Call(ctx, ipc.TypeMessage, []byte(p), nil)
		if err != nil || string(got) != p {
			t.Errorf("message of %d bytes: got %d bytes, %v", len(p), len(got), err)
		}
	}

	for _, tc := range []struct {
		typ     ipc.Type
		payload string
		code    uint16
		msg     string
	}{
		{ipc.TypeMessage, msgError + "42:no such thing", 42, "no such thing"},
		{ipc.TypeMessage, msgError + "3:busy", ipc.CodeUnavailable, "busy"},
		{ipc.TypeMessage, msgFail + "it broke", ipc.CodeInternal, "it broke"},
		{ipc.TypeStatus, "", ipc.CodeUnsupported, "serve answers messages only"},
	} {
		_, err := c.Call(ctx, tc.typ, []byte(tc.payload), nil)
		var re *ipc.RemoteError
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
	_, err := a.Call(ctxTimeout(t, waitTimeout), ipc.TypeMessage, []byte("hi"), nil)
	var re *ipc.RemoteError
	if !errors.As(err, &re) || re.Code != ipc.CodeUnsupported {
		t.Fatalf("message to a Conn without a handler: %v, want error code %d", err, ipc.CodeUnsupported)
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
		_, err := c.Call(ctx, ipc.TypeMessage, []byte(msgBlock), nil)
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

// TestContextEnds checks that a call whose peer handler never answers
// returns the context's error in time and leaves the Conn usable, and that
// the late reply is discarded.
func TestContextEnds(t *testing.T) {
	t.Parallel()
	blk := newBlocker(100 << 10)
	a, _ := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle})

	for _, tc := range []struct {
		name     string
		deadline bool
		dst      []byte
	}{
		{"deadline", true, nil},
		{"deadline-dst", true, make([]byte, 0, 200<<10)},
		{"cancel", false, nil},
		{"cancel-dst", false, make([]byte, 0, 200<<10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ctx context.Context
			var cancel context.CancelFunc
			const d = 100 * time.Millisecond
			start := time.Now() // before the deadline is set: it is at most start+d
			if tc.deadline {
				ctx, cancel = context.WithTimeout(context.Background(), d)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
			}
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := a.Call(ctx, ipc.TypeMessage, []byte(msgBlock), tc.dst)
				errc <- err
			}()
			recv(t, blk.started, "handler start")
			if !tc.deadline {
				cancel()
			}
			err := recv(t, errc, "return of the call")
			want := context.Canceled
			if tc.deadline {
				want = context.DeadlineExceeded
				if el := time.Since(start); el < d {
					t.Errorf("call returned after %v, before its %v deadline", el, d)
				}
			}
			if !errors.Is(err, want) {
				t.Fatalf("call returned %v, want %v", err, want)
			}
			var oe *ipc.OpError
			if !errors.As(err, &oe) || oe.Op != "call message" {
				t.Errorf("error %q is not an *OpError for the call", err)
			}
			if err := a.Err(); err != nil {
				t.Fatalf("Conn closed by a context: %v", err)
			}
			ctx2 := ctxTimeout(t, waitTimeout)
			if _, err := a.Ping(ctx2); err != nil {
				t.Fatal(err)
			}
			if got, err := a.Echo(ctx2, []byte("still here"), nil); err != nil || string(got) != "still here" {
				t.Fatalf("echo after the context ended: %q, %v", got, err)
			}
		})
	}

	// The blocked handlers now answer; their replies must be skipped.
	close(blk.release)
	for range 4 {
		recv(t, blk.returned, "handler return")
	}
	ctx := ctxTimeout(t, waitTimeout)
	if _, err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Call(ctx, ipc.TypeMessage, []byte("after"), nil); err != nil || string(got) != "after" {
		t.Fatalf("message after late replies: %q, %v", got, err)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("late replies closed the Conn: %v", err)
	}
}

// TestStalledReply feeds a Conn half a reply and then gives up on the
// call. With a dst the reader is writing into the caller's memory, so the
// Conn must close (ErrStalled); without one it stays open.
//
// It does not run in parallel: it finds the reader blocked inside the
// reply by its stack, which no other test's Conn may share.
func TestStalledReply(t *testing.T) {
	for _, withDst := range []bool{true, false} {
		t.Run(fmt.Sprintf("dst=%v", withDst), func(t *testing.T) {
			c, raw := rawPeer(t, ipc.ConnConfig{})
			var dst []byte
			if withDst {
				dst = make([]byte, 0, 1000)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Echo(ctx, []byte("x"), dst)
				errc <- err
			}()
			h, _ := readRaw(t, raw)
			reply := ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeEcho, Flags: ipc.FlagReply, ID: h.ID}, make([]byte, 1000))
			writeRaw(t, raw, reply[:ipc.HeaderSize+10])
			// Wait until the holder of the read side (the caller itself,
			// or the background reader) has taken the call and sits in
			// read(2) for the rest of the payload.
			waitStack(t, "[syscall", "ipc.(*reader).finishPart(", "ipc.(*reader).readInto(")
			cancel()
			if err := recv(t, errc, "return of the call"); !errors.Is(err, context.Canceled) {
				t.Fatalf("call returned %v, want context.Canceled", err)
			}
			if withDst {
				waitDone(t, c)
				if err := c.Err(); !errors.Is(err, ipc.ErrStalled) {
					t.Fatalf("Err() = %v, want ErrStalled", err)
				}
				return
			}
			if err := c.Err(); err != nil {
				t.Fatalf("Conn closed: %v", err)
			}
			writeRaw(t, raw, reply[ipc.HeaderSize+10:])
			pctx := ctxTimeout(t, waitTimeout)
			go func() {
				_, err := c.Ping(pctx)
				errc <- err
			}()
			h, _ = readRaw(t, raw)
			if h.Type != ipc.TypePing {
				t.Fatalf("got %v, want a ping", h)
			}
			writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypePing, Flags: ipc.FlagReply, ID: h.ID}, nil))
			if err := recv(t, errc, "pong"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestNoHello(t *testing.T) {
	t.Parallel()
	h, f := startHelper(t, "mute")
	const d = 300 * time.Millisecond
	start := time.Now()
	c, err := ipc.NewConn(ctxTimeout(t, d), f, ipc.ConnConfig{})
	el := time.Since(start)
	if err == nil {
		c.Close()
		t.Fatal("NewConn succeeded without a hello from the peer")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("NewConn: %v, want a deadline error", err)
	}
	var oe *ipc.OpError
	if !errors.As(err, &oe) || oe.Op != "hello" {
		t.Errorf("NewConn: %q is not an *OpError for the hello", err)
	}
	if el < d || el > d+waitTimeout {
		t.Errorf("NewConn returned after %v with a %v deadline", el, d)
	}
	h.exitOK(t) // NewConn closed its end, so the helper saw EOF
}

// TestPeerKilled kills the peer process while calls are pending.
func TestPeerKilled(t *testing.T) {
	t.Parallel()
	blocked := make(chan struct{}, 3)
	c, h := dialHelper(t, "serve", ipc.ConnConfig{Handler: func(ctx context.Context, req ipc.Request) ([]byte, error) {
		blocked <- struct{}{}
		return nil, nil
	}})
	ctx := ctxTimeout(t, 3*waitTimeout)
	errc := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.Call(ctx, ipc.TypeMessage, []byte(msgBlock), nil)
			errc <- err
		}()
	}
	for range 3 {
		recv(t, blocked, "report of a blocked handler")
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		err := recv(t, errc, "failure of a pending call")
		if !errors.Is(err, ipc.ErrClosed) || !errors.Is(err, ipc.ErrPeerClosed) {
			t.Errorf("pending call: %v, want ErrPeerClosed", err)
		}
	}
	waitDone(t, c)
	if err := c.Err(); !errors.Is(err, ipc.ErrPeerClosed) {
		t.Errorf("Err() = %v, want ErrPeerClosed", err)
	}
	if _, err := c.Ping(ctx); !errors.Is(err, ipc.ErrClosed) {
		t.Errorf("Ping after the peer died: %v, want ErrClosed", err)
	}
	err := h.wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("helper exit: %v, want killed", err)
	}
}

// TestPeerCloses closes one end of an in-process pair while the other
// has a call pending on it.
func TestPeerCloses(t *testing.T) {
	t.Parallel()
	blk := newBlocker(0)
	a, b := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle})
	errc := make(chan error, 1)
	cctx := ctxTimeout(t, waitTimeout)
	go func() {
		_, err := a.Call(cctx, ipc.TypeMessage, []byte(msgBlock), nil)
		errc <- err
	}()
	recv(t, blk.started, "handler start")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "failure of the pending call"); !errors.Is(err, ipc.ErrPeerClosed) {
		t.Fatalf("pending call: %v, want ErrPeerClosed", err)
	}
	waitDone(t, a)
	if err := b.Err(); !errors.Is(err, ipc.ErrClosed) || errors.Is(err, ipc.ErrPeerClosed) {
		t.Errorf("closed side: Err() = %v, want ErrClosed", err)
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

func TestClose(t *testing.T) {
	t.Parallel()
	blk := newBlocker(0)
	a, b := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle})
	errc := make(chan error, 1)
	cctx := ctxTimeout(t, waitTimeout)
	go func() {
		_, err := a.Call(cctx, ipc.TypeMessage, []byte(msgBlock), nil)
		errc <- err
	}()
	recv(t, blk.started, "handler start")

	const closers = 8
	closed := make(chan error, closers)
	for range closers {
		go func() { closed <- a.Close() }()
	}
	for range closers {
		if err := recv(t, closed, "return of Close"); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("Done not closed when Close returned")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := recv(t, errc, "failure of the pending call"); !errors.Is(err, ipc.ErrClosed) {
		t.Errorf("pending call: %v, want ErrClosed", err)
	}
	if err := a.Err(); !errors.Is(err, ipc.ErrClosed) || errors.Is(err, ipc.ErrPeerClosed) {
		t.Errorf("Err() = %v, want ErrClosed", err)
	}
	ctx := ctxTimeout(t, waitTimeout)
	if _, err := a.Ping(ctx); !errors.Is(err, ipc.ErrClosed) {
		t.Errorf("Ping after Close: %v", err)
	}
	if _, err := a.Echo(ctx, []byte("x"), make([]byte, 10)); !errors.Is(err, ipc.ErrClosed) {
		t.Errorf("Echo after Close: %v", err)
	}
	_, err := a.Call(ctx, ipc.TypeMessage, nil, nil)
	var oe *ipc.OpError
	if !errors.Is(err, ipc.ErrClosed) || !errors.As(err, &oe) || oe.Op != "call message" {
		t.Errorf("Call after Close: %v", err)
	}
	waitDone(t, b)
	if err := b.Err(); !errors.Is(err, ipc.ErrPeerClosed) {
		t.Errorf("peer: Err() = %v, want ErrPeerClosed", err)
	}
}

// TestCloseDuringWrite closes the Conn, or its peer, while a call is
// stuck writing a request the peer does not read.
func TestCloseDuringWrite(t *testing.T) {
	t.Parallel()
	for _, side := range []string{"local", "peer"} {
		t.Run(side, func(t *testing.T) {
			t.Parallel()
			c, raw := rawPeer(t, ipc.ConnConfig{})
			errc := make(chan error, 1)
			ctx := ctxTimeout(t, 3*waitTimeout)
			go func() {
				_, err := c.Echo(ctx, make([]byte, 8<<20), nil)
				errc <- err
			}()
			waitQueued(t, raw) // the request is on its way
			if side == "local" {
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				raw.Close()
			}
			if err := recv(t, errc, "failure of the call"); !errors.Is(err, ipc.ErrClosed) {
				t.Errorf("call: %v, want ErrClosed", err)
			}
			waitDone(t, c)
			if err := c.Err(); !errors.Is(err, ipc.ErrClosed) {
				t.Errorf("Err() = %v, want ErrClosed", err)
			}
		})
	}
}

// waitQueued waits until the peer has sent something that f has not
// read yet.
func waitQueued(tb testing.TB, f *os.File) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		n, err := unix.IoctlGetInt(int(f.Fd()), unix.SIOCINQ)
		if err != nil {
			tb.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nothing arrived within %v", waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMaxPayload(t *testing.T) {
	t.Parallel()
	const limit = 1024
	a, b := pair(t, ipc.ConnConfig{MaxPayload: limit}, ipc.ConnConfig{})
	ctx := ctxTimeout(t, waitTimeout)

	// Refused before anything is sent; the Conn stays open.
	_, err := a.Echo(ctx, make([]byte, limit+1), nil)
	wantOpFrameError(t, err, ipc.ErrFrameTooLarge)
	if !strings.Contains(err.Error(), "exceeds the limit of 1024") {
		t.Errorf("error %q does not give the limit", err)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("Conn closed by a refused call: %v", err)
	}
	if got, err := a.Echo(ctx, make([]byte, limit), nil); err != nil || len(got) != limit {
		t.Fatalf("echo at the limit: %d bytes, %v", len(got), err)
	}

	// A peer that sends more than our limit is told so, and we close.
	_, err = b.Echo(ctx, make([]byte, limit+1), nil)
	var re *ipc.RemoteError
	if !errors.As(err, &re) || re.Code != ipc.CodeTooLarge {
		t.Errorf("oversized echo to a limited peer: %v, want error code %d", err, ipc.CodeTooLarge)
	}
	waitDone(t, a)
	wantOpFrameError(t, a.Err(), ipc.ErrFrameTooLarge)
	waitDone(t, b)
	if err := b.Err(); !errors.Is(err, ipc.ErrPeerClosed) {
		t.Errorf("peer: Err() = %v, want ErrPeerClosed", err)
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		const idle = 200 * time.Millisecond
		start := time.Now()
		a, b := pair(t, ipc.ConnConfig{IdleTimeout: idle}, ipc.ConnConfig{})
		waitDone(t, a)
		if el := time.Since(start); el < idle {
			t.Errorf("closed after %v, before the idle timeout of %v", el, idle)
		}
		err := a.Err()
		var oe *ipc.OpError
		if !errors.Is(err, ipc.ErrIdle) || !errors.As(err, &oe) {
			t.Errorf("Err() = %v, want an *OpError wrapping ErrIdle", err)
		}
		waitDone(t, b)
		if err := b.Err(); !errors.Is(err, ipc.ErrPeerClosed) {
			t.Errorf("peer: Err() = %v, want ErrPeerClosed", err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		t.Parallel()
		const idle = 600 * time.Millisecond
		a, _ := pair(t, ipc.ConnConfig{IdleTimeout: idle}, ipc.ConnConfig{})
		ctx := ctxTimeout(t, waitTimeout)
		tick := time.NewTicker(idle / 20)
		defer tick.Stop()
		for end := time.Now().Add(5 * idle / 2); time.Now().Before(end); <-tick.C {
			if _, err := a.Ping(ctx); err != nil {
				t.Fatalf("Conn with traffic every %v closed: %v", idle/20, err)
			}
		}
	})
}

// TestHandlerLimit checks MaxConcurrent: requests over it are refused
// with CodeUnavailable.
func TestHandlerLimit(t *testing.T) {
	t.Parallel()
	blk := newBlocker(3)
	a, _ := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle, MaxConcurrent: 2})
	ctx := ctxTimeout(t, waitTimeout)
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			got, err := a.Call(ctx, ipc.TypeMessage, []byte(msgBlock), nil)
			if err == nil && len(got) != 3 {
				err = fmt.Errorf("reply of %d bytes, want 3", len(got))
			}
			errc <- err
		}()
	}
	recv(t, blk.started, "handler start")
	recv(t, blk.started, "handler start")
	_, err := a.Call(ctx, ipc.TypeMessage, []byte(msgBlock), nil)
	var re *ipc.RemoteError
	if !errors.As(err, &re) || re.Code != ipc.CodeUnavailable {
		t.Errorf("third concurrent request: %v, want error code %d", err, ipc.CodeUnavailable)
	}
	close(blk.release)
	for range 2 {
		if err := recv(t, errc, "reply"); err != nil {
			t.Error(err)
		}
	}
}

// TestHandlerLimitSequential has MaxConcurrent callers each wait for its
// reply before sending the next request: the peer never has more than
// MaxConcurrent requests outstanding, so none may be refused.
func TestHandlerLimitSequential(t *testing.T) {
	t.Parallel()
	const limit, calls = 4, 300
	a, _ := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{MaxConcurrent: limit, Handler: func(ctx context.Context, req ipc.Request) ([]byte, error) {
		return req.Payload, nil
	}})
	ctx := ctxTimeout(t, 2*waitTimeout)
	errc := make(chan error, limit)
	for range limit {
		go func() {
			for i := range calls {
				if _, err := a.Call(ctx, ipc.TypeMessage, []byte("m"), nil); err != nil {
					errc <- fmt.Errorf("call %d: %w", i, err)
					return
				}
			}
			errc <- nil
		}()
	}
	for range limit {
		if err := recv(t, errc, "caller result"); err != nil {
			t.Error(err)
		}
	}
}

// TestRawPeer speaks the protocol by hand to check the wire behaviour of
// a Conn's answers.
func TestRawPeer(t *testing.T) {
	t.Parallel()
	t.Run("pong", func(t *testing.T) {
		t.Parallel()
		_, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypePing, ID: 42}, []byte("abc")))
		h, p := readRaw(t, raw)
		if h != (ipc.Header{Type: ipc.TypePing, Flags: ipc.FlagReply, Length: 3, ID: 42}) || string(p) != "abc" {
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
			_, err := raw.Write(ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeEcho, ID: 1 << 60}, payload))
			werr <- err
		}()
		h, p := readRaw(t, raw)
		if err := recv(t, werr, "end of write"); err != nil {
			t.Fatal(err)
		}
		if h.Type != ipc.TypeEcho || !h.IsReply() || h.ID != 1<<60 || !bytes.Equal(p, payload) {
			t.Fatalf("echo reply %+v with %d bytes", h, len(p))
		}
	})
	t.Run("stray-reply", func(t *testing.T) {
		t.Parallel()
		c, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeEcho, Flags: ipc.FlagReply, ID: 999}, make([]byte, 50<<10)))
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypePing, ID: 1}, nil))
		if h, _ := readRaw(t, raw); h.Type != ipc.TypePing || h.ID != 1 {
			t.Fatalf("got %+v, want the pong", h)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("a reply nobody waits for closed the Conn: %v", err)
		}
	})
	t.Run("no-handler", func(t *testing.T) {
		t.Parallel()
		_, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeReload, ID: 5}, nil))
		h, p := readRaw(t, raw)
		if h.Type != ipc.TypeError || !h.IsReply() || h.ID != 5 || ipc.ParseError(p).Code != ipc.CodeUnsupported {
			t.Fatalf("reload to a Conn without a handler: %+v %q", h, p)
		}
	})
	t.Run("big-ping", func(t *testing.T) {
		t.Parallel()
		c, raw := rawPeer(t, ipc.ConnConfig{})
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypePing, ID: 6}, make([]byte, ipc.MaxPingPayload+1)))
		h, p := readRaw(t, raw)
		if h.Type != ipc.TypeError || h.ID != 6 || ipc.ParseError(p).Code != ipc.CodeTooLarge {
			t.Fatalf("oversized ping: got %+v %q, want error code %d", h, p, ipc.CodeTooLarge)
		}
		if _, _, err := ipc.ReadFrame(raw, 0); err != io.EOF {
			t.Fatalf("after the error frame: %v, want EOF", err)
		}
		waitDone(t, c)
		wantOpFrameError(t, c.Err(), ipc.ErrFrameTooLarge)
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
		writeRaw(t, raw, ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeEcho, Flags: ipc.FlagReply, ID: h.ID}, nil))
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
		code  uint16 // of the error frame sent back; 0 for none
	}{
		{"version", ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeHello}, rawHello(2, 3)), ipc.ErrVersion, ipc.CodeVersion},
		{"bad-hello", ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeHello}, rawHello(0, 1)), ipc.ErrBadPayload, ipc.CodeProtocol},
		{"hello-reply", ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeHello, Flags: ipc.FlagReply}, rawHello(1, 1)), ipc.ErrUnexpected, ipc.CodeProtocol},
		{"error", ipc.AppendFrame(nil, ipc.Header{Type: ipc.TypeError, Flags: ipc.FlagReply}, ipc.AppendError(nil, ipc.CodeShutdown, "going away")), nil, 0},
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
				var re *ipc.RemoteError
				if !errors.As(err, &re) || re.Code != ipc.CodeShutdown || re.Message != "going away" {
					t.Fatalf("NewConn: %v, want the peer's error", err)
				}
			} else if !errors.Is(err, tc.want) {
				t.Fatalf("NewConn: %v, want %v", err, tc.want)
			}
			var frames []string
			for {
				h, p, err := ipc.ReadFrame(raw, 0)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				s := h.Type.String()
				if h.Type == ipc.TypeError {
					s += fmt.Sprint(ipc.ParseError(p).Code)
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
