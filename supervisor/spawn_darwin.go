package supervisor

import (
	"time"

	"golang.org/x/sys/unix"
)

// exitRecheck: darwin attaches a process knote only to a process it
// still finds, and a process in the middle of exiting may be found
// after its NOTE_EXIT was posted. waitExited asks exitedNow this often
// so that such an exit is seen late rather than never.
const exitRecheck = time.Second

// szomb is darwin's p_stat of a zombie (SZOMB in <sys/proc.h>).
const szomb = 5

// exitedNow reports whether pid is a zombie (kern.proc.pid's p_stat).
// It reports false when it cannot tell.
func exitedNow(pid int) bool {
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	return err == nil && kp.Proc.P_pid == int32(pid) && kp.Proc.P_stat == szomb
}

// closeRangeCloexec: darwin has no close_range(2).
func closeRangeCloexec(first uint) error { return unix.ENOSYS }
