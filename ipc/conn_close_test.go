//go:build linux

package ipc_test

// How a Conn ends: no hello, the peer killed or closing, Close from many
// goroutines, Close while a write is stuck.

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

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
			_, err := c.Call(ctx, wire.TypeMessage, []byte(msgBlock), nil)
			errc <- err
		}()
	}
	for range 3 {
		recv(t, blocked, "report of a blocked handler")
	}
	if err := h.Cmd.Process.Kill(); err != nil {
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
	a, b, errc := pendingCall(t)
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

func TestClose(t *testing.T) {
	t.Parallel()
	a, b, errc := pendingCall(t)

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
	_, err := a.Call(ctx, wire.TypeMessage, nil, nil)
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

// pendingCall returns an in-process pair whose a side has a call pending
// in b's handler, and the channel that gets the call's result.
func pendingCall(t *testing.T) (a, b *ipc.Conn, errc chan error) {
	t.Helper()
	blk := newBlocker(0)
	a, b = pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle})
	errc = make(chan error, 1)
	cctx := ctxTimeout(t, waitTimeout)
	go func() {
		_, err := a.Call(cctx, wire.TypeMessage, []byte(msgBlock), nil)
		errc <- err
	}()
	recv(t, blk.started, "handler start")
	return a, b, errc
}
