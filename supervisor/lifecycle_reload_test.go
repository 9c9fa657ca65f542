//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/worker"
)

func init() {
	workerRoles["gated-hello"] = func(w *worker.Worker, gate string) int {
		// Say hello only once the gate file exists.
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // polling for the gate
		}
		return serve(context.Background(), w, worker.Config{})
	}
}

// queuedReloads returns the number of Reload calls waiting for a run to
// start, as the loop last published it.
func queuedReloads(s *Supervisor) int { return s.snap.Load().reloadsQueued }

// TestReloadStormCoalesces: Reload calls made while a rolling restart
// runs share one more run after it, and each of them returns only once
// that run is done. 200 calls cost 2 rolling restarts, not 200.
func TestReloadStormCoalesces(t *testing.T) {
	t.Parallel()
	const late = 199
	gate := tempFile(t, "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "gated-hello", 1)
	cfg.Env = append(cfg.Env, envFile+"="+gate)
	cfg.StartTimeout = time.Hour // the gate decides; every wait below has its own deadline
	r := startSupervisor(t, cfg)
	r.waitReady()
	runs := func() int { return len(r.logs.find("rolling restart")) }
	done := func() int { return len(r.logs.find("rolling restart done")) }

	// The first run's new worker waits at the gate, so the first run
	// lasts until every other call is queued.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*eventWait)
	defer cancel()
	first := make(chan error, 1)
	go func() { first <- r.s.Reload(ctx) }()
	r.waitStatus("the first rolling restart under way", func(Status) bool { return runs() == 1 && queuedReloads(r.s) == 0 })

	results := make(chan error, late)
	for range late {
		go func() {
			err := r.s.Reload(ctx)
			if err == nil && done() < 2 {
				err = errors.New("returned before a run that started after it was done")
			}
			results <- err
		}()
	}
	r.waitStatus(fmt.Sprintf("%d queued reloads", late), func(Status) bool { return queuedReloads(r.s) == late })
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("first Reload: %v", err)
		}
	case <-time.After(2 * eventWait):
		t.Fatal("first Reload did not return")
	}
	for i := range late {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("Reload %d of the storm: %v", i, err)
			}
		case <-time.After(2 * eventWait):
			t.Fatalf("%d of %d Reload calls returned; %d rolling restarts so far", i, late, runs())
		}
		if n := runs(); n > 2 {
			t.Fatalf("%d rolling restarts for %d Reload calls, want 2", n, late+1)
		}
	}
	if n := runs(); n != 2 {
		t.Errorf("%d rolling restarts for %d Reload calls, want 2", n, late+1)
	}
	if n := len(r.logs.workerRecords(1, "starting")); n != 3 {
		t.Errorf("%d workers spawned, want 3 (one, and one per rolling restart)", n)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
