package sysfd

import (
	"os"

	"golang.org/x/sys/unix"
)

// Socket returns a new socket of domain, typ and proto, close-on-exec
// and, if nonblock, non-blocking, both set atomically (SOCK_CLOEXEC,
// SOCK_NONBLOCK). The caller owns the descriptor.
func Socket(domain, typ, proto int, nonblock bool) (int, error) {
	typ |= unix.SOCK_CLOEXEC
	if nonblock {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(domain, typ, proto)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}
