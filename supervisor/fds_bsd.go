//go:build darwin || freebsd

package supervisor

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// markInheritedCloexec marks every descriptor of this process from 3 up
// close-on-exec before a worker is forked (see fds_linux.go for why):
// one close_range(2) call where the system has it with the flag
// (FreeBSD 13.1), else a walk of /dev/fd. useRange says whether to try
// close_range; it is cleared once close_range fails for any reason.
//
// darwin's /dev/fd lists every open descriptor. FreeBSD's does only
// where fdescfs is mounted on it; elsewhere it lists 0–2, and on a
// FreeBSD without close_range's flag (before 13.1) a descriptor the
// program opened without close-on-exec (Go opens none such) reaches
// the workers.
func markInheritedCloexec(useRange *bool) error {
	if *useRange {
		if err := closeRangeCloexec(3); err == nil {
			return nil
		}
		*useRange = false
	}
	d, err := os.Open("/dev/fd")
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
