//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Tests of `serve` and of the clients against it.

func TestServe(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	// The seed's client connects to ./uds_socket.
	sock := filepath.Join(dir, "uds_socket")
	srv := cliStart(t, "serve", "--socket", sock)
	srv.waitSocket(t, sock)
	if st, err := os.Lstat(sock); err != nil {
		t.Error(err)
	} else if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a 0600 socket", st.Mode())
	}

	t.Run("clients", func(t *testing.T) {
		t.Run("ping", func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "time=") || !strings.Contains(lines[0], fmt.Sprintf("(pid %d)", srv.PID())) {
				t.Errorf("want one pong line with time= and the server's pid %d:\n%s", srv.PID(), r)
			}
		})
		t.Run("ping-count", func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock, "--count", "3", "--interval", "50ms")
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) != 3 {
				t.Fatalf("want 3 lines:\n%s", r)
			}
			for i, l := range lines {
				if !strings.Contains(l, fmt.Sprintf("seq=%d ", i+1)) || !strings.Contains(l, "time=") {
					t.Errorf("line %d is %q, want seq=%d and time=", i+1, l, i+1)
				}
			}
		})
		t.Run("echo-args", func(t *testing.T) {
			t.Parallel()
			if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "hello"); r.stdout != "hello\n" {
				t.Errorf("got %q, want %q", r.stdout, "hello\n")
			}
			if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "hello", "there"); r.stdout != "hello there\n" {
				t.Errorf("got %q, want %q", r.stdout, "hello there\n")
			}
		})
		t.Run("echo-stdin", func(t *testing.T) {
			t.Parallel()
			p := randomBytes(1 << 20)
			r := cliWant(t, exitOK, cliOpts{stdin: bytes.NewReader(p)}, "echo", "--socket", sock)
			if r.stdout != string(p) {
				t.Errorf("got %d bytes back, want the %d random bytes sent", len(r.stdout), len(p))
			}
			if r := cliWant(t, exitOK, cliOpts{stdin: bytes.NewReader(nil)}, "echo", "--socket", sock); r.stdout != "" {
				t.Errorf("empty stdin echoed as %q", r.stdout)
			}
		})
		t.Run("status-json", func(t *testing.T) {
			t.Parallel()
			loose, doc := statusJSON(t, sock)
			for _, k := range []string{"pid", "started_at", "uptime_seconds", "workers", "mode", "version", "socket", "connections"} {
				if _, ok := loose[k]; !ok {
					t.Errorf("status --json lacks %q: %v", k, loose)
				}
			}
			if ws, ok := loose["workers"].([]any); !ok || len(ws) != 0 {
				t.Errorf("workers = %#v, want an empty list", loose["workers"])
			}
			if doc.PID != srv.PID() || doc.Mode != "serve" || doc.Socket != sock || doc.Version != version {
				t.Errorf("status %+v, want pid %d, mode serve, socket %s, version %s", doc, srv.PID(), sock, version)
			}
			if doc.UptimeSeconds <= 0 || doc.UptimeSeconds > 600 {
				t.Errorf("uptime_seconds = %v", doc.UptimeSeconds)
			}
			if doc.Connections.Active < 1 || doc.Connections.Framed < 1 {
				t.Errorf("connections %+v: the status client itself is not counted", doc.Connections)
			}
		})
		t.Run("status", func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
			if want := fmt.Sprintf("serve pid %d, up ", srv.PID()); !strings.HasPrefix(r.stdout, want) {
				t.Errorf("status does not start with %q:\n%s", want, r)
			}
		})
		t.Run("reload-unsupported", func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitFail, cliOpts{}, "reload", "--socket", sock)
			if !strings.Contains(r.stderr, "not served by 'supervisor serve'") {
				t.Errorf("reload on serve:\n%s", r)
			}
		})
		t.Run("seed-python-client", func(t *testing.T) {
			t.Parallel()
			py := testutil.RequireTool(t, "python3")
			// testdata holds the seed's client, unmodified.
			client, err := filepath.Abs(filepath.Join("testdata", "socket_echo_client_uds.py"))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(py, client)
			cmd.Dir = dir // the client connects to ./uds_socket
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("seed client: %v\n%s", err, out)
			}
			var got string
			for _, l := range strings.Split(string(out), "\n") {
				if s, ok := strings.CutPrefix(l, "received b'"); ok {
					got += strings.TrimSuffix(s, "'")
				}
			}
			if want := "This is the message.  It will be repeated."; got != want {
				t.Errorf("seed client received %q, want %q\n%s", got, want, out)
			}
		})
		t.Run("socat", func(t *testing.T) {
			t.Parallel()
			socat := testutil.RequireTool(t, "socat")
			p := append([]byte("hello socat\n"), randomBytes(32<<10)...)
			rawEcho(t, p, socat, "-", "UNIX-CONNECT:"+sock)
		})
		t.Run("nc", func(t *testing.T) {
			t.Parallel()
			nc := testutil.RequireTool(t, "nc")
			p := append([]byte("hello nc\n"), randomBytes(32<<10)...)
			rawEcho(t, p, nc, "-U", "-N", sock)
		})
	})

	srv.stopOK(t, syscall.SIGTERM, sock)
	if !strings.Contains(srv.Stderr.String(), "stopped") {
		t.Errorf("serve did not log its stop:\n%s", srv.Output())
	}
	r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock)
	if !strings.Contains(r.stderr, "no such socket") {
		t.Errorf("ping after the stop:\n%s", r)
	}
}

func TestServeRefuses(t *testing.T) {
	t.Parallel()
	t.Run("live-server", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(tempDir(t), "s")
		first := cliStart(t, "serve", "--socket", sock)
		first.waitSocket(t, sock)
		r := cliWant(t, exitFail, cliOpts{}, "serve", "--socket", sock)
		if want := fmt.Sprintf("pid %d", first.PID()); !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "live server") {
			t.Errorf("second serve does not name the live server (%s):\n%s", want, r)
		}
		r = cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
		if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", first.PID())) {
			t.Errorf("the first server no longer answers:\n%s", r)
		}
		first.stopOK(t, syscall.SIGINT, sock)
	})
	t.Run("regular-file", func(t *testing.T) {
		t.Parallel()
		dir := tempDir(t)
		file := filepath.Join(dir, "s")
		content := []byte("precious data\n")
		if err := os.WriteFile(file, content, 0o640); err != nil {
			t.Fatal(err)
		}
		r := cliWant(t, exitFail, cliOpts{}, "serve", "--socket", file)
		if !strings.Contains(r.stderr, "not a pairvisor socket") || !strings.Contains(r.stderr, "regular file") {
			t.Errorf("serve on a regular file:\n%s", r)
		}
		got, err := os.ReadFile(file)
		st, serr := os.Lstat(file)
		if err != nil || serr != nil || !bytes.Equal(got, content) || st.Mode() != 0o640 {
			t.Errorf("file changed: %q %v %v %v", got, st.Mode(), err, serr)
		}
		if !gone(file + ".lock") {
			t.Error("lock file left behind")
		}
	})
	t.Run("after-crash", func(t *testing.T) {
		// A server killed outright leaves its socket and lock file;
		// the next start reclaims both.
		t.Parallel()
		sock := filepath.Join(tempDir(t), "s")
		crashed := cliStart(t, "serve", "--socket", sock)
		crashed.waitSocket(t, sock)
		crashed.stop(t, syscall.SIGKILL)
		if gone(sock) || gone(sock+".lock") {
			t.Fatal("SIGKILL removed the socket or lock file: nothing to reclaim")
		}
		next := cliStart(t, "serve", "--socket", sock)
		next.waitSocket(t, sock)
		r := cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
		if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", next.PID())) {
			t.Errorf("ping not answered by the new server:\n%s", r)
		}
		next.stopOK(t, syscall.SIGTERM, sock)
	})
}

func TestServeAbstract(t *testing.T) {
	t.Parallel()
	name := fmt.Sprintf("@pairvisor-cli-test-%d", os.Getpid())
	srv := cliStart(t, "serve", "--socket", name)
	srv.waitSocket(t, name)
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", name)
	if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", name, "abstract"); r.stdout != "abstract\n" {
		t.Errorf("echo: %q", r.stdout)
	}
	r := cliWant(t, exitFail, cliOpts{}, "serve", "--socket", name)
	if !strings.Contains(r.stderr, fmt.Sprintf("pid %d", srv.PID())) {
		t.Errorf("second serve on the abstract name:\n%s", r)
	}
	srv.stopOK(t, syscall.SIGTERM, name) // no file named name (or its lock) is created
	cliWant(t, exitFail, cliOpts{}, "ping", "--socket", name)
}

func TestServeModeAndGroup(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "s")
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 4242
	}
	srv := cliStart(t, "serve", "--socket", sock, "--mode", "0660", "--group", strconv.Itoa(gid))
	srv.waitSocket(t, sock)
	var st unix.Stat_t
	if err := unix.Lstat(sock, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o660 || int(st.Gid) != gid {
		t.Errorf("socket mode %04o group %d, want 0660 group %d", st.Mode&0o7777, st.Gid, gid)
	}
	srv.stop(t, syscall.SIGTERM)

	r := cliWant(t, exitUsage, cliOpts{}, "serve", "--socket", sock, "--mode", "0999")
	if !strings.Contains(r.stderr, "--mode") {
		t.Errorf("bad mode:\n%s", r)
	}
}

func TestServeAllowUID(t *testing.T) {
	t.Parallel()
	dir, exe := otherUser(t)
	for _, tc := range []struct {
		name    string
		allow   string
		allowed bool
	}{
		{"refused", "4242", false},
		{"allowed", "65534", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(dir, tc.name)
			srv := cliStart(t, "serve", "--socket", sock, "--mode", "0777", "--allow-uid", tc.allow)
			srv.waitSocket(t, sock)
			r := cliRun(t, cliOpts{exe: exe, cred: nobody}, "ping", "--socket", sock)
			if tc.allowed {
				if r.code != exitOK {
					t.Errorf("allowed peer not served:\n%s", r)
				}
			} else {
				if r.code != exitFail || !strings.Contains(r.stderr, "refused: "+sock) {
					t.Errorf("refused peer: want exit 1 and the reason:\n%s", r)
				}
				poll(t, "the refusal to be logged", func() bool {
					return strings.Contains(srv.Stderr.String(), "refused peer: uid=65534 gid=65534")
				}, srv.Output)
			}
			cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock) // our own uid
			if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
				t.Errorf("serve exited %d\n%s", code, srv.Output())
			}
		})
	}
}
