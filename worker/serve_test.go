//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
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
	return startWorkerWith(t, role, id, ipc.ConnConfig{})
}

// startWorkerWith is startWorker with our end's Conn configured by cfg
// (its Name is set here).
func startWorkerWith(t *testing.T, role, id string, cfg ipc.ConnConfig) (*testutil.Process, *ipc.Conn) {
	t.Helper()
	parent, childEnd, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, role, childEnd, append(contractEnv(id), contract.EnvLogLevel+"=debug")...)
	childEnd.Close() // the child has its copy; EOF must mean it is gone
	cfg.Name = "test-supervisor"
	conn, err := ipc.NewConn(callCtx(t), parent, cfg)
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
	for _, typ := range []wire.Type{wire.TypeStatus, wire.TypeReload} {
		if _, err := conn.Call(ctx, typ, nil, nil); !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
			t.Errorf("%s request to a worker: %v, want a remote error with CodeUnsupported", typ, err)
		}
	}
	// EOF without a shutdown request: Serve reports it, and the worker
	// exits non-zero, so that an on-failure policy restarts it.
	conn.Close()
	if l := c.Line(t, childWait); l != eofLine {
		t.Errorf("child said %q, want %q", l, eofLine)
	}
	if err := c.Wait(t, childWait); !isExit(err, 1) {
		t.Errorf("worker exit: %v, want status 1", err)
	}
}

// isExit reports whether err is an exit with status code.
func isExit(err error, code int) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == code
}

// TestServeCancel: a message whose caller gives up is cancelled in the
// worker (protocol version 2): the handler's context ends while the
// channel stays open, and the worker serves on.
func TestServeCancel(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "1")
	if v := conn.Version(); v != 2 {
		t.Fatalf("Version() = %d, want 2", v)
	}
	ctx, cancel := context.WithCancel(callCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Call(ctx, wire.TypeMessage, []byte("wait-cancel"), nil)
		errc <- err
	}()
	if l := c.Line(t, childWait); l != "handler started" {
		t.Fatalf("child said %q", l)
	}
	cancel()
	if err := testutil.Receive(t, errc, childWait, "the cancelled call's end"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	if l := c.Line(t, childWait); l != "handler cancelled" {
		t.Fatalf("child said %q, want the handler cancelled", l)
	}
	if got, err := conn.Call(callCtx(t), wire.TypeMessage, []byte("still"), nil); err != nil || string(got) != "still" {
		t.Fatalf("message after the cancel: %q, %v", got, err)
	}
	if _, err := conn.Call(callCtx(t), wire.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	conn.Close()
	if l := c.Line(t, childWait); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
	c.WaitOK(t, childWait)
}

// TestServeMixedVersions: a version 1 supervisor with a version 2
// worker, and a version 2 supervisor with a version 1 worker, speak
// version 1: messages and shutdowns work, and a call that gives up sends
// no cancel frame (which the version 1 side would take for a protocol
// violation, ending Serve with something other than EOF).
func TestServeMixedVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, role string
		ours       uint16
	}{
		{"v1-supervisor", "serve", 1},
		{"v1-worker", "serve-v1", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, conn := startWorkerWith(t, tc.role, "1", ipc.ConnConfig{MaxVersion: tc.ours})
			if v := conn.Version(); v != 1 {
				t.Fatalf("Version() = %d, want 1", v)
			}
			if got, err := conn.Call(callCtx(t), wire.TypeMessage, []byte("hi"), nil); err != nil || string(got) != "hi" {
				t.Fatalf("message: %q, %v", got, err)
			}
			ctx, cancel := context.WithCancel(callCtx(t))
			errc := make(chan error, 1)
			go func() {
				_, err := conn.Call(ctx, wire.TypeMessage, []byte("wait-cancel"), nil)
				errc <- err
			}()
			if l := c.Line(t, childWait); l != "handler started" {
				t.Fatalf("child said %q", l)
			}
			cancel()
			if err := testutil.Receive(t, errc, childWait, "the cancelled call's end"); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled call: %v", err)
			}
			if _, err := conn.Ping(callCtx(t)); err != nil {
				t.Fatalf("ping after the cancel: %v", err)
			}
			// Only the channel's end cancels the handler; Serve saw a
			// plain EOF.
			conn.Close()
			if l := c.Line(t, childWait); l != "handler cancelled" {
				t.Errorf("child said %q, want the handler cancelled by the close", l)
			}
			if l := c.Line(t, childWait); l != eofLine {
				t.Errorf("child said %q, want %q", l, eofLine)
			}
			if err := c.Wait(t, childWait); !isExit(err, 1) {
				t.Errorf("worker exit: %v, want status 1", err)
			}
		})
	}
}

// TestServePanic: a handler that panics answers its message with
// CodeCrashed, the panic is logged on the worker's stderr (which the
// supervisor relays), and the worker serves on.
func TestServePanic(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "2")
	var re *wire.RemoteError
	if _, err := conn.Call(callCtx(t), wire.TypeMessage, []byte("panic"), nil); !errors.As(err, &re) || re.Code != wire.CodeCrashed {
		t.Fatalf("message whose handler panics: %v, want code %d", err, wire.CodeCrashed)
	}
	if got, err := conn.Call(callCtx(t), wire.TypeMessage, []byte("after"), nil); err != nil || string(got) != "after" {
		t.Fatalf("message after the panic: %q, %v", got, err)
	}
	testutil.Poll(t, childWait, 5*time.Millisecond, "the panic in the worker's log",
		func() bool { return strings.Contains(c.Output(), "worker handler boom") }, c.Output)
	if out := c.Output(); !strings.Contains(out, `"@message":"handler panicked"`) || !strings.Contains(out, "worker.serveHandler") {
		t.Errorf("worker's log lacks the panic's line or stack:\n%s", out)
	}
	if _, err := conn.Call(callCtx(t), wire.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	conn.Close()
	if l := c.Line(t, childWait); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
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
