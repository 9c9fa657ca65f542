//go:build darwin || freebsd

package worker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// checkPeer checks the socket fd's peer credentials (LOCAL_PEERCRED),
// which a socketpair takes from the process that created it: their uid
// must be our real uid (exec keeps it, so it is the supervisor's), and
// where the system records the peer's pid (darwin's LOCAL_PEERPID) it
// must be ppid. FreeBSD records none that x/sys exposes: there a
// socket created by another process of the same user passes.
func checkPeer(fd, ppid int) error {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return fmt.Errorf("%w: reading the peer of fd %d: %w", ErrNotWorker, fd, os.NewSyscallError("getsockopt LOCAL_PEERCRED", err))
	}
	if uid := os.Getuid(); int(xu.Uid) != uid {
		return fmt.Errorf("%w: fd %d's peer runs as uid %d, not %d: socket inherited from elsewhere", ErrNotWorker, fd, xu.Uid, uid)
	}
	if !peerPIDKnown {
		return nil
	}
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, peerPIDOption)
	if err != nil {
		return fmt.Errorf("%w: reading the peer's pid of fd %d: %w", ErrNotWorker, fd, os.NewSyscallError("getsockopt LOCAL_PEERPID", err))
	}
	if pid != ppid {
		return fmt.Errorf("%w: fd %d's peer is pid %d, not the parent %d: socket inherited from elsewhere", ErrNotWorker, fd, pid, ppid)
	}
	return nil
}
