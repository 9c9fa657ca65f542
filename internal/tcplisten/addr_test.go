package tcplisten

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		network, address string
		ip               string // "" for every address
		port             uint16
		err              string // part of the error, "" for none
	}{
		{"tcp", ":80", "", 80, ""},
		{"tcp", "*:80", "", 80, ""},
		{"tcp", "0.0.0.0:0", "0.0.0.0", 0, ""},
		{"tcp", "127.0.0.1:65535", "127.0.0.1", 65535, ""},
		{"tcp", "[::1]:8080", "::1", 8080, ""},
		{"tcp", "[fe80::1%2]:80", "fe80::1%2", 80, ""},
		{"tcp", "[::ffff:10.0.0.1]:80", "10.0.0.1", 80, ""},
		{"tcp", "LocalHost:80", "127.0.0.1", 80, ""},
		{"tcp6", "localhost:80", "::1", 80, ""},
		{"tcp4", "[::ffff:10.0.0.1]:1", "10.0.0.1", 1, ""},
		{"tcp4", "[::1]:80", "", 0, "not an IPv4"},
		{"tcp6", "10.0.0.1:80", "", 0, "not an IPv6"},
		{"tcp", "example.com:80", "", 0, "not resolved"},
		{"tcp", "[fe80::1%eth0]:80", "", 0, "interface index"},
		{"tcp", "::1:80", "", 0, "brackets"},
		{"tcp", "127.0.0.1", "", 0, "missing port"},
		{"tcp", "127.0.0.1:", "", 0, "port"},
		{"tcp", "127.0.0.1:080", "", 0, "port"},
		{"tcp", "127.0.0.1:65536", "", 0, "port"},
		{"tcp", "127.0.0.1:-1", "", 0, "port"},
		{"tcp", "[::1:80", "", 0, "want [IPv6]:PORT"},
		{"tcp", "[a[b]:80", "", 0, "bracket"},
		{"udp", ":80", "", 0, "network"},
	} {
		a, err := Parse(tc.network, tc.address)
		if tc.err != "" {
			if err == nil || !errors.Is(err, ErrAddress) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%s, %q) = %+v, %v; want an ErrAddress saying %q", tc.network, tc.address, a, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%s, %q): %v", tc.network, tc.address, err)
			continue
		}
		ip := ""
		if a.IP.IsValid() {
			ip = a.IP.String()
		}
		if ip != tc.ip || a.Port != tc.port || a.Network != tc.network {
			t.Errorf("Parse(%s, %q) = %s %q %d, want %q %d", tc.network, tc.address, a.Network, ip, a.Port, tc.ip, tc.port)
		}
	}
}

// TestSplitHostPortAsNet: where net.SplitHostPort succeeds on a host
// without brackets inside, ours gives the same parts.
func TestSplitHostPortAsNet(t *testing.T) {
	for _, s := range []string{":80", "a:1", "[::1]:2", "1.2.3.4:5", "[1.2.3.4]:5", "*:7", "[]:8"} {
		h, p, err := SplitHostPort(s)
		nh, np, nerr := net.SplitHostPort(s)
		if err != nil || nerr != nil || h != nh || p != np {
			t.Errorf("%q: ours %q %q %v, net's %q %q %v", s, h, p, err, nh, np, nerr)
		}
		if JoinHostPort(h, p) != net.JoinHostPort(h, p) {
			t.Errorf("JoinHostPort(%q, %q) = %q, net's %q", h, p, JoinHostPort(h, p), net.JoinHostPort(h, p))
		}
	}
}

// FuzzParse: Parse never panics; what it accepts, written back with
// JoinHostPort, parses to the same address; and it accepts nothing
// net.SplitHostPort rejects.
func FuzzParse(f *testing.F) {
	for _, s := range []string{":80", "*:0", "127.0.0.1:8080", "[::1]:1", "[fe80::1%3]:9", "localhost:5", "[::ffff:1.2.3.4]:6", "a:b:c", "[x]:1", "::1:80"} {
		f.Add("tcp", s)
	}
	f.Add("tcp4", ":1")
	f.Add("tcp6", "[::]:1")
	f.Fuzz(func(t *testing.T, network, address string) {
		a, err := Parse(network, address)
		if err != nil {
			if !errors.Is(err, ErrAddress) {
				t.Fatalf("error %v does not wrap ErrAddress", err)
			}
			return
		}
		if _, _, err := net.SplitHostPort(address); err != nil {
			t.Fatalf("Parse accepted %q, which net.SplitHostPort rejects: %v", address, err)
		}
		host := ""
		if a.IP.IsValid() {
			host = a.IP.String()
		}
		b, err := Parse(network, JoinHostPort(host, strconv.Itoa(int(a.Port))))
		if err != nil || b != a {
			t.Fatalf("%q: %+v; written back: %+v, %v", address, a, b, err)
		}
		if a.IP.IsValid() && a.IP.Is4In6() {
			t.Fatalf("%q: IPv4-mapped %v not unmapped", address, a.IP)
		}
		_ = netip.Addr{}
	})
}
