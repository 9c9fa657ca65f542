//go:build linux

package supervisor

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestPolicyRoutedMeansReadyInStatus: a worker's channel is routed only
// once Status shows its slot ready with its pid, so that a caller it has
// served never reads an older status (before: the loop routed a worker
// at its hello and published the snapshot only at the end of the step,
// and a caller could get its echo and then read "starting"). Covered:
// the first hellos, and a rolling restart's hand-over.
func TestPolicyRoutedMeansReadyInStatus(t *testing.T) {
	t.Parallel()
	// seen is, for every channel routed to a slot, what the published
	// snapshot said of that slot at that moment (on the loop).
	type seen struct {
		slot int
		c    channel
		ws   WorkerStatus
	}
	var mu sync.Mutex
	var routed []seen
	last := map[int]channel{}
	r := startPolicy(t, Config{Workers: 2}, func(s *Supervisor, _ *fakeSpawner) {
		s.routed = func(rt *routes) {
			mu.Lock()
			defer mu.Unlock()
			for i, c := range rt.conns {
				if c != nil && last[i] != c {
					routed = append(routed, seen{slot: i, c: c, ws: s.snap.Load().workers[i]})
				}
				last[i] = c
			}
		}
	})
	fps := r.ready(2)
	res := make(chan error, 1)
	go func() { res <- r.s.Reload(context.Background()) }()
	for range 2 {
		fp := r.sp.next(t)
		fps = append(fps, fp)
		fp.sayHello()
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
	case <-time.After(policyWait):
		t.Fatal("Reload did not return")
	}
	r.finish()

	mu.Lock()
	defer mu.Unlock()
	if len(routed) != len(fps) {
		t.Errorf("%d channels routed, want %d (2 workers, then their 2 replacements)", len(routed), len(fps))
	}
	for _, e := range routed {
		var fp *fakeProc
		for _, f := range fps {
			if channel(f.conn) == e.c {
				fp = f
			}
		}
		switch {
		case fp == nil:
			t.Errorf("worker %d: routed a channel of no process", e.slot+1)
		case e.ws.State != StateReady || e.ws.PID != fp.pd:
			t.Errorf("worker %d: pid %d routed while Status showed %s, pid %d; want ready, pid %d",
				e.slot+1, fp.pd, e.ws.State, e.ws.PID, fp.pd)
		}
	}
}
