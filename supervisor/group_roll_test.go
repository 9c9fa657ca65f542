//go:build linux

package supervisor

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// Group tests of the corners of a blue/green roll and of removal, with
// plain sh workers (ReadyStarted).

func shProgram(name, script string) Program {
	return Program{Name: name, Config: Config{
		Workers: 1, Executable: "/bin/sh", Args: []string{"-c", script},
		Ready: ReadyStarted, ReadyAfter: 50 * time.Millisecond, StopTimeout: 4 * time.Second,
	}}
}

// notReady returns p changed so that its new run never becomes ready
// (ReadyNotify, never notifying), its workers running script.
func notReady(p Program, script string) Program {
	p.Config.Ready, p.Config.StartTimeout = ReadyNotify, time.Hour
	p.Config.Args = []string{"-c", script}
	return p
}

// TestGroupRestartDuringRoll: Restart of a program whose changed
// settings are still starting returns once both runs stopped, and the
// program starts again with the new settings.
func TestGroupRestartDuringRoll(t *testing.T) {
	t.Parallel()
	a := shProgram("a", "exec sleep 1000")
	r := startGroup(t, a)
	r.awaitReady(nil, "a")
	a2 := notReady(a, "exec sleep 1001")
	if _, err := r.g.Replace(context.Background(), []Program{a2}); err != nil {
		t.Fatal(err)
	}
	r.await("a's new run starting", func(st map[string]ProgramStatus) bool { return st["a"].Next != nil })
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	defer cancel()
	if err := r.g.Restart(ctx, "a"); err != nil {
		t.Fatalf("Restart during a roll: %v", err)
	}
	r.await("a started again with the new settings", func(st map[string]ProgramStatus) bool {
		s := r.g.Supervisor("a")
		return s != nil && s.cfg.Ready == ReadyNotify && st["a"].Next == nil
	})
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
}

// TestGroupCurEndsDuringRoll: a program's current run that ends by
// itself while its successor starts is not started again beside it.
func TestGroupCurEndsDuringRoll(t *testing.T) {
	t.Parallel()
	block := tempFile(t, "block")
	a := shProgram("a", "while [ ! -e "+block+" ]; do sleep 0.05; done; exit 0")
	a.Config.Restart = RestartNever
	r := startGroup(t, a)
	r.awaitReady(nil, "a")
	first := r.g.Supervisor("a")
	if _, err := r.g.Replace(context.Background(), []Program{notReady(a, "exec sleep 1000")}); err != nil {
		t.Fatal(err)
	}
	r.await("a's new run starting", func(st map[string]ProgramStatus) bool { return st["a"].Next != nil })
	if err := writeFileAtomic(block, nil); err != nil {
		t.Fatal(err)
	}
	r.await("a's old run gone", func(map[string]ProgramStatus) bool { return r.g.Supervisor("a") != first })
	if s := r.g.Supervisor("a"); s != nil {
		t.Errorf("the old program was started again beside its successor (ready mode %v)", s.cfg.Ready)
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
}

// TestGroupRemovedThenAdded: a program added again while its removed
// self is still stopping waits for it: never two instances at once.
func TestGroupRemovedThenAdded(t *testing.T) {
	t.Parallel()
	a := shProgram("a", "exec sleep 1000")
	b := shProgram("b", "trap '' TERM; while :; do sleep 0.05; done")
	b.Config.StopTimeout = 2 * time.Second
	r := startGroup(t, a, b)
	st := r.awaitReady(nil, "a", "b")
	old := pidsOf(st, "b")
	if _, err := r.g.Replace(context.Background(), []Program{a}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.g.Replace(context.Background(), []Program{a, b}); err != nil {
		t.Fatal(err)
	}
	r.awaitReady(old, "b")
	for _, pid := range old {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("new b ready while the old b (pid %d) still runs", pid)
		}
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
}
