package tcplisten

import (
	"errors"
	"fmt"
	"github.com/pairvisor/pairvisor/internal/sysfd"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Listen binds address ("HOST:PORT", see [Parse]) for network "tcp",
// "tcp4" or "tcp6" and listens on it. It returns the listening socket,
// close-on-exec and non-blocking, which the caller owns, and the address
// bound (with the port the kernel chose for port 0). Errors from the
// system calls wrap their errno (errors.Is(err, syscall.EADDRINUSE)).
func Listen(network, address string) (*os.File, netip.AddrPort, error) {
	a, err := Parse(network, address)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	f, bound, err := a.Listen()
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	return f, bound, nil
}

// Listen binds a and listens on it; see the function Listen.
//
// The socket is made as net.Listen makes it. tcp4 is an AF_INET
// socket, tcp6 an AF_INET6 one with IPV6_V6ONLY on. tcp with an IPv4
// address is AF_INET; with an IPv6 one, AF_INET6 with IPV6_V6ONLY off;
// with every address (no host, "*", 0.0.0.0 or ::) it is an AF_INET6
// socket bound to :: with IPV6_V6ONLY off, which accepts IPv4
// connections too, or AF_INET bound to 0.0.0.0 on a system without
// IPv6.
//
// One difference: since Go 1.24, net.Listen makes a Multipath TCP
// socket where the kernel has MPTCP; this is plain TCP, as systemd's
// ListenStream= is (clients see no difference: an MPTCP listener
// serves them as TCP unless both ends speak MPTCP).
func (a Addr) Listen() (*os.File, netip.AddrPort, error) {
	fd, err := a.bind()
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	if err := unix.Listen(fd, backlog()); err != nil {
		unix.Close(fd)
		return nil, netip.AddrPort{}, os.NewSyscallError("listen", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	bound := addrPort(sa)
	return os.NewFile(uintptr(fd), "tcp:"+bound.String()), bound, nil
}

// bind returns a new socket bound to a, with the options set.
func (a Addr) bind() (int, error) {
	wildcard := !a.IP.IsValid() || a.IP.IsUnspecified()
	switch {
	case a.Network == "tcp4" || a.Network == "tcp" && !wildcard && a.IP.Is4():
		return bindInet4(a.IP, a.Port)
	case a.Network == "tcp6":
		return bindInet6(a.IP, a.Port, true)
	case !wildcard:
		return bindInet6(a.IP, a.Port, false)
	}
	fd, err := bindInet6(netip.Addr{}, a.Port, false)
	if errors.Is(err, unix.EAFNOSUPPORT) { // no IPv6 here
		return bindInet4(netip.Addr{}, a.Port)
	}
	return fd, err
}

func bindInet4(ip netip.Addr, port uint16) (int, error) {
	sa := &unix.SockaddrInet4{Port: int(port)}
	if ip.IsValid() {
		sa.Addr = ip.As4()
	}
	fd, err := sysfd.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, true)
	if err != nil {
		return -1, err
	}
	return fd, bindWith(fd, sa)
}

func bindInet6(ip netip.Addr, port uint16, v6only bool) (int, error) {
	sa := &unix.SockaddrInet6{Port: int(port)}
	if ip.IsValid() {
		sa.Addr = ip.As16()
		if z := ip.Zone(); z != "" {
			id, err := strconv.ParseUint(z, 10, 32)
			if err != nil {
				return -1, fmt.Errorf("%w: zone %q: want an interface index", ErrAddress, z)
			}
			sa.ZoneId = uint32(id)
		}
	}
	fd, err := sysfd.Socket(unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP, true)
	if err != nil {
		return -1, err
	}
	v := 0
	if v6only {
		v = 1
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	return fd, bindWith(fd, sa)
}

// bindWith sets SO_REUSEADDR on fd and binds it to sa; on error it
// closes fd.
func bindWith(fd int, sa unix.Sockaddr) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("setsockopt", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("bind", err)
	}
	return nil
}

// addrPort converts a socket address from getsockname.
func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			ip = ip.WithZone(strconv.FormatUint(uint64(sa.ZoneId), 10))
		}
		return netip.AddrPortFrom(ip, uint16(sa.Port))
	}
	return netip.AddrPort{}
}
