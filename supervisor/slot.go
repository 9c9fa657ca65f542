//go:build linux

package supervisor

import (
	"sync"
	"sync/atomic"
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
)

// slot is one of the Config.Workers positions. Its goroutine (runSlot)
// owns the process in it; other goroutines read cur for routing and the
// fields under mu for status.
type slot struct {
	id       int
	cur      atomic.Pointer[process] // the ready process, or nil
	replace  chan *handover          // rolling restart hand-overs
	wasReady bool                    // owned by the slot goroutine

	// Attempts to start a worker that the supervisor's own shortage
	// defeated since the last start, and the next retry step. Owned by
	// the slot goroutine.
	spawnFailures int
	spawnRetry    time.Duration

	mu        sync.Mutex
	state     State
	pid       int
	since     time.Time
	restarts  int
	lastExit  string
	lastRTT   time.Duration // only in a process's probes record (see process.probes)
	nextStart time.Time
}

// handover gives a slot a freshly started replacement for its worker.
type handover struct {
	p     *process
	ready time.Time
	done  chan struct{} // closed once the old worker is reaped
}

func (sl *slot) set(f func(*slot)) {
	sl.mu.Lock()
	f(sl)
	sl.mu.Unlock()
}

// WorkerStatus describes one worker slot. Its JSON form is part of the
// documented `supervisor status --json` output.
type WorkerStatus struct {
	ID            int        `json:"id"`
	PID           int        `json:"pid"`              // 0 when no process runs
	State         State      `json:"state"`            //
	Since         time.Time  `json:"since"`            // when the state began
	Restarts      int        `json:"restarts"`         // restarts of this slot so far
	LastPingRTTUS float64    `json:"last_ping_rtt_us"` // 0 before the first pong
	LastExit      string     `json:"last_exit,omitempty"`
	NextStart     *time.Time `json:"next_start,omitempty"` // while backing off
}

// Status is a snapshot of a supervisor.
type Status struct {
	PID           int            `json:"pid"`
	StartedAt     time.Time      `json:"started_at"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Workers       []WorkerStatus `json:"workers"`
}

func (sl *slot) status() WorkerStatus {
	// The RTT is the ready process's own: none for a slot whose worker
	// is starting, stopping or gone.
	var rtt time.Duration
	if p := sl.cur.Load(); p != nil {
		p.probes.mu.Lock()
		rtt = p.probes.lastRTT
		p.probes.mu.Unlock()
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	ws := WorkerStatus{
		ID:            sl.id,
		PID:           sl.pid,
		State:         sl.state,
		Since:         sl.since,
		Restarts:      sl.restarts,
		LastPingRTTUS: float64(rtt.Nanoseconds()) / 1e3,
		LastExit:      sl.lastExit,
	}
	if sl.state == StateBackoff && !sl.nextStart.IsZero() {
		t := sl.nextStart
		ws.NextStart = &t
	}
	return ws
}
