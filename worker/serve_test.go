//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Tests of Serve, with a real worker process at the other end of a
// Conn.

// startWorker starts a child in role as worker id with a raw socketpair
// and returns our end of the channel.
func startWorker(t *testing.T, role, id string) (*testutil.Process, *ipc.Conn) {
	t.Helper()
	parent, childEnd, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, role, childEnd, append(contractEnv(id), contract.EnvLogLevel+"=debug")...)
	childEnd.Close() // the child has its copy; EOF must mean it is gone
	conn, err := ipc.NewConn(callCtx(t), parent, ipc.ConnConfig{Name: "test-supervisor"})
	if err != nil {
		t.Fatalf("hello from the worker: %v\n%s", err, c.Output())
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.Peer(); p.Name != "worker."+id || int(p.PID) != c.PID() {
		t.Errorf("worker's hello: %+v, want name worker.%s and pid %d", p, id, c.PID())
	}
	return c, conn
}

// callCtx returns a context for calls to a child, which ends after
// childWait or with the test.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), childWait)
	t.Cleanup(cancel)
	return ctx
}

func TestServeEndsOnEOF(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "3")
	ctx := callCtx(t)
	for _, n := range []int{0, 1, 64 << 10, 1 << 20} {
		payload := bytes.Repeat([]byte{byte(n), 0, 0xff}, n/3+1)[:n]
		got, err := conn.Echo(ctx, payload, nil)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes: %d bytes back, %v", n, len(got), err)
		}
	}
	if _, err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	got, err := conn.Call(ctx, wire.TypeMessage, []byte("hi"), nil)
	if err != nil || string(got) != "hi" {
		t.Errorf("message: %q, %v; want the handler's echo", got, err)
	}
	var re *wire.RemoteError
	if _, err := conn.Call(ctx, wire.TypeStatus, nil, nil); !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Errorf("status request to a worker: %v, want a remote error with CodeUnsupported", err)
	}
	conn.Close()
	c.WaitOK(t, childWait)
}

func TestServeShutdown(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "1")
	ctx := callCtx(t)
	slow := make(chan error, 1)
	go func() {
		got, err := conn.Call(ctx, wire.TypeMessage, []byte("slow"), nil)
		if err == nil && string(got) != "done" {
			err = fmt.Errorf("reply %q", got)
		}
		slow <- err
	}()
	if l := c.Line(t, childWait); l != "handler started" {
		t.Fatalf("child said %q", l)
	}
	// The shutdown waits for the message in progress.
	if _, err := conn.Call(ctx, wire.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := testutil.Receive(t, slow, childWait, "the reply to the message in progress"); err != nil {
		t.Errorf("the message in progress at the shutdown: %v", err)
	}
	// New messages are refused once the shutdown is under way; pings
	// are still answered.
	var re *wire.RemoteError
	if _, err := conn.Call(ctx, wire.TypeMessage, []byte("late"), nil); !errors.As(err, &re) || re.Code != wire.CodeShutdown {
		t.Errorf("message after the shutdown: %v, want CodeShutdown", err)
	}
	if _, err := conn.Ping(ctx); err != nil {
		t.Errorf("ping after the shutdown: %v", err)
	}
	conn.Close()
	if l := c.Line(t, childWait); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
	c.WaitOK(t, childWait)
}

// TestServeShutdownLinger: after a shutdown the worker waits a while for
// the supervisor to close its end, then leaves anyway.
func TestServeShutdownLinger(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "1")
	start := time.Now()
	if _, err := conn.Call(callCtx(t), wire.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-conn.Done():
		if !errors.Is(conn.Err(), ipc.ErrPeerClosed) {
			t.Errorf("channel closed with %v, want ErrPeerClosed", conn.Err())
		}
	case <-time.After(shutdownLinger + childWait):
		t.Fatal("worker kept its end open after a shutdown")
	}
	if d := time.Since(start); d < shutdownLinger*9/10 {
		t.Errorf("worker closed its end %v after the shutdown, before the linger of %v", d, shutdownLinger)
	}
	c.WaitOK(t, childWait)
}

func TestServeEndsWithContext(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve-ctx", "2")
	select {
	case <-conn.Done():
	case <-time.After(childWait):
		t.Fatal("worker kept its end open after its context ended")
	}
	if l := c.Line(t, childWait); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
	c.WaitOK(t, childWait)
}
