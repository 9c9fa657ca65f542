package supervisor

import (
	"os"

	"golang.org/x/sys/unix"
)

// dupUnpolled returns a close-on-exec duplicate of fd in an *os.File
// that the runtime's poller does not watch and whose Fd method does not
// touch O_NONBLOCK. os.NewFile registers a non-blocking descriptor with
// the poller (and a listener is non-blocking), so the file is made for
// a blocking placeholder, the read end of a fresh pipe, and dup3(2)
// then atomically puts the duplicate in the placeholder's place: the
// File holds the listener under the number it was made for, and
// closing it closes the listener's duplicate.
func dupUnpolled(fd int, name string) (*os.File, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	unix.Close(p[1])
	f := os.NewFile(uintptr(p[0]), name) // blocking: not registered
	if err := unix.Dup3(fd, p[0], unix.O_CLOEXEC); err != nil {
		f.Close()
		return nil, os.NewSyscallError("dup3", err)
	}
	return f, nil
}
