//go:build linux

package ipc_test

// Helpers shared by the Conn tests: in-process pairs, a raw peer spoken to
// by hand, bounded waits, and a blocking Handler.

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
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
// the test speaks the protocol by hand, as a version 1 peer. The hellos
// have been exchanged. Both are closed at cleanup.
func rawPeer(tb testing.TB, cfg ipc.ConnConfig) (*ipc.Conn, *os.File) {
	tb.Helper()
	return rawPeerVersions(tb, cfg, 1, 1)
}

// rawPeerVersions is rawPeer with a raw peer whose hello offers versions
// lo to hi.
func rawPeerVersions(tb testing.TB, cfg ipc.ConnConfig, lo, hi uint16) (*ipc.Conn, *os.File) {
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
	writeRaw(tb, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, rawHello(lo, hi)))
	if h, _ := readRaw(tb, raw); h.Type != wire.TypeHello || h.IsReply() {
		tb.Fatalf("first frame from a Conn is %v, want a hello", h)
	}
	if err := <-ch; err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, raw
}

func rawHello(lo, hi uint16) []byte {
	return wire.AppendHello(nil, wire.Hello{MinVersion: lo, MaxVersion: hi, PID: 1, Name: "raw"})
}

func writeRaw(tb testing.TB, f *os.File, b []byte) {
	tb.Helper()
	if _, err := f.Write(b); err != nil {
		tb.Fatal(err)
	}
}

func readRaw(tb testing.TB, f *os.File) (wire.Header, []byte) {
	tb.Helper()
	h, p, err := wire.ReadFrame(f, 0)
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
	var fe *wire.FrameError
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
