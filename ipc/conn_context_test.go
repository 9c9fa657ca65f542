//go:build linux

package ipc_test

// Callers that give up: a context that ends before the reply, or in the
// middle of it.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

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
				_, err := a.Call(ctx, wire.TypeMessage, []byte(msgBlock), tc.dst)
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
	if got, err := a.Call(ctx, wire.TypeMessage, []byte("after"), nil); err != nil || string(got) != "after" {
		t.Fatalf("message after late replies: %q, %v", got, err)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("late replies closed the Conn: %v", err)
	}
}

// TestStalledReply feeds a Conn half a reply and then gives up on the
// call. With a dst the reader is writing into the caller's memory, so the
// Conn must close (ErrStalled); without one it stays open. The call
// either follows (the background reader reads its reply) or, after a
// warm-up call, leads: it reads its reply itself, and when nothing more
// comes leaves the half-read frame to the background reader.
//
// It does not run in parallel: it finds the reader blocked inside the
// reply by its stack, which no other test's Conn may share.
func TestStalledReply(t *testing.T) {
	for _, tc := range []struct{ withDst, lead bool }{{true, false}, {false, false}, {true, true}, {false, true}} {
		withDst := tc.withDst
		t.Run(fmt.Sprintf("dst=%v/lead=%v", withDst, tc.lead), func(t *testing.T) {
			c, raw := rawPeer(t, ipc.ConnConfig{})
			if tc.lead {
				warmUp(t, c, raw, func() wire.Header { h, _ := readRaw(t, raw); return h })
			}
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
			reply := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: h.ID}, make([]byte, 1000))
			writeRaw(t, raw, reply[:wire.HeaderSize+10])
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
			writeRaw(t, raw, reply[wire.HeaderSize+10:])
			pctx := ctxTimeout(t, waitTimeout)
			go func() {
				_, err := c.Ping(pctx)
				errc <- err
			}()
			h, _ = readRaw(t, raw)
			if h.Type != wire.TypePing {
				t.Fatalf("got %v, want a ping", h)
			}
			writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, ID: h.ID}, nil))
			if err := recv(t, errc, "pong"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
