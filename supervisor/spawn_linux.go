package supervisor

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// workerAttr returns the attributes a worker process starts with.
func workerAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		// Its own session (and so its own process group): stop
		// signals go to the worker's whole group, Ctrl-C at our
		// terminal does not reach it, and no descendant of it can
		// join our process group (setpgid works only within a
		// session) to pass for one of ours.
		Setsid:    true,
		Pdeathsig: syscall.SIGKILL, // see spawnThread for the thread this binds to
	}
}

// waitExited blocks until the child pid has exited, without reaping it.
// It waits on a pidfd through the runtime's poller, so a worker does
// not hold an OS thread for its whole life; where pidfds are missing
// (Linux before 5.10) it falls back to a blocking waitid.
func waitExited(pid int) {
	var info unix.Siginfo
	if fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK); err == nil {
		f := os.NewFile(uintptr(fd), "pidfd")
		defer f.Close()
		if rc, err := f.SyscallConn(); err == nil {
			err = rc.Read(func(fd uintptr) bool {
				err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT, nil)
				return err != unix.EAGAIN && err != unix.EINTR // EAGAIN: still running
			})
			if err == nil {
				return
			}
		}
	}
	for unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
}
