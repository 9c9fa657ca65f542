//go:build linux

package ipc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cred is who a connected peer is: the credentials the kernel recorded
// when it connected (SO_PEERCRED) and, where a group list asks for
// them, its supplementary groups (SO_PEERGROUPS, recorded at the same
// moment, so a pid reused since cannot lie about them).
type cred struct {
	uid, gid uint32
	pid      int32
	groups   []uint32
}

// inGroup reports whether the peer's primary or a supplementary group
// is in gids.
func (c *cred) inGroup(gids []uint32) bool {
	if slices.Contains(gids, c.gid) {
		return true
	}
	for _, g := range c.groups {
		if slices.Contains(gids, g) {
			return true
		}
	}
	return false
}

// describeCred returns " (uid U, pid P)" for a peer; the pid is left
// out when the kernel does not know it (another pid namespace).
func describeCred(uc *unix.Ucred) string {
	if uc.Pid == 0 {
		return fmt.Sprintf(" (uid %d)", uc.Uid)
	}
	return fmt.Sprintf(" (uid %d, pid %d)", uc.Uid, uc.Pid)
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

// checkServerCred is Dial's check of the server it reached, before it
// sends anything: the server must run as root, as our effective uid or
// as one of trust.
func checkServerCred(fd int, trust []uint32) error {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_PEERCRED", err)
	}
	euid := uint32(os.Geteuid())
	if uc.Uid == 0 || uc.Uid == euid || slices.Contains(trust, uc.Uid) {
		return nil
	}
	who := fmt.Sprintf("uid %d", uc.Uid)
	if uc.Pid != 0 {
		who += fmt.Sprintf(", pid %d", uc.Pid)
	}
	want := fmt.Sprintf("root or uid %d", euid)
	if len(trust) > 0 {
		want = fmt.Sprintf("root, uid %d or one of the trusted uids %v", euid, trust)
	}
	return fmt.Errorf("%w: it is %s, not %s", ErrUntrustedPeer, who, want)
}
