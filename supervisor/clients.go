package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Handing clients of a socket path to workers (protocol version 3,
// docs/PROTOCOL.md "Handing clients to workers"). A server that accepts
// clients (the CLI's front door) offers each framed one to HandOff,
// which passes the connection to the ready worker with the fewest
// clients in a CLIENT request; that worker serves the client itself,
// and the request stays in flight, counted against the worker's load,
// until the worker is done with it. The caller keeps its own copy of
// the connection throughout, so that it can close it if the worker
// fails, and serve it on if the worker hands it back.

// clientLoad counts the clients each worker channel serves now, keeps
// their connections (the caller's descriptors, open while listed) for
// the health check, and remembers the channels whose worker takes none.
// Its maps hold only live entries: a count and a connection leave when
// HandOff's CLIENT request ends, a refusal when its channel has closed.
type clientLoad struct {
	mu     sync.Mutex
	n      map[channel]int
	conns  map[channel]map[*os.File]*queues // the connections each worker serves now
	moves  map[channel]uint64               // samples in which a worker was seen moving its clients' bytes
	refuse map[channel]bool                 // answered CLIENT with code 2
}

// queues is where a handed-over connection's kernel queues stood at the
// last sample (clientLoad.activity).
type queues struct {
	in, out int // bytes from the client not yet read by the worker; from the worker not yet read by the client
	ok      bool
}

// activity samples the connections of the clients that c's worker
// serves (the bytes queued in the kernel each way, queued in
// sockets_*.go) and returns how many samples so far saw the worker move
// some: read a client's bytes (fewer queued towards it than at the last
// sample) or write to one (more queued from it). The health check
// samples when a ping is overdue: a worker serving handed-over clients
// does their work out of its channel's sight, and one starved of CPU on
// a loaded machine answers its pings late while it moves its clients'
// bytes; it is busy, not hung. Only the worker's own moves count (its
// clients' reads and writes move the queues the other way), and nobody
// else reads or writes these connections while the worker has them, so
// a hung worker never counts as busy. Moves that cancel out between two
// samples go unseen: the ping's verdict then stands, as before.
//
// The kernel is asked outside l.mu (up to two ioctls per connection,
// and a worker may serve a thousand), so that hand-offs to the other
// workers do not wait for it; a connection done meanwhile is skipped
// (queued on a closed File fails).
func (l *clientLoad) activity(c channel) uint64 {
	type sample struct {
		f       *os.File
		in, out int
		ok      bool
	}
	l.mu.Lock()
	samples := make([]sample, 0, len(l.conns[c]))
	for f := range l.conns[c] {
		samples = append(samples, sample{f: f})
	}
	l.mu.Unlock()
	for i := range samples {
		s := &samples[i]
		s.in, s.out, s.ok = queued(s.f)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	moved := false
	for _, s := range samples {
		q := l.conns[c][s.f]
		if q == nil || !s.ok {
			continue // done meanwhile, or unreadable
		}
		if q.ok && (s.in < q.in || s.out > q.out) {
			moved = true
		}
		*q = queues{in: s.in, out: s.out, ok: true}
	}
	if moved {
		if l.moves == nil {
			l.moves = make(map[channel]uint64)
		}
		l.moves[c]++
	}
	return l.moves[c]
}

// moved returns what activity last returned for c, without sampling.
func (l *clientLoad) moved(c channel) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.moves[c]
}

// serving lists f as a connection c's worker serves; done takes it off.
func (l *clientLoad) serving(c channel, f *os.File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		l.conns = make(map[channel]map[*os.File]*queues)
	}
	if l.conns[c] == nil {
		l.conns[c] = make(map[*os.File]*queues)
	}
	in, out, ok := queued(f)
	l.conns[c][f] = &queues{in: in, out: out, ok: ok}
}

// pick returns the ready worker channel that passes descriptors, takes
// clients, is not in tried, and serves the fewest clients (the first
// of those after a round-robin start, among equals), and counts a
// client in for it; nil if there is none.
func (l *clientLoad) pick(rt *routes, rr interface{ Add(uint64) uint64 }, tried []channel) (channel, channelFiles) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.refuse {
		if c.Err() != nil {
			delete(l.refuse, c)
		}
	}
	for c := range l.moves {
		if c.Err() != nil && l.conns[c] == nil {
			delete(l.moves, c)
		}
	}
	var (
		best   channel
		bestFC channelFiles
		least  int
	)
	n := uint64(len(rt.conns))
	start := rr.Add(1)
	for i := range n {
		c := rt.conns[(start+i)%n]
		if c == nil || c.Err() != nil || l.refuse[c] || containsChannel(tried, c) {
			continue
		}
		fc := filesOf(c)
		if fc == nil {
			continue
		}
		if k := l.n[c]; best == nil || k < least {
			best, bestFC, least = c, fc, k
		}
	}
	if best != nil {
		if l.n == nil {
			l.n = make(map[channel]int)
		}
		l.n[best]++
	}
	return best, bestFC
}

// done counts a client of c out, and its connection f.
func (l *clientLoad) done(c channel, f *os.File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := l.n[c] - 1; k > 0 {
		l.n[c] = k
	} else {
		delete(l.n, c)
	}
	if delete(l.conns[c], f); len(l.conns[c]) == 0 {
		delete(l.conns, c)
	}
	// moves[c] lives as long as c: the health check compares it with
	// its last sample, and a count that restarted from 0 when the last
	// client left would pass for activity (or hide it). pick forgets the
	// counts of closed channels.
}

// refused remembers that c's worker takes no clients.
func (l *clientLoad) refused(c channel) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refuse == nil {
		l.refuse = make(map[channel]bool)
	}
	l.refuse[c] = true
}

func containsChannel(cs []channel, c channel) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// HandOff hands client, a connection to a socket path that the caller
// accepted, to the ready worker with the fewest clients, with state (a
// [wire.Client] payload: who the client is and where its stream
// stands), and waits while that worker serves it. The caller keeps
// client, and must keep it open until HandOff returns. Only workers
// that speak protocol version 3 are offered clients; one that refuses
// (codes 2, 3 and 6: it takes none, has no room, is stopping) is passed
// over for the next.
//
// It returns, once the worker is done with the client:
//
//   - an empty reply: the client's connection ended (the client went
//     away, or broke the protocol); close client;
//   - a non-empty reply, a [wire.Client] payload: the worker hands the
//     client back, with the connection's state; serve it on, or hand it
//     over again (unless it has wire.ClientHere);
//   - an error wrapping [ErrNoTaker]: no worker took the client, and
//     nothing has read from or written to its connection: serve it;
//   - any other error (the worker failed, ctx ended): the connection's
//     state is lost: shut client down and close it.
//
// Ending ctx makes the worker close the client (a cancel frame) and
// HandOff return ctx's error.
func (s *Supervisor) HandOff(ctx context.Context, client *os.File, state []byte) ([]byte, error) {
	var tried []channel
	for {
		rt := s.routes.Load()
		if rt.stopped || rt.stopping {
			return nil, fmt.Errorf("%w: %w", ErrNoTaker, ErrNotRunning)
		}
		c, fc := s.clients.pick(rt, &s.rr, tried)
		if c == nil {
			return nil, fmt.Errorf("%w: no ready worker with room speaks protocol version 3", ErrNoTaker)
		}
		s.clients.serving(c, client)
		reply, files, err := fc.CallFiles(ctx, wire.TypeClient, state, []*os.File{client})
		s.clients.done(c, client)
		for _, f := range files { // a worker sends none back
			f.Close()
		}
		var re *wire.RemoteError
		if errors.As(err, &re) && (re.Code == wire.CodeUnsupported || re.Code == wire.CodeUnavailable || re.Code == wire.CodeShutdown) {
			if re.Code == wire.CodeUnsupported {
				s.clients.refused(c)
			}
			tried = append(tried, c)
			continue
		}
		return reply, err
	}
}

// ClientCounts returns how many handed-over clients each ready worker
// serves now, by worker id; workers with none are left out.
func (s *Supervisor) ClientCounts() map[int]int {
	rt := s.routes.Load()
	s.clients.mu.Lock()
	defer s.clients.mu.Unlock()
	counts := make(map[int]int)
	for i, c := range rt.conns {
		if c != nil && s.clients.n[c] > 0 {
			counts[i+1] = s.clients.n[c]
		}
	}
	return counts
}
