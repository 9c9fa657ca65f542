package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/userdb"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// listenFlags are the flags of the commands that listen on a socket.
// (Flags for further server options belong here too: register them in
// register, resolve and check them in check, pass them on in listen.)
type listenFlags struct {
	socket      string
	mode        string
	group       string
	allowUIDs   idList
	allowGIDs   idList
	controlUIDs idList
	controlGIDs idList
	maxConns    int
	idleTimeout time.Duration

	// Set by check.
	fileMode   os.FileMode
	gid        int
	uids, gids []uint32
	ctlUIDs    []uint32
	ctlGIDs    []uint32
	connsNote  string // why maxConns is lower than its default, if it is
	fileFlags  bool   // --mode or --group given (they do not apply to a passed socket)
}

func (f *listenFlags) register(fs *flag.FlagSet, required bool) {
	help := "socket path to listen on, or @name for a Linux abstract socket"
	if !required {
		help += " (optional: also serve ping, echo, status and reload there)"
	}
	fs.StringVar(&f.socket, "socket", "", help)
	fs.StringVar(&f.mode, "mode", "0600", "socket file permissions, octal, 0001 to 0777")
	fs.StringVar(&f.group, "group", "", "give the socket file to this group (name or gid); use with --mode 0660")
	fs.Var(&f.allowUIDs, "allow-uid", "serve only peers with this uid (name or number; repeatable; our own uid is always served)")
	fs.Var(&f.allowGIDs, "allow-gid", "serve also peers with this gid (name or number; repeatable)")
	fs.Var(&f.controlUIDs, "allow-control-uid", "let peers with this uid also reload, shut down and send messages (name or number; repeatable; our own uid and root always may)")
	fs.Var(&f.controlGIDs, "allow-control-gid", "let peers in this group (primary or supplementary) also reload, shut down and send messages (repeatable)")
	fs.IntVar(&f.maxConns, "max-conns", frontdoor.DefaultMaxConns, "most concurrent client connections, at most what RLIMIT_NOFILE leaves")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", frontdoor.DefaultIdleTimeout, "close client connections idle for this long (positive)")
}

// check validates the flags and resolves the names in them; its errors
// are usage errors. fdsInUse is how many descriptors the command needs
// besides its clients': --max-conns must fit in RLIMIT_NOFILE with
// them. A --max-conns left at its default is lowered to fit instead,
// and connsNote says so.
func (f *listenFlags) check(fs *flag.FlagSet, fdsInUse int) error {
	mode, err := strconv.ParseUint(f.mode, 8, 32)
	if err != nil || mode > 0o777 || mode == 0 {
		return fmt.Errorf("--mode must be an octal permission from 0001 to 0777 (like 0600 or 0660), got %q", f.mode)
	}
	f.fileMode = os.FileMode(mode)
	f.fileFlags = isSet(fs, "mode") || isSet(fs, "group")
	if f.socket != "" && f.socket[0] != '@' && len(f.socket) > listen.MaxPathLen {
		return fmt.Errorf("--socket must be a path of at most %d bytes (the kernel's sun_path), got %d bytes", listen.MaxPathLen, len(f.socket))
	}
	f.gid = -1
	if f.group != "" {
		gid, err := userdb.System.GID(f.group)
		if err != nil {
			return fmt.Errorf("--group must be a group name or gid: %w", err)
		}
		f.gid = int(gid)
	}
	if f.uids, err = f.allowUIDs.resolve(userdb.System.UID); err != nil {
		return fmt.Errorf("--allow-uid must be a user name or uid: %w", err)
	}
	if f.gids, err = f.allowGIDs.resolve(userdb.System.GID); err != nil {
		return fmt.Errorf("--allow-gid must be a group name or gid: %w", err)
	}
	if f.ctlUIDs, err = f.controlUIDs.resolve(userdb.System.UID); err != nil {
		return fmt.Errorf("--allow-control-uid must be a user name or uid: %w", err)
	}
	if f.ctlGIDs, err = f.controlGIDs.resolve(userdb.System.GID); err != nil {
		return fmt.Errorf("--allow-control-gid must be a group name or gid: %w", err)
	}
	if err := positive("idle-timeout", f.idleTimeout); err != nil {
		return err
	}
	if err := atLeast("max-conns", f.maxConns, 1); err != nil || f.socket == "" {
		return err
	}
	limit := fdLimit()
	// The server keeps some descriptors for the rest of the process
	// (frontdoor.MaxConnsLimit); the workers need theirs too.
	room := min(limit-fdsInUse, frontdoor.MaxConnsLimit())
	why := fmt.Sprintf("RLIMIT_NOFILE is %d, %d descriptors are needed besides the clients', and the server keeps %d for the rest of the process", limit, fdsInUse, limit-frontdoor.MaxConnsLimit())
	if room < 1 {
		return fmt.Errorf("no descriptor is left for the clients of --socket: %s; lower --workers or raise the limit", why)
	}
	if !isSet(fs, "max-conns") && f.maxConns > room {
		f.connsNote = fmt.Sprintf("--max-conns lowered from %d to %d: %s", f.maxConns, room, why)
		f.maxConns = room
	}
	return between("max-conns", f.maxConns, 1, room, why)
}

// listen creates the listener and the server config the flags describe.
// The flags must have passed check.
func (f *listenFlags) listen(log hclog.Logger) (*listen.Listener, frontdoor.Config, error) {
	if f.connsNote != "" {
		log.Warn(f.connsNote)
	}
	l, err := activatedListener(f.socket, passedFiles(), log)
	switch {
	case err != nil:
		return nil, frontdoor.Config{}, err
	case l != nil && f.fileFlags:
		log.Warn("--mode and --group do not apply to a socket systemd passed: set SocketMode= and SocketGroup= in the socket unit")
	case l == nil:
		l, err = listen.New(f.socket, listen.Config{Mode: f.fileMode, GID: f.gid, Logger: log})
		if err != nil {
			return nil, frontdoor.Config{}, err
		}
	}
	return l, frontdoor.Config{
		ConnConfig:  ipc.ConnConfig{Name: "supervisor", IdleTimeout: f.idleTimeout, Logger: log},
		MaxConns:    f.maxConns,
		AllowUIDs:   f.uids,
		AllowGIDs:   f.gids,
		ControlUIDs: f.ctlUIDs,
		ControlGIDs: f.ctlGIDs,
	}, nil
}

// Socket activation. When systemd (or systemd-socket-activate) passed
// us sockets (LISTEN_PID is our pid and LISTEN_FDS at least 1), --socket
// PATH takes the passed socket meant for PATH instead of binding one.
// It is, in this order:
//
//  1. the one bound to PATH: the same abstract @name, the same path
//     (a relative PATH is taken from our working directory), or the
//     same file under another name (/var/run/x for /run/x);
//  2. failing that, the one named (LISTEN_FDNAMES, which a socket
//     unit sets with FileDescriptorName=) "pairvisor" or PATH's last
//     element, whatever it is bound to: for a path the service sees
//     elsewhere than systemd bound it (RootDirectory=, a bind mount).
//
// Two candidates at one step, none at all, or a candidate that is not
// a listening AF_UNIX SOCK_STREAM socket is an error (exit 1) listing
// what was passed: a service that systemd activated must not quietly
// bind a socket of its own that nobody connects to. The passed sockets
// not taken are closed. The socket is systemd's: we neither bind, lock,
// chmod, rebind nor remove it, and --mode and --group do not apply.
// The variables are removed from our environment once read; the fds
// are close-on-exec (passedFiles sets it, as main does for every
// inherited fd), so neither reaches a worker.

// fdNamePairvisor is the LISTEN_FDNAMES name that marks a passed socket
// as ours, whatever address it has (FileDescriptorName=pairvisor).
const fdNamePairvisor = "pairvisor"

// passedSocket is one descriptor systemd passed.
type passedSocket struct {
	f    *os.File
	fd   int
	name string // from LISTEN_FDNAMES; "" if none
	addr string // bound AF_UNIX address; "" if none or not AF_UNIX
	unix bool   // an AF_UNIX socket
}

func (p passedSocket) String() string {
	s := fmt.Sprintf("fd %d", p.fd)
	if p.name != "" {
		s += fmt.Sprintf(" named %q", p.name)
	}
	switch {
	case !p.unix:
		return s + " (not a Unix socket)"
	case p.addr == "":
		return s + " (an unbound Unix socket)"
	}
	return s + " (a Unix socket bound to " + p.addr + ")"
}

// activatedListener returns a Listener on the passed socket for path
// (see "Socket activation" above), or nil and no error if files, the
// sockets passed, is empty. It owns files: what it does not use it
// closes.
func activatedListener(path string, files []*os.File, log hclog.Logger) (*listen.Listener, error) {
	if len(files) == 0 {
		return nil, nil
	}
	passed := make([]passedSocket, len(files))
	for i, f := range files {
		passed[i] = examinePassed(f)
	}
	i, err := pickPassed(path, passed)
	for j, p := range passed {
		if j != i {
			p.f.Close()
		}
	}
	if err != nil {
		return nil, err
	}
	p := passed[i]
	l, err := listen.FromFile(p.f, listen.Config{Logger: log})
	if err != nil {
		p.f.Close()
		var pe *os.PathError
		if errors.As(err, &pe) { // it names the fd by its LISTEN_FDNAMES name: p says more
			err = pe.Err
		}
		return nil, fmt.Errorf("--socket %s: systemd passed %v: %w", path, p, err)
	}
	log.Info("using the socket systemd passed", "socket", path, "fd", p.fd, "name", p.name, "address", l.Addr())
	return l, nil
}

// pickPassed returns the index of the passed socket for path.
func pickPassed(path string, passed []passedSocket) (int, error) {
	list := func() string {
		s := make([]string, len(passed))
		for i, p := range passed {
			s[i] = p.String()
		}
		return strings.Join(s, "; ")
	}
	base := filepath.Base(path)
	for _, step := range []struct {
		what  string
		match func(p passedSocket) bool
	}{
		{"bound to it", func(p passedSocket) bool { return p.unix && sameAddr(path, p.addr) }},
		{fmt.Sprintf("named %q or %q", fdNamePairvisor, base), func(p passedSocket) bool {
			return p.name != "" && (p.name == fdNamePairvisor || p.name == base)
		}},
	} {
		found := -1
		for i, p := range passed {
			if !step.match(p) {
				continue
			}
			if found >= 0 {
				return -1, fmt.Errorf("systemd passed more than one socket %s for --socket %s: %s", step.what, path, list())
			}
			found = i
		}
		if found >= 0 {
			return found, nil
		}
	}
	return -1, fmt.Errorf("systemd passed %d socket(s) (LISTEN_FDS), none for --socket %s: %s; "+
		"pass one bound to it (ListenStream=%s) or name it FileDescriptorName=%s",
		len(passed), path, list(), path, fdNamePairvisor)
}

// examinePassed reads what f, a descriptor systemd passed, is.
func examinePassed(f *os.File) passedSocket {
	p := passedSocket{f: f, fd: -1}
	if !strings.HasPrefix(f.Name(), "LISTEN_FD_") { // go-systemd's name for an unnamed fd
		p.name = f.Name()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return p
	}
	rc.Control(func(fd uintptr) {
		p.fd = int(fd)
		sa, err := unix.Getsockname(int(fd))
		if ua, ok := sa.(*unix.SockaddrUnix); ok && err == nil {
			p.unix = true
			if ua.Name != "@" { // an unbound socket's empty address
				p.addr = ua.Name
			}
		}
	})
	return p
}

// sameAddr reports whether the socket address bound names the --socket
// path: the same abstract name, the same path, or the same file.
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

// idList is a repeatable flag of user or group names or numbers.
type idList []string

func (l *idList) String() string     { return strings.Join(*l, ",") }
func (l *idList) Set(s string) error { *l = append(*l, s); return nil }

// resolve resolves the names with lookup (userdb.System.UID or GID).
func (l idList) resolve(lookup func(string) (uint32, error)) ([]uint32, error) {
	var ids []uint32
	for _, s := range l {
		id, err := lookup(s)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}
