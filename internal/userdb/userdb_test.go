package userdb

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const passwd = `root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

app:x:1000:1000:App,,,:/home/app:/bin/sh
nohome:x:1001:1001:::
+nis
broken:x:notanumber:1:::
minus:x:4294967295:1:::
`

const group = `root:x:0:
daemon:x:1:
adm:x:4:app,daemon
app:x:1000:
web:x:33:other,app
web2:x:34:app
dup:x:33:app
`

func files(t testing.TB) Files {
	dir := t.TempDir()
	fs := Files{Passwd: filepath.Join(dir, "passwd"), Group: filepath.Join(dir, "group")}
	if err := os.WriteFile(fs.Passwd, []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fs.Group, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestLookup(t *testing.T) {
	fs := files(t)
	for _, tc := range []struct {
		spec string
		want Account
	}{
		{"app", Account{Name: "app", UID: 1000, GID: 1000, Groups: []uint32{4, 33, 34}, Home: "/home/app", Shell: "/bin/sh"}},
		{"1000", Account{Name: "app", UID: 1000, GID: 1000, Groups: []uint32{4, 33, 34}, Home: "/home/app", Shell: "/bin/sh"}},
		{"app:web", Account{Name: "app", UID: 1000, GID: 33, Groups: []uint32{4, 33, 34}, Home: "/home/app", Shell: "/bin/sh"}},
		{"app:77", Account{Name: "app", UID: 1000, GID: 77, Groups: []uint32{4, 33, 34}, Home: "/home/app", Shell: "/bin/sh"}},
		{"root", Account{Name: "root", UID: 0, GID: 0, Home: "/root", Shell: "/bin/bash"}},
		{"daemon", Account{Name: "daemon", UID: 1, GID: 1, Groups: []uint32{4}, Home: "/usr/sbin", Shell: "/usr/sbin/nologin"}},
		{"nohome", Account{Name: "nohome", UID: 1001, GID: 1001, Home: "/"}},
		{"5000", Account{UID: 5000, GID: 5000, Home: "/"}},
		{"5000:adm", Account{UID: 5000, GID: 4, Home: "/"}},
	} {
		got, err := fs.Lookup(tc.spec)
		if err != nil {
			t.Errorf("Lookup(%q): %v", tc.spec, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Lookup(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
	}
}

func TestLookupErrors(t *testing.T) {
	fs := files(t)
	for _, tc := range []struct {
		spec, want string
		unknown    bool
	}{
		{"nobody-here", `user "nobody-here" is not in`, true},
		{"app:nogroup", `group "nogroup" is not in`, true},
		{"broken", `user "broken"`, true}, // its uid is not a number: skipped
		{"minus", `user "minus"`, true},   // 2^32-1 is "no change" to the kernel
		{"4294967295", `user "4294967295"`, true},
		{"", "want USER or USER:GROUP", false},
		{"app:", "want USER or USER:GROUP", false},
		{":app", "want USER or USER:GROUP", false},
	} {
		_, err := fs.Lookup(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrUnknown) != tc.unknown {
			t.Errorf("Lookup(%q) = %v, want an error with %q (ErrUnknown: %v)", tc.spec, err, tc.want, tc.unknown)
		}
	}
	missing := Files{Passwd: filepath.Join(t.TempDir(), "none"), Group: filepath.Join(t.TempDir(), "none")}
	if _, err := missing.Lookup("app"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Lookup without a passwd file: %v, want ErrNotExist", err)
	}
	if a, err := missing.Lookup("42"); err != nil || a.UID != 42 {
		t.Errorf("Lookup of a number without files = %+v, %v; want uid 42", a, err)
	}
}

func TestSystem(t *testing.T) {
	a, err := System.Lookup("root")
	if err != nil {
		t.Fatal(err)
	}
	if a.UID != 0 || a.GID != 0 || a.Name != "root" {
		t.Errorf("root = %+v", a)
	}
}

func TestLineBound(t *testing.T) {
	fs := files(t)
	long := strings.Repeat("x", maxLine+1) + "\n"
	if err := os.WriteFile(fs.Passwd, []byte(long+passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Lookup("app"); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("a line over %d bytes: %v, want an error", maxLine, err)
	}
}

// FuzzLookup feeds arbitrary databases and specs: no panic, and a
// found account always has a uid that parses back and is not 2^32-1.
func FuzzLookup(f *testing.F) {
	f.Add(passwd, group, "app:web")
	f.Add("a:b:c", "::::", "1:2")
	f.Add("x:x:1:2:3:4:5:6\n", "g:x:2:x,x,x\n", "x")
	dir := f.TempDir()
	fs := Files{Passwd: filepath.Join(dir, "passwd"), Group: filepath.Join(dir, "group")}
	f.Fuzz(func(t *testing.T, pw, gr, spec string) {
		if err := os.WriteFile(fs.Passwd, []byte(pw), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fs.Group, []byte(gr), 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := fs.Lookup(spec)
		if err != nil {
			return
		}
		if a.UID == 1<<32-1 || a.GID == 1<<32-1 || a.Home == "" {
			t.Errorf("Lookup(%q) = %+v", spec, a)
		}
	})
}
