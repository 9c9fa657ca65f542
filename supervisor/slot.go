package supervisor

import (
	"time"
)

// State is a worker slot's state.
type State string

// Worker states, as shown by Status.
const (
	StateStarting State = "starting" // spawned, no hello yet
	StateReady    State = "ready"    // said hello; pinged and sent requests
	StateHung     State = "hung"     // missed too many pings; being killed
	StateStopping State = "stopping" // being stopped
	StateBackoff  State = "backoff"  // ended; waiting to restart
	StateExited   State = "exited"   // ended; the policy says no restart
	StateFailed   State = "failed"   // gave up: crash loop
	StateStopped  State = "stopped"  // stopped with the supervisor

	// StateReloading: a ReadyNotify worker sent RELOADING=1 and no
	// READY=1 since; it is not sent requests meanwhile.
	StateReloading State = "reloading"
)

// WorkerStatus describes one worker slot. Its JSON form is part of the
// documented `supervisor status --json` output.
type WorkerStatus struct {
	Program       string     `json:"program,omitempty"` // Config.Name
	ID            int        `json:"id"`
	PID           int        `json:"pid"`              // 0 when no process runs
	State         State      `json:"state"`            //
	Since         time.Time  `json:"since"`            // when the state began
	Restarts      int        `json:"restarts"`         // restarts of this slot so far
	LastPingRTTUS float64    `json:"last_ping_rtt_us"` // 0 before the first pong
	LastExit      string     `json:"last_exit,omitempty"`
	NextStart     *time.Time `json:"next_start,omitempty"` // while backing off

	// StatusText and Errno are what a ReadyNotify worker last sent as
	// STATUS= and ERRNO=.
	StatusText string `json:"status_text,omitempty"`
	Errno      int    `json:"errno,omitempty"`

	// Exit is how the slot's last process ended (the zero ExitReason
	// if none has); LastExit is its String form, kept for the JSON
	// output.
	Exit ExitReason `json:"-"`
}

// Status is a snapshot of a supervisor.
type Status struct {
	Name          string         `json:"name,omitempty"` // Config.Name
	PID           int            `json:"pid"`
	StartedAt     time.Time      `json:"started_at"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Workers       []WorkerStatus `json:"workers"`
}

// slot is one of the Config.Workers positions. It is the loop's: no
// other goroutine reads or writes it.
type slot struct {
	id   int
	cur  *proc // the slot's process, from spawn to reap; nil between
	repl *proc // a rolling restart's replacement, until handed over

	state    State
	since    time.Time
	pid      int
	restarts int
	exit     ExitReason
	rtt      time.Duration // the ready process's last ping round trip

	backoff   time.Duration // the next restart's backoff step
	nextStart time.Time     // when the slot starts a process again; zero: not waiting
	retrying  bool          // nextStart retries a start the supervisor's shortage defeated
	grace     *pendingEnd   // an end by a stop signal, waiting to see whether Run stops too
	wasReady  bool          // a process of the slot has been ready

	statusText string // STATUS= from the slot's process (ReadyNotify)
	errno      int    // ERRNO= likewise

	// Attempts to start a worker that the supervisor's own shortage
	// defeated since the last start, and the next retry step.
	spawnFailures int
	spawnRetry    time.Duration
}

// pendingEnd is the end of a slot's process that waits for
// Config.stopGrace to see whether it was part of a stop.
type pendingEnd struct {
	p      *proc
	reason ExitReason // if it was no stop
	status ExitReason // the process's own status: the reason if it was
	uptime time.Duration
	until  time.Time
}

// status returns the slot's WorkerStatus.
func (sl *slot) status() WorkerStatus {
	ws := WorkerStatus{
		ID:            sl.id,
		PID:           sl.pid,
		State:         sl.state,
		Since:         sl.since,
		Restarts:      sl.restarts,
		LastPingRTTUS: float64(sl.rtt.Nanoseconds()) / 1e3,
		LastExit:      sl.exit.String(),
		Exit:          sl.exit,
		StatusText:    sl.statusText,
		Errno:         sl.errno,
	}
	if sl.state == StateBackoff && !sl.nextStart.IsZero() {
		t := sl.nextStart
		ws.NextStart = &t
	}
	return ws
}

// snapshot is what the loop publishes for Status and Stats: copies,
// never changed once published. changed is closed when a newer one
// replaces it.
type snapshot struct {
	startedAt     time.Time
	workers       []WorkerStatus
	counts        counts
	reloadsQueued int // Reload calls waiting for the next rolling restart
	changed       chan struct{}
}

// counts are the loop's counters, published in each snapshot. The
// last three are not in Stats: they let tests on the fake clock see
// that the loop has run a health tick and that no probe it asked for
// is still being written.
type counts struct {
	restarts, failures, spawnFailures uint64
	ticks, probesAsked, probesDone    uint64
}
