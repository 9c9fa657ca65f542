//go:build darwin || freebsd

package listen

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// MaxPathLen is the longest socket path the kernel accepts: sun_path
// holds 104 bytes including the terminating NUL.
const MaxPathLen = 103

// abstractSupported: abstract socket names ("@name") are Linux's alone.
const abstractSupported = false

func idOf(st *unix.Stat_t) fileID {
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino), ctime: st.Ctim}
}

// acceptFD accepts a connection on the listening socket fd: the new fd
// is close-on-exec and non-blocking. It returns unix.EAGAIN when none
// is waiting.
func acceptFD(fd int) (int, error) {
	syscall.ForkLock.RLock()
	nfd, _, err := unix.Accept(fd)
	if err == nil {
		unix.CloseOnExec(nfd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return -1, err
	}
	return nfd, nil
}

// peerCred returns the credentials of the peer of the connected socket
// fd (LOCAL_PEERCRED, and the pid where the system records it).
func peerCred(fd int) (Cred, error) {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return Cred{}, os.NewSyscallError("getsockopt LOCAL_PEERCRED", err)
	}
	c := Cred{UID: xu.Uid, PID: peerPID(fd)}
	if xu.Ngroups > 0 {
		c.GID = xu.Groups[0] // the effective group comes first
	}
	return c, nil
}

// peerGroups returns the peer's groups as LOCAL_PEERCRED recorded them
// (at most 16). pid is not needed here.
func peerGroups(fd int, _ int32) ([]uint32, error) {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt LOCAL_PEERCRED", err)
	}
	n := min(int(xu.Ngroups), len(xu.Groups))
	return append([]uint32(nil), xu.Groups[:n]...), nil
}
