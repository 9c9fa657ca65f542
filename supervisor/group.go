package supervisor

// Group: several named programs, each a Supervisor of its own, started
// in dependency order and stopped in reverse.
//
// Goroutines and what each owns:
//
//   - The group loop (Group.loop, run on Run's goroutine) owns every
//     member: its Program, its current Supervisor run, its state, whether
//     an operator stopped it, and the requests waiting for it (Start,
//     Stop, Restart, Replace). Nothing else reads or writes members.
//   - Each run of a program (a Supervisor) has two goroutines: one
//     running Supervisor.Run and one waiting for Supervisor.Ready; each
//     reports to the loop by event (grpReady, grpEnded, carrying the
//     *progRun) and selects on the loop's end, so none blocks on a loop
//     that has returned. Which member a run serves (run.m) is the
//     loop's: a changed program's successor run is handed to its member
//     when it is ready, and the run it replaces is retired.
//   - Callers ask the loop through Group.reqs and wait on the request's
//     own buffered answer channel; Status and Supervisor read the
//     snapshot the loop publishes after each step.
//
// The loop returns once every run it started has ended (Run waits for
// their goroutines), so no worker outlives Group.Run.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Program is a named program of a [Group].
type Program struct {
	// Name names the program (Config.Name is set to it).
	Name string
	// After names the programs that must be ready (every worker ready
	// once) before this one starts; it is stopped before them.
	After []string
	// Config configures its Supervisor. Config.Logger is ignored: the
	// program logs into the group's logger, under its name.
	Config Config
}

// ProgramState is where a program of a Group is.
type ProgramState string

// Program states, as shown by Group.Status.
const (
	ProgramWaiting  ProgramState = "waiting"  // for the programs it starts after
	ProgramStarting ProgramState = "starting" // running, not every worker ready yet
	ProgramReady    ProgramState = "ready"    // every worker has been ready once
	ProgramStopping ProgramState = "stopping" //
	ProgramStopped  ProgramState = "stopped"  // by Stop or the group's stop; Start starts it again
	ProgramExited   ProgramState = "exited"   // every worker ended for good (see Supervisor.Run)
	ProgramFailed   ProgramState = "failed"   // crash loop, or workers that ended without success
)

// ProgramStatus describes one program of a Group.
type ProgramStatus struct {
	Name   string       `json:"name"`
	State  ProgramState `json:"state"`
	After  []string     `json:"after,omitempty"`
	Error  string       `json:"error,omitempty"` // why it failed
	Status Status       `json:"status"`          // its Supervisor's; zero before its first start
	// Next is the status of the run that will replace the current one
	// once ready, after Replace changed the program's settings.
	Next *Status `json:"next,omitempty"`
}

// Diff says what Group.Replace changed.
type Diff struct {
	Added, Removed, Changed, Unchanged []string
}

// Sentinel errors of a Group.
var (
	// ErrNoProgram: no program of that name.
	ErrNoProgram = errors.New("supervisor: no such program")
	// ErrDependencyCycle: programs that start after each other.
	ErrDependencyCycle = errors.New("supervisor: dependency cycle")
)

// Group runs several named programs. Its methods are safe to call from
// any goroutine.
type Group struct {
	log      hclog.Logger
	reqs     chan any
	events   chan any
	loopDone chan struct{}
	snap     atomic.Pointer[groupSnap]
	ran      atomic.Bool
	runs     sync.WaitGroup // the goroutines of every Supervisor run
	killCh   chan struct{}  // closed by Kill
	killOnce sync.Once

	pastMu sync.Mutex
	past   Stats // of the runs that have ended

	// The loop's own.
	members  []*member             // in Program order
	retired  map[*progRun]struct{} // runs replaced by a successor, not yet ended
	killed   bool                  // Kill was called: every run, and every later one, skips its graceful stop
	stopping bool
	err      error
}

type member struct {
	prog    Program
	cur     *progRun // the current run; nil when none
	next    *progRun // Replace: the changed program's run, until it is ready
	state   ProgramState
	held    bool // stopped by Stop: stays stopped until Start
	removed bool // removed by Replace: dropped once stopped
	err     error
	waiters []chan error // Stop and Restart calls waiting for the run to end
}

// progRun is one Supervisor run of a program.
type progRun struct {
	m       *member // the member it serves (the loop's)
	prog    Program
	sup     *Supervisor
	cancel  context.CancelFunc
	retired bool // replaced by a successor: being stopped, serves nobody
}

type groupSnap struct {
	progs       []ProgramStatus
	sups        map[string]*Supervisor
	nexts       map[string]*Supervisor
	done        bool
	stopTimeout time.Duration // the longest StopTimeout of the programs
	changed     chan struct{} // closed when a newer snapshot replaces this one
}

// Group events and requests.
type (
	grpReady struct{ r *progRun }
	grpEnded struct {
		r   *progRun
		err error
	}
	grpReq struct {
		op   string // "start", "stop", "restart", "reload"
		name string
		res  chan error
	}
	grpReplace struct {
		progs []Program
		res   chan replaceRes
	}
	replaceRes struct {
		d   Diff
		err error
	}
)

// NewGroup checks programs (unique names, known After names, no cycle,
// each Config valid) and returns a Group that runs them. log (nil:
// discard) gets the group's lines and, under each program's name, its
// supervisor's and workers'.
func NewGroup(programs []Program, log hclog.Logger) (*Group, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := checkPrograms(programs); err != nil {
		return nil, err
	}
	g := &Group{log: log, reqs: make(chan any), events: make(chan any), loopDone: make(chan struct{}),
		killCh: make(chan struct{}), retired: map[*progRun]struct{}{}}
	for _, p := range programs {
		g.members = append(g.members, &member{prog: p, state: ProgramWaiting})
	}
	g.publish()
	return g, nil
}

// checkPrograms validates a set of programs.
func checkPrograms(programs []Program) error {
	if len(programs) == 0 {
		return errors.New("supervisor: no program")
	}
	names := map[string]Program{}
	for _, p := range programs {
		if p.Name == "" {
			return errors.New("supervisor: a program without a name")
		}
		if _, dup := names[p.Name]; dup {
			return fmt.Errorf("supervisor: two programs named %q", p.Name)
		}
		names[p.Name] = p
		cfg := p.Config
		cfg.Logger = nil
		if _, err := cfg.withDefaults(); err != nil {
			return fmt.Errorf("program %s: %w", p.Name, err)
		}
	}
	for _, p := range programs {
		for _, a := range p.After {
			if _, ok := names[a]; !ok {
				return fmt.Errorf("%w: program %s starts after %q", ErrNoProgram, p.Name, a)
			}
		}
	}
	// Depth-first search for a cycle, reported as a path.
	const (
		unseen = iota
		onPath
		done
	)
	mark := map[string]int{}
	var path []string
	var visit func(string) error
	visit = func(n string) error {
		switch mark[n] {
		case onPath:
			i := slices.Index(path, n)
			return fmt.Errorf("%w: %s", ErrDependencyCycle, strings.Join(append(slices.Clone(path[i:]), n), " -> "))
		case done:
			return nil
		}
		mark[n] = onPath
		path = append(path, n)
		for _, a := range names[n].After {
			if err := visit(a); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		mark[n] = done
		return nil
	}
	for _, p := range programs {
		if err := visit(p.Name); err != nil {
			return err
		}
	}
	return nil
}

// Run starts the programs, each once those it starts after are ready,
// and supervises them until ctx ends; then it stops them in reverse
// order (a program only once every program that starts after it has
// stopped). It also returns, having stopped the rest, when a program
// hits a crash loop (an error wrapping ErrCrashLoop), and when every
// program has ended by itself (nil if every worker exited 0, else an
// error wrapping ErrWorkersFailed); a program waiting to start after
// one that has ended by itself has failed, since it can never start.
// It returns once every worker is reaped. Run may be called once.
func (g *Group) Run(ctx context.Context) error {
	if g.ran.Swap(true) {
		return ErrAlreadyRun
	}
	g.loop(ctx)
	close(g.loopDone)
	g.runs.Wait()
	old := g.snap.Load()
	sn := *old
	sn.done, sn.changed = true, make(chan struct{})
	g.snap.Store(&sn)
	close(old.changed)
	return g.err
}

func (g *Group) loop(ctx context.Context) {
	done, kill := ctx.Done(), g.killCh
	g.startReady()
	for {
		g.publish()
		if g.finished() {
			return
		}
		select {
		case ev := <-g.events:
			switch ev := ev.(type) {
			case grpReady:
				g.ready(ev.r)
			case grpEnded:
				g.ended(ev.r, ev.err)
			}
		case r := <-g.reqs:
			switch r := r.(type) {
			case grpReq:
				g.request(r)
			case grpReplace:
				d, err := g.replace(r.progs)
				r.res <- replaceRes{d, err}
			}
		case <-done:
			done = nil
			g.log.Info("stopping every program")
			g.beginStop()
		case <-kill:
			kill = nil
			g.killAll()
		}
	}
}

// Kill makes every run of every program (current, incoming and
// retiring ones, and those started later) skip the graceful steps of
// its stop: see Supervisor.Kill. It does not itself stop anything; it
// is idempotent and safe from any goroutine.
func (g *Group) Kill() { g.killOnce.Do(func() { close(g.killCh) }) }

// killAll applies Kill to every run there is.
func (g *Group) killAll() {
	g.killed = true
	for r := range g.retired {
		r.sup.Kill()
	}
	for _, m := range g.members {
		for _, r := range []*progRun{m.cur, m.next} {
			if r != nil {
				r.sup.Kill()
			}
		}
	}
}

// finished reports whether the loop is done: stopping and no run left,
// or every program ended by itself.
func (g *Group) finished() bool {
	running, ended, failed := len(g.retired), 0, 0
	for _, m := range g.members {
		switch {
		case m.cur != nil || m.next != nil:
			running++
		case m.state == ProgramExited:
			ended++
		case m.state == ProgramFailed:
			ended++
			failed++
		}
	}
	if g.stopping {
		return running == 0
	}
	if running == 0 && ended == len(g.members) {
		if failed > 0 && g.err == nil {
			g.err = fmt.Errorf("%w: %d of %d programs", ErrWorkersFailed, failed, len(g.members))
		}
		g.log.Info("every program has ended; nothing left to supervise")
		return true
	}
	return false
}

// startReady starts every program that may start: not running, not
// held, not ended, and every program it starts after is ready.
func (g *Group) startReady() {
	if g.stopping {
		return
	}
	g.failBlocked()
	for _, m := range g.members {
		if m.cur != nil || m.next != nil || m.held || m.removed || m.state == ProgramStopping ||
			m.state == ProgramExited || m.state == ProgramFailed || g.shadowed(m) {
			continue
		}
		if g.depsReady(m) {
			g.launch(m)
		} else {
			m.state = ProgramWaiting
		}
	}
}

// failBlocked fails each program that waits to start after a program
// that has ended by itself (exited or failed, and not running): it can
// never start, and without this the group would wait for it with
// nothing left running rather than end.
func (g *Group) failBlocked() {
	for changed := true; changed; {
		changed = false
		for _, m := range g.members {
			if m.cur != nil || m.next != nil || m.held || m.removed || m.state == ProgramExited || m.state == ProgramFailed {
				continue
			}
			for _, a := range m.prog.After {
				if d := g.member(a); d != nil && d.cur == nil && (d.state == ProgramExited || d.state == ProgramFailed) {
					m.state, m.err = ProgramFailed, fmt.Errorf("supervisor: cannot start: program %s, which it starts after, has ended", a)
					g.log.Error("program cannot start", "program", m.prog.Name, "error", m.err)
					changed = true
					break
				}
			}
		}
	}
}

func (g *Group) depsReady(m *member) bool {
	for _, a := range m.prog.After {
		if d := g.member(a); d == nil || d.state != ProgramReady {
			return false
		}
	}
	return true
}

// member returns the program called name, nil if none (a removed one
// that is still stopping does not count).
func (g *Group) member(name string) *member {
	for _, m := range g.members {
		if m.prog.Name == name && !m.removed {
			return m
		}
	}
	return nil
}

// shadowed reports whether a removed program of m's name is still
// stopping: m, added again, waits for it, so two instances never run
// at once.
func (g *Group) shadowed(m *member) bool {
	for _, o := range g.members {
		if o != m && o.removed && o.prog.Name == m.prog.Name && (o.cur != nil || o.next != nil) {
			return true
		}
	}
	return false
}

// launch starts a run of m's program as its current run.
func (g *Group) launch(m *member) {
	r, err := g.start(m, m.prog)
	if err != nil {
		m.state, m.err = ProgramFailed, err
		g.log.Error("cannot start program", "program", m.prog.Name, "error", err)
		return
	}
	m.cur, m.state, m.err = r, ProgramStarting, nil
}

// start starts a run of prog for m.
func (g *Group) start(m *member, prog Program) (*progRun, error) {
	cfg := prog.Config
	cfg.Name = prog.Name
	cfg.Logger = g.log.With("program", prog.Name)
	sup, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if g.killed {
		sup.Kill()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &progRun{m: m, prog: prog, sup: sup, cancel: cancel}
	g.log.Info("starting program", "program", prog.Name, "workers", sup.cfg.Workers)
	ended := make(chan struct{})
	g.runs.Add(2)
	go func() {
		defer g.runs.Done()
		err := sup.Run(ctx)
		close(ended)
		g.send(grpEnded{r, err})
	}()
	go func() {
		defer g.runs.Done()
		select {
		case <-sup.Ready():
			g.send(grpReady{r})
		case <-ended:
		}
	}()
	return r, nil
}

func (g *Group) send(ev any) {
	select {
	case g.events <- ev:
	case <-g.loopDone:
	}
}

// ready: every worker of run r has been ready once.
func (g *Group) ready(r *progRun) {
	m := r.m
	switch {
	case r.retired, m.state == ProgramStopping:
	case r == m.next:
		// A changed program's new run is ready: it takes over, and the
		// run it replaces stops.
		old := m.cur
		m.cur, m.next, m.prog, m.state = r, nil, r.prog, ProgramReady
		g.log.Info("changed program ready; stopping its previous run", "program", m.prog.Name)
		if old != nil {
			g.retire(old)
		}
		g.startReady()
	case r == m.cur && m.state == ProgramStarting:
		m.state = ProgramReady
		g.log.Info("program ready", "program", m.prog.Name)
		g.startReady()
	}
}

// retire stops r, which no member serves any more.
func (g *Group) retire(r *progRun) {
	r.retired = true
	g.retired[r] = struct{}{}
	r.cancel()
}

// ended: run r returned err.
func (g *Group) ended(r *progRun, err error) {
	g.pastMu.Lock()
	g.past = addStats(g.past, r.sup.Stats())
	m := r.m
	wasNext := r == m.next
	switch {
	case r.retired:
		delete(g.retired, r)
	case wasNext:
		m.next = nil
	case r == m.cur:
		m.cur = nil
	}
	g.publish() // without r: Stats counts it once
	g.pastMu.Unlock()
	rolling := m.state != ProgramStopping && !g.stopping
	switch {
	case r.retired:
		g.log.Info("previous run of a changed program stopped", "program", r.prog.Name)
	case !wasNext && m.next != nil && rolling && !errors.Is(err, ErrCrashLoop):
		// The current run ended by itself while its successor starts:
		// the successor, with the new settings, is the program now.
		g.log.Warn("program's current run ended during a roll; its new run goes on", "program", r.prog.Name, "error", err)
		m.state = ProgramStarting
	case !wasNext && m.next != nil && rolling:
		m.state, m.err = ProgramFailed, err
		g.log.Error("program failed; stopping every program", "program", m.prog.Name, "error", err)
		if g.err == nil {
			g.err = fmt.Errorf("program %s: %w", m.prog.Name, err)
		}
		g.beginStop()
	case wasNext && m.cur != nil && m.state != ProgramStopping:
		// A changed program's new run ended before it was ready: the
		// current run goes on with the previous settings.
		g.log.Error("changed program failed to start; its previous run goes on", "program", r.prog.Name, "error", err)
	default:
		g.curEnded(m, err)
	}
	if g.stopping {
		g.stopNext()
		return
	}
	g.startReady()
}

// curEnded: m's current run (or its successor, in a stop) returned err.
func (g *Group) curEnded(m *member, err error) {
	if m.cur != nil || m.next != nil {
		return // the other run of a stopping member is still ending
	}
	asked := m.state == ProgramStopping
	switch {
	case errors.Is(err, ErrCrashLoop):
		m.state, m.err = ProgramFailed, err
		g.log.Error("program failed; stopping every program", "program", m.prog.Name, "error", err)
		if g.err == nil {
			g.err = fmt.Errorf("program %s: %w", m.prog.Name, err)
		}
		g.beginStop()
	case asked || g.stopping:
		m.state = ProgramStopped
		g.log.Info("program stopped", "program", m.prog.Name)
	case err != nil:
		m.state, m.err = ProgramFailed, err
		g.log.Warn("program ended", "program", m.prog.Name, "error", err)
	default:
		m.state = ProgramExited
		g.log.Info("program ended", "program", m.prog.Name)
	}
	if m.removed {
		g.members = slices.DeleteFunc(g.members, func(x *member) bool { return x == m })
	}
	g.publish() // the callers answered below see the new state
	for _, w := range m.waiters {
		w <- nil
	}
	m.waiters = nil
}

// beginStop stops every program, dependents first.
func (g *Group) beginStop() {
	if g.stopping {
		return
	}
	g.stopping = true
	for _, m := range g.members {
		if m.cur == nil && m.next == nil && m.state != ProgramExited && m.state != ProgramFailed {
			m.state = ProgramStopped
		}
	}
	g.stopNext()
}

// stopNext stops each running program that no running program starts
// after.
func (g *Group) stopNext() {
	for _, m := range g.members {
		if m.cur == nil && m.next == nil || m.state == ProgramStopping {
			continue
		}
		if !g.needed(m) {
			g.stop(m)
		}
	}
}

// needed reports whether a running program starts after m.
func (g *Group) needed(m *member) bool {
	for _, o := range g.members {
		if (o.cur != nil || o.next != nil) && slices.Contains(o.prog.After, m.prog.Name) {
			return true
		}
	}
	return false
}

// stop ends m's runs.
func (g *Group) stop(m *member) {
	if m.cur == nil && m.next == nil || m.state == ProgramStopping {
		return
	}
	m.state = ProgramStopping
	g.log.Info("stopping program", "program", m.prog.Name)
	for _, r := range []*progRun{m.cur, m.next} {
		if r != nil {
			r.cancel()
		}
	}
}

// request applies Start, Stop, Restart or Reload.
func (g *Group) request(r grpReq) {
	if r.op == "ping" {
		r.res <- nil
		return
	}
	if g.stopping {
		r.res <- ErrNotRunning
		return
	}
	var targets []*member
	if r.name == "" && r.op == "reload" {
		targets = g.members
	} else if m := g.member(r.name); m != nil && !m.removed {
		targets = []*member{m}
	} else {
		r.res <- fmt.Errorf("%w: %q", ErrNoProgram, r.name)
		return
	}
	switch r.op {
	case "start":
		m := targets[0]
		m.held = false
		if m.state == ProgramExited || m.state == ProgramFailed || m.state == ProgramStopped {
			m.state = ProgramWaiting
		}
		g.startReady()
		g.publish()
		r.res <- nil
	case "stop", "restart":
		m := targets[0]
		m.held = r.op == "stop"
		if m.next != nil {
			m.prog = m.next.prog // the latest settings, for the start that follows
		}
		if m.cur == nil && m.next == nil {
			if r.op == "stop" {
				m.state = ProgramStopped
			} else {
				m.state = ProgramWaiting
				g.startReady()
			}
			g.publish()
			r.res <- nil
			return
		}
		m.waiters = append(m.waiters, r.res)
		g.stop(m)
	case "reload":
		var sups []*Supervisor
		for _, m := range targets {
			if m.cur != nil {
				sups = append(sups, m.cur.sup)
			}
		}
		// Rolling restarts take a while: run them off the loop, which
		// answers for itself once they are done.
		g.runs.Add(1)
		go func() {
			defer g.runs.Done()
			var errs []error
			for _, s := range sups {
				if err := s.Reload(context.Background()); err != nil && !errors.Is(err, ErrNotRunning) {
					errs = append(errs, fmt.Errorf("program %s: %w", s.cfg.Name, err))
				}
			}
			r.res <- errors.Join(errs...)
		}()
	default:
		r.res <- fmt.Errorf("supervisor: unknown group operation %q", r.op)
	}
}

// replace makes progs the group's programs: added ones start, removed
// ones stop, changed ones are stopped and started with their new
// settings, unchanged ones are left alone.
func (g *Group) replace(progs []Program) (Diff, error) {
	var d Diff
	if g.stopping {
		return d, ErrNotRunning
	}
	if err := checkPrograms(progs); err != nil {
		return d, err
	}
	keep := map[string]bool{}
	var members []*member
	for _, p := range progs {
		keep[p.Name] = true
		m := g.member(p.Name)
		switch {
		case m == nil || m.removed:
			d.Added = append(d.Added, p.Name)
			members = append(members, &member{prog: p, state: ProgramWaiting})
			continue
		case sameProgram(m.prog, p):
			d.Unchanged = append(d.Unchanged, p.Name)
		default:
			d.Changed = append(d.Changed, p.Name)
			switch {
			case (m.cur != nil || m.next != nil) && m.state != ProgramStopping:
				// Blue/green: the new run starts beside the current one
				// and takes over once ready (ready above); a successor of
				// an earlier change that is not ready yet is dropped.
				if m.next != nil {
					g.retire(m.next)
					m.next = nil
				}
				r, err := g.start(m, p)
				if err != nil {
					g.log.Error("changed program cannot start; its previous run goes on", "program", p.Name, "error", err)
				} else {
					m.next = r
				}
			case m.cur != nil || m.next != nil:
				m.prog = p // stopping: starts with the new settings if started again
			default:
				m.prog = p
				if m.state == ProgramExited || m.state == ProgramFailed {
					m.state = ProgramWaiting
				}
			}
		}
		members = append(members, m)
	}
	for _, m := range g.members {
		if m.removed {
			// Removed by an earlier Replace and still stopping: kept
			// until its runs end (an added program of its name waits).
			if m.cur != nil || m.next != nil {
				members = append(members, m)
			}
			continue
		}
		if keep[m.prog.Name] {
			continue
		}
		d.Removed = append(d.Removed, m.prog.Name)
		if m.cur != nil || m.next != nil {
			m.removed = true
			members = append(members, m) // until it has stopped
			g.stop(m)
		}
	}
	g.members = members
	g.log.Info("programs replaced", "added", d.Added, "removed", d.Removed, "changed", d.Changed, "unchanged", len(d.Unchanged))
	g.startReady()
	return d, nil
}

// sameProgram reports whether a and b configure the same program,
// loggers and handlers aside.
func sameProgram(a, b Program) bool {
	strip := func(p Program) Program {
		p.Config.Logger, p.Config.Handler = nil, nil
		p.Config.now, p.Config.at = nil, nil
		return p
	}
	a, b = strip(a), strip(b)
	return reflect.DeepEqual(a, b)
}

// publish publishes the loop's view for Status and Supervisor.
func (g *Group) publish() {
	sn := &groupSnap{sups: map[string]*Supervisor{}, nexts: map[string]*Supervisor{}, changed: make(chan struct{})}
	for _, m := range g.members {
		ps := ProgramStatus{Name: m.prog.Name, State: m.state, After: m.prog.After}
		if m.err != nil {
			ps.Error = m.err.Error()
		}
		sn.stopTimeout = max(sn.stopTimeout, m.prog.Config.StopTimeout, DefaultStopTimeout)
		sn.progs = append(sn.progs, ps)
		if m.removed {
			continue // stopping: not routed to, and its name may be taken again
		}
		if m.cur != nil {
			sn.sups[m.prog.Name] = m.cur.sup
		}
		if m.next != nil {
			sn.nexts[m.prog.Name] = m.next.sup
			sn.stopTimeout = max(sn.stopTimeout, m.next.prog.Config.StopTimeout)
		}
	}
	if old := g.snap.Swap(sn); old != nil {
		close(old.changed)
	}
}

// Changed returns a channel closed when the programs' states next
// change (one starts, becomes ready, stops, ends, is added or removed).
// Worker-level changes are not included: see each program's
// Supervisor.Watch.
func (g *Group) Changed() <-chan struct{} { return g.snap.Load().changed }

// Await waits until the program name runs and returns its current
// Supervisor; ErrNotRunning once the group has stopped.
func (g *Group) Await(ctx context.Context, name string) (*Supervisor, error) {
	for {
		sn := g.snap.Load()
		if s := sn.sups[name]; s != nil {
			return s, nil
		}
		if sn.done {
			return nil, ErrNotRunning
		}
		select {
		case <-sn.changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Status returns each program's status, in order.
func (g *Group) Status() []ProgramStatus {
	sn := g.snap.Load()
	out := slices.Clone(sn.progs)
	for i := range out {
		if s := sn.sups[out[i].Name]; s != nil {
			out[i].Status = s.Status()
		}
		if s := sn.nexts[out[i].Name]; s != nil {
			st := s.Status()
			out[i].Next = &st
		}
	}
	return out
}

// StopTimeout returns the longest Config.StopTimeout of the group's
// programs as they are now (after Replace, the new ones'): how long a
// graceful stop of the whole group may take.
func (g *Group) StopTimeout() time.Duration { return g.snap.Load().stopTimeout }

// Stats returns the counters of every program since Run began, summed;
// the round-trip quantiles are the largest of the programs'.
func (g *Group) Stats() Stats {
	g.pastMu.Lock()
	st := g.past
	sn := g.snap.Load()
	for _, s := range sn.sups {
		st = addStats(st, s.Stats())
	}
	for _, s := range sn.nexts {
		st = addStats(st, s.Stats())
	}
	g.pastMu.Unlock()
	return st
}

func addStats(a, b Stats) Stats {
	a.PingsSent += b.PingsSent
	a.PingsAnswered += b.PingsAnswered
	a.RTTP50, a.RTTP99 = max(a.RTTP50, b.RTTP50), max(a.RTTP99, b.RTTP99)
	a.Restarts += b.Restarts
	a.Failures += b.Failures
	a.SpawnFailures += b.SpawnFailures
	return a
}

// Supervisor returns the current run of the program name, nil if it
// is not running.
func (g *Group) Supervisor(name string) *Supervisor { return g.snap.Load().sups[name] }

// ask sends a request to the loop and waits for its answer.
func (g *Group) ask(ctx context.Context, op, name string) error {
	res := make(chan error, 1)
	err, askErr := ask(ctx, g.reqs, g.loopDone, grpReq{op: op, name: name, res: res}, res)
	if askErr != nil {
		return askErr
	}
	return err
}

// Ping returns nil once the group's loop and the supervision loop of
// every running program have each answered a request; a wedged loop
// does not, and ctx ends first.
func (g *Group) Ping(ctx context.Context) error {
	if err := g.ask(ctx, "ping", ""); err != nil {
		return err
	}
	sn := g.snap.Load()
	for _, m := range []map[string]*Supervisor{sn.sups, sn.nexts} {
		for name, s := range m {
			if err := s.Ping(ctx); err != nil && !errors.Is(err, ErrNotRunning) {
				return fmt.Errorf("program %s: %w", name, err)
			}
		}
	}
	return nil
}

// Signal sends sig to every running worker of every program (see
// Supervisor.Signal) and returns how many it reached.
func (g *Group) Signal(ctx context.Context, sig syscall.Signal) (int, error) {
	sn := g.snap.Load()
	total := 0
	for _, m := range []map[string]*Supervisor{sn.sups, sn.nexts} {
		for _, s := range m {
			n, err := s.Signal(ctx, sig)
			if err != nil && !errors.Is(err, ErrNotRunning) {
				return total, err
			}
			total += n
		}
	}
	return total, nil
}

// Start starts the program name (and keeps it running) if it is
// stopped or ended; it starts once the programs it starts after are
// ready.
func (g *Group) Start(ctx context.Context, name string) error { return g.ask(ctx, "start", name) }

// Stop stops the program name and returns once it has stopped; it stays
// stopped, through worker failures and Replace, until Start.
func (g *Group) Stop(ctx context.Context, name string) error { return g.ask(ctx, "stop", name) }

// Restart stops the program name, waits until it has stopped, and
// starts it again.
func (g *Group) Restart(ctx context.Context, name string) error {
	if err := g.ask(ctx, "restart", name); err != nil {
		return err
	}
	return nil
}

// Reload has the program name, or every program if name is "", replace
// its workers one at a time (Supervisor.Reload).
func (g *Group) Reload(ctx context.Context, name string) error { return g.ask(ctx, "reload", name) }

// Replace makes progs the group's programs (see Diff): added programs
// start, removed ones stop, changed ones are stopped and started again
// with their new settings, unchanged ones are left alone. If progs is
// invalid nothing changes.
func (g *Group) Replace(ctx context.Context, progs []Program) (Diff, error) {
	res := make(chan replaceRes, 1)
	r, err := ask(ctx, g.reqs, g.loopDone, grpReplace{progs: progs, res: res}, res)
	if err != nil {
		return Diff{}, err
	}
	return r.d, r.err
}
