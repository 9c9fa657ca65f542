//go:build linux

package listen_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// TestAcceptContext: an Accept waiting in the poller and one waiting
// for its turn behind it both return with their own context's error
// when it ends, without disturbing the other; after that the Listener
// still accepts, and the accepted file is non-blocking and close-on-exec.
func TestAcceptContext(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	l := udsListen(t, path, listen.Config{})

	type result struct {
		p   *listen.Peer
		err error
	}
	start := func(ctx context.Context) <-chan result {
		ch := make(chan result, 1)
		go func() {
			p, err := l.Accept(ctx)
			ch <- result{p, err}
		}()
		return ch
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	a := start(ctxA)
	b := start(ctxB)
	// Whichever holds the turn, cancelling B ends B only.
	cancelB()
	if r := testutil.Receive(t, b, testutil.UDSWait, "Accept B after its context ended"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Accept B: %v, want context.Canceled", r.err)
	}
	select {
	case r := <-a:
		t.Fatalf("Accept A returned when B's context ended: %+v", r)
	default:
	}
	cancelA()
	if r := testutil.Receive(t, a, testutil.UDSWait, "Accept A after its context ended"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Accept A: %v, want context.Canceled", r.err)
	}

	// The deadline used to wake A is gone: a new Accept waits for a
	// connection and gets it.
	c := start(context.Background())
	conn := testutil.MustConnectUnix(t, path)
	defer closeFD(conn)
	r := testutil.Receive(t, c, testutil.UDSWait, "Accept after the cancelled ones")
	if r.err != nil {
		t.Fatalf("Accept: %v", r.err)
	}
	defer r.p.File.Close()
	rc, err := r.p.File.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		if nb, err := isNonblock(int(fd)); err != nil || !nb {
			t.Errorf("accepted fd non-blocking = %v (%v), want true", nb, err)
		}
		if ce, err := isCloexec(int(fd)); err != nil || !ce {
			t.Errorf("accepted fd close-on-exec = %v (%v), want true", ce, err)
		}
	})
	// The file is in the poller: a read deadline works on it.
	r.p.File.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := r.p.File.Read(make([]byte, 1)); !errors.Is(err, errDeadline) {
		t.Errorf("Read on the idle accepted file: %v, want a deadline error", err)
	}

	// A context already ended: Accept returns at once, even with a
	// connection waiting.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Accept(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Accept with an ended context: %v, want context.Canceled", err)
	}
	l.Close()
	if _, err := l.Accept(context.Background()); !errors.Is(err, listen.ErrClosed) || !errors.Is(err, os.ErrClosed) {
		t.Errorf("Accept after Close: %v, want ErrClosed", err)
	}
}
