// Package userdb looks up the account that workers run as: a user and
// a group given by name or number, read from /etc/passwd and
// /etc/group.
//
// It reads the files itself rather than using os/user, which with cgo
// calls the C library's getpwnam (NSS, so LDAP and the like) and so
// links the supervisor's binary dynamically: every worker, which is
// that binary re-executed, would pay the dynamic loader at start. The
// price is that only accounts in the local files are found, as with
// os/user's pure-Go build; a number that is in no file is still
// accepted, as systemd's User= accepts one.
package userdb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Files are the databases Lookup reads.
type Files struct {
	Passwd, Group string
}

// System are the system's databases.
var System = Files{Passwd: "/etc/passwd", Group: "/etc/group"}

// Account is who workers run as.
type Account struct {
	Name   string   // the user's name; "" for a number in no file
	UID    uint32   //
	GID    uint32   // the group given, else the user's primary group
	Groups []uint32 // supplementary groups: every group listing Name as a member, sorted
	Home   string   // from passwd; "/" when unknown
	Shell  string   // from passwd; "" when unknown
}

// ErrUnknown reports a user or group name that is in no file.
var ErrUnknown = errors.New("userdb: no such user or group")

// maxLine bounds one line of a database, and maxLines the lines read:
// the files are the system's, but a runaway one must not take memory.
const (
	maxLine  = 64 << 10
	maxLines = 1 << 20
)

// Lookup resolves spec, "USER" or "USER:GROUP", each a name or a
// decimal number. A user given by number that is in no file gets its
// number as primary group unless GROUP is given, no supplementary
// groups and home "/".
func (fs Files) Lookup(spec string) (Account, error) {
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" || (hasGroup && group == "") {
		return Account{}, fmt.Errorf("userdb: %q: want USER or USER:GROUP", spec)
	}
	a, err := fs.user(user)
	if err != nil {
		return Account{}, err
	}
	if hasGroup {
		if a.GID, err = fs.group(group); err != nil {
			return Account{}, err
		}
	}
	if a.Name != "" {
		if a.Groups, err = fs.memberOf(a.Name); err != nil {
			return Account{}, err
		}
	}
	return a, nil
}

// UID resolves a user name or number to its uid.
func (fs Files) UID(user string) (uint32, error) {
	a, err := fs.user(user)
	return a.UID, err
}

// GID resolves a group name or number to its gid.
func (fs Files) GID(group string) (uint32, error) { return fs.group(group) }

// user finds a user by name or number.
func (fs Files) user(user string) (Account, error) {
	id, numeric := parseID(user)
	var found *Account
	err := scan(fs.Passwd, func(f []string) bool {
		// name:password:uid:gid:gecos:home:shell
		if len(f) < 7 || (f[0] != user && (!numeric || f[2] != user)) {
			return true
		}
		uid, ok1 := parseID(f[2])
		gid, ok2 := parseID(f[3])
		if !ok1 || !ok2 {
			return true
		}
		found = &Account{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]}
		return false
	})
	switch {
	case err != nil && !(numeric && errors.Is(err, os.ErrNotExist)):
		return Account{}, err
	case found != nil:
		if found.Home == "" {
			found.Home = "/"
		}
		return *found, nil
	case numeric:
		return Account{UID: id, GID: id, Home: "/"}, nil
	}
	return Account{}, fmt.Errorf("%w: user %q is not in %s", ErrUnknown, user, fs.Passwd)
}

// group finds a group's number by name or number.
func (fs Files) group(group string) (uint32, error) {
	id, numeric := parseID(group)
	if numeric {
		return id, nil
	}
	found := false
	err := scan(fs.Group, func(f []string) bool {
		// name:password:gid:members
		if len(f) < 4 || f[0] != group {
			return true
		}
		id, found = parseID(f[2])
		return !found
	})
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("%w: group %q is not in %s", ErrUnknown, group, fs.Group)
	}
	return id, nil
}

// memberOf returns the groups that list user as a member, sorted.
func (fs Files) memberOf(user string) ([]uint32, error) {
	var ids []uint32
	err := scan(fs.Group, func(f []string) bool {
		if len(f) < 4 || !slices.Contains(strings.Split(f[3], ","), user) {
			return true
		}
		if id, ok := parseID(f[2]); ok && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
		return true
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	slices.Sort(ids)
	return ids, nil
}

// parseID parses a uid or gid: decimal, below 2^32−1 (which is -1,
// "no change", to the kernel).
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

// scan calls each with the colon-separated fields of every line of the
// file at path, skipping blank lines, comments and NIS "+"/"-" entries,
// until each returns false.
func scan(path string, each func(fields []string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("userdb: %w", err)
	}
	defer f.Close()
	if err := scanLines(f, each); err != nil {
		return fmt.Errorf("userdb: %s: %w", path, err)
	}
	return nil
}

// scanLines is scan's reader: bounded line length and count.
func scanLines(r io.Reader, each func(fields []string) bool) error {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), maxLine)
	for n := 0; s.Scan(); n++ {
		if n == maxLines {
			return fmt.Errorf("more than %d lines", maxLines)
		}
		line := strings.TrimSpace(s.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		if !each(strings.Split(line, ":")) {
			return nil
		}
	}
	return s.Err()
}
