package supervisor

import (
	"errors"
	"slices"
	"syscall"
	"testing"
)

func TestExpand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		slot int
		want string
	}{
		{"", 1, ""},
		{"plain", 1, "plain"},
		{"54%i", 3, "543"},
		{"%i-%i", 12, "12-12"},
		{"100%%", 1, "100%"},
		{"%%i", 7, "%i"},
		{"%%%i", 7, "%7"},
		{"%x", 1, "%x"}, // the config file refuses these; the command line keeps them
		{"50%", 1, "50%"},
	} {
		if got := expand(tc.in, tc.slot); got != tc.want {
			t.Errorf("expand(%q, %d) = %q, want %q", tc.in, tc.slot, got, tc.want)
		}
	}

	args := []string{"db.py", "--port", "54%i"}
	if got := expandAll(args, 2, false); !slices.Equal(got, []string{"db.py", "--port", "542"}) {
		t.Errorf("expandAll(args) = %q", got)
	}
	env := []string{"A%i=100%%", "DATA=/var/lib/db/%i", "NOVALUE%i"}
	if got := expandAll(env, 2, true); !slices.Equal(got, []string{"A%i=100%", "DATA=/var/lib/db/2", "NOVALUE2"}) {
		t.Errorf("expandAll(env) = %q", got)
	}
	if args[2] != "54%i" || env[1] != "DATA=/var/lib/db/%i" {
		t.Errorf("expandAll changed its input: %q %q", args, env)
	}
}

func TestCheckCredential(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cred       *syscall.Credential
		euid, egid int
		wantErr    bool
		wantNil    bool
	}{
		{"none", nil, 1000, 1000, false, true},
		{"root gives any", &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{4}}, 0, 0, false, false},
		{"ours changes nothing", &syscall.Credential{Uid: 1000, Gid: 1000}, 1000, 1000, false, true},
		{"another uid", &syscall.Credential{Uid: 1001, Gid: 1000}, 1000, 1000, true, false},
		{"another gid", &syscall.Credential{Uid: 1000, Gid: 4}, 1000, 1000, true, false},
		{"groups", &syscall.Credential{Uid: 1000, Gid: 1000, Groups: []uint32{4}}, 1000, 1000, true, false},
	} {
		c := Config{Credential: tc.cred}
		err := c.checkCredential(tc.euid, tc.egid)
		if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, ErrConfig)) {
			t.Errorf("%s: err = %v, want an ErrConfig: %v", tc.name, err, tc.wantErr)
		}
		if err == nil && (c.Credential == nil) != tc.wantNil {
			t.Errorf("%s: Credential = %+v, want nil: %v", tc.name, c.Credential, tc.wantNil)
		}
		if err == nil && c.Credential != nil && c.Credential == tc.cred {
			t.Errorf("%s: Credential is the caller's, not a copy", tc.name)
		}
	}
}
