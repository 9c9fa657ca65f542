package supervisor

import (
	"os"

	"golang.org/x/sys/unix"
)

// queued returns the bytes queued in the kernel on the socket of f: in,
// received and not yet read (SIOCINQ), and out, sent and not yet read
// by the peer (SIOCOUTQ); ok is false if they cannot be read.
func queued(f *os.File) (in, out int, ok bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var ierr, oerr error
	if err := rc.Control(func(fd uintptr) {
		in, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		out, oerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	}); err != nil {
		return 0, 0, false
	}
	return in, out, ierr == nil && oerr == nil
}
