//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"syscall"
	"testing"
	"time"
)

// TestManyWorkersPolled: past pollAbove workers the channels wait
// through the runtime poller; supervision works the same: echoes, a
// killed worker restarted, a clean stop.
func TestManyWorkersPolled(t *testing.T) {
	t.Parallel()
	n := pollAbove + 4
	cfg := testConfig(t, "echo", n)
	cfg.PingInterval = 50 * time.Millisecond
	r := startSupervisor(t, cfg)
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := bytes.Repeat([]byte("polled "), 10000)
	for range 2 * n {
		got, err := r.s.Echo(ctx, p, nil)
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("echo: %d bytes back, %v", len(got), err)
		}
	}
	victim := r.s.Status().Workers[3].PID
	kill(t, victim, syscall.SIGKILL)
	r.waitStatus("the killed worker replaced", func(st Status) bool {
		w := st.Workers[3]
		return w.State == StateReady && w.PID != victim && w.Restarts == 1
	})
	if s := r.s.Stats(); s.PingsAnswered == 0 {
		t.Errorf("no health pings answered: %+v", s)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	checkReaped(t, victim)
}
