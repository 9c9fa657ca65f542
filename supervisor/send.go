package supervisor

import (
	"context"
	"fmt"
	"sync"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Conveniences for application messages, so that a program need not
// import the wire package for the common cases.

// Send sends payload as an application message to one ready worker,
// round robin, and returns the worker's reply (see Call).
func (s *Supervisor) Send(ctx context.Context, payload []byte) ([]byte, error) {
	return s.Call(ctx, wire.TypeMessage, payload, nil)
}

// SendTo sends payload as an application message to worker id (1 …
// Workers) and returns its reply. If that worker is not ready, SendTo
// waits for it until ctx ends ([ErrNoWorker]) or Run stops
// ([ErrNotRunning]). A worker id out of range is an error.
func (s *Supervisor) SendTo(ctx context.Context, id int, payload []byte) ([]byte, error) {
	if id < 1 || id > len(s.slots) {
		return nil, fmt.Errorf("supervisor: no worker %d (of %d)", id, len(s.slots))
	}
	for {
		rt := s.routes.Load()
		if rt.stopped || rt.stopping {
			return nil, ErrNotRunning
		}
		if c := rt.conns[id-1]; c != nil && c.Err() == nil {
			return c.Call(ctx, wire.TypeMessage, payload, nil)
		}
		select {
		case <-rt.changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: worker %d: %w", ErrNoWorker, id, ctx.Err())
		}
	}
}

// Reply is one worker's answer to Broadcast.
type Reply struct {
	Worker int // its id
	Reply  []byte
	Err    error
}

// Broadcast sends payload as an application message to every worker
// ready now, concurrently, and returns their replies in worker order.
// Workers not ready when it is called are not sent anything (they are
// absent from the result).
func (s *Supervisor) Broadcast(ctx context.Context, payload []byte) []Reply {
	rt := s.routes.Load()
	var (
		wg      sync.WaitGroup
		replies []Reply
	)
	for i, c := range rt.conns {
		if c != nil && c.Err() == nil {
			replies = append(replies, Reply{Worker: i + 1})
		}
	}
	for j := range replies {
		c := rt.conns[replies[j].Worker-1]
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[j].Reply, replies[j].Err = c.Call(ctx, wire.TypeMessage, payload, nil)
		}()
	}
	wg.Wait()
	return replies
}

// Watch returns the current Status and a channel closed as soon as a
// newer one is published: a worker changed state, pid, restarts, exit,
// status text or ping round trip. Use it to follow state changes
// without polling and without missing one:
//
//	for {
//		st, changed := s.Watch()
//		… look at st …
//		select {
//		case <-changed:
//		case <-ctx.Done():
//			return
//		}
//	}
func (s *Supervisor) Watch() (Status, <-chan struct{}) {
	sn := s.snap.Load()
	return s.statusOf(sn), sn.changed
}
