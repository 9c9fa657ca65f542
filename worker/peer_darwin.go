package worker

import "golang.org/x/sys/unix"

// darwin records the peer's pid (LOCAL_PEERPID).
const (
	peerPIDKnown  = true
	peerPIDOption = unix.LOCAL_PEERPID
)
