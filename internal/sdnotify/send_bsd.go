//go:build darwin || freebsd

package sdnotify

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// dgramSocket returns a new AF_UNIX datagram socket for Send,
// close-on-exec and non-blocking. Without SOCK_CLOEXEC the flag is set
// after the fact, under syscall.ForkLock, so that no fork in between
// inherits the descriptor.
func dgramSocket() (int, error) {
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}
