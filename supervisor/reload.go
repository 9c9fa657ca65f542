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
// skipped: they start afresh anyway. Reload blocks until the rolling
// restart is done or ctx ends; concurrent calls queue.
func (s *Supervisor) Reload(ctx context.Context) error {
	if s.stopped.Load() {
		return ErrNotRunning
	}
	res := make(chan error, 1)
	select {
	case s.reloads <- res:
	case <-s.stopping:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reloadLoop serves Reload requests, one at a time, until ctx ends.
func (s *Supervisor) reloadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case res := <-s.reloads:
			s.log.Info("rolling restart")
			err := s.rollingRestart(ctx)
			if err != nil {
				s.log.Error("rolling restart failed", "error", err)
			} else {
				s.log.Info("rolling restart done")
			}
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
