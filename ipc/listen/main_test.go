//go:build linux

package listen_test

import (
	"os"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"golang.org/x/sys/unix"
)

// harness checks, after the tests, that they left no descriptor,
// goroutine or child behind (this package registers no roles).
var harness = testutil.NewHarness(testutil.HarnessConfig{})

func TestMain(m *testing.M) { harness.Main(m) }

var errDeadline = os.ErrDeadlineExceeded

func closeFD(fd int) { unix.Close(fd) }

func isNonblock(fd int) (bool, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return fl&unix.O_NONBLOCK != 0, err
}

func isCloexec(fd int) (bool, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return fl&unix.FD_CLOEXEC != 0, err
}
