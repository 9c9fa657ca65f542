//go:build linux

package listen_test

import (
	"errors"
	"net"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// TestSyscallConn: the raw socket is the listening one (a connection
// to the path is accepted on it), and there is none once closed.
func TestSyscallConn(t *testing.T) {
	t.Parallel()
	path := filepath.Join(testutil.ShortDir(t, "pv"), "s")
	l, err := listen.New(path, listen.Config{WatchPeriod: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rc, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var nfd int
	err = rc.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(p, 10_000); err == nil {
			nfd, _, err = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			if err != nil {
				nfd = -1
			}
		}
	})
	if err != nil || nfd <= 0 {
		t.Fatalf("accept on the raw socket: %v (fd %d)", err, nfd)
	}
	unix.Close(nfd)
	l.Close()
	if _, err := l.SyscallConn(); !errors.Is(err, listen.ErrClosed) {
		t.Errorf("SyscallConn after Close: %v, want ErrClosed", err)
	}
}
