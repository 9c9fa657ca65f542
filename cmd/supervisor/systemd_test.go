//go:build linux

package main

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Tests of the supervisor's side of systemd's notify protocol: real
// datagrams on a real socket, read and parsed by package sdnotify (the
// receiver the supervisor gives its own workers).

// notifyListener is a service manager's notify socket for a test.
type notifyListener struct {
	sock *sdnotify.Socket
	msgs chan sdnotify.Message
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	sock, err := sdnotify.Listen(uint32(os.Geteuid()))
	if err != nil {
		t.Fatal(err)
	}
	nl := &notifyListener{sock: sock, msgs: make(chan sdnotify.Message, 1000)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := sock.Read()
			if errors.Is(err, sdnotify.ErrClosed) {
				return
			}
			if err == nil {
				nl.msgs <- m
			}
		}
	}()
	t.Cleanup(func() { sock.Close(); <-done })
	return nl
}

// next waits for a datagram that satisfies cond, returning it, and fails
// the test if none comes within cliPoll. Datagrams before it are
// returned in skipped.
func (nl *notifyListener) next(t *testing.T, what string, cond func(sdnotify.Message) bool) (m sdnotify.Message, skipped []sdnotify.Message) {
	t.Helper()
	deadline := time.After(cliPoll)
	for {
		select {
		case m := <-nl.msgs:
			if cond(m) {
				return m, skipped
			}
			skipped = append(skipped, m)
		case <-deadline:
			t.Fatalf("no %s within %v; got %+v", what, cliPoll, skipped)
		}
	}
}

// TestSystemdNotify: under a service manager (NOTIFY_SOCKET,
// WATCHDOG_USEC), run says READY=1 once its workers are ready, keeps
// STATUS= current, feeds the watchdog, brackets a SIGHUP reload with
// RELOADING=1 (and MONOTONIC_USEC) and READY=1, and says STOPPING=1 on
// SIGTERM.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	nl := listenNotify(t)
	sock := tempDir(t) + "/s"
	run := cliStartOpts(t, cliOpts{env: []string{"NOTIFY_SOCKET=" + nl.sock.Addr(), "WATCHDOG_USEC=400000"}},
		"run", "--workers", "2", "--socket", sock, "--echo-interval", "0", "--log-level", "debug")
	ready, before := nl.next(t, "READY=1", func(m sdnotify.Message) bool { return m.Ready })
	if m := lastStatus(before, ready); !strings.HasPrefix(m, "2/2 workers ready") {
		t.Errorf("status at READY=1: %q, want 2/2 workers ready", m)
	}
	// The watchdog is fed every half interval, counted, not timed.
	for i := range 3 {
		nl.next(t, "WATCHDOG=1 #"+string(rune('1'+i)), func(m sdnotify.Message) bool { return m.Watchdog })
	}
	syscall.Kill(run.PID(), syscall.SIGHUP)
	rel, _ := nl.next(t, "RELOADING=1", func(m sdnotify.Message) bool { return m.Reloading })
	if rel.MonotonicUSec == 0 {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %+v", rel)
	}
	nl.next(t, "READY=1 after the reload", func(m sdnotify.Message) bool { return m.Ready })
	syscall.Kill(run.PID(), syscall.SIGTERM)
	nl.next(t, "STOPPING=1", func(m sdnotify.Message) bool { return m.Stopping })
	if err := run.Wait(t, cliWait); err != nil {
		t.Fatalf("run: %v\n%s", err, run.Output())
	}
	// Workers must not inherit the supervisor's notify socket.
	if strings.Contains(run.Output(), "refused") {
		t.Errorf("a datagram was refused:\n%s", run.Output())
	}
}

// lastStatus returns the last STATUS= among msgs and m.
func lastStatus(msgs []sdnotify.Message, m sdnotify.Message) string {
	st := ""
	for _, x := range append(msgs, m) {
		if x.HasStatus {
			st = x.Status
		}
	}
	return st
}

// wedgeable is a notifySource whose loop can be wedged: Ping then does
// not answer.
type wedgeable struct {
	wedged atomic.Bool
	pings  atomic.Int64
}

func (w *wedgeable) Ping(ctx context.Context) error {
	w.pings.Add(1)
	if w.wedged.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (w *wedgeable) Status() []supervisor.ProgramStatus {
	return []supervisor.ProgramStatus{{Name: "p", State: supervisor.ProgramReady,
		Status: supervisor.Status{Workers: []supervisor.WorkerStatus{{ID: 1, State: supervisor.StateReady}}}}}
}

func (w *wedgeable) Stats() supervisor.Stats { return supervisor.Stats{} }

func (w *wedgeable) Changed() <-chan struct{} { return nil }

// TestSystemdWatchdogWedged: the watchdog is fed only while the
// supervision loops answer; a wedged loop stops the feeding, and it
// resumes once the loop is free.
func TestSystemdWatchdogWedged(t *testing.T) {
	t.Parallel()
	nl := listenNotify(t)
	addr := &net.UnixAddr{Name: nl.sock.Addr(), Net: "unixgram"}
	src := &wedgeable{}
	n := &notifier{
		log: hclog.NewNullLogger(),
		src: src,
		send: func(state string) error {
			c, err := net.DialUnix("unixgram", nil, addr)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(state))
			return err
		},
		watchdog: 100 * time.Millisecond,
		reloads:  make(chan reloadNote, 16),
		done:     make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	go n.run(ctx)
	defer func() { cancel(); <-n.done }()
	nl.next(t, "READY=1", func(m sdnotify.Message) bool { return m.Ready })
	for range 3 {
		nl.next(t, "WATCHDOG=1", func(m sdnotify.Message) bool { return m.Watchdog })
	}
	// Wedge the loop: after the pings under way, no more feeding while
	// several more pings go unanswered.
	src.wedged.Store(true)
	base := src.pings.Load()
	deadline := time.After(cliPoll)
	for src.pings.Load() < base+4 {
		select {
		case <-deadline:
			t.Fatal("the notifier stopped pinging the loop")
		case <-time.After(10 * time.Millisecond):
		}
	}
	drained := false
	for !drained {
		select {
		case m := <-nl.msgs:
			_ = m // datagrams sent before the wedge took hold
		default:
			drained = true
		}
	}
	for src.pings.Load() < base+7 {
		select {
		case m := <-nl.msgs:
			if m.Watchdog {
				t.Fatalf("watchdog fed while the loop was wedged (%d pings since)", src.pings.Load()-base)
			}
		case <-deadline:
			t.Fatal("the notifier stopped pinging the loop")
		case <-time.After(10 * time.Millisecond):
		}
	}
	src.wedged.Store(false)
	nl.next(t, "WATCHDOG=1 once free", func(m sdnotify.Message) bool { return m.Watchdog })
	cancel()
	nl.next(t, "STOPPING=1", func(m sdnotify.Message) bool { return m.Stopping })
}
