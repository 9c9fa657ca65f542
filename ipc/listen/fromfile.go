package listen

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// ErrNotListener reports a file given to [FromFile] that is not a
// listening Unix stream socket.
var ErrNotListener = errors.New("listen: not a listening Unix stream socket")

// FromFile returns a Listener on a listening socket that somebody else
// created and owns the path of: one passed by systemd's socket
// activation (LISTEN_FDS), or by a parent process.
//
// f must be a listening (SO_ACCEPTCONN) AF_UNIX SOCK_STREAM socket.
// Anything else (not a socket, another family or type, a connected
// socket such as systemd's Accept=yes passes) fails with an error
// wrapping [ErrNotListener] that says what f is; f then stays the
// caller's.
//
// On success the Listener owns f: FromFile replaces it by a duplicate,
// close-on-exec and non-blocking (which the socket's other holders
// share: it is one open file), and closes f. [Listener.Accept] works as
// for [New]. The Listener neither binds, locks, chmods, watches nor
// rebinds the path, and [Listener.Close] closes only its own
// descriptor: the socket file, and the socket itself in the other
// holders (systemd keeps it across restarts), are left as they are.
// [Listener.Addr] is the socket's bound address as the kernel reports
// it: a path, "@name" for a Linux abstract name, or "" if unbound.
//
// Of cfg only Logger is used; Mode, GID and WatchPeriod are the
// creator's business (SocketMode=, SocketGroup= in a systemd socket
// unit).
func FromFile(f *os.File, cfg Config) (*Listener, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, &os.PathError{Op: "listen", Path: f.Name(), Err: err}
	}
	var (
		addr string
		nfd  = -1
		cerr error
	)
	if err := rc.Control(func(fd uintptr) {
		if addr, cerr = checkListener(int(fd)); cerr != nil {
			return
		}
		// The caller's f may be blocking and unknown to the poller;
		// a duplicate can be made both, and no fork in between may
		// inherit it.
		nfd, cerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if cerr != nil {
			cerr = os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", cerr)
		}
	}); err != nil {
		return nil, &os.PathError{Op: "listen", Path: f.Name(), Err: err}
	}
	if cerr != nil {
		return nil, &os.PathError{Op: "listen", Path: f.Name(), Err: cerr}
	}
	f.Close()
	l := &Listener{
		path:     addr,
		abstract: strings.HasPrefix(addr, "@"),
		passed:   true,
		cfg:      cfg,
		log:      cfg.Logger,
		stop:     make(chan struct{}),
		turn:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		lf:       pollable(nfd),
	}
	return l, nil
}

// checkListener returns the bound address of fd if it is a listening
// AF_UNIX stream socket, and otherwise an error wrapping ErrNotListener
// that says what it is.
func checkListener(fd int) (string, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if errors.Is(err, unix.ENOTSOCK) {
		var st unix.Stat_t
		what := "not a socket"
		if unix.Fstat(fd, &st) == nil {
			what = describeMode(uint32(st.Mode))
		}
		return "", fmt.Errorf("%w: it is %s", ErrNotListener, what)
	}
	if err != nil {
		return "", fmt.Errorf("%w: getsockopt SO_TYPE: %w", ErrNotListener, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", fmt.Errorf("%w: getsockname: %w", ErrNotListener, err)
	}
	ua, ok := sa.(*unix.SockaddrUnix)
	if !ok {
		return "", fmt.Errorf("%w: it is %s", ErrNotListener, describeFamily(sa))
	}
	addr := ua.Name
	if addr == "@" { // how an unbound socket's empty address reads
		addr = ""
	}
	if typ != unix.SOCK_STREAM {
		return "", fmt.Errorf("%w: it is a Unix %s socket%s", ErrNotListener, describeType(typ), describeAddr(addr))
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return "", fmt.Errorf("%w: getsockopt SO_ACCEPTCONN: %w", ErrNotListener, err)
	}
	if acc == 0 {
		return "", fmt.Errorf("%w: it is a Unix stream socket%s that is not listening (a connection, as systemd's Accept=yes passes?)", ErrNotListener, describeAddr(addr))
	}
	return addr, nil
}

func describeAddr(addr string) string {
	if addr == "" {
		return " (unbound)"
	}
	return " bound to " + addr
}

func describeFamily(sa unix.Sockaddr) string {
	switch sa.(type) {
	case *unix.SockaddrInet4:
		return "an AF_INET (IPv4) socket"
	case *unix.SockaddrInet6:
		return "an AF_INET6 (IPv6) socket"
	}
	return fmt.Sprintf("a socket of another family (%T)", sa)
}

func describeType(typ int) string {
	switch typ {
	case unix.SOCK_DGRAM:
		return "datagram (SOCK_DGRAM)"
	case unix.SOCK_SEQPACKET:
		return "seqpacket (SOCK_SEQPACKET)"
	}
	return fmt.Sprintf("type %d", typ)
}
