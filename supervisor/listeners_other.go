//go:build !linux

package supervisor

import (
	"os"

	"golang.org/x/sys/unix"
)

// dupUnpolled returns a close-on-exec duplicate of fd in an *os.File.
// (On Linux the file is kept out of the runtime's poller; here
// os.NewFile registers a non-blocking descriptor, which costs this
// process a wake-up per connection, nothing more.)
func dupUnpolled(fd int, name string) (*os.File, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}
