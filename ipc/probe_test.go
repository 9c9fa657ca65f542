//go:build linux

package ipc_test

import (
	"errors"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

func TestProbe(t *testing.T) {
	t.Parallel()
	a, b := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{})
	type pong struct {
		id  uint64
		err error
	}
	got := make(chan pong, 4)
	fn := func(id uint64, err error) { got <- pong{id, err} }
	ctx := ctxTimeout(t, waitTimeout)

	id, err := a.Probe(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	if p := recv(t, got, "the pong"); p.id != id || p.err != nil {
		t.Fatalf("pong %+v, want id %d and no error", p, id)
	}
	// A forgotten probe's callback never runs.
	if a.Forget(id) {
		t.Error("Forget of an answered probe reported true")
	}

	// The Conn closing fails the probes in flight.
	id, err = a.Probe(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	if a.Forget(id) {
		select {
		case p := <-got:
			t.Fatalf("callback ran for a forgotten probe: %+v", p)
		case <-time.After(50 * time.Millisecond):
		}
	} else {
		recv(t, got, "the pong that beat Forget")
	}
	b.Close()
	<-a.Done()
	if _, err := a.Probe(ctx, fn); !errors.Is(err, ipc.ErrClosed) {
		t.Fatalf("Probe on a closed Conn: %v", err)
	}
}

// BenchmarkProbe: a health-check ping and its pong through the callback,
// between two Conns of this process. It should not allocate.
func BenchmarkProbe(b *testing.B) {
	a, _ := pair(b, ipc.ConnConfig{}, ipc.ConnConfig{})
	got := make(chan error, 1)
	fn := func(_ uint64, err error) { got <- err }
	ctx := ctxTimeout(b, waitTimeout)
	b.ReportAllocs()
	for range b.N {
		if _, err := a.Probe(ctx, fn); err != nil {
			b.Fatal(err)
		}
		if err := <-got; err != nil {
			b.Fatal(err)
		}
	}
}
