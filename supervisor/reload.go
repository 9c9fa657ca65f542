//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"time"
)

// Reload replaces every ready worker, one at a time: it starts the new
// worker, waits for its hello and a pong, routes requests to it, and
// only then stops the old one, so callers of [Supervisor.Call] see no
// failed request. Slots that are not ready (starting, backing off) are
// skipped: they start afresh anyway.
//
// Reloads are coalesced: requests made while a rolling restart runs
// share the one run that starts after it, so a storm of them costs at
// most two. Reload returns the result of the first run that started
// after it was called, once that run is done, or ctx's error if ctx ends
// first (the run happens anyway). It returns [ErrNotRunning] after Run
// began to stop. It is safe to call from any goroutine.
func (s *Supervisor) Reload(ctx context.Context) error {
	if s.stopped.Load() {
		return ErrNotRunning
	}
	res := make(chan error, 1)
	s.reloadMu.Lock()
	if s.reloadClosed {
		s.reloadMu.Unlock()
		return ErrNotRunning
	}
	s.reloadPending = append(s.reloadPending, res)
	s.reloadMu.Unlock()
	select {
	case s.reloadKick <- struct{}{}:
	default: // a kick is pending already
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reloadLoop runs rolling restarts for the pending Reload calls until
// ctx ends, then answers those still waiting with ErrNotRunning. Each
// run serves every request made before it started.
func (s *Supervisor) reloadLoop(ctx context.Context) {
	defer func() {
		s.reloadMu.Lock()
		pending := s.reloadPending
		s.reloadPending, s.reloadClosed = nil, true
		s.reloadMu.Unlock()
		for _, res := range pending {
			res <- ErrNotRunning
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reloadKick:
		}
		s.reloadMu.Lock()
		batch := s.reloadPending
		s.reloadPending = nil
		s.reloadMu.Unlock()
		if len(batch) == 0 {
			continue
		}
		s.log.Info("rolling restart", "requests", len(batch))
		err := s.rollingRestart(ctx)
		if err != nil {
			s.log.Error("rolling restart failed", "error", err)
		} else {
			s.log.Info("rolling restart done")
		}
		if ctx.Err() != nil {
			err = ErrNotRunning
		}
		for _, res := range batch {
			res <- err
		}
	}
}

func (s *Supervisor) rollingRestart(ctx context.Context) error {
	for _, sl := range s.slots {
		if sl.cur.Load() == nil {
			continue
		}
		p, err := s.start(ctx, sl, true)
		if err != nil {
			return fmt.Errorf("supervisor: rolling restart of worker %d: %w", sl.id, err)
		}
		pctx, cancel := context.WithTimeout(ctx, s.cfg.PingTimeout)
		_, err = p.conn.Ping(pctx)
		cancel()
		if err != nil {
			s.stop(p)
			return fmt.Errorf("supervisor: rolling restart of worker %d: new worker did not answer a ping: %w", sl.id, err)
		}
		h := &handover{p: p, ready: s.cfg.now(), done: make(chan struct{})}
		t := time.NewTimer(s.cfg.StartTimeout)
		select {
		case sl.replace <- h:
			t.Stop()
			<-h.done
		case <-t.C:
			// The slot's worker ended meanwhile; it restarts on its own.
			s.stop(p)
		case <-ctx.Done():
			t.Stop()
			s.stop(p)
			return ctx.Err()
		}
	}
	return nil
}
