//go:build linux

package sdnotify

import (
	"os"

	"golang.org/x/sys/unix"
)

// dgramSocket returns a new AF_UNIX datagram socket for Send,
// close-on-exec and non-blocking.
func dgramSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}
