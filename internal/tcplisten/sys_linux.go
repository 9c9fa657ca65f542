//go:build linux

package tcplisten

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// backlog is net.Listen's: net.core.somaxconn, truncated to what the
// kernel stores (16 bits before Linux 4.1, 32 bits since), or
// SOMAXCONN if it cannot be read.
func backlog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return unix.SOMAXCONN
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return unix.SOMAXCONN
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil || n == 0 {
		return unix.SOMAXCONN
	}
	limit := uint64(1<<32 - 1)
	if !kernelAtLeast(4, 1) {
		limit = 1<<16 - 1
	}
	return int(min(n, limit, 1<<31-1))
}

// kernelAtLeast reports whether the running kernel's version is at
// least major.minor (true if it cannot be told).
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return true
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return true
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return true
	}
	return ma > major || ma == major && mi >= minor
}
