//go:build linux

package testutil

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// CopyExecutable copies this test binary to dir/name with mode 0755 and
// returns the copy's path: go builds the binary in a 0700 directory,
// and a process run as another user (with dir searchable by it) needs a
// copy it may execute.
//
// The copy is written with syscall.ForkLock held for writing: a child
// forked (by a parallel test) while the copy is open for writing would
// hold that descriptor until its own exec, and executing the copy
// meanwhile fails with ETXTBSY ("text file busy").
func CopyExecutable(tb testing.TB, dir, name string) string {
	tb.Helper()
	src, err := os.Open(Executable())
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, name)
	syscall.ForkLock.Lock()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}
	syscall.ForkLock.Unlock()
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// WriteExecutable writes content to a new file at path with mode 0755,
// with syscall.ForkLock held for writing as CopyExecutable does, so
// that executing it at once cannot fail with ETXTBSY.
func WriteExecutable(tb testing.TB, path string, content []byte) {
	tb.Helper()
	syscall.ForkLock.Lock()
	err := os.WriteFile(path, content, 0o755)
	syscall.ForkLock.Unlock()
	if err != nil {
		tb.Fatal(err)
	}
}

// FullListener binds a Unix stream socket at path, listens on it with a
// backlog of 0, fills that backlog with one connection of its own, and
// never accepts: a hung server whose accept queue is full. Further
// connects block, or fail with EAGAIN when non-blocking. It returns the
// listening descriptor; both descriptors are closed at the end of the
// test.
func FullListener(tb testing.TB, path string) int {
	tb.Helper()
	lfd := socket(tb, 0)
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Connect(socket(tb, unix.SOCK_NONBLOCK), &unix.SockaddrUnix{Name: path}); err != nil {
		tb.Fatal(err)
	}
	return lfd
}

// socket returns a close-on-exec Unix stream socket with flags, closed
// at the end of the test.
func socket(tb testing.TB, flags int) int {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|flags, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}
