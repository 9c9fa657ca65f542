package ipc

import (
	"os"

	"golang.org/x/sys/unix"
)

// msgNoSignal keeps a send to a closed peer from raising SIGPIPE.
const msgNoSignal = unix.MSG_NOSIGNAL

// yieldThread gives the CPU to another runnable thread, if any
// (sched_yield(2)).
func yieldThread() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// socketpair returns a connected AF_UNIX stream socket pair, both ends
// close-on-exec.
func socketpair() ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}

// serverCred returns the uid and pid of the peer of the connected
// socket fd (SO_PEERCRED; pid 0 when in another pid namespace).
func serverCred(fd int) (uid uint32, pid int32, err error) {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, 0, os.NewSyscallError("getsockopt SO_PEERCRED", err)
	}
	return uc.Uid, uc.Pid, nil
}
