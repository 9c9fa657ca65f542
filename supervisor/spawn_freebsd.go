package supervisor

import (
	"time"

	"golang.org/x/sys/unix"
)

// exitRecheck: none needed. FreeBSD attaches a NOTE_EXIT knote to a
// zombie or an exiting process too, and then fires it at once.
const exitRecheck time.Duration = 0

// exitedNow is not asked (exitRecheck is 0).
func exitedNow(int) bool { return false }

// closeRangeCloexecFlag is CLOSE_RANGE_CLOEXEC in FreeBSD's
// <sys/unistd.h> (FreeBSD 13.1); x/sys does not define it here.
const closeRangeCloexecFlag = 1 << 2

// closeRangeCloexec marks every descriptor from first up close-on-exec
// with one close_range(2) call (FreeBSD 13.1 and later).
func closeRangeCloexec(first uint) error {
	_, _, errno := unix.Syscall(unix.SYS_CLOSE_RANGE, uintptr(first), uintptr(^uint32(0)), closeRangeCloexecFlag)
	if errno != 0 {
		return errno
	}
	return nil
}
