//go:build linux

package tcplisten

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hasIPv6 reports whether ::1 can be bound here.
func hasIPv6() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// serve accepts on f through net.FileListener, as a worker does, and
// echoes one byte per connection; it returns the listener to close.
func serve(t *testing.T, f *os.File) net.Listener {
	t.Helper()
	l, err := net.FileListener(f)
	if err != nil {
		t.Fatalf("FileListener: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 1)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Read(b); err == nil {
				c.Write(b)
			}
			c.Close()
		}
	}()
	return l
}

// roundTrip connects to addr and checks that a byte comes back.
func roundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 20*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil {
		return err
	}
	if b[0] != 'x' {
		return errors.New("wrong byte back")
	}
	return nil
}

// TestListenServes: a socket from Listen is a working listener that a
// Go program takes with net.FileListener, and the address bound names
// the port the kernel chose.
func TestListenServes(t *testing.T) {
	f, bound, err := Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if bound.Addr() != netip.MustParseAddr("127.0.0.1") || bound.Port() == 0 {
		t.Fatalf("bound %v, want 127.0.0.1 and a port", bound)
	}
	serve(t, f)
	if err := roundTrip(bound.String()); err != nil {
		t.Fatal(err)
	}
}

// TestListenDualStack: with every address, tcp takes IPv4 and IPv6
// connections on one socket (bound to ::), whether written as nothing,
// "*", 0.0.0.0 or [::]; tcp6 takes IPv6 only; tcp4 IPv4 only.
func TestListenDualStack(t *testing.T) {
	if !hasIPv6() {
		t.Skip("no IPv6 loopback here")
	}
	for _, tc := range []struct {
		network, host string
		v4, v6        bool
		bound         string
	}{
		{"tcp", "", true, true, "::"},
		{"tcp", "*", true, true, "::"},
		{"tcp", "0.0.0.0", true, true, "::"},
		{"tcp", "[::]", true, true, "::"},
		{"tcp6", "", false, true, "::"},
		{"tcp4", "", true, false, "0.0.0.0"},
		{"tcp", "localhost", true, false, "127.0.0.1"},
		{"tcp6", "localhost", false, true, "::1"},
	} {
		name := tc.network + "://" + tc.host
		f, bound, err := Listen(tc.network, tc.host+":0")
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		l := serve(t, f)
		f.Close()
		if bound.Addr().String() != tc.bound {
			t.Errorf("%s: bound %v, want host %s", name, bound, tc.bound)
		}
		port := strconv.Itoa(int(bound.Port()))
		if err := roundTrip("127.0.0.1:" + port); (err == nil) != tc.v4 {
			t.Errorf("%s: IPv4 connection: %v, want it to work: %v", name, err, tc.v4)
		}
		if err := roundTrip("[::1]:" + port); (err == nil) != tc.v6 {
			t.Errorf("%s: IPv6 connection: %v, want it to work: %v", name, err, tc.v6)
		}
		l.Close()
	}
}

// sockState is what distinguishes two listening sockets' set-up.
type sockState struct {
	family, v6only, reuse, acceptconn int
	cloexec, nonblock                 bool
	host                              string
}

func stateOf(t *testing.T, fd int) sockState {
	t.Helper()
	var s sockState
	var err error
	s.family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		t.Fatalf("SO_DOMAIN: %v", err)
	}
	if s.family == unix.AF_INET6 {
		if s.v6only, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil {
			t.Fatalf("IPV6_V6ONLY: %v", err)
		}
	}
	if s.reuse, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); err != nil {
		t.Fatalf("SO_REUSEADDR: %v", err)
	}
	if s.acceptconn, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil {
		t.Fatalf("SO_ACCEPTCONN: %v", err)
	}
	fdfl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	s.cloexec, s.nonblock = fdfl&unix.FD_CLOEXEC != 0, fl&unix.O_NONBLOCK != 0
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	s.host = addrPort(sa).Addr().String()
	return s
}

// TestListenAsNet: for each form of address, Listen's socket has the
// family, IPV6_V6ONLY, SO_REUSEADDR, close-on-exec and non-blocking
// flags and the bound host of net.Listen's for the same address
// (without MPTCP, which Listen does not use).
func TestListenAsNet(t *testing.T) {
	cases := [][2]string{{"tcp", ":0"}, {"tcp", "0.0.0.0:0"}, {"tcp", "127.0.0.1:0"}, {"tcp4", ":0"}, {"tcp4", "127.0.0.1:0"}}
	if hasIPv6() {
		cases = append(cases, [2]string{"tcp", "[::]:0"}, [2]string{"tcp", "[::1]:0"}, [2]string{"tcp6", ":0"}, [2]string{"tcp6", "[::1]:0"})
	}
	for _, c := range cases {
		f, _, err := Listen(c[0], c[1])
		if err != nil {
			t.Errorf("%s %s: %v", c[0], c[1], err)
			continue
		}
		var ours sockState
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) { ours = stateOf(t, int(fd)) })
		f.Close()

		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // see Addr.Listen
		l, err := lc.Listen(t.Context(), c[0], c[1])
		if err != nil {
			t.Fatalf("net.Listen %s %s: %v", c[0], c[1], err)
		}
		var theirs sockState
		rc, _ = l.(*net.TCPListener).SyscallConn()
		rc.Control(func(fd uintptr) { theirs = stateOf(t, int(fd)) })
		l.Close()
		if ours != theirs {
			t.Errorf("%s %s: ours %+v, net.Listen's %+v", c[0], c[1], ours, theirs)
		}
	}
}

// TestListenInUse: binding a port in use fails with EADDRINUSE.
func TestListenInUse(t *testing.T) {
	f, bound, err := Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _, err = Listen("tcp4", bound.String())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), bound.String()) {
		t.Fatalf("second Listen on %v: %v, want EADDRINUSE naming the address", bound, err)
	}
}

// TestBacklog: the backlog is the kernel's somaxconn, as net's.
func TestBacklog(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Skip(err)
	}
	want, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if got := backlog(); got != want || got <= 0 {
		t.Fatalf("backlog() = %d, want somaxconn %d", got, want)
	}
}
