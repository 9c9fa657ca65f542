package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Supervisor keeps Config.Workers worker processes running, each
// connected by its own socketpair, and routes requests to them. Its
// methods are safe to call from any goroutine.
type Supervisor struct {
	cfg Config
	log hclog.Logger
	sp  spawner

	// Shared between the loop and callers or process goroutines; see
	// the comment at the top of loop.go.
	events   chan any      // process goroutines → loop
	reqs     chan any      // Reload, Ping, Signal → loop
	killCh   chan struct{} // closed by Kill
	killOnce sync.Once
	loopDone chan struct{} // closed when the loop has returned
	allUp    chan struct{} // closed once every worker has been ready once
	routes   atomic.Pointer[routes]
	rr       atomic.Uint64 // round robin
	snap     atomic.Pointer[snapshot]
	ran      atomic.Bool
	tenders  sync.WaitGroup
	stats    stats
	routed   func(*routes) // if set (by tests, before Run), sees every routing table published
	checker  checker       // runs Config.HealthCmd; tests may replace it before Run
	clients  clientLoad    // handed-over clients per worker (clients.go)

	// The loop's own (loop.go, reload.go).
	slots              []*slot
	procs              map[*proc]struct{} // every process not yet reaped, spawning ones included
	startedAt          time.Time
	nextTick           time.Time
	stopping, killed   bool
	dirty              bool // the snapshot is out of date
	crashErr           error
	upCount            int
	counts             counts
	restartAt          []time.Time // the crash-loop window
	spawnLogAt         time.Time   // when a spawn failure was last logged
	spawnLogSuppressed int         // failures not logged since
	rolling            *rolling
	reloadQueue        []chan error // Reload calls for the next rolling restart
}

// New returns a Supervisor for cfg. It starts nothing until Run.
//
// Workers inherit exactly fds 0–2, the channel on fd 3 (after the
// listeners, 3+n, with Config.Listeners; see [Listener]), whatever the
// program holds: before each fork, Run marks every other descriptor of
// the process from 3 up close-on-exec (see the package doc), so one the
// program inherited or opened without close-on-exec stays out of
// workers and their children (and, from then on, out of any child the
// program starts without naming it in exec.Cmd.ExtraFiles).
func New(cfg Config) (*Supervisor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Supervisor{
		cfg:      cfg,
		log:      cfg.Logger,
		events:   make(chan any),
		reqs:     make(chan any),
		killCh:   make(chan struct{}),
		loopDone: make(chan struct{}),
		allUp:    make(chan struct{}),
		procs:    make(map[*proc]struct{}),
	}
	sp := newRealSpawner(&s.cfg)
	if err := sp.takeListeners(); err != nil { // listeners.go
		return nil, err
	}
	s.sp = sp
	s.checker = s.runHealthCommand
	for i := range cfg.Workers {
		s.slots = append(s.slots, &slot{id: i + 1, state: StateStarting, backoff: cfg.BackoffMin})
	}
	s.setRoutes(&routes{conns: make([]channel, cfg.Workers)})
	s.dirty = true
	s.publish()
	return s, nil
}

// Run starts the workers and supervises them until ctx ends, then stops
// them all gracefully (shutdown message, SIGTERM, SIGKILL; see
// Config.StopTimeout). It returns only once every worker is reaped and
// every goroutine it started has ended: nil after a stop through ctx,
// however many workers failed or were restarted before it, and an
// error wrapping [ErrCrashLoop] when the restart limit was hit. Run may
// be called once; a second call returns [ErrAlreadyRun].
//
// While it runs, the process is a child subreaper and Run kills and
// reaps the orphans it adopts (see "Orphans" in the package doc).
func (s *Supervisor) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return ErrAlreadyRun
	}
	s.startedAt = s.now()
	s.dirty = true
	s.sp.open()
	s.log.Info("starting", "workers", s.cfg.Workers, "executable", s.cfg.Executable)
	s.loop(ctx)
	close(s.loopDone)
	s.tenders.Wait()
	s.sp.close()
	s.setRoutes(&routes{conns: make([]channel, len(s.slots)), stopping: true, stopped: true})
	if s.crashErr != nil {
		return s.crashErr
	}
	s.log.Info("stopped")
	return nil
}

// Kill makes a running stop skip the graceful steps: workers still
// running get SIGKILL at once, and so do those stopped later (by the
// stop, or by a rolling restart). Run still reaps them before
// returning. It is idempotent; the CLI calls it on a second SIGINT.
func (s *Supervisor) Kill() {
	s.killOnce.Do(func() { close(s.killCh) })
}

// Ready returns a channel closed once every worker has said hello at
// least once.
func (s *Supervisor) Ready() <-chan struct{} { return s.allUp }

// routes is the routing table the loop publishes: the channel of each
// slot's ready worker (nil where none), read without a lock by Call.
// It is never changed once published; changed is closed when a newer
// table replaces it.
type routes struct {
	conns    []channel
	stopping bool // Run began to stop: no worker will become ready
	stopped  bool // Run has returned
	changed  chan struct{}
}

// setRoutes publishes rt and wakes the callers waiting on the old one.
func (s *Supervisor) setRoutes(rt *routes) {
	rt.changed = make(chan struct{})
	if s.routed != nil {
		s.routed(rt)
	}
	if old := s.routes.Swap(rt); old != nil {
		close(old.changed)
	}
}

// route makes c (nil for none) the routed channel of slot i.
//
// A channel is routed only after the snapshot that shows its slot ready
// (which every caller of route with a channel has just made dirty) is
// published: a caller that a worker has served must not then read an
// older Status, in which that worker is still starting or its slot
// still holds the process it replaced. The loop publishes again at the
// end of its step, as ever; this publish only comes first.
func (s *Supervisor) route(i int, c channel) {
	old := s.routes.Load()
	if old.conns[i] == c {
		return
	}
	if c != nil {
		s.publish()
	}
	rt := &routes{conns: slices.Clone(old.conns), stopping: old.stopping}
	rt.conns[i] = c
	s.setRoutes(rt)
}

// unroute stops routing requests to p, if they were.
func (s *Supervisor) unroute(p *proc) {
	if p.conn != nil && s.routes.Load().conns[p.sl.id-1] == p.conn {
		s.route(p.sl.id-1, nil)
	}
}

// routesStopping publishes an empty table for a stopping supervisor.
func (s *Supervisor) routesStopping() {
	s.setRoutes(&routes{conns: make([]channel, len(s.slots)), stopping: true})
}

// pick returns a ready worker's channel, round robin, or nil. It passes
// over channels in skip and those that have closed but whose slot the
// loop has not updated yet.
func (rt *routes) pick(rr *atomic.Uint64, skip []channel) channel {
	n := uint64(len(rt.conns))
	start := rr.Add(1)
	for i := range n {
		if c := rt.conns[(start+i)%n]; c != nil && c.Err() == nil && !slices.Contains(skip, c) {
			return c
		}
	}
	return nil
}

// Call sends a request to one ready worker, chosen round robin, and
// returns its reply. When no worker is ready, Call waits for one until
// ctx ends ([ErrNoWorker]) or Run stops ([ErrNotRunning]). Ping, echo
// and status requests that fail because their worker went away (a
// restart, a rolling restart) are retried on another worker, so callers
// do not see restarts. The routing takes no lock.
func (s *Supervisor) Call(ctx context.Context, t wire.Type, payload, dst []byte) ([]byte, error) {
	retry := t == wire.TypePing || t == wire.TypeEcho || t == wire.TypeStatus
	var failed []channel // workers that went away under this call
	for attempt := 0; ; attempt++ {
		rt := s.routes.Load()
		if rt.stopped {
			return nil, ErrNotRunning
		}
		c := rt.pick(&s.rr, failed)
		if c == nil {
			if rt.stopping {
				return nil, ErrNotRunning
			}
			select {
			case <-rt.changed:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %w", ErrNoWorker, ctx.Err())
			}
		}
		reply, err := c.Call(ctx, t, payload, dst)
		if err == nil || !retry || ctx.Err() != nil || attempt > 2*len(rt.conns) {
			return reply, err
		}
		var re *wire.RemoteError
		if !errors.Is(err, ipc.ErrClosed) && !(errors.As(err, &re) && re.Code == wire.CodeShutdown) {
			return reply, err
		}
		failed = append(failed, c)
	}
}

// Echo sends payload to a ready worker and returns its echo, read into
// dst when it is large enough.
func (s *Supervisor) Echo(ctx context.Context, payload, dst []byte) ([]byte, error) {
	return s.Call(ctx, wire.TypeEcho, payload, dst)
}

// publish publishes a new snapshot if something changed since the last.
func (s *Supervisor) publish() {
	if !s.dirty {
		return
	}
	s.dirty = false
	sn := &snapshot{
		startedAt:     s.startedAt,
		workers:       make([]WorkerStatus, len(s.slots)),
		counts:        s.counts,
		reloadsQueued: len(s.reloadQueue),
		changed:       make(chan struct{}),
	}
	for i, sl := range s.slots {
		sn.workers[i] = sl.status()
		sn.workers[i].Program = s.cfg.Name
	}
	if old := s.snap.Swap(sn); old != nil {
		close(old.changed)
	}
}

// Status returns a snapshot of the supervisor and every worker: the
// one the loop published last, taken between two of its steps.
func (s *Supervisor) Status() Status { return s.statusOf(s.snap.Load()) }

// statusOf returns the Status of snapshot sn.
func (s *Supervisor) statusOf(sn *snapshot) Status {
	st := Status{Name: s.cfg.Name, PID: os.Getpid(), StartedAt: sn.startedAt, Workers: slices.Clone(sn.workers)}
	if !sn.startedAt.IsZero() {
		st.UptimeSeconds = s.cfg.now().Sub(sn.startedAt).Seconds()
	}
	return st
}

// Stats returns the health-check and failure counters.
func (s *Supervisor) Stats() Stats { return s.stats.snapshot(s.snap.Load().counts) }
