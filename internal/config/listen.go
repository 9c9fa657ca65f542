package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/tcplisten"
)

// Listen is one listener of a program (key listen, flag --listen): an
// address the supervisor binds once and passes to every worker in the
// systemd socket-activation layout (see docs/LISTENERS.md).
type Listen struct {
	// Name is the listener's name in LISTEN_FDNAMES: as written before
	// "=", or else derived from the address (see [ParseListen]).
	Name string
	// Network is "tcp", "tcp4", "tcp6" or "unix".
	Network string
	// Address is "HOST:PORT" for TCP (HOST an IP address, "localhost",
	// or empty or "*": every address), a path or "@name" (a Linux
	// abstract socket) for unix.
	Address string
}

// Addr returns the listener's address without its name, in the form
// ParseListen reads ("tcp://127.0.0.1:8080", "unix:/run/app.sock"): it
// identifies the socket, so that a reload keeps the sockets of the
// addresses still listed.
func (l Listen) Addr() string {
	if l.Network == "unix" {
		if strings.HasPrefix(l.Address, "//") {
			return "unix://" + l.Address // read back as the absolute path
		}
		return "unix:" + l.Address
	}
	return l.Network + "://" + l.Address
}

// String returns "NAME=ADDR", which ParseListen reads back to l.
func (l Listen) String() string { return l.Name + "=" + l.Addr() }

// ParseListen parses a listener as written in the listen key and the
// --listen flag: [NAME=]ADDR, where ADDR is
//
//	tcp://HOST:PORT   (also tcp4:// and tcp6://; HOST is an IPv4
//	                  address, a bracketed IPv6 one, localhost (the
//	                  loopback address), or empty or * for every
//	                  address; no other name, as no name is resolved;
//	                  PORT is 0 to 65535, 0 for any free port)
//	unix:PATH         (also unix:///ABSOLUTE/PATH; "@name" is a Linux
//	                  abstract socket)
//
// and NAME, its name in LISTEN_FDNAMES, is 1 to 255 of A-Z, a-z, 0-9,
// '_', '.' and '-'. Without NAME a listener is named after its address:
// "tcp-PORT" for TCP, "unix-BASE" for unix, BASE being the path's last
// element with every other character replaced by '_' (so that the name
// fits LISTEN_FDNAMES, which cannot escape a ':').
func ParseListen(s string) (Listen, error) {
	var l Listen
	addr := s
	if i := strings.IndexByte(s, '='); i >= 0 && !strings.ContainsAny(s[:i], ":/") {
		l.Name, addr = s[:i], s[i+1:]
		if !contract.ValidListenName(l.Name) {
			return l, fmt.Errorf("listener name %q: want 1 to %d of A-Z, a-z, 0-9, '_', '.' and '-'", l.Name, contract.MaxListenNameLen)
		}
	}
	if strings.IndexByte(addr, 0) >= 0 {
		return l, errors.New("address contains a NUL character")
	}
	scheme, rest, ok := strings.Cut(addr, ":")
	if !ok {
		return l, fmt.Errorf("address %q: want tcp://HOST:PORT or unix:PATH", addr)
	}
	switch scheme {
	case "tcp", "tcp4", "tcp6":
		hostport, ok := strings.CutPrefix(rest, "//")
		if !ok {
			return l, fmt.Errorf("address %q: want %s://HOST:PORT", addr, scheme)
		}
		host, port, err := tcplisten.SplitHostPort(hostport)
		if err != nil {
			return l, fmt.Errorf("address %q: want %s://HOST:PORT: %v", addr, scheme, trimSentinel(err))
		}
		if _, err := tcplisten.Parse(scheme, hostport); err != nil {
			return l, fmt.Errorf("address %q: %v", addr, trimSentinel(err))
		}
		l.Network, l.Address = scheme, tcplisten.JoinHostPort(host, port)
		if l.Name == "" {
			l.Name = "tcp-" + port
		}
	case "unix":
		path := rest
		if p, ok := strings.CutPrefix(rest, "//"); ok {
			if !strings.HasPrefix(p, "/") {
				return l, fmt.Errorf("address %q: unix://PATH takes an absolute path (unix:///run/app.sock); write unix:PATH for a relative one", addr)
			}
			path = p
		}
		if path == "" || path == "@" {
			return l, fmt.Errorf("address %q: want unix:PATH", addr)
		}
		l.Network, l.Address = "unix", path
		if l.Name == "" {
			l.Name = unixName(path)
		}
	default:
		return l, fmt.Errorf("address %q: unknown scheme %q: want tcp://HOST:PORT (or tcp4://, tcp6://) or unix:PATH", addr, scheme)
	}
	return l, nil
}

// trimSentinel returns err's message without the sentinel's prefix.
func trimSentinel(err error) string {
	return strings.TrimPrefix(err.Error(), tcplisten.ErrAddress.Error()+": ")
}

// unixName derives a listener's name from a socket path.
func unixName(path string) string {
	base := filepath.Base(strings.TrimPrefix(path, "@"))
	b := []byte("unix-" + base)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) > contract.MaxListenNameLen {
		b = b[:contract.MaxListenNameLen]
	}
	return string(b)
}

// listen sets p.Listen from it, an array of listener strings; each
// address and each name at most once in a program.
func (c *checker) listen(p *Program, it item) {
	a, ok := it.val.([]any)
	if !ok {
		c.typeError(it, `an array of listeners such as ["http=tcp://:8080", "unix:/run/app.sock"]`)
		return
	}
	if len(a) > MaxListen {
		c.invalid(it, "%d listeners, more than the limit of %d", len(a), MaxListen)
		return
	}
	for i, v := range a {
		e := it.elem(i, v)
		s, ok := c.text(e)
		if !ok {
			continue
		}
		l, err := ParseListen(s)
		if err != nil {
			c.invalid(e, "%v", err)
			continue
		}
		dup := false
		for _, o := range p.Listen {
			switch {
			case o.Addr() == l.Addr():
				c.invalid(e, "address %s is listed twice", l.Addr())
			case o.Name == l.Name:
				c.invalid(e, "listener name %q is used twice (by %s and %s); name them: NAME=ADDRESS", l.Name, o.Addr(), l.Addr())
			default:
				continue
			}
			dup = true
			break
		}
		if !dup {
			p.Listen = append(p.Listen, l)
		}
	}
}

// listenersShared checks that no address is listed by two programs: a
// socket is passed to the workers of one program.
func (c *checker) listenersShared(progs []Program) {
	owner := map[string]string{}
	for _, p := range progs {
		for _, l := range p.Listen {
			if o, ok := owner[l.Addr()]; ok {
				c.invalid(c.newItem(toml.Key{"programs", p.Name, "listen"}, nil, p.Line),
					"address %s is also a listener of program %q: a socket belongs to one program", l.Addr(), o)
				continue
			}
			owner[l.Addr()] = p.Name
		}
	}
}
