package main

import "golang.org/x/sys/unix"

// markInheritedCloexec marks every descriptor from 3 up close-on-exec
// (close_range(2), Linux 5.11; on older kernels package supervisor's
// walk before each spawn does it).
func markInheritedCloexec() {
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
}
