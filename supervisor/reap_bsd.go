//go:build darwin || freebsd

package supervisor

import (
	"fmt"
	"runtime"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Orphans and descendants are Linux's (reap_linux.go): the sweeper
// tells the orphans it adopted from the program's own children by the
// pidfds os/exec holds, and walks process trees in /proc. Neither
// exists here, so orphanSupport fails, Run logs its warning once per
// Run and adopts nothing: a worker's descendant that leaves its process
// group and loses its parent goes to init, as it would without a
// supervisor. Signals reach the worker's process group only
// (descendants finds none), not a descendant that moved to another
// group or session.

// procInfo is the little process.signal reads of a descendant.
type procInfo struct{ pgid int }

// descendants finds none: there is no /proc to walk.
func descendants(int) []procInfo { return nil }

// signalExact is never called (descendants finds none).
func signalExact(procInfo, unix.Signal) {}

// orphanSupport says why orphans cannot be adopted here.
func orphanSupport() error {
	return fmt.Errorf("adopting orphans needs Linux 5.4 (a child subreaper and pidfds), not %s", runtime.GOOS)
}

// acquireSubreaper is never called (orphanSupport fails).
func acquireSubreaper() error { return orphanSupport() }

// releaseSubreaper is never called.
func releaseSubreaper() {}

// sweeper has nothing to sweep here; the spawner still tells it of
// each worker.
type sweeper struct{}

func newSweeper(hclog.Logger) *sweeper    { return &sweeper{} }
func (*sweeper) addWorker(int)            {}
func (*sweeper) workerReaped(int)         {}
func (*sweeper) run(stop <-chan struct{}) { <-stop }
func (*sweeper) drain()                   {}
