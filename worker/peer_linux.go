package worker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// checkPeer checks that the socket fd's peer credentials (SO_PEERCRED)
// name the process ppid: a socketpair's are those of the process that
// created it.
func checkPeer(fd, ppid int) error {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return fmt.Errorf("%w: reading the peer of fd %d: %w", ErrNotWorker, fd, os.NewSyscallError("getsockopt", err))
	}
	if int(cred.Pid) != ppid {
		return fmt.Errorf("%w: fd %d's peer is pid %d, not the parent %d: socket inherited from elsewhere", ErrNotWorker, fd, cred.Pid, ppid)
	}
	return nil
}

// watchParent does nothing on Linux: the supervisor starts every worker
// with SIGKILL as its parent-death signal.
func watchParent(int) func() { return func() {} }
