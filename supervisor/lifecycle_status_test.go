//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/worker"
)

func init() {
	workerRoles["stop-second"] = func(w *worker.Worker, marker string) int {
		// The first worker serves; later ones stop themselves before
		// their hello, so they can never answer a ping.
		if _, err := os.Stat(marker); err == nil {
			syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		} else if err := writeFileAtomic(marker, nil); err != nil {
			fmt.Fprintln(os.Stderr, "test worker:", err)
			return 1
		}
		return serve(context.Background(), w, worker.Config{})
	}
}

// TestBackingOffNamesTheWorkerThatEnded: after a rolling restart, the
// "backing off" line names the worker that ended, not the one the
// rolling restart replaced.
func TestBackingOffNamesTheWorkerThatEnded(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "echo", 1))
	r.waitReady()
	old := r.s.Status().Workers[0].PID
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	if err := r.s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	cur := r.s.Status().Workers[0].PID
	if cur == old {
		t.Fatalf("Reload left pid %d in place", cur)
	}
	kill(t, cur, syscall.SIGKILL)
	r.waitStatus("a restart", func(Status) bool { return len(r.logs.find("backing off")) > 0 })
	rec := r.logs.find("backing off")[0]
	if rec["pid"] != float64(cur) {
		t.Errorf("backing off names pid %v, want the killed worker %d (not %d, the one replaced by the reload)", rec["pid"], cur, old)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestPingRTTIsTheCurrentWorkers: status shows no ping RTT for a slot
// whose worker has exited, and a replacement does not show its
// predecessor's.
func TestPingRTTIsTheCurrentWorkers(t *testing.T) {
	t.Parallel()
	hasRTT := func(st Status) bool { return st.Workers[0].LastPingRTTUS > 0 }
	t.Run("exited", func(t *testing.T) {
		t.Parallel()
		cfg := testConfig(t, "echo", 1)
		cfg.Restart = RestartNever
		r := startSupervisor(t, cfg)
		r.waitReady()
		victim := r.waitStatus("a ping RTT", hasRTT).Workers[0].PID
		kill(t, victim, syscall.SIGKILL)
		ws := r.waitStatus("the worker exited", func(st Status) bool { return st.Workers[0].State == StateExited }).Workers[0]
		if ws.LastPingRTTUS != 0 {
			t.Errorf("exited worker shows a ping RTT: %+v", ws)
		}
		if err := r.stop(); !errors.Is(err, ErrWorkersFailed) {
			t.Fatalf("Run returned %v, want ErrWorkersFailed (the only worker was killed)", err)
		}
	})
	t.Run("replacement", func(t *testing.T) {
		t.Parallel()
		cfg := testConfig(t, "stop-second", 1)
		cfg.Env = append(cfg.Env, envFile+"="+tempFile(t, "marker"))
		r := startSupervisor(t, cfg)
		r.waitReady()
		victim := r.waitStatus("a ping RTT", hasRTT).Workers[0].PID
		kill(t, victim, syscall.SIGKILL)
		ws := r.waitStatus("a replacement", func(st Status) bool {
			return st.Workers[0].PID != victim && st.Workers[0].PID != 0
		}).Workers[0]
		if ws.LastPingRTTUS != 0 {
			t.Errorf("a replacement that never answered a ping shows an RTT: %+v", ws)
		}
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
	})
}
