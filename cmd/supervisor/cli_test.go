//go:build linux

package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Tests of the command line, run as real processes (see main_test.go).

// flagsOf lists every flag each command documents.
var flagsOf = map[string][]string{
	"run": {"workers", "ping-interval", "ping-timeout", "ping-misses", "start-timeout", "stop-timeout",
		"restart", "healthy-after", "max-restarts", "restart-window", "log-level", "log-json",
		"socket", "mode", "group", "allow-uid", "allow-gid", "max-conns", "idle-timeout",
		"duration", "echo-interval", "echo-max"},
	"serve":  {"socket", "mode", "group", "allow-uid", "allow-gid", "max-conns", "idle-timeout", "log-level", "log-json"},
	"ping":   {"socket", "timeout", "count", "interval"},
	"echo":   {"socket", "timeout"},
	"status": {"socket", "timeout", "json"},
	"reload": {"socket", "timeout"},
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, args...)
			for _, c := range commands {
				if !strings.Contains(r.stdout, "  "+c.name+" ") {
					t.Errorf("usage does not list command %s:\n%s", c.name, r.stdout)
				}
			}
			if !strings.Contains(r.stdout, "Exit status: 0 success, 1 failure, 2 usage error") {
				t.Errorf("usage does not give the exit statuses:\n%s", r.stdout)
			}
		})
	}
	for cmd, flags := range flagsOf {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, cmd, "--help")
			if !strings.HasPrefix(r.stdout, "Usage: supervisor "+cmd+" ") {
				t.Errorf("%s --help does not start with its usage line:\n%s", cmd, r.stdout)
			}
			for _, f := range flags {
				if !regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(f) + `\b`).MatchString(r.stdout) {
					t.Errorf("%s --help does not document -%s:\n%s", cmd, f, r.stdout)
				}
			}
			if r.stderr != "" {
				t.Errorf("%s --help wrote to stderr:\n%s", cmd, r.stderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{nil, "Usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"ping", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"serve", "--socket", sock, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"run", "--workers", "many"}, `invalid value "many" for flag -workers`},
		{[]string{"run", "--restart", "sometimes"}, "sometimes"},
		{[]string{"run", "--log-level", "loud"}, `unknown log level "loud"`},
		{[]string{"serve"}, "--socket is required"},
		{[]string{"serve", "--socket", sock, "--log-level", "loud"}, `unknown log level "loud"`},
		{[]string{"ping"}, "--socket is required"},
		{[]string{"ping", "--socket", sock, "extra"}, `unexpected argument "extra"`},
		{[]string{"echo", "hello"}, "--socket is required"},
		{[]string{"status"}, "--socket is required"},
		{[]string{"status", "--socket", sock, "extra"}, `unexpected argument "extra"`},
		{[]string{"reload"}, "--socket is required"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitUsage, cliOpts{}, tc.args...)
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("stderr does not say %q:\n%s", tc.stderr, r)
			}
		})
	}
	if !gone(sock) || !gone(sock+".lock") {
		t.Errorf("a usage error left files behind: %s", dir)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	want := fmt.Sprintf("supervisor %s (protocol %d)\n", version, ipc.ProtocolVersion)
	for _, arg := range []string{"version", "--version"} {
		if r := cliWant(t, exitOK, cliOpts{}, arg); r.stdout != want {
			t.Errorf("%s printed %q, want %q", arg, r.stdout, want)
		}
	}
}

func TestRunDuration(t *testing.T) {
	t.Parallel()
	r := cliWant(t, exitOK, cliOpts{}, "run", "--workers", "2", "--duration", "2s", "--ping-interval", "100ms")
	if !strings.Contains(r.stdout, "  result     ok\n") {
		t.Errorf("summary does not say ok:\n%s", r)
	}
	if !strings.Contains(r.stdout, "  workers    2 (restarts 0, failures 0)") {
		t.Errorf("summary does not report 2 workers without restarts:\n%s", r)
	}
	m := regexp.MustCompile(`echoes\s+(\d+) sent, (\d+) verified \((\d+) bytes\), 0 mismatched, 0 failed`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no clean echo line in the summary:\n%s", r)
	}
	if n, _ := strconv.Atoi(m[2]); n == 0 {
		t.Errorf("no echo verified:\n%s", r)
	}
	m = regexp.MustCompile(`pings\s+(\d+) sent, (\d+) answered`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no ping line in the summary:\n%s", r)
	}
	if n, _ := strconv.Atoi(m[2]); n < 10 {
		t.Errorf("%s pings answered in 2s at 100ms intervals for 2 workers:\n%s", m[2], r)
	}
}

func TestRunStopUnderTraffic(t *testing.T) {
	// Echoes still in flight when the run ends are cut short by the stop,
	// not failures: the summary must still say ok.
	t.Parallel()
	for i := range 4 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, "run", "--workers", "2", "--duration", "300ms",
				"--echo-interval", "1ms", "--echo-max", "1024", "--log-level", "warn")
			if !strings.Contains(r.stdout, "  result     ok\n") || !strings.Contains(r.stdout, " 0 mismatched, 0 failed") {
				t.Errorf("summary:\n%s", r)
			}
		})
	}
}

// statusJSON runs status --json and decodes it, both loosely (to check
// the field names) and into the documented type.
func statusJSON(tb testing.TB, socket string) (map[string]any, statusDoc) {
	tb.Helper()
	r := cliWant(tb, exitOK, cliOpts{}, "status", "--socket", socket, "--json")
	var loose map[string]any
	var doc statusDoc
	if err := json.Unmarshal([]byte(r.stdout), &loose); err != nil {
		tb.Fatalf("status --json is not JSON: %v\n%s", err, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		tb.Fatalf("status --json: %v\n%s", err, r)
	}
	return loose, doc
}

// rawEcho sends p with an external client command (reading stdin,
// writing stdout) and checks that exactly p comes back.
func rawEcho(t *testing.T, p []byte, dir string, tool string, args ...string) {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(p)
	var stdout, stderr testutil.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %q: %v\nstderr:\n%s", tool, args, err, stderr.String())
		}
	case <-time.After(cliWait):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %q did not finish\nstderr:\n%s", tool, args, stderr.String())
	}
	if got := stdout.String(); got != string(p) {
		t.Errorf("%s %q: got %d bytes back, want the %d sent\nstderr:\n%s", tool, args, len(got), len(p), stderr.String())
	}
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

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
			if len(lines) != 1 || !strings.Contains(lines[0], "time=") || !strings.Contains(lines[0], fmt.Sprintf("(pid %d)", srv.pid())) {
				t.Errorf("want one pong line with time= and the server's pid %d:\n%s", srv.pid(), r)
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
			if doc.PID != srv.pid() || doc.Mode != "serve" || doc.Socket != sock || doc.Version != version {
				t.Errorf("status %+v, want pid %d, mode serve, socket %s, version %s", doc, srv.pid(), sock, version)
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
			if want := fmt.Sprintf("serve pid %d, up ", srv.pid()); !strings.HasPrefix(r.stdout, want) {
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
			rawEcho(t, p, "", socat, "-", "UNIX-CONNECT:"+sock)
		})
		t.Run("nc", func(t *testing.T) {
			t.Parallel()
			nc := testutil.RequireTool(t, "nc")
			p := append([]byte("hello nc\n"), randomBytes(32<<10)...)
			rawEcho(t, p, "", nc, "-U", "-N", sock)
		})
	})

	if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("serve exited %d after SIGTERM, want 0\n%s", code, srv.output())
	}
	if !gone(sock) || !gone(sock+".lock") {
		t.Error("socket or lock file left after SIGTERM")
	}
	if !strings.Contains(srv.stderr.String(), "stopped") {
		t.Errorf("serve did not log its stop:\n%s", srv.output())
	}
	r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock)
	if !strings.Contains(r.stderr, "no such socket") {
		t.Errorf("ping after the stop:\n%s", r)
	}
}

func TestPingFailures(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("not a socket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // bound, then closed: a crashed server's socket

	for _, tc := range []struct {
		name, socket, want string
	}{
		{"no-such-socket", filepath.Join(dir, "missing"), "no such socket: " + filepath.Join(dir, "missing")},
		{"no-such-dir", filepath.Join(dir, "nodir", "s"), "no such socket"},
		{"regular-file", file, "not a socket: " + file},
		{"directory", dir, "not a socket: " + dir},
		{"stale-socket", stale, "connection refused: " + stale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, cmd := range []string{"ping", "echo", "status", "reload"} {
				r := cliWant(t, exitFail, cliOpts{}, cmd, "--socket", tc.socket)
				if !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
					t.Errorf("%s: want the one-line reason %q:\n%s", cmd, tc.want, r)
				}
			}
		})
	}

	t.Run("permission-denied", func(t *testing.T) {
		t.Parallel()
		requireRoot(t)
		wdir := worldDir(t)
		sock := filepath.Join(wdir, "s")
		l, err := ipc.Listen(sock, ipc.ListenConfig{}) // 0600, root's
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		exe := exeForOthers(t, wdir)
		r := cliWant(t, exitFail, cliOpts{exe: exe, cred: nobody}, "ping", "--socket", sock)
		if !strings.Contains(r.stderr, "permission denied: "+sock) {
			t.Errorf("want permission denied:\n%s", r)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		// A server that accepts and never answers.
		t.Parallel()
		sock := filepath.Join(dir, "mute")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 16)
		go func() {
			defer close(accepted)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
		defer func() {
			ln.Close()
			for c := range accepted {
				c.Close()
			}
		}()
		r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock, "--timeout", "500ms")
		if !strings.Contains(r.stderr, "timeout: "+sock+" did not answer in time") {
			t.Errorf("want a timeout:\n%s", r)
		}
		if r.elapsed < 500*time.Millisecond || r.elapsed > 500*time.Millisecond+10*time.Second {
			t.Errorf("ping --timeout 500ms took %v", r.elapsed)
		}
	})

	t.Run("timeout-backlog-full", func(t *testing.T) {
		// A stuck server whose accept queue is full.
		t.Parallel()
		sock := filepath.Join(dir, "full")
		lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lfd)
		if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: sock}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(lfd, 0); err != nil {
			t.Fatal(err)
		}
		cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(cfd)
		if err := unix.Connect(cfd, &unix.SockaddrUnix{Name: sock}); err != nil {
			t.Fatal(err)
		}
		r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock, "--timeout", "500ms")
		if !strings.Contains(r.stderr, "timeout: "+sock) {
			t.Errorf("want a timeout:\n%s", r)
		}
	})
}

func TestServeRefuses(t *testing.T) {
	t.Parallel()
	t.Run("live-server", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(tempDir(t), "s")
		first := cliStart(t, "serve", "--socket", sock)
		first.waitSocket(t, sock)
		r := cliWant(t, exitFail, cliOpts{}, "serve", "--socket", sock)
		if want := fmt.Sprintf("pid %d", first.pid()); !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "live server") {
			t.Errorf("second serve does not name the live server (%s):\n%s", want, r)
		}
		r = cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
		if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", first.pid())) {
			t.Errorf("the first server no longer answers:\n%s", r)
		}
		if code := first.stop(t, syscall.SIGINT); code != exitOK {
			t.Errorf("serve exited %d after SIGINT\n%s", code, first.output())
		}
		if !gone(sock) || !gone(sock+".lock") {
			t.Error("socket or lock file left after SIGINT")
		}
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
		if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", next.pid())) {
			t.Errorf("ping not answered by the new server:\n%s", r)
		}
		if code := next.stop(t, syscall.SIGTERM); code != exitOK {
			t.Errorf("serve exited %d\n%s", code, next.output())
		}
		if !gone(sock) || !gone(sock+".lock") {
			t.Error("socket or lock file left after SIGTERM")
		}
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
	if !strings.Contains(r.stderr, fmt.Sprintf("pid %d", srv.pid())) {
		t.Errorf("second serve on the abstract name:\n%s", r)
	}
	if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("serve exited %d\n%s", code, srv.output())
	}
	if !gone(name) {
		t.Errorf("abstract serve created a file %s", name)
	}
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
	requireRoot(t)
	dir := worldDir(t)
	exe := exeForOthers(t, dir)
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
					return strings.Contains(srv.stderr.String(), "refused peer: uid=65534 gid=65534")
				}, srv.output)
			}
			cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock) // our own uid
			if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
				t.Errorf("serve exited %d\n%s", code, srv.output())
			}
		})
	}
}

// readyWorkers polls status until n workers are ready and returns their
// pids.
func readyWorkers(tb testing.TB, sock string, n int) []int {
	tb.Helper()
	var doc statusDoc
	poll(tb, fmt.Sprintf("%d ready workers", n), func() bool {
		_, doc = statusJSON(tb, sock)
		ready := 0
		for _, w := range doc.Workers {
			if w.State == supervisor.StateReady && w.PID > 0 {
				ready++
			}
		}
		return len(doc.Workers) == n && ready == n
	}, func() string { return fmt.Sprintf("last status: %+v", doc) })
	var pids []int
	for _, w := range doc.Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func TestRunSocket(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--workers", "2", "--socket", sock, "--ping-misses", "20")
	run.waitSocket(t, sock)

	pids := readyWorkers(t, sock, 2)
	loose, doc := statusJSON(t, sock)
	if doc.Mode != "run" || doc.PID != run.pid() || loose["workers"] == nil {
		t.Errorf("status %+v, want mode run and pid %d", doc, run.pid())
	}
	r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
	for _, pid := range pids {
		if !regexp.MustCompile(`(?m)^\d+\s+` + strconv.Itoa(pid) + `\s+ready\s`).MatchString(r.stdout) {
			t.Errorf("status does not list worker pid %d as ready:\n%s", pid, r)
		}
	}

	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
	if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "hello"); r.stdout != "hello\n" {
		t.Errorf("echo: got %q", r.stdout)
	}
	p := randomBytes(1 << 20)
	if r := cliWant(t, exitOK, cliOpts{stdin: bytes.NewReader(p)}, "echo", "--socket", sock); r.stdout != string(p) {
		t.Errorf("echo of 1 MiB: got %d bytes back", len(r.stdout))
	}

	t.Run("echo-served-by-workers", func(t *testing.T) {
		// With every worker stopped, echoes wait (and time out) while
		// pings, which the supervisor answers itself, still work.
		cont := func() {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
		defer cont()
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}
		r := cliWant(t, exitFail, cliOpts{}, "echo", "--socket", sock, "--timeout", "1s", "stuck")
		if !strings.Contains(r.stderr, "timeout") {
			t.Errorf("echo with stopped workers:\n%s", r)
		}
		cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
		cont()
		if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "again"); r.stdout != "again\n" {
			t.Errorf("echo after SIGCONT: %q", r.stdout)
		}
	})

	t.Run("raw-client", func(t *testing.T) {
		socat := testutil.RequireTool(t, "socat")
		rawEcho(t, append([]byte("raw through run\n"), randomBytes(16<<10)...), "", socat, "-", "UNIX-CONNECT:"+sock)
	})

	r = cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
	if !strings.Contains(r.stdout, "rolling restart done") {
		t.Errorf("reload:\n%s", r)
	}
	newPids := readyWorkers(t, sock, 2)
	for _, np := range newPids {
		for _, op := range pids {
			if np == op {
				t.Errorf("worker pid %d survived the reload (before %v, after %v)", np, pids, newPids)
			}
		}
	}

	if code := run.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d after SIGTERM, want 0\n%s", code, run.output())
	}
	if !strings.Contains(run.stdout.String(), "  result     ok\n") {
		t.Errorf("run summary not ok:\n%s", run.output())
	}
	if !gone(sock) || !gone(sock+".lock") {
		t.Error("socket or lock file left after SIGTERM")
	}
	all := append(pids, newPids...)
	poll(t, "every worker to be gone", func() bool {
		for _, pid := range all {
			if !processGone(pid) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("workers %v", all) })
}
