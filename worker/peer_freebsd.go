package worker

// FreeBSD's xucred carries the peer's pid (cr_pid, from 13.0), but
// x/sys does not expose it, and there is no LOCAL_PEERPID.
const (
	peerPIDKnown  = false
	peerPIDOption = 0
)
