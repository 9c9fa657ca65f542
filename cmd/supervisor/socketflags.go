//go:build linux

package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc"
)

// listenFlags are the flags of the commands that listen on a socket.
type listenFlags struct {
	socket      string
	mode        string
	group       string
	allowUIDs   idList
	allowGIDs   idList
	maxConns    int
	idleTimeout time.Duration
}

func (f *listenFlags) register(fs *flag.FlagSet, required bool) {
	help := "socket path to listen on, or @name for a Linux abstract socket"
	if !required {
		help += " (optional: also serve ping, echo, status and reload there)"
	}
	fs.StringVar(&f.socket, "socket", "", help)
	fs.StringVar(&f.mode, "mode", "0600", "socket file permissions, octal")
	fs.StringVar(&f.group, "group", "", "give the socket file to this group (name or gid); use with --mode 0660")
	fs.Var(&f.allowUIDs, "allow-uid", "serve only peers with this uid (name or number; repeatable; our own uid is always served)")
	fs.Var(&f.allowGIDs, "allow-gid", "serve also peers with this gid (name or number; repeatable)")
	fs.IntVar(&f.maxConns, "max-conns", ipc.DefaultMaxConns, "most concurrent client connections")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", ipc.DefaultIdleTimeout, "close client connections idle for this long")
}

// listen creates the listener and the server config the flags describe.
func (f *listenFlags) listen(log hclog.Logger) (*ipc.Listener, ipc.ServerConfig, error) {
	mode, err := strconv.ParseUint(f.mode, 8, 32)
	if err != nil || mode > 0o777 || mode == 0 {
		return nil, ipc.ServerConfig{}, fmt.Errorf("--mode %q is not an octal permission like 0600", f.mode)
	}
	gid := -1
	if f.group != "" {
		if gid, err = lookupID("/etc/group", f.group); err != nil {
			return nil, ipc.ServerConfig{}, fmt.Errorf("--group: %w", err)
		}
	}
	uids, err := f.allowUIDs.resolve("/etc/passwd")
	if err != nil {
		return nil, ipc.ServerConfig{}, fmt.Errorf("--allow-uid: %w", err)
	}
	gids, err := f.allowGIDs.resolve("/etc/group")
	if err != nil {
		return nil, ipc.ServerConfig{}, fmt.Errorf("--allow-gid: %w", err)
	}
	l, err := ipc.Listen(f.socket, ipc.ListenConfig{Mode: os.FileMode(mode), GID: gid, Logger: log})
	if err != nil {
		return nil, ipc.ServerConfig{}, err
	}
	return l, ipc.ServerConfig{
		MaxConns:    f.maxConns,
		IdleTimeout: f.idleTimeout,
		AllowUIDs:   uids,
		AllowGIDs:   gids,
		Logger:      log,
	}, nil
}

// idList is a repeatable flag of user or group names or numbers.
type idList []string

func (l *idList) String() string     { return strings.Join(*l, ",") }
func (l *idList) Set(s string) error { *l = append(*l, s); return nil }

func (l idList) resolve(db string) ([]uint32, error) {
	var ids []uint32
	for _, s := range l {
		id, err := lookupID(db, s)
		if err != nil {
			return nil, err
		}
		ids = append(ids, uint32(id))
	}
	return ids, nil
}

// lookupID resolves a number or a name in /etc/passwd or /etc/group
// (without os/user, which would link cgo into every worker).
func lookupID(db, s string) (int, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return int(n), nil
	}
	f, err := os.Open(db)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 3 && fields[0] == s {
			n, err := strconv.ParseUint(fields[2], 10, 32)
			if err != nil {
				break
			}
			return int(n), nil
		}
	}
	return 0, errors.New("no such name in " + db + ": " + s)
}
