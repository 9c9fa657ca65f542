//go:build linux

package listen_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// Tests of FromFile: a listening socket somebody else created (systemd,
// for socket activation) and owns the path of.

// udsPassed creates a blocking listening socket bound to addr, as
// systemd passes one, and returns it as a file the caller owns.
func udsPassed(tb testing.TB, addr string) *os.File {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		tb.Fatalf("bind %s: %v", addr, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		tb.Fatalf("listen %s: %v", addr, err)
	}
	return os.NewFile(uintptr(fd), "LISTEN_FD_3")
}

// TestFromFile: a Listener on a passed socket accepts as New's does
// (close-on-exec, non-blocking connections with credentials), takes f
// over (closes it), creates no lock file, and on Close leaves the
// socket file in place and the socket listening for its other holder,
// which still gets a connection made after the Close: none is lost
// between one Listener and the next.
func TestFromFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(testutil.ShortDir(t, "pv"), "s")
	f := udsPassed(t, path)
	// The other holder (systemd keeps its copy across restarts).
	keep, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(keep)

	l, err := listen.FromFile(f, listen.Config{})
	if err != nil {
		t.Fatalf("FromFile: %v", err)
	}
	defer l.Close()
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("f after FromFile: Close says %v, want os.ErrClosed (FromFile closes it)", err)
	}
	if got := l.Addr(); got != path {
		t.Errorf("Addr() = %q, want the bound path %q", got, path)
	}
	// A connection made before anybody accepts waits in the backlog.
	c := testutil.MustConnectUnix(t, path)
	s, cred := udsAccept(t, l)
	if cred.UID != uint32(os.Getuid()) || cred.PID != int32(os.Getpid()) {
		t.Errorf("peer credentials %+v, want our uid and pid", cred)
	}
	udsExchange(t, c, s)
	if ce, err := isCloexec(s); err != nil || !ce {
		t.Errorf("accepted fd close-on-exec: %v %v", ce, err)
	}
	if _, err := os.Lstat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("FromFile created a lock file: %v", err)
	}

	l.Close()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("socket file after Close: %v (mode %o); FromFile's Listener must leave it", err, st.Mode)
	}
	c2 := testutil.MustConnectUnix(t, path) // queued on the socket the other holder keeps
	// The shared socket is non-blocking now (FromFile set it so): poll.
	var n2 int
	udsPoll(t, "the other holder to accept the connection made after Close", func() bool {
		n2, _, err = unix.Accept4(keep, unix.SOCK_CLOEXEC)
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("accept on the other holder's copy: %v", err)
		}
		return err == nil
	}, nil)
	defer unix.Close(n2)
	udsExchange(t, c2, n2)
}

// TestFromFileAbstract: an abstract name reads back as "@name", and
// Close has nothing to remove.
func TestFromFileAbstract(t *testing.T) {
	t.Parallel()
	name := "@pv-fromfile-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + filepath.Base(testutil.ShortDir(t, "pv"))
	l, err := listen.FromFile(udsPassed(t, name), listen.Config{})
	if err != nil {
		t.Fatalf("FromFile: %v", err)
	}
	defer l.Close()
	if l.Addr() != name {
		t.Errorf("Addr() = %q, want %q", l.Addr(), name)
	}
	udsServes(t, l, name)
}

// TestFromFileAcceptEnds: Close wakes an Accept on a passed socket,
// which returns ErrClosed, and a context ends one as with New.
func TestFromFileAcceptEnds(t *testing.T) {
	t.Parallel()
	path := filepath.Join(testutil.ShortDir(t, "pv"), "s")
	l, err := listen.FromFile(udsPassed(t, path), listen.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { _, err := l.Accept(ctx); ch <- err }()
	cancel()
	if err := testutil.Receive(t, ch, testutil.UDSWait, "Accept after its context ended"); !errors.Is(err, context.Canceled) {
		t.Errorf("Accept: %v, want context.Canceled", err)
	}
	go func() { _, err := l.Accept(context.Background()); ch <- err }()
	l.Close()
	if err := testutil.Receive(t, ch, testutil.UDSWait, "Accept after Close"); !errors.Is(err, listen.ErrClosed) {
		t.Errorf("Accept: %v, want ErrClosed", err)
	}
}

// TestFromFileRefuses: anything but a listening Unix stream socket is
// refused with ErrNotListener and a message saying what it is, and the
// file stays the caller's (still open).
func TestFromFileRefuses(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	sockFile := func(tb testing.TB, typ int, bind string, listen bool) *os.File {
		fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			tb.Fatal(err)
		}
		if bind != "" {
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: bind}); err != nil {
				tb.Fatal(err)
			}
		}
		if listen {
			if err := unix.Listen(fd, 1); err != nil {
				tb.Fatal(err)
			}
		}
		return os.NewFile(uintptr(fd), "passed")
	}
	cases := []struct {
		name string
		file func(tb testing.TB) *os.File
		want string
	}{
		{"regular file", func(tb testing.TB) *os.File {
			f, err := os.Create(filepath.Join(dir, "regular"))
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}, "it is a regular file"},
		{"pipe", func(tb testing.TB) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				tb.Fatal(err)
			}
			w.Close()
			return r
		}, "it is a fifo"},
		{"datagram", func(tb testing.TB) *os.File {
			return sockFile(tb, unix.SOCK_DGRAM, filepath.Join(dir, "dgram"), false)
		}, "it is a Unix datagram (SOCK_DGRAM) socket bound to " + filepath.Join(dir, "dgram")},
		{"seqpacket", func(tb testing.TB) *os.File {
			return sockFile(tb, unix.SOCK_SEQPACKET, filepath.Join(dir, "seq"), true)
		}, "it is a Unix seqpacket (SOCK_SEQPACKET) socket"},
		{"bound, not listening", func(tb testing.TB) *os.File {
			return sockFile(tb, unix.SOCK_STREAM, filepath.Join(dir, "bound"), false)
		}, "it is a Unix stream socket bound to " + filepath.Join(dir, "bound") + " that is not listening"},
		{"connection", func(tb testing.TB) *os.File {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				tb.Fatal(err)
			}
			unix.Close(fds[1])
			return os.NewFile(uintptr(fds[0]), "conn")
		}, "it is a Unix stream socket (unbound) that is not listening"},
		{"tcp", func(tb testing.TB) *os.File {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				tb.Skipf("no IPv4 loopback: %v", err)
			}
			defer ln.Close()
			f, err := ln.(*net.TCPListener).File()
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}, "it is an AF_INET (IPv4) socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.file(t)
			defer f.Close()
			l, err := listen.FromFile(f, listen.Config{})
			if err == nil {
				l.Close()
				t.Fatalf("FromFile accepted a %s", tc.name)
			}
			if !errors.Is(err, listen.ErrNotListener) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("FromFile: %v\nwant ErrNotListener saying %q", err, tc.want)
			}
			if _, err := f.Stat(); err != nil {
				t.Errorf("f after a refusal: %v; it must stay open, the caller's", err)
			}
		})
	}
}
