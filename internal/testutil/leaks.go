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

// snapshot is what a process holds before its tests run.
type snapshot struct {
	fds        map[string]string // descriptor number → target
	fdErr      error             // reading them failed: no descriptor check
	goroutines int               // how many were running
	goids      map[string]bool   // the ids of those running
}

// takeSnapshot records this process's descriptors and goroutine count.
// It first lets the runtime create its poller's descriptors (epoll,
// eventfd), so that the first pipe a test opens does not count their
// lazy creation as a leak.
func takeSnapshot() snapshot {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fds, err := fdMap()
	s := snapshot{fds: fds, fdErr: err, goroutines: runtime.NumGoroutine(), goids: make(map[string]bool)}
	for _, g := range strings.Split(Stacks(), "\n\n") {
		s.goids[goid(g)] = true
	}
	return s
}

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

// checkLeaks reports what the tests left behind since before:
// descriptors opened, closed or pointed elsewhere; goroutines (when
// goroutines is set) of this module's code or of os/exec, or more
// goroutines than at the start; child processes, zombies included. It
// polls for up to wait, since a reader goroutine or a reaped child may
// be a few scheduling rounds from gone when the last test returns.
// Garbage collection is off meanwhile: the finalizer of an unreachable
// *os.File would close a leaked descriptor and hide it.
func checkLeaks(before snapshot, wait time.Duration, goroutines bool) error {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	deadline := time.Now().Add(wait)
	for {
		problems := leaks(before, goroutines)
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
func leaks(before snapshot, goroutines bool) []string {
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
	if kids := Children(); len(kids) > 0 {
		var s []string
		for _, p := range kids {
			s = append(s, fmt.Sprintf("%d (%s) state %s", p.PID, p.Comm, p.State))
		}
		problems = append(problems, "child processes left (zombies included): "+strings.Join(s, "; "))
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
