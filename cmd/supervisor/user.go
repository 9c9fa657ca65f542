package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/pairvisor/pairvisor/internal/userdb"
)

// workerAccount resolves --user / user = (USER or USER:GROUP, names or
// numbers) to the workers' credential and the variables a login sets
// for that account (HOME, USER, LOGNAME, SHELL), which go before the
// program's own Env so that Env may override them ('%' escaped: Env
// values are expanded per worker). "" is ours: nil, nil. Another
// account takes root, unless checkOnly (check-config as another user:
// the account is looked up, and no credential is returned); ours is
// accepted and changes nothing.
func workerAccount(spec string, checkOnly bool) (*syscall.Credential, []string, error) {
	if spec == "" {
		return nil, nil, nil
	}
	a, err := userdb.System.Lookup(spec)
	if err != nil {
		return nil, nil, err
	}
	if euid := os.Geteuid(); euid != 0 {
		if !checkOnly && (int(a.UID) != euid || int(a.GID) != os.Getegid()) {
			return nil, nil, fmt.Errorf("running workers as %s (uid %d, gid %d) takes root; this runs as uid %d", spec, a.UID, a.GID, euid)
		}
		return nil, nil, nil
	}
	esc := func(s string) string { return strings.ReplaceAll(s, "%", "%%") }
	env := []string{"HOME=" + esc(a.Home)}
	if a.Name != "" {
		env = append(env, "USER="+esc(a.Name), "LOGNAME="+esc(a.Name))
	}
	if a.Shell != "" {
		env = append(env, "SHELL="+esc(a.Shell))
	}
	return &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: a.Groups}, env, nil
}

// checkUserRuns reports whether cred (nil: ours) may execute exe, and,
// for a program with listeners, this binary too (such workers start
// through it: the exec shim), so that a --user who cannot run them is
// told at start rather than by a crash loop.
func checkUserRuns(exe string, cred *syscall.Credential, listeners bool) error {
	if cred == nil {
		return nil
	}
	if err := checkRunnable(exe, cred); err != nil {
		return err
	}
	if listeners {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		if err := checkRunnable(self, cred); err != nil {
			return fmt.Errorf("%w: workers with listeners start through this program (docs/LISTENERS.md)", err)
		}
	}
	return nil
}

// checkRunnable reports whether cred may execute the file at path by
// its mode bits. The directories on the way are not checked; exec will
// be.
func checkRunnable(path string, cred *syscall.Credential) error {
	if cred == nil || cred.Uid == 0 {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	var bit os.FileMode = 0o001
	switch {
	case sys.Uid == cred.Uid:
		bit = 0o100
	case sys.Gid == cred.Gid || slices.Contains(cred.Groups, sys.Gid):
		bit = 0o010
	}
	if st.Mode().Perm()&bit == 0 {
		return fmt.Errorf("uid %d may not run %s (mode %04o, owner %d, group %d)", cred.Uid, path, st.Mode().Perm(), sys.Uid, sys.Gid)
	}
	return nil
}
