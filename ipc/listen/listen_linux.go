//go:build linux

package listen

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxPathLen is the longest socket path the kernel accepts: sun_path
// holds 108 bytes including the terminating NUL.
const MaxPathLen = 107

// abstractSupported: Linux has abstract socket names ("@name").
const abstractSupported = true

func idOf(st *unix.Stat_t) fileID { return fileID{dev: st.Dev, ino: st.Ino, ctime: st.Ctim} }

// acceptFD accepts a connection on the listening socket fd: the new fd
// is close-on-exec and non-blocking. It returns unix.EAGAIN when none
// is waiting.
func acceptFD(fd int) (int, error) {
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	return nfd, err
}

// peerCred returns the credentials of the peer of the connected socket
// fd (SO_PEERCRED).
func peerCred(fd int) (Cred, error) {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, os.NewSyscallError("getsockopt SO_PEERCRED", err)
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, nil
}

// renameNoReplace renames from to to, failing with EEXIST if to exists
// (renameat2 RENAME_NOREPLACE).
func renameNoReplace(from, to string) error {
	return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
}

// peerGroups returns the supplementary groups of the peer of the
// connected socket fd, as they were when it connected. Kernels older
// than 4.13 lack SO_PEERGROUPS: then they are read from
// /proc/<pid>/status, which describes the process as it is now (and,
// if the peer has exited and its pid was reused, another process).
func peerGroups(fd int, pid int32) ([]uint32, error) {
	buf := make([]uint32, 32)
	for range 3 {
		size := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch e {
		case 0:
			return buf[:size/4], nil
		case unix.ERANGE: // size now says how much room it needs
			buf = make([]uint32, size/4+1)
		case unix.ENOPROTOOPT:
			return procGroups(pid)
		default:
			return nil, os.NewSyscallError("getsockopt SO_PEERGROUPS", e)
		}
	}
	return nil, errors.New("getsockopt SO_PEERGROUPS: the group list keeps growing")
}

// procGroups reads the supplementary groups of process pid from the
// Groups line of /proc/<pid>/status.
func procGroups(pid int32) ([]uint32, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no pid to read the groups of")
	}
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var groups []uint32
		for _, g := range strings.Fields(rest) {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: bad group %q", f.Name(), g)
			}
			groups = append(groups, uint32(n))
		}
		return groups, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%s has no Groups line", f.Name())
}
