package listen

import "golang.org/x/sys/unix"

// peerPID returns the pid of the peer of fd (LOCAL_PEERPID), or 0.
func peerPID(fd int) int32 {
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	if err != nil {
		return 0
	}
	return int32(pid)
}

// renameNoReplace renames from to to, failing with EEXIST if to exists
// (renamex_np RENAME_EXCL).
func renameNoReplace(from, to string) error {
	return unix.RenamexNp(from, to, unix.RENAME_EXCL)
}
