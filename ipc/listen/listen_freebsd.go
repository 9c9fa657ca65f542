package listen

import (
	"errors"

	"golang.org/x/sys/unix"
)

// peerPID returns 0: FreeBSD's xucred carries the pid only from 13.0
// on (cr_pid), and x/sys does not expose it.
func peerPID(int) int32 { return 0 }

// renameNoReplace renames from to to, failing with EEXIST if to exists.
// FreeBSD has no renameat2: link(2) is the exclusive step (it fails with
// EEXIST if to exists, atomically), then the old name goes.
func renameNoReplace(from, to string) error {
	if err := unix.Link(from, to); err != nil {
		return err
	}
	if err := unix.Unlink(from); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
