package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/config"
	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/tcplisten"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// Socket activation. When systemd (or systemd-socket-activate) passed
// us sockets (LISTEN_PID is our pid and LISTEN_FDS at least 1), --socket
// and --listen take the passed sockets meant for them instead of
// binding their own.
//
// --socket PATH takes, in this order:
//
//  1. the one bound to PATH: the same abstract @name, the same path
//     (a relative PATH is taken from our working directory), or the
//     same file under another name (/var/run/x for /run/x);
//  2. failing that, the one named (LISTEN_FDNAMES, which a socket
//     unit sets with FileDescriptorName=) "pairvisor" or PATH's last
//     element, whatever it is bound to: for a path the service sees
//     elsewhere than systemd bound it (RootDirectory=, a bind mount).
//
// Each --listen NAME=ADDR (or listen = in the file) then takes, of the
// sockets left:
//
//  1. the one bound to ADDR: for tcp, a listening TCP socket on the same
//     port and the same IP address (or any wildcard address for a
//     wildcard ADDR: systemd's ListenStream=80 binds [::]:80); for unix,
//     as --socket's step 1;
//  2. failing that, the one named NAME, which must then be a listening
//     stream socket of ADDR's kind.
//
// A --listen that finds none binds ADDR itself, as without systemd (if
// systemd holds ADDR, that bind fails: address in use). --socket is
// stricter: a service that systemd activated must not quietly bind a
// socket nobody connects to, so a --socket that finds none is an error
// (exit 1) listing what was passed, unless a --listen took one of them.
// So is two candidates at one step, or a candidate of the wrong kind.
// The passed sockets not taken are closed, each with a warning. The
// sockets are systemd's: we neither bind, lock, chmod nor remove them,
// and --mode and --group do not apply. The variables are removed from
// our environment once read; the fds are close-on-exec (passedFiles
// sets it), so neither reaches a worker except as a --listen's socket,
// which the worker gets as any listener.

// fdNamePairvisor is the LISTEN_FDNAMES name that marks a passed socket
// as --socket's, whatever address it has (FileDescriptorName=pairvisor).
const fdNamePairvisor = "pairvisor"

// maxPassed bounds LISTEN_FDS: more is not a socket unit's doing.
const maxPassed = 1024

// passedFiles returns the sockets a service manager passed us by
// systemd's socket-activation protocol: LISTEN_PID is our pid, and
// LISTEN_FDS descriptors from fd 3 on, named by LISTEN_FDNAMES (a name
// missing or empty becomes "LISTEN_FD_<n>"). Each is made close-on-exec.
// The variables are removed from our environment whatever they say, so
// that neither they nor the descriptors reach a child.
//
// (github.com/coreos/go-systemd/v22/activation does the same, but links
// crypto/tls into this binary, which every worker re-executes.)
func passedFiles() []*os.File {
	pid, pidErr := strconv.Atoi(os.Getenv(contract.EnvListenPID))
	n, nErr := strconv.Atoi(os.Getenv(contract.EnvListenFDs))
	names := strings.Split(os.Getenv(contract.EnvListenFDNames), ":")
	os.Unsetenv(contract.EnvListenPID)
	os.Unsetenv(contract.EnvListenFDs)
	os.Unsetenv(contract.EnvListenFDNames)
	if pidErr != nil || nErr != nil || pid != os.Getpid() || n <= 0 {
		return nil
	}
	n = min(n, maxPassed) // any further ones stay open, close-on-exec like every inherited fd (main)
	files := make([]*os.File, 0, n)
	for i := range n {
		fd := contract.ListenFDStart + i
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files
}

// passedSocket is one descriptor systemd passed.
type passedSocket struct {
	f      *os.File
	fd     int
	name   string         // from LISTEN_FDNAMES; "" if none
	unix   bool           // an AF_UNIX socket
	addr   string         // bound AF_UNIX address; "" if none or not AF_UNIX
	tcp    netip.AddrPort // bound address of an AF_INET or AF_INET6 socket
	stream bool           // SOCK_STREAM
	listen bool           // listening (SO_ACCEPTCONN)
}

func (p passedSocket) String() string {
	s := fmt.Sprintf("fd %d", p.fd)
	if p.name != "" {
		s += fmt.Sprintf(" named %q", p.name)
	}
	kind := "socket"
	switch {
	case !p.stream:
		kind = "non-stream socket"
	case !p.listen:
		kind = "non-listening socket"
	}
	switch {
	case p.tcp.IsValid():
		return s + " (a TCP " + kind + " on " + p.tcp.String() + ")"
	case !p.unix:
		return s + " (not a Unix or TCP socket)"
	case p.addr == "":
		return s + " (an unbound Unix " + kind + ")"
	}
	return s + " (a Unix " + kind + " bound to " + p.addr + ")"
}

// examinePassed reads what f, a descriptor systemd passed, is.
func examinePassed(f *os.File) passedSocket {
	p := passedSocket{f: f, fd: -1}
	if !strings.HasPrefix(f.Name(), "LISTEN_FD_") { // passedFiles' name for an unnamed fd
		p.name = f.Name()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return p
	}
	rc.Control(func(fd uintptr) {
		p.fd = int(fd)
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		p.stream = err == nil && typ == unix.SOCK_STREAM
		acc, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		p.listen = err == nil && acc == 1
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			return
		}
		switch a := sa.(type) {
		case *unix.SockaddrUnix:
			p.unix = true
			if a.Name != "@" { // an unbound socket's empty address
				p.addr = a.Name
			}
		case *unix.SockaddrInet4:
			p.tcp = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
		case *unix.SockaddrInet6:
			p.tcp = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
		}
	})
	return p
}

// passedSockets holds what systemd passed until --socket and the
// listeners have taken theirs; finish closes the rest. One goroutine
// (runCmd's or serveCmd's, before anything starts) uses it.
type passedSockets struct {
	socks []passedSocket
	taken []bool
	log   hclog.Logger
}

// newPassedSockets takes over the sockets passed to this process.
func newPassedSockets(log hclog.Logger) *passedSockets {
	files := passedFiles()
	p := &passedSockets{socks: make([]passedSocket, len(files)), taken: make([]bool, len(files)), log: log}
	for i, f := range files {
		p.socks[i] = examinePassed(f)
	}
	return p
}

// list describes every socket passed, for errors.
func (p *passedSockets) list() string {
	s := make([]string, len(p.socks))
	for i, ps := range p.socks {
		s[i] = ps.String()
	}
	return strings.Join(s, "; ")
}

// forSocket returns a Listener on the passed socket for --socket path,
// or nil and no error if none was passed for it (finish decides whether
// that is an error).
func (p *passedSockets) forSocket(path string) (*listen.Listener, error) {
	if len(p.socks) == 0 {
		return nil, nil
	}
	i, err := pickPassed(path, p.socks, p.taken)
	if err != nil || i < 0 {
		return nil, err
	}
	ps := p.socks[i]
	l, err := listen.FromFile(ps.f, listen.Config{Logger: p.log})
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) { // it names the fd by its LISTEN_FDNAMES name: ps says more
			err = pe.Err
		}
		return nil, fmt.Errorf("--socket %s: systemd passed %v: %w", path, ps, err)
	}
	p.taken[i] = true
	p.log.Info("using the socket systemd passed", "socket", path, "fd", ps.fd, "name", ps.name, "address", l.Addr())
	return l, nil
}

// pickPassed returns the index of the socket among passed, skipping
// those taken, for --socket path; -1 and no error if there is none.
func pickPassed(path string, passed []passedSocket, taken []bool) (int, error) {
	base := filepath.Base(path)
	return pick(passed, taken, "--socket "+path, []matchStep{
		{"bound to it", func(p passedSocket) bool { return p.unix && sameAddr(path, p.addr) }},
		{fmt.Sprintf("named %q or %q", fdNamePairvisor, base), func(p passedSocket) bool {
			return p.name != "" && (p.name == fdNamePairvisor || p.name == base) && p.unix
		}},
	})
}

// forListen returns the passed socket for a listener and its bound
// address, or nil if none was passed for it. The file stays p's, closed
// by finish: the caller keeps a duplicate (supervisor.NewListener).
func (p *passedSockets) forListen(spec config.Listen) (*os.File, string, error) {
	if len(p.socks) == 0 {
		return nil, "", nil
	}
	var tcp tcplisten.Addr
	if spec.Network != "unix" {
		var err error
		if tcp, err = tcplisten.Parse(spec.Network, spec.Address); err != nil {
			return nil, "", err
		}
	}
	kindOK := func(ps passedSocket) bool {
		if !ps.stream || !ps.listen {
			return false
		}
		switch spec.Network {
		case "unix":
			return ps.unix
		case "tcp4":
			return ps.tcp.Addr().Is4()
		case "tcp6":
			return ps.tcp.IsValid() && ps.tcp.Addr().Is6()
		}
		return ps.tcp.IsValid()
	}
	i, err := pick(p.socks, p.taken, "--listen "+spec.Name+"="+spec.Addr(), []matchStep{
		{"bound to it", func(ps passedSocket) bool {
			if !kindOK(ps) {
				return false
			}
			if spec.Network == "unix" {
				return sameAddr(spec.Address, ps.addr)
			}
			if tcp.Port == 0 || ps.tcp.Port() != tcp.Port {
				return false
			}
			if !tcp.IP.IsValid() || tcp.IP.IsUnspecified() { // every address, as tcplisten binds it
				return ps.tcp.Addr().IsUnspecified()
			}
			return ps.tcp.Addr() == tcp.IP
		}},
		{fmt.Sprintf("named %q", spec.Name), func(ps passedSocket) bool { return ps.name == spec.Name }},
	})
	if err != nil || i < 0 {
		return nil, "", err
	}
	ps := p.socks[i]
	if !kindOK(ps) {
		return nil, "", fmt.Errorf("--listen %s=%s: systemd passed %v, not a listening socket of that kind", spec.Name, spec.Addr(), ps)
	}
	p.taken[i] = true
	bound := ps.addr
	if ps.tcp.IsValid() {
		bound = ps.tcp.String()
	}
	p.log.Info("using the socket systemd passed", "listener", spec.Name, "address", spec.Addr(), "fd", ps.fd, "name", ps.name, "bound", bound)
	return ps.f, bound, nil
}

// finish closes the passed sockets nothing took, each with a warning.
// socket is --socket's path ("" without one) and socketTaken whether a
// passed socket serves it: a --socket that found none, when sockets
// were passed and no listener took one either, is the error forSocket
// deferred.
func (p *passedSockets) finish(socket string, socketTaken bool) error {
	var err error
	if socket != "" && !socketTaken && len(p.socks) > 0 && !slices.Contains(p.taken, true) {
		err = fmt.Errorf("systemd passed %d socket(s) (LISTEN_FDS), none for --socket %s: %s; "+
			"pass one bound to it (ListenStream=%s) or name it FileDescriptorName=%s",
			len(p.socks), socket, p.list(), socket, fdNamePairvisor)
	}
	for i, ps := range p.socks {
		if !p.taken[i] && err == nil {
			p.log.Warn("closing a socket systemd passed that no --socket or --listen asks for", "socket", ps.String())
		}
		ps.f.Close() // a taken one lives on in its Listener or its duplicate
	}
	p.socks, p.taken = nil, nil
	return err
}

// matchStep is one step of pick: what it looks for and how.
type matchStep struct {
	what  string
	match func(passedSocket) bool
}

// pick returns the index of the one socket, among those of passed not
// taken, that the first step with any match matches; -1 if no step
// matches any; an error naming who (for) asked if a step matches two.
func pick(passed []passedSocket, taken []bool, who string, steps []matchStep) (int, error) {
	for _, step := range steps {
		found := -1
		for i, p := range passed {
			if taken[i] || !step.match(p) {
				continue
			}
			if found >= 0 {
				s := make([]string, len(passed))
				for i, p := range passed {
					s[i] = p.String()
				}
				return -1, fmt.Errorf("systemd passed more than one socket %s for %s: %s", step.what, who, strings.Join(s, "; "))
			}
			found = i
		}
		if found >= 0 {
			return found, nil
		}
	}
	return -1, nil
}

// sameAddr reports whether the socket address bound names path (of
// --socket or a unix: listener): the same abstract name, the same path, or the same file.
func sameAddr(path, bound string) bool {
	if bound == "" {
		return false
	}
	if path == bound {
		return true
	}
	if strings.HasPrefix(path, "@") || strings.HasPrefix(bound, "@") {
		return false
	}
	a, errA := filepath.Abs(path)
	b, errB := filepath.Abs(bound)
	if errA == nil && errB == nil && a == b {
		return true
	}
	var sa, sb unix.Stat_t
	return unix.Stat(path, &sa) == nil && unix.Stat(bound, &sb) == nil &&
		sa.Mode&unix.S_IFMT == unix.S_IFSOCK && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
