//go:build darwin || freebsd

package sysfd

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Socket returns a new socket of domain, typ and proto, close-on-exec
// and, if nonblock, non-blocking. Without SOCK_CLOEXEC everywhere (not
// on darwin), close-on-exec is set after the fact, under
// syscall.ForkLock, so that no fork in between inherits the descriptor.
// The caller owns the descriptor.
func Socket(domain, typ, proto int, nonblock bool) (int, error) {
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(domain, typ, proto)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if nonblock {
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("fcntl", err)
		}
	}
	return fd, nil
}
