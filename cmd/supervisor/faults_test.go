//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// TestRunSIGHUPUnderTraffic: clients echoing through the front door
// while SIGHUP replaces every worker see no failed request.
func TestRunSIGHUPUnderTraffic(t *testing.T) {
	t.Parallel()
	run, sock, before := startRun(t, 3, "--echo-interval", "0", "--ping-interval", "100ms")

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg       sync.WaitGroup
		ok, bad  atomic.Int64
		failures = make(chan error, 8)
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := ipc.Dial(ctx, sock, ipc.ConnConfig{})
			if err != nil {
				failures <- err
				return
			}
			defer c.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for ctx.Err() == nil {
				p := make([]byte, 1+rng.IntN(64<<10))
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				got, err := c.Echo(rctx, p, nil)
				rcancel()
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					bad.Add(1)
					select {
					case failures <- err:
					default:
					}
				case !bytes.Equal(got, p):
					bad.Add(1)
					select {
					case failures <- fmt.Errorf("echo of %d bytes came back different", len(p)):
					default:
					}
				default:
					ok.Add(1)
				}
			}
		}()
	}
	poll(t, "traffic to flow", func() bool { return ok.Load() > 50 }, func() string { return run.Output() })
	if err := run.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var after []int
	poll(t, "every worker to be replaced", func() bool {
		after = readyWorkers(t, sock, 3)
		for _, pid := range after {
			if slices.Contains(before, pid) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("before %v, now %v\n%s", before, after, run.Output()) })
	mark := ok.Load()
	poll(t, "traffic after the restart", func() bool { return ok.Load() > mark+50 }, func() string { return run.Output() })
	cancel()
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("failed request during the rolling restart: %v", err)
	}
	if bad.Load() != 0 {
		t.Fatalf("%d of %d requests failed during the rolling restart", bad.Load(), bad.Load()+ok.Load())
	}
	if code := run.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d, want 0\n%s", code, run.Output())
	}
	t.Logf("%d echoes through the front door, none failed; workers %v replaced by %v", ok.Load(), before, after)
}

// TestRunCrashLoopExits1: more than --max-restarts restarts within the
// window stop everything, log one line saying why and exit 1.
func TestRunCrashLoopExits1(t *testing.T) {
	t.Parallel()
	run, sock, _ := startRun(t, 1, "--echo-interval", "0",
		"--max-restarts", "2", "--restart-window", "1m", "--log-level", "warn")
	var killed []int
	for range 3 {
		var pid int
		poll(t, "a new worker", func() bool {
			if run.Exited() {
				return true
			}
			pids := readyWorkers(t, sock, 1)
			pid = pids[0]
			return !slices.Contains(killed, pid)
		}, run.Output)
		if run.Exited() {
			break
		}
		syscall.Kill(pid, syscall.SIGKILL)
		killed = append(killed, pid)
	}
	select {
	case <-run.Done():
	case <-time.After(cliWait):
		t.Fatalf("run did not give up after 3 crashes\n%s", run.Output())
	}
	if code := run.ExitCode(); code != exitFail {
		t.Errorf("run exited %d after a crash loop, want 1\n%s", code, run.Output())
	}
	if n := strings.Count(run.Stderr.String(), "giving up"); n != 1 || !strings.Contains(run.Stderr.String(), "more than 2 restarts within 1m0s") {
		t.Errorf("want one line giving up with the reason, got %d\n%s", n, run.Output())
	}
	if !gone(sock) {
		t.Error("socket left behind after the crash loop")
	}
	for _, pid := range killed {
		if !processGone(pid) {
			t.Errorf("worker %d still there", pid)
		}
	}
}

// TestRunSecondSignalKills: SIGINT starts a graceful stop that stopped
// (SIGSTOP) workers cannot take part in; a second SIGINT kills them at
// once instead of after --stop-timeout.
func TestRunSecondSignalKills(t *testing.T) {
	t.Parallel()
	run, _, pids := startRun(t, 2, "--echo-interval", "0", "--stop-timeout", "1m", "--ping-misses", "1000")
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	defer func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	run.Cmd.Process.Signal(syscall.SIGINT)
	poll(t, "the stop to begin", func() bool { return strings.Contains(run.Stderr.String(), "signal again to kill") }, run.Output)
	start := time.Now()
	code := run.stop(t, syscall.SIGINT)
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("second SIGINT took %v to end the run (stop timeout 1m)", el)
	}
	if code != exitOK {
		t.Errorf("run exited %d, want 0\n%s", code, run.Output())
	}
	for _, pid := range pids {
		if !processGone(pid) {
			t.Errorf("worker %d survived", pid)
		}
	}
}
