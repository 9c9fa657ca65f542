package tcplisten

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Addr is a parsed TCP listening address.
type Addr struct {
	// Network is "tcp" (IPv4 and IPv6), "tcp4" or "tcp6".
	Network string
	// IP is the address to bind; the zero netip.Addr (not valid) means
	// every address of the network.
	IP netip.Addr
	// Port is the port, 0 for one the kernel chooses.
	Port uint16
}

// Parse parses address, "HOST:PORT" or "[HOST]:PORT", for network
// "tcp", "tcp4" or "tcp6": HOST as [ParseHost] takes it, PORT a decimal
// number from 0 to 65535 without leading zeros.
func Parse(network, address string) (Addr, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return Addr{}, fmt.Errorf("%w: network %q: want tcp, tcp4 or tcp6", ErrAddress, network)
	}
	host, port, err := SplitHostPort(address)
	if err != nil {
		return Addr{}, err
	}
	ip, err := ParseHost(network, host)
	if err != nil {
		return Addr{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || port != strconv.FormatUint(p, 10) {
		return Addr{}, fmt.Errorf("%w: port %q: want a number from 0 to 65535", ErrAddress, port)
	}
	return Addr{Network: network, IP: ip, Port: uint16(p)}, nil
}

// ParseHost parses the HOST of a listening address for network "tcp",
// "tcp4" or "tcp6". Empty and "*" mean every address (the zero
// netip.Addr); "localhost" (in any case) means the loopback address,
// 127.0.0.1, or ::1 for tcp6; anything else must be an IP address, of
// the network's family for tcp4 and tcp6 (an IPv4-mapped IPv6 address
// counts as IPv4). An IPv6 zone must be a number (an interface index).
// No name is resolved: like systemd's ListenStream=, a listener binds
// what it is told, the same at every start whatever DNS says.
func ParseHost(network, host string) (netip.Addr, error) {
	switch {
	case host == "" || host == "*":
		return netip.Addr{}, nil
	case strings.EqualFold(host, "localhost"):
		if network == "tcp6" {
			return netip.IPv6Loopback(), nil
		}
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: host %q: want an IP address (IPv6 in brackets), localhost, or nothing or * for every address; host names are not resolved", ErrAddress, host)
	}
	if ip.Is4In6() {
		ip = ip.Unmap()
	}
	if z := ip.Zone(); z != "" {
		if _, err := strconv.ParseUint(z, 10, 32); err != nil {
			return netip.Addr{}, fmt.Errorf("%w: host %q: the zone must be an interface index (a number), not a name", ErrAddress, host)
		}
	}
	switch {
	case network == "tcp4" && !ip.Is4():
		return netip.Addr{}, fmt.Errorf("%w: host %s is not an IPv4 address", ErrAddress, host)
	case network == "tcp6" && !ip.Is6():
		return netip.Addr{}, fmt.Errorf("%w: host %s is not an IPv6 address", ErrAddress, host)
	}
	return ip, nil
}

// SplitHostPort splits "HOST:PORT" or "[HOST]:PORT" into HOST and PORT,
// as net.SplitHostPort does: a HOST with a colon must be in brackets.
func SplitHostPort(hostport string) (host, port string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("%w: %q: %s", ErrAddress, hostport, why)
	}
	i := strings.LastIndexByte(hostport, ':')
	if i < 0 {
		return bad("missing port: want HOST:PORT")
	}
	host, port = hostport[:i], hostport[i+1:]
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end != len(host)-1 {
			return bad("want [IPv6]:PORT")
		}
		host = host[1:end]
		if strings.ContainsAny(host, "[]") {
			return bad("unexpected bracket")
		}
		return host, port, nil
	}
	if strings.ContainsAny(host, ":[]") {
		return bad("an IPv6 host goes in brackets: [IPv6]:PORT")
	}
	return host, port, nil
}

// JoinHostPort joins host and port, bracketing a host with a colon, as
// net.JoinHostPort does.
func JoinHostPort(host, port string) string {
	if strings.IndexByte(host, ':') >= 0 {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}
