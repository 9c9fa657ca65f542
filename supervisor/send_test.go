//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestSendConveniences: Send goes to some worker, SendTo to the one
// named (waiting while it restarts), Broadcast to every ready worker,
// and Watch reports the state changes in between, none missed.
func TestSendConveniences(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "whoami", 3)
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 10*time.Millisecond
	r := startSupervisor(t, cfg)
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	reply, err := r.s.Send(ctx, []byte("hi"))
	if err != nil || len(reply) < 4 || string(reply[1:]) != ":hi" {
		t.Fatalf("Send: %q, %v", reply, err)
	}
	for id := 1; id <= 3; id++ {
		if reply, err := r.s.SendTo(ctx, id, []byte("x")); err != nil || string(reply) != fmt.Sprintf("%d:x", id) {
			t.Errorf("SendTo(%d): %q, %v", id, reply, err)
		}
	}
	if _, err := r.s.SendTo(ctx, 4, nil); err == nil {
		t.Error("SendTo(4) of 3 workers succeeded")
	}
	replies := r.s.Broadcast(ctx, []byte("all"))
	var got []string
	for _, rp := range replies {
		if rp.Err != nil {
			t.Errorf("Broadcast: worker %d: %v", rp.Worker, rp.Err)
		}
		got = append(got, string(rp.Reply))
	}
	if !slices.Equal(got, []string{"1:all", "2:all", "3:all"}) {
		t.Errorf("Broadcast replies %q", got)
	}

	// Kill worker 2: Watch sees it leave the ready state and come back,
	// and SendTo(2) waits for the new one instead of failing.
	st, changed := r.s.Watch()
	victim := st.Workers[1].PID
	syscall.Kill(victim, syscall.SIGKILL)
	for deadline := time.After(time.Minute); ; {
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no state change seen; status %+v", r.s.Status())
		}
		st, changed = r.s.Watch()
		if w := st.Workers[1]; w.State == StateReady && w.PID != victim {
			break // each change woke us; the last one is the new worker, ready
		}
	}
	if reply, err := r.s.SendTo(ctx, 2, []byte("back")); err != nil || string(reply) != "2:back" {
		t.Errorf("SendTo(2) after the restart: %q, %v", reply, err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.SendTo(ctx, 1, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("SendTo after Run: %v, want ErrNotRunning", err)
	}
}
