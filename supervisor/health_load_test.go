//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBusyWorkersAreNotHung: healthy workers flooded with 1 MiB echoes,
// under health settings far tighter than the time a ping waits behind
// them, are not killed as hung. The pings wait behind megabytes of
// requests on the write side and the pongs behind megabytes of replies;
// a probe whose pong is late while the worker's replies keep arriving
// is not a miss. Before, this killed 1 to 8 workers in every run ("hung:
// 2 pings unanswered").
//
// The test counts work (a fixed number of echoes), not time, and each
// echo has its own generous deadline.
func TestBusyWorkersAreNotHung(t *testing.T) {
	t.Parallel()
	const (
		workers  = 3
		callers  = 32
		echoes   = 400
		size     = 1 << 20
		echoWait = 60 * time.Second
	)
	cfg := testConfig(t, "echo", workers)
	// A ping waits behind megabytes each way here, often longer than
	// PingTimeout under -race on a loaded machine. A kill needs
	// PingMisses × PingTimeout (750 ms) with no byte at all from a busy
	// worker, well above the longest a loaded two-core machine leaves
	// one without CPU (a 200 ms bound was seen to fail with -race -count=3
	// and other test runs sharing the cores), so a kill here means the
	// verdict is wrong, not the machine slow; the pings still wait
	// behind megabytes far longer than PingTimeout.
	cfg.PingInterval = 10 * time.Millisecond
	cfg.PingTimeout = 250 * time.Millisecond
	cfg.PingMisses = 3
	r := startSupervisor(t, cfg)
	r.waitReady()
	before := pids(r.s.Status())

	// The payloads are made before the load: making them is CPU work
	// that would starve the supervisor's own goroutines.
	payloads := make([][]byte, callers)
	for c := range payloads {
		payloads[c] = randomBytes(size, uint64(c)+1)
	}
	var next atomic.Int64
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			payload := payloads[c]
			dst := make([]byte, 0, size)
			for next.Add(1) <= echoes {
				ctx, cancel := context.WithTimeout(context.Background(), echoWait)
				got, err := r.s.Echo(ctx, payload, dst)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("caller %d: %w", c, err)
					return
				}
				if !bytes.Equal(got, payload) {
					errs <- fmt.Errorf("caller %d: echo returned %s, want %s", c, describe(got), describe(payload))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	st := r.s.Status()
	stats := r.s.Stats()
	missedLines := len(r.logs.find("ping missed"))
	t.Logf("%d echoes of 1 MiB by %d callers over %d workers: %d pings sent, %d answered (p50 %v, p99 %v), %d missed, %d restarts",
		echoes, callers, workers, stats.PingsSent, stats.PingsAnswered, stats.RTTP50, stats.RTTP99, missedLines, stats.Restarts)
	if after := pids(st); !slices.Equal(after, before) || stats.Restarts != 0 || stats.Failures != 0 {
		t.Errorf("busy workers were replaced: pids %v before, %v after; %d restarts, %d failures; hung kills logged: %d",
			before, after, stats.Restarts, stats.Failures, len(r.logs.find("worker hung; killing it")))
	}
	if stats.PingsAnswered == 0 {
		t.Error("no health ping was answered")
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
