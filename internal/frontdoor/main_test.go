//go:build linux

package frontdoor_test

import (
	"os"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
)

// The test binary doubles as the peer process (see testutil.Harness): a
// test starts os.Args[0] with a role and the child end of a socketpair
// as fd 3, and TestMain runs that role instead of the tests.

var harness = testutil.NewHarness(testutil.HarnessConfig{})

func TestMain(m *testing.M) { harness.Main(m) }

func registerHelper(role string, f func(args ...string) int) { harness.Register(role, f) }

// helperExitTimeout bounds the wait for a helper process to exit. It is
// generous because the suite runs under -race on two cores.
const helperExitTimeout = 10 * time.Second

// helper is a child process playing a role.
type helper struct {
	*testutil.Process
}

// startHelper starts role in a child process. It returns our end of the
// socketpair whose other end is the child's fd 3; the caller owns it.
// The child is killed and reaped at cleanup if still running.
func startHelper(tb testing.TB, role string, args ...string) (*helper, *os.File) {
	tb.Helper()
	parent, child, err := ipc.Socketpair()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := harness.Command(tb, role, args...)
	cmd.ExtraFiles = []*os.File{child}
	defer child.Close() // the child has its copy; ours would hide its EOF
	return &helper{Process: testutil.StartProcess(tb, cmd)}, parent
}

// wait waits for the helper to exit, killing it if it has not exited
// within helperExitTimeout (which fails the test).
func (h *helper) wait(tb testing.TB) error {
	tb.Helper()
	return h.Wait(tb, helperExitTimeout)
}

// exitOK waits for the helper and fails the test unless it exited 0.
func (h *helper) exitOK(tb testing.TB) {
	tb.Helper()
	h.WaitOK(tb, helperExitTimeout)
}
