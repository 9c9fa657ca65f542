package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
)

func TestParseListen(t *testing.T) {
	good := []struct {
		in   string
		want Listen
	}{
		{"http=tcp://:8080", Listen{"http", "tcp", ":8080"}},
		{"tcp://127.0.0.1:0", Listen{"tcp-0", "tcp", "127.0.0.1:0"}},
		{"tcp://[::1]:443", Listen{"tcp-443", "tcp", "[::1]:443"}},
		{"v6=tcp6://[::]:80", Listen{"v6", "tcp6", "[::]:80"}},
		{"tcp4://localhost:65535", Listen{"tcp-65535", "tcp4", "localhost:65535"}},
		{"unix:/run/app.sock", Listen{"unix-app.sock", "unix", "/run/app.sock"}},
		{"unix:///run/app.sock", Listen{"unix-app.sock", "unix", "/run/app.sock"}},
		{"unix:rel/a b:c.sock", Listen{"unix-a_b_c.sock", "unix", "rel/a b:c.sock"}},
		{"admin=unix:@pv-admin", Listen{"admin", "unix", "@pv-admin"}},
		{"unix:/tmp/x=y", Listen{"unix-x_y", "unix", "/tmp/x=y"}}, // '=' after a ':' is the path's
		{"A.b_c-9=tcp://:1", Listen{"A.b_c-9", "tcp", ":1"}},
		{"tcp://*:81", Listen{"tcp-81", "tcp", "*:81"}},
		{"tcp://[fe80::1%2]:82", Listen{"tcp-82", "tcp", "[fe80::1%2]:82"}},
	}
	for _, c := range good {
		got, err := ParseListen(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseListen(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		back, err := ParseListen(got.String())
		if err != nil || back != got {
			t.Errorf("ParseListen(%q.String() = %q) = %+v, %v; want it back", c.in, got.String(), back, err)
		}
		if !contract.ValidListenName(got.Name) {
			t.Errorf("ParseListen(%q): name %q is not valid in LISTEN_FDNAMES", c.in, got.Name)
		}
	}
	bad := []struct{ in, want string }{
		{"", "want tcp://HOST:PORT or unix:PATH"},
		{"http://:80", `unknown scheme "http"`},
		{"udp://:53", `unknown scheme "udp"`},
		{"tcp:8080", "want tcp://HOST:PORT"},
		{"tcp://:http", "want a number from 0 to 65535"},
		{"tcp://:65536", "want a number from 0 to 65535"},
		{"tcp://:-1", "want a number from 0 to 65535"},
		{"tcp://:080", "want a number from 0 to 65535"},
		{"tcp://8080", "want tcp://HOST:PORT"},
		{"tcp4://[::1]:80", "not an IPv4 address"},
		{"tcp6://127.0.0.1:80", "not an IPv6 address"},
		{"tcp://ho st:80", "want an IP address"},
		{"tcp://example.com:80", "host names are not resolved"},
		{"tcp://[fe80::1%eth0]:80", "interface index"},
		{"unix:", "want unix:PATH"},
		{"unix://rel", "absolute path"},
		{"bad name=tcp://:1", `listener name "bad name"`},
		{"=tcp://:1", `listener name ""`},
		{strings.Repeat("n", 256) + "=tcp://:1", "listener name"},
		{"unix:/a\x00b", "NUL"},
	}
	for _, c := range bad {
		if got, err := ParseListen(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseListen(%q) = %+v, %v; want an error saying %q", c.in, got, err, c.want)
		}
	}
}

// TestListenKey: the listen key's problems are reported with the file,
// the line and the element, and every address belongs to one program.
func TestListenKey(t *testing.T) {
	const file = `[programs.a]
command = "x"
listen = ["http=tcp://:8080", "http=tcp://:8081", "tcp://:8080", "ftp://x", 7]

[programs.b]
command = "y"
listen = ["tcp://:9000", "unix:/run/a.sock", "unix:/run/a.sock"]

[programs.c]
command = "z"
listen = "tcp://:1"

[programs.d]
command = "z"
listen = ["tcp://:9000"]
`
	_, err := Parse("l.toml", []byte(file))
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Parse: %v", err)
	}
	want := []string{
		`l.toml:3: programs.a.listen[1]: listener name "http" is used twice (by tcp://:8080 and tcp://:8081); name them: NAME=ADDRESS`,
		`l.toml:3: programs.a.listen[2]: address tcp://:8080 is listed twice`,
		`l.toml:3: programs.a.listen[3]: address "ftp://x": unknown scheme "ftp": want tcp://HOST:PORT (or tcp4://, tcp6://) or unix:PATH`,
		`l.toml:3: programs.a.listen[4]: must be a string, got integer 7`,
		`l.toml:7: programs.b.listen[2]: address unix:/run/a.sock is listed twice`,
		`l.toml:11: programs.c.listen: must be an array of listeners such as ["http=tcp://:8080", "unix:/run/app.sock"], got string "tcp://:1"`,
		`l.toml:15: programs.d.listen: address tcp://:9000 is also a listener of program "b": a socket belongs to one program`,
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}

	many := "[programs.a]\ncommand = \"x\"\nlisten = [" + strings.Repeat(`"tcp://:1",`, MaxListen+1) + "]\n"
	if _, err := Parse("m.toml", []byte(many)); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("%d listeners: %v", MaxListen+1, err)
	}
}

// TestListenCompare: a reload sees a program whose listeners changed
// as changed, and one whose listen key moved (or became empty) as not.
func TestListenCompare(t *testing.T) {
	parse := func(listen string) *File {
		t.Helper()
		f, err := Parse("c.toml", []byte("[programs.a]\ncommand = \"x\"\n"+listen))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	none, empty := parse(""), parse("listen = []\n")
	one, other := parse(`listen = ["tcp://:80"]`+"\n"), parse(`listen = ["web=tcp://:80"]`+"\n")
	if d := Compare(none, empty); len(d.Unchanged) != 1 {
		t.Errorf("no listen key vs an empty one: %+v", d)
	}
	if d := Compare(none, one); len(d.Changed) != 1 {
		t.Errorf("a listener added: %+v", d)
	}
	if d := Compare(one, other); len(d.Changed) != 1 {
		t.Errorf("a listener renamed: %+v", d)
	}
}

// FuzzParseListen: ParseListen never panics, and what it accepts it
// writes back (String) to the same listener, with a name valid in
// LISTEN_FDNAMES and an address without NUL.
func FuzzParseListen(f *testing.F) {
	for _, s := range []string{"http=tcp://:8080", "tcp://[::1]:0", "unix:/run/a.sock", "unix:///x", "a=unix:@b",
		"tcp6://[fe80::1%eth0]:1", "x=y=tcp://:1", "unix:a=b", "tcp://:99999", "=", ":", "unix://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseListen(s)
		if err != nil {
			return
		}
		if !contract.ValidListenName(l.Name) || strings.ContainsRune(l.Address, 0) || l.Address == "" {
			t.Fatalf("ParseListen(%q) = %+v", s, l)
		}
		back, err := ParseListen(l.String())
		if err != nil || back != l {
			t.Fatalf("ParseListen(%q) = %+v; its String %q reads back as %+v, %v", s, l, l.String(), back, err)
		}
	})
}
