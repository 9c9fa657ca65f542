//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Who reads a reply: a caller alone in waiting reads its own (it leads),
// other callers follow and get theirs handed over, and the read side
// passes from a leader to a follower. See the top of conn.go.

// echoFirst and echoSecond make an echo call and report its result on
// errc. They are two functions so that waitStack can tell the two
// callers' goroutines apart. The tests that look for them in stacks do
// not run in parallel.
func echoFirst(ctx context.Context, c *ipc.Conn, p, dst []byte, errc chan<- error) {
	errc <- echoCheck(ctx, c, p, dst)
}

func echoSecond(ctx context.Context, c *ipc.Conn, p, dst []byte, errc chan<- error) {
	errc <- echoCheck(ctx, c, p, dst)
}

func echoCheck(ctx context.Context, c *ipc.Conn, p, dst []byte) error {
	got, err := c.Echo(ctx, p, dst)
	if err == nil && !bytes.Equal(got, p) {
		err = fmt.Errorf("echo of %q came back as %q", p, got)
	}
	return err
}

// callUnanswered makes a message call that the test does not answer.
func callUnanswered(ctx context.Context, c *ipc.Conn, errc chan<- error) {
	_, err := c.Call(ctx, wire.TypeMessage, []byte("never answered"), nil)
	errc <- err
}

// warmUp makes one call on c through the background reader, after which
// the read side is left idle for the next caller (see handOn).
func warmUp(t *testing.T, c *ipc.Conn, raw interface {
	Write([]byte) (int, error)
}, rawRead func() wire.Header) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Ping(ctxTimeout(t, waitTimeout))
		errc <- err
	}()
	h := rawRead()
	if _, err := raw.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, ID: h.ID}, nil)); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "pong"); err != nil {
		t.Fatal(err)
	}
}

// feedStrays writes replies that nobody waits for to raw, one every
// half millisecond, until the returned stop is called (which waits for
// the last write). A leader that finds nothing to read for ioSlice
// (20 ms) leaves the read side to the background reader; data coming
// in makes the background reader pass it back to a waiting caller. So
// while strays come, a waiting caller is mostly leading, however slowly
// the test runs, and a test can catch it at it.
func feedStrays(raw *os.File) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	stray := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 1 << 40}, []byte("stray"))
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for {
			if _, err := raw.Write(stray); err != nil {
				return
			}
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// TestLoneCallerReadsItsReply: a caller that is alone in waiting reads
// its reply itself, on its own goroutine, rather than parking until the
// background reader hands it over.
//
// These tests find goroutines by their stacks, so they do not run in
// parallel with others.
func TestLoneCallerReadsItsReply(t *testing.T) {
	c, raw := rawPeer(t, ipc.ConnConfig{})
	warmUp(t, c, raw, func() wire.Header { h, _ := readRaw(t, raw); return h })
	errc := make(chan error, 1)
	go echoFirst(ctxTimeout(t, waitTimeout), c, []byte("mine"), nil, errc)
	h, p := readRaw(t, raw)
	stop := feedStrays(raw)
	waitStack(t, "ipc.(*Conn).lead(", "ipc_test.echoFirst(")
	stop()
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: h.ID}, p))
	if err := recv(t, errc, "echo result"); err != nil {
		t.Fatal(err)
	}
}

// TestReadSidePassesToFollower: while one caller leads, a second one
// follows; once the leader has its reply, the follower reads its own.
func TestReadSidePassesToFollower(t *testing.T) {
	c, raw := rawPeer(t, ipc.ConnConfig{})
	warmUp(t, c, raw, func() wire.Header { h, _ := readRaw(t, raw); return h })
	ctx := ctxTimeout(t, waitTimeout)
	errA, errB := make(chan error, 1), make(chan error, 1)
	go echoFirst(ctx, c, []byte("a"), nil, errA)
	ha, _ := readRaw(t, raw)
	stop := feedStrays(raw)
	waitStack(t, "ipc.(*Conn).lead(", "ipc_test.echoFirst(")
	stop()
	go echoSecond(ctx, c, []byte("b"), nil, errB)
	hb, _ := readRaw(t, raw)
	waitStack(t, "ipc.(*Conn).follow(", "ipc_test.echoSecond(")
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: ha.ID}, []byte("a")))
	if err := recv(t, errA, "a's echo"); err != nil {
		t.Fatal(err)
	}
	stop = feedStrays(raw)
	waitStack(t, "ipc.(*Conn).lead(", "ipc_test.echoSecond(")
	stop()
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: hb.ID}, []byte("b")))
	if err := recv(t, errB, "b's echo"); err != nil {
		t.Fatal(err)
	}
}

// TestLeaderContext: a leading caller whose reply does not come returns
// its context's error, and its peer's requests that arrive meanwhile are
// answered (by the background reader, to which the leader leaves them).
func TestLeaderContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		busy bool // the peer keeps sending replies nobody waits for
	}{{"silent", false}, {"busy", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c, raw := rawPeer(t, ipc.ConnConfig{})
			warmUp(t, c, raw, func() wire.Header { h, _ := readRaw(t, raw); return h })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go callUnanswered(ctx, c, errc)
			readRaw(t, raw)
			waitStack(t, "ipc.(*Conn).await(", "ipc_test.callUnanswered(") // leading or following
			// A ping from the peer is answered while the caller waits.
			writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 77}, nil))
			if h, _ := readRaw(t, raw); h.Type != wire.TypePing || !h.IsReply() || h.ID != 77 {
				t.Fatalf("got %+v, want the pong", h)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if tc.busy {
				wg.Add(1)
				go func() {
					defer wg.Done()
					stray := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 1 << 40}, make([]byte, 100))
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := raw.Write(stray); err != nil {
							return
						}
					}
				}()
			}
			cancel()
			err := recv(t, errc, "return of the cancelled call")
			close(stop)
			wg.Wait()
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("call returned %v, want context.Canceled", err)
			}
			if err := c.Err(); err != nil {
				t.Fatalf("Conn closed: %v", err)
			}
		})
	}
}

// TestLeaderClose: Close ends a leading caller's wait at once.
func TestLeaderClose(t *testing.T) {
	c, raw := rawPeer(t, ipc.ConnConfig{})
	warmUp(t, c, raw, func() wire.Header { h, _ := readRaw(t, raw); return h })
	errc := make(chan error, 1)
	go echoFirst(ctxTimeout(t, 3*waitTimeout), c, []byte("x"), make([]byte, 0, 10), errc)
	readRaw(t, raw)
	stop := feedStrays(raw)
	waitStack(t, "ipc.(*Conn).lead(", "ipc_test.echoFirst(")
	stop()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "failure of the call"); !errors.Is(err, ipc.ErrClosed) {
		t.Fatalf("call: %v, want ErrClosed", err)
	}
}

// TestMixedCallersStress has callers of every size share one Conn to
// another process: pings, echoes from 0 B to 1 MiB into their own dst or
// a new slice, and messages through the peer's handler, some of them
// given up half way by a context that ends. Every reply that comes must
// be the caller's own, byte for byte, and the Conn must stay open. Run
// against a blocking and a polled Conn.
func TestMixedCallersStress(t *testing.T) {
	t.Parallel()
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			t.Parallel()
			c, _ := dialHelper(t, "serve", ipc.ConnConfig{Poll: poll})
			const callers, calls = 12, 60
			sizes := []int{0, 1, 64, 4 << 10, 16<<10 - 16, 16 << 10, 64 << 10, 1 << 20}
			var cancelled, done atomic.Int64
			errc := make(chan error, callers)
			for g := range callers {
				go func() {
					errc <- func() error {
						rng := rand.New(rand.NewPCG(uint64(g), 9))
						own := make([]byte, 0, 1<<20)
						for i := range calls {
							kind := rng.IntN(5)
							// One call's bound is about its own work: at most
							// the callers' other calls (11 MiB at most) are
							// ahead of it, not the whole run.
							ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
							short := kind != 1 && kind != 2 && rng.IntN(6) == 0
							if short {
								// Gives up after a short while: while writing,
								// leading or following. (Not with a dst of its
								// own: giving up a reply that is being read into
								// the caller's dst closes the Conn, by design.)
								cancel()
								ctx, cancel = context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
							}
							size := sizes[rng.IntN(len(sizes))]
							payload := append(fmt.Appendf(nil, "%d/%d:", g, i), randBytes(uint64(g*calls+i), size)...)
							var got []byte
							var err error
							switch kind {
							case 0:
								_, err = c.Ping(ctx)
								got = payload
							case 1, 2:
								got, err = c.Echo(ctx, payload, own)
							case 3:
								got, err = c.Echo(ctx, payload, nil)
							case 4:
								got, err = c.Call(ctx, wire.TypeMessage, payload, nil)
							}
							cancel()
							switch {
							case err != nil && short && errors.Is(err, context.DeadlineExceeded):
								cancelled.Add(1)
								if errors.Is(err, ipc.ErrClosed) {
									return fmt.Errorf("caller %d call %d: the Conn closed: %w", g, i, err)
								}
								continue
							case err != nil:
								return fmt.Errorf("caller %d call %d: %w", g, i, err)
							case !bytes.Equal(got, payload):
								return fmt.Errorf("caller %d call %d: got another reply (%.24q…, %d bytes, want %d)", g, i, got, len(got), len(payload))
							}
							done.Add(1)
						}
						return nil
					}()
				}()
			}
			// How long the 720 calls take together is the machine's
			// business (tens of MiB through a race-enabled peer on busy
			// cores); what is bounded is progress: some call must end
			// within waitTimeout of the last one that did.
			for left := callers; left > 0; {
				ended := done.Load() + cancelled.Load()
				select {
				case err := <-errc:
					left--
					if err != nil {
						t.Error(err)
					}
				case <-time.After(waitTimeout):
					if done.Load()+cancelled.Load() == ended {
						t.Fatalf("no call ended within %v; %d calls answered, %d given up, %d callers still calling",
							waitTimeout, done.Load(), cancelled.Load(), left)
					}
				}
			}
			// Replies to the calls given up may still be arriving; the
			// Conn must read past them and answer on.
			ctx := ctxTimeout(t, waitTimeout)
			for range 3 {
				if got, err := c.Echo(ctx, []byte("after"), nil); err != nil || string(got) != "after" {
					t.Fatalf("echo after the stress: %q, %v (Conn error %v)", got, err, c.Err())
				}
			}
			t.Logf("%d calls answered, %d given up", done.Load(), cancelled.Load())
		})
	}
}

// TestCallsOutliveTheirConn: calls that were waiting as followers when
// their Conn closed go back to a pool shared by all Conns. Reused on
// another Conn, none may pass for a follower there: the read side would
// be handed to a call that is still waiting to write, and lost with it
// when that call gives up, so that no reply is read again and Close
// never returns.
func TestCallsOutliveTheirConn(t *testing.T) {
	t.Parallel()
	// Calls waiting as followers when their Conn closes.
	blk := newBlocker(0)
	a, b := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{Handler: blk.handle})
	const stale = 32
	errc := make(chan error, stale)
	for range stale {
		go func() {
			_, err := a.Call(ctxTimeout(t, waitTimeout), wire.TypeMessage, []byte(msgBlock), nil)
			errc <- err
		}()
	}
	for range stale {
		recv(t, blk.started, "handler start")
	}
	b.Close()
	for range stale {
		if err := recv(t, errc, "failure of a pending call"); !errors.Is(err, ipc.ErrClosed) {
			t.Fatalf("pending call: %v, want ErrClosed", err)
		}
	}

	// Another Conn, whose peer reads nothing for now. Two callers wait
	// for replies as followers; a large request holds the write lock;
	// more callers (likely on reused calls) queue for the write lock.
	c, raw := rawPeer(t, ipc.ConnConfig{WriteTimeout: time.Minute})
	ctx := ctxTimeout(t, 3*waitTimeout)
	replies := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Call(ctx, wire.TypeMessage, []byte("wait"), nil)
			replies <- err
		}()
	}
	var ids []uint64
	for range 2 {
		h, _ := readRaw(t, raw)
		ids = append(ids, h.ID)
	}
	big := make(chan error, 1)
	go func() {
		_, err := c.Echo(ctx, make([]byte, 8<<20), nil)
		big <- err
	}()
	waitQueued(t, raw)
	qctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error, stale)
	for range stale {
		go func() {
			_, err := c.Ping(qctx)
			queued <- err
		}()
	}
	waitStack(t, "ipc.(*Conn).lockW(", "ipc.(*Conn).Ping(")
	// A request from the peer makes the background reader pass the read
	// side on to a follower, as it does at the next frame boundary.
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 5}, nil))
	cancel()
	for range stale {
		recv(t, queued, "return of a queued ping")
	}
	// Now the peer reads and answers: every reply must still be read.
	go func() {
		for {
			h, p, err := wire.ReadFrame(raw, 0)
			if err != nil {
				return
			}
			if h.Type == wire.TypeEcho && !h.IsReply() {
				raw.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: h.ID}, p))
			}
		}
	}()
	for _, id := range ids {
		writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, Flags: wire.FlagReply, ID: id}, nil))
	}
	for range 2 {
		if err := recv(t, replies, "a follower's reply"); err != nil {
			t.Fatal(err)
		}
	}
	if err := recv(t, big, "the large echo"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	recv(t, closed, "return of Close")
}
