//go:build linux

package sdnotify_test

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// startGroup starts argv in a process group of its own, killed whole at
// the end of the test (its grandchildren included) and reaped.
func startGroup(tb testing.TB, argv ...string) *testutil.Process {
	tb.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := testutil.StartProcess(tb, cmd)
	// Cleanups run last first: this one, before StartProcess's reaping.
	// While the leader is not reaped its pid, the group's id, cannot
	// name another group.
	tb.Cleanup(func() {
		if !p.Exited() {
			syscall.Kill(-p.PID(), syscall.SIGKILL)
		}
	})
	return p
}

// childOf waits for a child of ppid whose command is comm and returns
// its pid.
func childOf(tb testing.TB, ppid int, comm string) int {
	tb.Helper()
	var pid int
	testutil.Poll(tb, readTimeout, time.Millisecond, comm+" child of "+strconv.Itoa(ppid), func() bool {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range ents {
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if p, ok := testutil.ReadProc(n); ok && p.PPID == ppid && p.Comm == comm {
				pid = n
				return true
			}
		}
		return false
	}, nil)
	return pid
}

// TestFromTree builds sh → sh → sleep and checks who is in whose tree.
func TestFromTree(t *testing.T) {
	// "; true" keeps each sh from exec'ing its last command in its place.
	outer := startGroup(t, "sh", "-c", `sh -c "sleep 300; true"; true`)
	top := outer.PID()
	inner := childOf(t, top, "sh")
	sleep := childOf(t, inner, "sleep")
	other := startGroup(t, "sleep", "300")
	me := os.Getpid()

	for _, tc := range []struct {
		pid, root int
		want      bool
	}{
		{sleep, top, true}, // grandchild
		{inner, top, true}, // child
		{top, top, true},   // itself
		{sleep, inner, true},
		{sleep, me, true}, // we started the whole tree
		{top, sleep, false},
		{inner, sleep, false},
		{me, top, false},
		{other.PID(), top, false}, // unrelated
		{sleep, other.PID(), false},
		{1, top, false},
		{0, top, false},
		{-1, top, false},
		{sleep, 0, false},
		{sleep, -1, false},
	} {
		if got := sdnotify.FromTree(int32(tc.pid), tc.root); got != tc.want {
			t.Errorf("FromTree(%d, %d) = %v, want %v (sh %d → sh %d → sleep %d; other %d; us %d)",
				tc.pid, tc.root, got, tc.want, top, inner, sleep, other.PID(), me)
		}
	}

	// A process that is gone is in nobody's tree, its own included.
	gone := other.PID()
	other.Stop(t, syscall.SIGKILL, exitTimeout)
	if sdnotify.FromTree(int32(gone), gone) || sdnotify.FromTree(int32(gone), me) {
		t.Errorf("FromTree reports the reaped process %d in a tree", gone)
	}
}
