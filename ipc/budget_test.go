//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// echoBack is a Handler that returns the request's payload, as a front
// door forwarding echoes to a worker does.
func echoBack(_ context.Context, req ipc.Request) ([]byte, error) { return req.Payload, nil }

// floodEchoes writes 1 MiB echo requests to raw as fast as the Conn on
// the other end takes them, never reading, until a write fails (the
// Conn closed its end). It returns the number of whole requests
// written.
func floodEchoes(raw *os.File, size int) int {
	frame := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 1}, make([]byte, size))
	n := 0
	for id := uint64(1); ; id++ {
		wire.PutHeader(frame, wire.Header{Type: wire.TypeEcho, Length: uint32(size), ID: id})
		if _, err := raw.Write(frame); err != nil {
			return n
		}
		n++
	}
}

// TestPeerNotReading: a peer sends 1 MiB echoes as fast as it can and
// never reads a reply. The Conn must stop reading once it holds
// MaxBuffered bytes of replies (the peer's sends block), never hold
// more, and close with ErrStalled once nothing has been written for
// WriteTimeout. Before the bound, the Conn read on forever: replies
// piled up in goroutines waiting for the write lock (1.3 GiB after 4 s
// with ForwardEcho), and the Conn never closed.
func TestPeerNotReading(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		name string
		cfg  ipc.ConnConfig
	}{
		{"inline", ipc.ConnConfig{}},
		{"forward", ipc.ConnConfig{ForwardEcho: true, Handler: echoBack}},
		{"inline-small-bound", ipc.ConnConfig{MaxBuffered: 4 << 20}},
		{"forward-small-bound", ipc.ConnConfig{ForwardEcho: true, Handler: echoBack, MaxBuffered: 4 << 20}},
		{"forward-poll", ipc.ConnConfig{ForwardEcho: true, Handler: echoBack, Poll: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.WriteTimeout = time.Second
			c, raw := rawPeer(t, cfg)
			sent := make(chan int, 1)
			go func() { sent <- floodEchoes(raw, size) }()

			select {
			case <-c.Done():
			case <-time.After(cfg.WriteTimeout + waitTimeout):
				t.Fatalf("Conn still open %v after a peer stopped reading; it holds %d bytes", cfg.WriteTimeout+waitTimeout, ipc.HeldBytes(c))
			}
			n := recv(t, sent, "the end of the flood")
			if err := c.Err(); !errors.Is(err, ipc.ErrStalled) {
				t.Fatalf("Err() = %v, want ErrStalled", err)
			}
			bound := cfg.MaxBuffered
			if bound == 0 {
				bound = ipc.DefaultMaxBuffered
			}
			if peak := ipc.PeakHeldBytes(c); peak > bound || peak < size {
				t.Errorf("peak bytes held %d, want between %d and the bound %d", peak, size, bound)
			}
			if left := ipc.LeftoverBytes(c); left != 0 {
				t.Errorf("%d bytes still counted as held after the Conn closed", left)
			}
			t.Logf("closed with %v after the peer sent %d requests; peak held %d of %d bytes", c.Err(), n, ipc.PeakHeldBytes(c), bound)
		})
	}
}

// TestBackPressure: a peer that sends many large echoes before it reads
// any reply is slowed down, not cut off: the Conn holds at most
// MaxBuffered bytes meanwhile, and every reply arrives once the peer
// reads.
func TestBackPressure(t *testing.T) {
	for _, fwd := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward=%v", fwd), func(t *testing.T) {
			t.Parallel()
			const size, count, bound = 1 << 20, 24, 6 << 20
			cfg := ipc.ConnConfig{MaxBuffered: bound, WriteTimeout: time.Minute}
			if fwd {
				cfg.ForwardEcho, cfg.Handler = true, echoBack
			}
			c, raw := rawPeer(t, cfg)
			payload := randBytes(3, size)
			errc := make(chan error, 1)
			go func() {
				for id := range uint64(count) {
					if _, err := raw.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: id + 1}, payload)); err != nil {
						errc <- fmt.Errorf("request %d: %w", id+1, err)
						return
					}
				}
				errc <- nil
			}()
			// Read nothing until the Conn holds as much as it may.
			testutil.Poll(t, waitTimeout, time.Millisecond, "the Conn to fill its bound",
				func() bool { return ipc.HeldBytes(c)+2*(size+wire.HeaderSize) > bound },
				func() string { return fmt.Sprintf("%d bytes held", ipc.HeldBytes(c)) })
			seen := make(map[uint64]bool)
			for range count {
				h, p := readRaw(t, raw)
				if h.Type != wire.TypeEcho || !h.IsReply() || seen[h.ID] || !bytes.Equal(p, payload) {
					t.Fatalf("got %v with %d bytes, want the echo of a request not yet answered", h, len(p))
				}
				seen[h.ID] = true
			}
			if err := recv(t, errc, "the end of the requests"); err != nil {
				t.Fatal(err)
			}
			if err := c.Err(); err != nil {
				t.Fatalf("Conn closed: %v", err)
			}
			if peak := ipc.PeakHeldBytes(c); peak > bound {
				t.Errorf("peak bytes held %d, over the bound %d", peak, bound)
			}
			testutil.Poll(t, waitTimeout, time.Millisecond, "the held bytes to be released",
				func() bool { return ipc.HeldBytes(c) == 0 },
				func() string { return fmt.Sprintf("%d bytes held", ipc.HeldBytes(c)) })
		})
	}
}

// TestReplyNotWrittenCloses: a reply that cannot be written within
// WriteTimeout (here a pong queued behind a large request the peer does
// not read) closes the Conn with ErrStalled. It used to be dropped,
// leaving the Conn open and the peer waiting forever for its pong.
func TestReplyNotWrittenCloses(t *testing.T) {
	t.Parallel()
	c, raw := rawPeer(t, ipc.ConnConfig{WriteTimeout: 500 * time.Millisecond})
	errc := make(chan error, 1)
	go func() {
		// No deadline: only the Conn closing ends this call.
		_, err := c.Echo(context.Background(), make([]byte, 8<<20), nil)
		errc <- err
	}()
	// Its header has gone out: the call holds the write lock until the
	// other 8 MiB have, and we read no more.
	var hb [wire.HeaderSize]byte
	if _, err := io.ReadFull(raw, hb[:]); err != nil {
		t.Fatal(err)
	}
	if h, err := wire.ParseHeader(hb[:], 0); err != nil || h.Type != wire.TypeEcho {
		t.Fatalf("first frame %v (%v), want the echo request", h, err)
	}
	writeRaw(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil))
	waitDone(t, c)
	if err := c.Err(); !errors.Is(err, ipc.ErrStalled) {
		t.Fatalf("Err() = %v, want ErrStalled", err)
	}
	if err := recv(t, errc, "the end of the large call"); !errors.Is(err, ipc.ErrClosed) {
		t.Fatalf("large call returned %v, want ErrClosed", err)
	}
	if left := ipc.LeftoverBytes(c); left != 0 {
		t.Errorf("%d bytes still counted as held after the Conn closed", left)
	}
}

// TestSharedBudget: Conns sharing a Budget. While one peer that does not
// read holds the Budget, another Conn's large echo is refused with
// CodeUnavailable after a short wait (not held until the first peer
// times out), pings still work, and once the first Conn is gone the
// Budget is whole again and serves.
func TestSharedBudget(t *testing.T) {
	for _, fwd := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward=%v", fwd), func(t *testing.T) {
			t.Parallel()
			const size = 1 << 20
			b := ipc.NewBudget(3 * size)
			cfg := ipc.ConnConfig{Budget: b, WriteTimeout: time.Minute}
			if fwd {
				cfg.ForwardEcho, cfg.Handler = true, echoBack
			}
			greedy, raw := rawPeer(t, cfg)
			sent := make(chan int, 1)
			go func() { sent <- floodEchoes(raw, size) }()
			testutil.Poll(t, waitTimeout, time.Millisecond, "the greedy peer to fill the budget",
				func() bool { return ipc.BudgetUsed(b) >= 2*size },
				func() string { return fmt.Sprintf("%d of %d bytes used", ipc.BudgetUsed(b), 3*size) })

			client, server := pair(t, ipc.ConnConfig{}, cfg)
			ctx := ctxTimeout(t, waitTimeout)
			payload := randBytes(5, size)
			_, err := client.Echo(ctx, payload, nil)
			var re *wire.RemoteError
			if !errors.As(err, &re) || re.Code != wire.CodeUnavailable {
				t.Fatalf("echo while the budget is used up: %v, want error code %d", err, wire.CodeUnavailable)
			}
			if _, err := client.Ping(ctx); err != nil {
				t.Fatalf("ping while the budget is used up: %v", err)
			}

			greedy.Close()
			recv(t, sent, "the end of the flood")
			testutil.Poll(t, waitTimeout, time.Millisecond, "the greedy Conn's bytes to come back",
				func() bool { return ipc.BudgetUsed(b) == 0 },
				func() string { return fmt.Sprintf("%d bytes used", ipc.BudgetUsed(b)) })
			if left := ipc.LeftoverBytes(greedy); left != 0 {
				t.Errorf("%d bytes of the greedy Conn given back only at its teardown", left)
			}
			got, err := client.Echo(ctx, payload, nil)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo once the budget is free: %d bytes, %v", len(got), err)
			}
			client.Close()
			server.Close()
			if used := ipc.BudgetUsed(b); used != 0 {
				t.Errorf("%d bytes of the budget used after every Conn closed", used)
			}
		})
	}
}

// TestReceived: Received counts every byte read from the peer, the
// hello included, and grows in the middle of a large frame, before the
// frame is complete.
func TestReceived(t *testing.T) {
	t.Parallel()
	c, raw := rawPeer(t, ipc.ConnConfig{})
	want := uint64(wire.HeaderSize + len(rawHello(1, 1)))
	if got := c.Received(); got != want {
		t.Fatalf("Received after the hello = %d, want %d", got, want)
	}
	// A reply to no call: the Conn reads and skips it.
	frame := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 99}, make([]byte, 1<<20))
	for _, part := range [][]byte{frame[:len(frame)/2], frame[len(frame)/2:]} {
		writeRaw(t, raw, part)
		want += uint64(len(part))
		testutil.Poll(t, waitTimeout, time.Millisecond, fmt.Sprintf("Received to reach %d", want),
			func() bool { return c.Received() == want },
			func() string { return fmt.Sprintf("Received = %d", c.Received()) })
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Conn closed: %v", err)
	}
}

// TestSlowReaderNotStalled: a peer that reads its replies slowly, a
// little at a time, is not taken for one that does not read. Each 1 MiB
// echo reply takes the peer several WriteTimeouts to read, and a pong
// waits behind it for as long; since the peer keeps taking bytes, the
// Conn stays open and every reply arrives whole (before, a reply had to
// be written within WriteTimeout of being ready, however fast the peer
// read: clients of a loaded machine were cut off while reading).
func TestSlowReaderNotStalled(t *testing.T) {
	for _, fwd := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward=%v", fwd), func(t *testing.T) {
			t.Parallel()
			// WriteTimeout is generous (a descheduled test must not pass
			// for a stalled reader); the pacing makes each reply take
			// longer than it all the same.
			const size, chunk = 1 << 20, 8 << 10
			cfg := ipc.ConnConfig{WriteTimeout: 2 * time.Second}
			if fwd {
				cfg.ForwardEcho, cfg.Handler = true, echoBack
			}
			c, raw := rawPeer(t, cfg)
			payload := randBytes(5, size)
			var req []byte
			for id := uint64(1); id <= 2; id++ {
				req = wire.AppendFrame(req, wire.Header{Type: wire.TypeEcho, ID: 2*id - 1}, payload)
				req = wire.AppendFrame(req, wire.Header{Type: wire.TypePing, ID: 2 * id}, nil)
			}
			errc := make(chan error, 1)
			go func() { _, err := raw.Write(req); errc <- err }()
			// Read the replies a chunk at a time, pausing between
			// chunks: about 20 ms a chunk, so a 1 MiB reply takes 2.6 s
			// or more, longer than the WriteTimeout.
			var got []byte
			buf := make([]byte, chunk)
			want := 2 * (2*wire.HeaderSize + size)
			start := time.Now()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for len(got) < want {
				<-tick.C // pacing the slow reader, not synchronising
				raw.SetReadDeadline(time.Now().Add(waitTimeout))
				n, err := raw.Read(buf[:min(chunk, want-len(got))])
				if err != nil {
					t.Fatalf("after %d of %d bytes: %v (Conn: %v)", len(got), want, err, c.Err())
				}
				got = append(got, buf[:n]...)
			}
			if err := recv(t, errc, "the requests' write"); err != nil {
				t.Fatal(err)
			}
			seen := make(map[uint64]bool) // forwarded echoes may come after the pong behind them
			for range 4 {
				h, err := wire.ParseHeader(got, 0)
				if err != nil || h.ID < 1 || h.ID > 4 || seen[h.ID] || !h.IsReply() {
					t.Fatalf("reply %v (%v), want one to each request", h, err)
				}
				seen[h.ID] = true
				p := got[wire.HeaderSize : wire.HeaderSize+int(h.Length)]
				if h.ID%2 == 1 && (h.Type != wire.TypeEcho || !bytes.Equal(p, payload)) {
					t.Fatalf("reply %v with %d bytes, want the echo", h, len(p))
				}
				got = got[wire.HeaderSize+int(h.Length):]
			}
			if err := c.Err(); err != nil {
				t.Fatalf("Conn closed under a slow reader: %v", err)
			}
			t.Logf("read %d bytes in %v with WriteTimeout %v", want, time.Since(start).Round(time.Millisecond), cfg.WriteTimeout)
		})
	}
}

// TestSlowReaderLargeReply: a handler's large reply (not an echo, so
// written by the handler's goroutine in one blocking sendmsg before)
// read steadily but slowly by the peer, with a second reply waiting
// behind it: the waiter sees the peer's progress (Conn.Sent) at least
// every sendChunk bytes, so neither reply is cut off as stalled, though
// the first takes more than twice the WriteTimeout to be read. (The
// reader reads more often than the socket's 20 ms send slice, so that
// an uncapped sendmsg would not return before the end.)
func TestSlowReaderLargeReply(t *testing.T) {
	t.Parallel()
	const size, chunk = 8 << 20, 16 << 10
	big := randBytes(9, size)
	cfg := ipc.ConnConfig{WriteTimeout: time.Second, Handler: func(_ context.Context, req ipc.Request) ([]byte, error) {
		if string(req.Payload) == "big" {
			return big, nil
		}
		return []byte("small"), nil
	}}
	c, raw := rawPeer(t, cfg)
	var req []byte
	req = wire.AppendFrame(req, wire.Header{Type: wire.TypeMessage, ID: 1}, []byte("big"))
	req = wire.AppendFrame(req, wire.Header{Type: wire.TypeMessage, ID: 2}, []byte("small"))
	writeRaw(t, raw, req)
	want := 2*wire.HeaderSize + size + len("small")
	var got []byte
	buf := make([]byte, chunk)
	tick := time.NewTicker(5 * time.Millisecond) // about 3 MB/s: 2.6 s or more for the big reply
	defer tick.Stop()
	start := time.Now()
	for len(got) < want {
		<-tick.C // pacing the slow reader, not synchronising
		raw.SetReadDeadline(time.Now().Add(waitTimeout))
		n, err := raw.Read(buf[:min(chunk, want-len(got))])
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v (Conn: %v)", len(got), want, err, c.Err())
		}
		got = append(got, buf[:n]...)
	}
	for range 2 {
		h, err := wire.ParseHeader(got, 0)
		if err != nil || !h.IsReply() || h.Type != wire.TypeMessage {
			t.Fatalf("reply %v (%v)", h, err)
		}
		p := got[wire.HeaderSize : wire.HeaderSize+int(h.Length)]
		if h.ID == 1 && !bytes.Equal(p, big) || h.ID == 2 && string(p) != "small" {
			t.Fatalf("reply %v with %d bytes is not its request's", h, len(p))
		}
		got = got[wire.HeaderSize+int(h.Length):]
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Conn closed under a slow reader: %v", err)
	}
	t.Logf("read %d bytes in %v with WriteTimeout %v", want, time.Since(start).Round(time.Millisecond), cfg.WriteTimeout)
}
