package listen

import (
	"fmt"
	"os"
)

// Cred is who a connected peer is, as the kernel recorded it when the
// peer connected (SO_PEERCRED on Linux, LOCAL_PEERCRED on the BSDs).
type Cred struct {
	PID int32 // 0 where the system does not say (another pid namespace; FreeBSD)
	UID uint32
	GID uint32 // primary group
}

// describe returns " (uid U, pid P)" for a peer; the pid is left out
// when the kernel does not know it.
func (c Cred) describe() string {
	if c.PID == 0 {
		return fmt.Sprintf(" (uid %d)", c.UID)
	}
	return fmt.Sprintf(" (uid %d, pid %d)", c.UID, c.PID)
}

// Peer is an accepted connection and who is at its other end.
type Peer struct {
	// File is the connection: close-on-exec, non-blocking and
	// registered with the runtime's poller. The caller owns it.
	File *os.File
	// Cred is the peer's credentials, recorded when it connected.
	Cred Cred
}

// Groups returns the peer's supplementary groups. On Linux they are
// those it had when it connected (SO_PEERGROUPS; on kernels before 4.13
// they are read from /proc, which describes the process as it is now);
// on the BSDs, from the same record as Cred. Fetching them costs a
// system call, so Accept leaves it to callers that need them.
func (p *Peer) Groups() ([]uint32, error) {
	rc, err := p.File.SyscallConn()
	if err != nil {
		return nil, err
	}
	var groups []uint32
	var gerr error
	if err := rc.Control(func(fd uintptr) { groups, gerr = peerGroups(int(fd), p.Cred.PID) }); err != nil {
		return nil, err
	}
	return groups, gerr
}
