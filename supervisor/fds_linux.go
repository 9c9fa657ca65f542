//go:build linux

package supervisor

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// markInheritedCloexec marks every descriptor of this process from 3 up
// close-on-exec, so that a worker started right after inherits exactly
// the descriptors its exec.Cmd names (0–2 and ExtraFiles, which the
// child dup2s into place after the fork and so are unaffected) however
// the program opened or inherited the others. It runs on the spawn
// thread before each fork: one close_range(2) call (Linux 5.11), or a
// walk of /proc/self/fd where that is missing. useRange says whether to
// try close_range; it is cleared once close_range fails for any reason.
func markInheritedCloexec(useRange *bool) error {
	if *useRange {
		err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
		if err == nil {
			return nil
		}
		// Missing (ENOSYS), without the flag (EINVAL), or refused by a
		// seccomp filter (EPERM, …): the walk below does the same.
		*useRange = false
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && fd >= 3 {
			unix.CloseOnExec(fd) // the directory's own fd is closed after
		}
	}
	return nil
}
