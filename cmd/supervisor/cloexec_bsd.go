//go:build darwin || freebsd

package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// markInheritedCloexec marks every descriptor from 3 up close-on-exec,
// walking /dev/fd (complete on darwin, and on FreeBSD where fdescfs is
// mounted; package supervisor does the same before each spawn, with
// close_range(2) where FreeBSD has it).
func markInheritedCloexec() {
	d, err := os.Open("/dev/fd")
	if err != nil {
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && fd >= 3 {
			unix.CloseOnExec(fd)
		}
	}
}
