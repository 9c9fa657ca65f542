//go:build linux

package sysfd

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocket: the descriptor is close-on-exec, and non-blocking exactly
// when asked.
func TestSocket(t *testing.T) {
	for _, nonblock := range []bool{false, true} {
		fd, err := Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0, nonblock)
		if err != nil {
			t.Fatal(err)
		}
		fdFlags, err1 := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		flFlags, err2 := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		unix.Close(fd)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if fdFlags&unix.FD_CLOEXEC == 0 || (flFlags&unix.O_NONBLOCK != 0) != nonblock {
			t.Errorf("nonblock %v: FD flags %#x, file flags %#x", nonblock, fdFlags, flFlags)
		}
	}
}
