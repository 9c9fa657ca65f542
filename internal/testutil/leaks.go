//go:build linux

package testutil

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// modulePath is the import path prefix of this module's packages,
// "github.com/pairvisor/pairvisor/", derived from this package's own.
var modulePath = strings.TrimSuffix(reflect.TypeFor[FD]().PkgPath(), "internal/testutil")

// A Snapshot is what this process holds at one moment: its descriptors,
// goroutines and child processes. [Snapshot.Check] reports what was
// added since. [Harness.Main] takes one before the tests and checks it
// after them; a test that is not parallel may do the same around the
// code it runs.
type Snapshot struct {
	fds        map[string]string // descriptor number → target
	fdErr      error             // reading them failed: no descriptor check
	goroutines int               // how many were running
	goids      map[string]bool   // the ids of those running
	kids       map[int]bool      // the pids of child processes
}

// TakeSnapshot records this process's descriptors, goroutines and
// child processes. It first lets the runtime create its poller's
// descriptors (epoll, eventfd), so that the first pipe a test opens
// does not count their lazy creation as a leak.
func TakeSnapshot() Snapshot {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fds, err := fdMap()
	s := Snapshot{fds: fds, fdErr: err, goroutines: runtime.NumGoroutine(), goids: make(map[string]bool), kids: make(map[int]bool)}
	for _, g := range strings.Split(Stacks(), "\n\n") {
		s.goids[goid(g)] = true
	}
	for _, p := range Children() {
		s.kids[p.PID] = true
	}
	return s
}

// Check reports, in one error, what this process holds now and did not
// hold at s: descriptors opened, closed or pointing elsewhere;
// goroutines of this module's code (tests included) or of os/exec, or
// more goroutines than at s; child processes, zombies included. It
// polls for up to wait, since a reader goroutine or a child being
// reaped may be a few scheduling rounds from gone when the code under
// test returns, and returns nil once nothing is left. Garbage
// collection is off meanwhile: the finalizer of an unreachable *os.File
// would close a leaked descriptor and hide it.
func (s Snapshot) Check(wait time.Duration) error { return s.check(wait, true) }

// goid returns the id of the goroutine whose stack runtime.Stack wrote
// as g ("goroutine 7 [running]:\n...").
func goid(g string) string {
	if f := strings.Fields(g); len(f) > 1 {
		return f[1]
	}
	return ""
}

// fdMap returns this process's descriptors that could still be read,
// by number.
func fdMap() (map[string]string, error) {
	open, err := OpenFDs()
	if err != nil {
		return nil, err
	}
	fds := make(map[string]string, len(open))
	for _, fd := range open {
		if fd.Target != "" { // "" was closed while being read
			fds[fd.Num] = fd.Target
		}
	}
	return fds, nil
}

// check is Check, without the goroutine part unless goroutines is set.
func (s Snapshot) check(wait time.Duration, goroutines bool) error {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	deadline := time.Now().Add(wait)
	for {
		problems := s.leaks(goroutines)
		if len(problems) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New(strings.Join(problems, "\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling for leftovers to go away
	}
}

// leaks returns one line (or paragraph) per kind of leftover.
func (before Snapshot) leaks(goroutines bool) []string {
	var problems []string
	if before.fdErr == nil {
		if diff, err := fdDiff(before.fds); err != nil {
			problems = append(problems, err.Error())
		} else if len(diff) > 0 {
			problems = append(problems, "descriptors changed since the start: "+strings.Join(diff, ", "))
		}
	}
	if goroutines {
		if stacks := newGoroutines(before.goids); len(stacks) > 0 {
			problems = append(problems, fmt.Sprintf("%d goroutines left by the tests (%d running, %d at the start):\n\n%s",
				len(stacks), runtime.NumGoroutine(), before.goroutines, strings.Join(stacks, "\n\n")))
		} else if n := runtime.NumGoroutine(); n > before.goroutines {
			problems = append(problems, fmt.Sprintf("%d goroutines running, %d at the start:\n\n%s", n, before.goroutines, Stacks()))
		}
	}
	var kids []string
	for _, p := range Children() {
		if !before.kids[p.PID] {
			kids = append(kids, fmt.Sprintf("%d (%s) state %s", p.PID, p.Comm, p.State))
		}
	}
	if len(kids) > 0 {
		problems = append(problems, "child processes left (zombies included): "+strings.Join(kids, "; "))
	}
	return problems
}

// fdDiff describes the descriptors that differ from before: "+N->T"
// for one opened, "-N->T" for one closed, sorted by number.
func fdDiff(before map[string]string) ([]string, error) {
	now, err := fdMap()
	if err != nil {
		return nil, err
	}
	var diff []string
	for n, t := range now {
		if before[n] != t {
			diff = append(diff, "+"+n+"->"+t)
		}
	}
	for n, t := range before {
		if now[n] != t {
			diff = append(diff, "-"+n+"->"+t)
		}
	}
	slices.SortFunc(diff, func(a, b string) int {
		return strings.Compare(fdSortKey(a), fdSortKey(b))
	})
	return diff, nil
}

// fdSortKey orders "+12->x" after "+3->y": by number, then sign.
func fdSortKey(d string) string {
	num, _, _ := strings.Cut(d[1:], "->")
	return fmt.Sprintf("%10s%c", num, d[0])
}

// newGoroutines returns the stacks of goroutines, other than the
// caller's and those in old, that run or were started by code of this
// module (test code included) or run os/exec code.
func newGoroutines(old map[string]bool) []string {
	var found []string
	for i, g := range strings.Split(Stacks(), "\n\n") {
		if i == 0 || old[goid(g)] { // the caller, or there from the start
			continue
		}
		if strings.Contains(g, modulePath) || strings.Contains(g, "os/exec.") {
			found = append(found, g)
		}
	}
	return found
}
