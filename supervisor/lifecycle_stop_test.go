//go:build linux

package supervisor

import (
	"syscall"
	"testing"
	"time"
)

// TestStopSignalWithTheStopIsNoFailure: systemd's default KillMode
// sends SIGTERM to every process of the service at once, so a worker
// may die of it just before the supervisor's own stop begins. That is a
// stop, not a failure: the worker is not restarted, MaxRestarts is not
// consumed, and Run returns nil, even though a worker was restarted
// earlier.
func TestStopSignalWithTheStopIsNoFailure(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, "echo", 1)
			cfg.MaxRestarts, cfg.RestartWindow = 1, time.Hour
			// The supervisor's stop comes once the test has seen the
			// worker's death, however slow the machine.
			cfg.stopGrace = time.Hour
			r := startSupervisor(t, cfg)
			r.waitReady()
			first := r.s.Status().Workers[0].PID
			kill(t, first, syscall.SIGKILL) // a real failure, restarted
			second := r.waitStatus("worker restarted", func(st Status) bool {
				return st.Workers[0].State == StateReady && st.Workers[0].PID != first
			}).Workers[0].PID

			kill(t, second, sig)
			r.waitStatus("the worker's death seen", func(Status) bool {
				if _, ok := r.result(); ok {
					return true
				}
				select {
				case err := <-r.done:
					r.record(err)
					return true
				default:
				}
				return len(r.logs.find("worker ended by a stop signal; waiting to see whether the supervisor stops too")) > 0
			})
			if err := r.stop(); err != nil {
				t.Fatalf("Run after a clean stop: %v", err)
			}
			st, ws := r.s.Stats(), r.s.Status().Workers[0]
			if st.Failures != 1 || st.Restarts != 1 {
				t.Errorf("stats: %+v; want only the SIGKILL counted (1 failure, 1 restart)", st)
			}
			if ws.State != StateStopped || ws.Exit != stopped(ExitReason{Kind: ExitSignal, Signal: sig}) {
				t.Errorf("worker after the stop: %+v", ws)
			}
			if n := len(r.logs.workerRecords(1, "starting")); n != 2 {
				t.Errorf("%d workers started, want 2: the one killed by %v is not restarted", n, sig)
			}
		})
	}
}

// TestStopSignalAloneIsAFailure: a worker killed by SIGTERM while the
// supervisor goes on is a failure like any other, restarted once the
// grace period for a stop has passed.
func TestStopSignalAloneIsAFailure(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "echo", 1)
	cfg.stopGrace = time.Millisecond
	r := startSupervisor(t, cfg)
	r.waitReady()
	victim := r.s.Status().Workers[0].PID
	kill(t, victim, syscall.SIGTERM)
	ws := r.waitStatus("worker restarted", func(st Status) bool {
		return st.Workers[0].State == StateReady && st.Workers[0].PID != victim
	}).Workers[0]
	if ws.Restarts != 1 || !killedBy(ws.Exit, syscall.SIGTERM) {
		t.Errorf("worker after SIGTERM: %+v", ws)
	}
	if st := r.s.Stats(); st.Failures != 1 {
		t.Errorf("stats: %+v, want 1 failure", st)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
