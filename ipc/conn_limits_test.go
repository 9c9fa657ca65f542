//go:build linux

package ipc_test

// Limits: the idle timeout and the Handler's concurrency bound.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

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
			got, err := a.Call(ctx, wire.TypeMessage, []byte(msgBlock), nil)
			if err == nil && len(got) != 3 {
				err = fmt.Errorf("reply of %d bytes, want 3", len(got))
			}
			errc <- err
		}()
	}
	recv(t, blk.started, "handler start")
	recv(t, blk.started, "handler start")
	_, err := a.Call(ctx, wire.TypeMessage, []byte(msgBlock), nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnavailable {
		t.Errorf("third concurrent request: %v, want error code %d", err, wire.CodeUnavailable)
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
				if _, err := a.Call(ctx, wire.TypeMessage, []byte("m"), nil); err != nil {
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
