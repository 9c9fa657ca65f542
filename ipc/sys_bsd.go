//go:build darwin || freebsd

package ipc

import (
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// msgNoSignal: these systems have no MSG_NOSIGNAL. The Go runtime
// ignores SIGPIPE for descriptors other than 1 and 2, so a send to a
// closed peer fails with EPIPE as on Linux.
const msgNoSignal = 0

// yieldThread lets other goroutines run; there is no portable
// sched_yield system call wrapper here.
func yieldThread() { runtime.Gosched() }

// socketpair returns a connected AF_UNIX stream socket pair, both ends
// close-on-exec (set under syscall.ForkLock).
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return fds, err
	}
	unix.CloseOnExec(fds[0])
	unix.CloseOnExec(fds[1])
	return fds, nil
}

// serverCred returns the uid of the peer of the connected socket fd
// (LOCAL_PEERCRED) and its pid where the system records it, else 0.
func serverCred(fd int) (uid uint32, pid int32, err error) {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return 0, 0, os.NewSyscallError("getsockopt LOCAL_PEERCRED", err)
	}
	return xu.Uid, peerPID(fd), nil
}
