package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

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

// listen creates the listener and the server config the flags describe:
// on passed, the socket systemd passed for it, if any (activation.go),
// else one it binds. The flags must have passed check.
func (f *listenFlags) listen(passed *listen.Listener, log hclog.Logger) (*listen.Listener, frontdoor.Config, error) {
	if f.connsNote != "" {
		log.Warn(f.connsNote)
	}
	l := passed
	var err error
	switch {
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
