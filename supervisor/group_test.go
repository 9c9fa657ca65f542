//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Tests of Group with real workers: the order programs start and stop
// in, Start, Stop, Restart and Reload of one program, Replace, and the
// ways Run ends by itself. The harness checks after the tests that no
// goroutine, descriptor or child process is left.

// groupRun is a Group running in the background of a test; it is
// stopped at the end of the test if Run has not returned.
type groupRun struct {
	t    *testing.T
	g    *Group
	logs *syncBuffer
	stop context.CancelFunc
	done chan struct{} // closed when Run has returned err
	err  error
}

// startGroup runs progs, logging JSON at debug level into logs.
func startGroup(t *testing.T, progs ...Program) *groupRun {
	t.Helper()
	logs := &syncBuffer{}
	g, err := NewGroup(progs, hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Debug}))
	if err != nil {
		t.Fatalf("NewGroup: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &groupRun{t: t, g: g, logs: logs, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = g.Run(ctx)
	}()
	t.Cleanup(func() {
		if cancel(); !r.returned(stopWait) {
			t.Errorf("Group.Run did not return within %v of the end of the test", stopWait)
		}
		if t.Failed() {
			t.Logf("group log:\n%s", logTail(logs.String(), 200))
		}
	})
	return r
}

// wait waits for Run to return by itself and returns its error.
func (r *groupRun) wait() error {
	r.t.Helper()
	if !r.returned(stopWait) {
		r.t.Fatalf("Group.Run did not return within %v; status %+v", stopWait, r.g.Status())
	}
	return r.err
}

// returned reports whether Run returns within d.
func (r *groupRun) returned(d time.Duration) bool {
	select {
	case <-r.done:
		return true
	case <-time.After(d):
		return false
	}
}

// end cancels Run's context and returns Run's error.
func (r *groupRun) end() error {
	r.t.Helper()
	r.stop()
	return r.wait()
}

// await polls Status until cond holds and returns that status by name.
func (r *groupRun) await(what string, cond func(map[string]ProgramStatus) bool) map[string]ProgramStatus {
	r.t.Helper()
	deadline := time.Now().Add(readyWait)
	for {
		st := map[string]ProgramStatus{}
		for _, ps := range r.g.Status() {
			st[ps.Name] = ps
		}
		if cond(st) {
			return st
		}
		select {
		case <-r.done:
			r.t.Fatalf("Group.Run returned (%v) while waiting for %s; status %+v", r.err, what, st)
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %s within %v; status %+v", what, readyWait, st)
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronising
	}
}

// awaitReady waits until the programs named are ready, each with its
// workers ready and none of them one of old, and returns every
// program's status.
func (r *groupRun) awaitReady(old []int, names ...string) map[string]ProgramStatus {
	r.t.Helper()
	return r.await(fmt.Sprintf("programs %v ready with new workers", names), func(st map[string]ProgramStatus) bool {
		for _, n := range names {
			ps := st[n]
			if ps.State != ProgramReady || len(ps.Status.Workers) == 0 {
				return false
			}
			for _, w := range ps.Status.Workers {
				if w.State != StateReady || w.PID <= 0 || slices.Contains(old, w.PID) {
					return false
				}
			}
		}
		return true
	})
}

// events returns "message program" for each of the group's own log
// lines about programs starting, being ready and stopping, in order.
func (r *groupRun) events() []string {
	var out []string
	for _, rec := range r.logs.records() {
		switch m := rec["@message"]; m {
		case "starting program", "program ready", "stopping program", "program stopped", "program ended", "program cannot start":
			out = append(out, fmt.Sprintf("%s %v", m, rec["program"]))
		}
	}
	return out
}

// startedPIDs returns the pids of the worker processes of program name
// that the log says were started.
func (r *groupRun) startedPIDs(name string) []int {
	var out []int
	for _, rec := range r.logs.records() {
		if pid, ok := rec["pid"].(float64); ok && rec["@message"] == "starting" && rec["program"] == name {
			out = append(out, int(pid))
		}
	}
	return out
}

// before fails the test unless event a is logged, and before b.
func before(t *testing.T, events []string, a, b string) {
	t.Helper()
	i, j := slices.Index(events, a), slices.Index(events, b)
	if i < 0 || j < 0 || i > j {
		t.Errorf("want %q logged before %q: %q", a, b, events)
	}
}

// program is a program of n workers playing roleName.
func program(t *testing.T, name, roleName string, n int, after ...string) Program {
	return Program{Name: name, After: after, Config: testConfig(t, roleName, n)}
}

// pidsOf returns the pids of program name's workers in st.
func pidsOf(st map[string]ProgramStatus, name string) []int { return pids(st[name].Status) }

// TestGroupOrder: each program starts once those it starts after are
// ready; on stop each stops only once those that start after it have
// stopped; Run returns nil, every worker reaped.
func TestGroupOrder(t *testing.T) {
	t.Parallel()
	r := startGroup(t, program(t, "a", "slow-hello", 2), program(t, "b", "echo", 1, "a"),
		program(t, "c", "echo", 1, "b"), program(t, "d", "echo", 1, "a"))
	st := r.awaitReady(nil, "a", "b", "c", "d")
	ev := r.events()
	if !strings.HasPrefix(strings.Join(ev, ","), "starting program a,program ready a,") {
		t.Errorf("a did not start first, alone: %q", ev)
	}
	before(t, ev, "program ready a", "starting program b")
	before(t, ev, "program ready a", "starting program d")
	before(t, ev, "program ready b", "starting program c")
	if st["c"].After[0] != "b" || r.g.Supervisor("c") == nil {
		t.Errorf("status of c %+v", st["c"])
	}

	if err := r.end(); err != nil {
		t.Errorf("Run after the stop: %v", err)
	}
	ev = r.events()
	before(t, ev, "program stopped c", "stopping program b")
	before(t, ev, "program stopped b", "stopping program a")
	before(t, ev, "program stopped d", "stopping program a")
	for _, name := range []string{"a", "b", "c", "d"} {
		for _, pid := range pidsOf(st, name) {
			checkReaped(t, pid)
		}
	}
	for _, ps := range r.g.Status() {
		if ps.State != ProgramStopped || r.g.Supervisor(ps.Name) != nil {
			t.Errorf("after Run: %s is %s", ps.Name, ps.State)
		}
	}
	if _, err := r.g.Await(context.Background(), "a"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Await after Run: %v, want ErrNotRunning", err)
	}
}

// TestGroupControl: Stop stops one program, which stays stopped when
// the program it starts after restarts; Start brings it back; Restart
// and Reload give a program new workers; an unknown name is
// ErrNoProgram.
func TestGroupControl(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := startGroup(t, program(t, "a", "echo", 1), program(t, "b", "echo", 2, "a"))
	st := r.awaitReady(nil, "a", "b")
	if s, err := r.g.Await(ctx, "a"); err != nil || s != r.g.Supervisor("a") {
		t.Errorf("Await(a) = %p, %v; want the current run %p", s, err, r.g.Supervisor("a"))
	}

	if err := r.g.Stop(ctx, "b"); err != nil {
		t.Fatalf("Stop(b): %v", err)
	}
	for _, pid := range pidsOf(st, "b") {
		checkReaped(t, pid)
	}
	stopped := func(when string) {
		t.Helper()
		for _, ps := range r.g.Status() {
			if ps.Name == "b" && (ps.State != ProgramStopped || r.g.Supervisor("b") != nil) {
				t.Errorf("%s: b is %s, want stopped", when, ps.State)
			}
		}
	}
	stopped("after Stop(b)")

	if err := r.g.Restart(ctx, "a"); err != nil {
		t.Fatalf("Restart(a): %v", err)
	}
	st2 := r.awaitReady(pidsOf(st, "a"), "a")
	stopped("after a restarted and was ready again")

	if err := r.g.Start(ctx, "b"); err != nil {
		t.Fatalf("Start(b): %v", err)
	}
	st3 := r.awaitReady(pidsOf(st, "b"), "b")
	if err := r.g.Restart(ctx, "b"); err != nil {
		t.Fatalf("Restart(b): %v", err)
	}
	r.awaitReady(pidsOf(st3, "b"), "b")

	if err := r.g.Reload(ctx, "a"); err != nil {
		t.Fatalf("Reload(a): %v", err)
	}
	if now := pids(r.g.Supervisor("a").Status()); slices.Equal(now, pidsOf(st2, "a")) {
		t.Errorf("Reload(a) returned with the same workers %v", now)
	}

	for op, f := range map[string]func(context.Context, string) error{"Start": r.g.Start, "Stop": r.g.Stop, "Restart": r.g.Restart, "Reload": r.g.Reload} {
		if err := f(ctx, "nope"); !errors.Is(err, ErrNoProgram) {
			t.Errorf("%s(nope) = %v, want ErrNoProgram", op, err)
		}
	}
	if err := r.end(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := r.g.Start(ctx, "a"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Start after Run = %v, want ErrNotRunning", err)
	}
}

// TestGroupReplace: Replace starts added programs, stops removed ones,
// rolls changed ones over to their new settings (the new workers ready
// before the old stop), leaves unchanged ones
// running with the same workers, and says which were which; an invalid
// set of programs changes nothing.
func TestGroupReplace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := startGroup(t, program(t, "a", "echo", 1), program(t, "b", "echo", 1, "a"), program(t, "c", "echo", 1))
	st := r.awaitReady(nil, "a", "b", "c")

	for _, bad := range [][]Program{
		{program(t, "a", "echo", 1, "b"), program(t, "b", "echo", 1, "a")},
		{program(t, "a", "echo", 1, "zz")},
		{program(t, "a", "echo", 1), program(t, "a", "echo", 2)},
	} {
		if d, err := r.g.Replace(ctx, bad); err == nil {
			t.Errorf("Replace with invalid programs: %+v, no error", d)
		}
	}
	same := r.awaitReady(nil, "a", "b", "c")
	for _, n := range []string{"a", "b", "c"} {
		if !slices.Equal(pidsOf(same, n), pidsOf(st, n)) {
			t.Errorf("an invalid Replace changed %s's workers: %v, then %v", n, pidsOf(st, n), pidsOf(same, n))
		}
	}

	d, err := r.g.Replace(ctx, []Program{program(t, "a", "echo", 1), program(t, "b", "echo", 2, "a"), program(t, "d", "echo", 1, "a")})
	if err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if want := (Diff{Added: []string{"d"}, Removed: []string{"c"}, Changed: []string{"b"}, Unchanged: []string{"a"}}); fmt.Sprint(d) != fmt.Sprint(want) {
		t.Errorf("diff %+v, want %+v", d, want)
	}
	after := r.awaitReady(pidsOf(st, "b"), "b", "d")
	if len(after["b"].Status.Workers) != 2 {
		t.Errorf("b has %d workers, want its new 2", len(after["b"].Status.Workers))
	}
	if !slices.Equal(pidsOf(after, "a"), pidsOf(st, "a")) {
		t.Errorf("unchanged a has workers %v, was %v", pidsOf(after, "a"), pidsOf(st, "a"))
	}
	r.await("c gone", func(st map[string]ProgramStatus) bool { _, ok := st["c"]; return !ok })
	for _, pid := range pidsOf(st, "c") {
		checkReaped(t, pid)
	}
	// b rolled over blue/green: its old workers stop once the new ones
	// are ready.
	for _, pid := range pidsOf(st, "b") {
		waitGone(t, pid, readyWait)
	}
	var names []string
	for _, ps := range r.g.Status() {
		names = append(names, ps.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "d"}) {
		t.Errorf("programs %v after Replace, want [a b d]", names)
	}
	if err := r.end(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestGroupCrashLoop: a program in a crash loop stops every program
// and Run returns an error wrapping ErrCrashLoop that names it.
func TestGroupCrashLoop(t *testing.T) {
	t.Parallel()
	bad := program(t, "bad", "crash", 1, "a")
	bad.Config.MaxRestarts = 2
	r := startGroup(t, program(t, "a", "echo", 2), bad)
	err := r.wait()
	before(t, r.events(), "program ready a", "starting program bad")
	if !errors.Is(err, ErrCrashLoop) || !strings.Contains(err.Error(), "program bad") {
		t.Errorf("Run = %v, want a crash loop of program bad", err)
	}
	for _, ps := range r.g.Status() {
		switch {
		case ps.Name == "a" && ps.State != ProgramStopped:
			t.Errorf("a is %s, want stopped", ps.State)
		case ps.Name == "bad" && (ps.State != ProgramFailed || !strings.Contains(ps.Error, "crash loop")):
			t.Errorf("bad is %s (%q), want failed for its crash loop", ps.State, ps.Error)
		}
	}
	if started := r.startedPIDs("a"); len(started) != 2 {
		t.Errorf("a started workers %v, want 2", started)
	} else {
		for _, pid := range started {
			checkReaped(t, pid)
		}
	}
}

// TestGroupEndsByItself: Run returns by itself once every program has
// ended: nil when every worker exited 0, ErrWorkersFailed when one did
// not, and a program left waiting for one that has ended fails rather
// than keep Run waiting.
func TestGroupEndsByItself(t *testing.T) {
	t.Parallel()
	never := func(p Program) Program {
		p.Config.Restart = RestartNever
		return p
	}
	for _, tc := range []struct {
		name  string
		progs []Program
		want  error // nil, or what Run's error wraps
		state map[string]ProgramState
	}{
		{"exit0", []Program{program(t, "a", "exit0", 2), program(t, "b", "exit0", 1)}, nil,
			map[string]ProgramState{"a": ProgramExited, "b": ProgramExited}},
		{"failed", []Program{program(t, "a", "exit0", 1), never(program(t, "b", "crash", 1))}, ErrWorkersFailed,
			map[string]ProgramState{"a": ProgramExited, "b": ProgramFailed}},
		{"dependency-ended", []Program{never(program(t, "a", "crash", 1)), program(t, "b", "echo", 1, "a"), program(t, "c", "exit0", 1)}, ErrWorkersFailed,
			map[string]ProgramState{"a": ProgramFailed, "b": ProgramFailed, "c": ProgramExited}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := startGroup(t, tc.progs...)
			err := r.wait()
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Run = %v, want %v", err, tc.want)
			}
			for _, ps := range r.g.Status() {
				if ps.State != tc.state[ps.Name] {
					t.Errorf("%s is %s (%s), want %s", ps.Name, ps.State, ps.Error, tc.state[ps.Name])
				}
			}
			if slices.Contains(r.events(), "starting program b") && tc.name == "dependency-ended" {
				t.Errorf("b started after a failed before it was ready: %q", r.events())
			}
		})
	}
}
