package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/supervisor"
)

// The supervisor's side of systemd's service protocol (Type=notify and
// Type=notify-reload), when NOTIFY_SOCKET is set:
//
//   - READY=1 once the service is up: every program has been ready
//     (each of its workers ready at least once, which for a program
//     with `after` implies its dependencies were ready first) or has
//     ended by itself. A program whose workers never become ready keeps
//     the service "activating" until systemd's TimeoutStartSec fails it,
//     as a daemon that never finishes starting would.
//   - STATUS="N/M workers ready, R restarts", kept current.
//   - RELOADING=1 with MONOTONIC_USEC at the start of a reload (SIGHUP,
//     or `reload` on the socket), READY=1 at its end, failed or not.
//   - STOPPING=1 when the stop begins.
//   - WATCHDOG=1 every half WATCHDOG_USEC (when WATCHDOG_PID is unset or
//     ours), but only after the group's loop and every program's
//     supervision loop answered a Ping within that half: a wedged
//     supervisor stops feeding the watchdog, and systemd restarts it.
//
// One goroutine (run) owns all of it; reload and stop reach it through
// channels.

// notifySource is what the notifier watches: a supervisor.Group.
type notifySource interface {
	Changed() <-chan struct{}
	Ping(ctx context.Context) error
	Status() []supervisor.ProgramStatus
	Stats() supervisor.Stats
}

// statusEvery is how often STATUS= is brought up to date.
const statusEvery = time.Second

type notifier struct {
	log      hclog.Logger
	src      notifySource
	send     func(state string) error
	watchdog time.Duration // 0: no watchdog

	reloads chan reloadNote
	done    chan struct{} // closed when run has returned
}

// reloadNote tells run that a reload began (end false) or ended.
type reloadNote struct {
	end bool
	err error
}

// newNotifier returns the notifier for src, or nil when the process was
// not started by a service manager that listens (NOTIFY_SOCKET unset).
func newNotifier(src notifySource, log hclog.Logger) *notifier {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	wd, err := sdnotify.WatchdogInterval()
	if err != nil {
		log.Warn("ignoring the service manager's watchdog setting", "error", err)
		wd = 0
	}
	n := &notifier{
		log: log.Named("systemd"),
		src: src,
		send: func(state string) error {
			_, err := sdnotify.Send(state)
			return err
		},
		watchdog: wd,
		reloads:  make(chan reloadNote, 16),
		done:     make(chan struct{}),
	}
	n.log.Debug("notifying the service manager", "socket", os.Getenv("NOTIFY_SOCKET"), "watchdog", wd)
	return n
}

// run notifies until ctx ends, which is the stop: it then sends
// STOPPING=1 and returns.
func (n *notifier) run(ctx context.Context) {
	defer close(n.done)
	status := time.NewTicker(statusEvery)
	defer status.Stop()
	var feed <-chan time.Time
	if n.watchdog > 0 {
		t := time.NewTicker(n.watchdog / 2)
		defer t.Stop()
		feed = t.C
	}
	ready, reloading := false, 0
	var lastStatus string
	update := func() {
		up, summary := n.summary()
		if summary != lastStatus {
			lastStatus = summary
			n.notify("STATUS=" + summary)
		}
		if up && !ready && reloading == 0 {
			ready = true
			n.notify("READY=1")
			n.log.Info("told the service manager we are ready", "status", summary)
		}
	}
	for {
		changed := n.src.Changed() // before update: no change is missed
		update()
		select {
		case <-ctx.Done():
			// A run whose programs all ended by themselves at once
			// still says READY=1 before STOPPING=1.
			update()
			n.notify("STOPPING=1")
			return
		case <-changed:
		case r := <-n.reloads:
			if !r.end {
				reloading++
				n.notify("RELOADING=1\n" + sdnotify.MonotonicUSec())
				continue
			}
			reloading--
			msg := "READY=1"
			if r.err != nil {
				msg += "\nSTATUS=reload failed: " + oneLine(r.err.Error())
				lastStatus = ""
			}
			if reloading == 0 && ready {
				n.notify(msg)
			}
			update()
		case <-status.C:
			update()
		case <-feed:
			pctx, cancel := context.WithTimeout(ctx, n.watchdog/2)
			err := n.src.Ping(pctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					n.log.Error("supervision loop not answering; not feeding the watchdog", "error", err)
				}
				continue
			}
			n.notify("WATCHDOG=1")
		}
	}
}

// summary returns whether the service is up and its one-line status.
func (n *notifier) summary() (bool, string) {
	up := true
	readyWorkers, workers := 0, 0
	for _, p := range n.src.Status() {
		switch p.State {
		case supervisor.ProgramReady, supervisor.ProgramExited:
		default:
			up = false
		}
		for _, w := range p.Status.Workers {
			workers++
			if w.State == supervisor.StateReady {
				readyWorkers++
			}
		}
	}
	return up, fmt.Sprintf("%d/%d workers ready, %d restarts", readyWorkers, workers, n.src.Stats().Restarts)
}

func (n *notifier) notify(state string) {
	if err := n.send(state); err != nil {
		n.log.Warn("cannot notify the service manager", "error", err)
	}
}

// reloadBegins and reloadEnds bracket a reload. They are safe on a nil
// notifier and never block once run has returned.
func (n *notifier) reloadBegins() { n.note(reloadNote{}) }
func (n *notifier) reloadEnds(err error) {
	n.note(reloadNote{end: true, err: err})
}

func (n *notifier) note(r reloadNote) {
	if n == nil {
		return
	}
	select {
	case n.reloads <- r:
	case <-n.done:
	}
}

// oneLine returns s on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
