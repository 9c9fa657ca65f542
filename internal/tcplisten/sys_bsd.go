//go:build darwin || freebsd

package tcplisten

import (
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// socket returns a new TCP socket of family, close-on-exec and
// non-blocking. Without SOCK_CLOEXEC the flag is set after the fact,
// under syscall.ForkLock, so that no fork in between inherits it.
func socket(family int) (int, error) {
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(family, unix.SOCK_STREAM, unix.IPPROTO_TCP)
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

// backlog is net.Listen's: the kernel's limit on the accept queue
// (kern.ipc.somaxconn, kern.ipc.soacceptqueue on FreeBSD), at most
// 65535, or SOMAXCONN if it cannot be read.
func backlog() int {
	name := "kern.ipc.somaxconn"
	if runtime.GOOS == "freebsd" {
		name = "kern.ipc.soacceptqueue"
	}
	n, err := unix.SysctlUint32(name)
	if err != nil || n == 0 {
		return unix.SOMAXCONN
	}
	return int(min(n, 1<<16-1))
}
