//go:build darwin || freebsd

package tcplisten

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// backlog is net.Listen's: the kernel's limit on the accept queue
// (kern.ipc.somaxconn, kern.ipc.soacceptqueue on FreeBSD), at most
// 65535, or SOMAXCONN if it cannot be read.
func backlog() int {
	name := "kern.ipc.somaxconn"
	if runtime.GOOS == "freebsd" {
		name = "kern.ipc.soacceptqueue"
	}
	n, err := unix.SysctlUint32(name)
	if err != nil || n == 0 {
		return unix.SOMAXCONN
	}
	return int(min(n, 1<<16-1))
}
