//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/config"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Tests of socket activation (--socket with a socket systemd passed),
// driven by systemd's own tool, systemd-socket-activate: it binds the
// socket, waits for the first connection, and then execs the command
// with the socket as fd 3, LISTEN_FDS=1 and LISTEN_PID set to the pid
// it keeps. It passes only the environment it is told to (-E).

// activate starts systemd-socket-activate with its options sa, running
// cmd (the CLI binary when cmd[0] is "", with the rest as its
// arguments). The returned process's pid is the command's.
func activate(t *testing.T, sa []string, cmd ...string) *cliProc {
	t.Helper()
	tool := testutil.RequireTool(t, "systemd-socket-activate")
	if cmd[0] == "" {
		cmd[0] = testutil.Executable()
	}
	args := append([]string{}, sa...)
	args = append(args, "-E", harness.Use(t, "cli"))
	for _, v := range []string{"GODEBUG", "GORACE", "GOCOVERDIR", "TMPDIR"} {
		if _, ok := os.LookupEnv(v); ok {
			args = append(args, "-E", v)
		}
	}
	args = append(args, cmd...)
	return &cliProc{Process: testutil.StartProcess(t, exec.Command(tool, args...)), args: args}
}

// unixSocket is a line of /proc/net/unix.
type unixSocket struct {
	inode     string
	listening bool
	stream    bool
}

// unixSockets returns the Unix sockets bound to addr (a path or @name)
// in our network namespace.
func unixSockets(tb testing.TB, addr string) []unixSocket {
	tb.Helper()
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var found []unixSocket
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode [Path]
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 || fl[7] != addr {
			continue
		}
		flags, _ := strconv.ParseUint(fl[3], 16, 32)
		found = append(found, unixSocket{inode: fl[6], listening: flags&0x10000 != 0, stream: fl[4] == "0001"})
	}
	return found
}

// listeningInode returns the inode of the listening stream socket
// bound to addr, or "" if there is none.
func listeningInode(tb testing.TB, addr string) string {
	tb.Helper()
	for _, s := range unixSockets(tb, addr) {
		if s.listening && s.stream {
			return s.inode
		}
	}
	return ""
}

// waitBound waits until systemd-socket-activate listens on addr.
func (p *cliProc) waitBound(tb testing.TB, addr string) {
	tb.Helper()
	poll(tb, "systemd-socket-activate to listen on "+addr, func() bool {
		if p.Exited() {
			tb.Fatalf("%q exited (%v) before listening\n%s", p.args, p.Err(), p.Output())
		}
		return listeningInode(tb, addr) != ""
	}, p.Output)
}

// fdsOn returns the descriptors of process pid that are the socket
// with inode ino, with their fdinfo flags.
func fdsOn(tb testing.TB, pid int, ino string) map[string]uint64 {
	tb.Helper()
	dir := fmt.Sprintf("/proc/%d/fd/", pid)
	names, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("descriptors of %d: %v", pid, err)
	}
	found := make(map[string]uint64)
	for _, n := range names {
		if target, _ := os.Readlink(dir + n.Name()); target != "socket:["+ino+"]" {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, n.Name()))
		var flags uint64
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ = strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			}
		}
		found[n.Name()] = flags
	}
	return found
}

// checkPassedSocket checks that the supervisor sup holds the listening
// socket ino through exactly one close-on-exec descriptor (the passed
// fd itself was replaced and closed), and that no worker holds it or
// sees a LISTEN_ variable.
func checkPassedSocket(t *testing.T, sup int, ino string, workers []int) {
	t.Helper()
	fds := fdsOn(t, sup, ino)
	if len(fds) != 1 {
		t.Errorf("the supervisor holds the passed socket through %d descriptors %v, want 1", len(fds), fds)
	}
	for fd, flags := range fds {
		if flags&unix.O_CLOEXEC == 0 {
			t.Errorf("the supervisor's fd %s on the passed socket is not close-on-exec (flags %o)", fd, flags)
		}
	}
	for _, w := range workers {
		if fds := fdsOn(t, w, ino); len(fds) > 0 {
			t.Errorf("worker %d holds the passed socket: fds %v", w, fds)
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", w))
		if err != nil {
			t.Errorf("environment of worker %d: %v", w, err)
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if strings.HasPrefix(kv, "LISTEN_") {
				t.Errorf("worker %d has %s in its environment", w, kv)
			}
		}
	}
}

// TestActivationRun: `run --socket PATH` under systemd-socket-activate.
// The first client connects before the supervisor exists (its
// connection starts it) and is answered; the supervisor is the process
// the tool exec'd; it uses the passed socket, close-on-exec and out of
// the workers' reach, and leaves the socket file as systemd made it,
// before and after a SIGTERM (exit 0). Started again the same way, a
// new supervisor answers on the same path.
func TestActivationRun(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "s")
	for gen := 1; gen <= 2; gen++ {
		p := activate(t, []string{"-l", sock}, "", "run", "--workers", "2", "--socket", sock)
		p.waitBound(t, sock)
		var made unix.Stat_t
		if err := unix.Lstat(sock, &made); err != nil {
			t.Fatal(err)
		}
		ino := listeningInode(t, sock)

		r := cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock, "--timeout", "20s")
		if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", p.PID())) {
			t.Errorf("generation %d: the pong is not from the exec'd supervisor %d:\n%s", gen, p.PID(), r)
		}
		workers := readyWorkers(t, sock, 2)
		checkPassedSocket(t, p.PID(), ino, workers)
		if !strings.Contains(p.Stderr.String(), "using the socket systemd passed") {
			t.Errorf("generation %d: no log line about the passed socket\n%s", gen, p.Output())
		}

		if code := p.stop(t, syscall.SIGTERM); code != exitOK {
			t.Fatalf("generation %d: exit %d after SIGTERM, want 0\n%s", gen, code, p.Output())
		}
		var after unix.Stat_t
		if err := unix.Lstat(sock, &after); err != nil || after.Ino != made.Ino || after.Mode != made.Mode || after.Ctim != made.Ctim {
			t.Errorf("generation %d: the socket file changed (%v): before %+v, after %+v; it is systemd's", gen, err, made, after)
		}
		if !gone(sock + ".lock") {
			t.Errorf("generation %d: a lock file was created beside a passed socket", gen)
		}
		for _, w := range workers {
			if !processGone(w) {
				t.Errorf("generation %d: worker %d outlived the supervisor", gen, w)
			}
		}
	}
}

// TestActivationRestartKeepsQueued: while nothing runs between two
// supervisors, the socket stays open in its keeper (as systemd keeps
// it across a restart), and a connection made then is answered by the
// next supervisor: none is lost. A shell exec'd by the tool keeps fd
// 3 and runs each supervisor with LISTEN_PID set to its pid.
func TestActivationRestartKeepsQueued(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	keeper := filepath.Join(dir, "keeper")
	script := `#!/bin/sh
dir=$(dirname "$0")
sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"' run "$@"
echo $? > "$dir/gen1"
read gate < "$dir/gate"
exec sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"' run "$@"
`
	testutil.WriteExecutable(t, keeper, []byte(script))
	if err := unix.Mkfifo(filepath.Join(dir, "gate"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := activate(t, []string{"-l", sock}, keeper, testutil.Executable(), "run", "--workers", "1", "--socket", sock)
	p.waitBound(t, sock)
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock, "--timeout", "20s")
	_, doc := statusJSON(t, sock)
	gen1 := doc.PID
	if gen1 == p.PID() || gen1 <= 0 {
		t.Fatalf("the first supervisor is %d, want a child of the keeper %d", gen1, p.PID())
	}
	t.Cleanup(func() { syscall.Kill(gen1, syscall.SIGKILL) })

	syscall.Kill(gen1, syscall.SIGTERM)
	var status []byte
	poll(t, "the first supervisor to exit", func() bool {
		status, _ = os.ReadFile(filepath.Join(dir, "gen1"))
		return len(status) > 0
	}, p.Output)
	if strings.TrimSpace(string(status)) != "0" {
		t.Fatalf("the first supervisor exited %s after SIGTERM, want 0\n%s", status, p.Output())
	}

	// Nothing runs now; the keeper holds the socket. This connection
	// waits in its backlog.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("connecting while no supervisor runs: %v (the socket must stay open in its keeper)", err)
	}
	defer c.Close()
	msg := []byte("queued while nobody ran\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var gate *os.File
	poll(t, "the keeper to wait at its gate", func() bool {
		gate, err = os.OpenFile(filepath.Join(dir, "gate"), os.O_WRONLY|syscall.O_NONBLOCK, 0)
		return err == nil
	}, p.Output)
	gate.WriteString("go\n")
	gate.Close()

	c.SetReadDeadline(time.Now().Add(cliPoll))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("the connection queued between supervisors: got %q, %v; want its echo %q\n%s", got, err, msg, p.Output())
	}
	_, doc = statusJSON(t, sock)
	if doc.PID != p.PID() {
		t.Errorf("the second supervisor is %d, want %d (the keeper exec'd it)", doc.PID, p.PID())
	}
	if code := p.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("the second supervisor exited %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestActivationServe: `serve --socket @name` takes the passed socket
// bound to that abstract name out of two, closes the other (nothing
// listens there once it runs), and answers.
func TestActivationServe(t *testing.T) {
	t.Parallel()
	name := abstractName("act")
	other := filepath.Join(tempDir(t), "other")
	p := activate(t, []string{"-l", other, "-l", name}, "", "serve", "--socket", name)
	p.waitBound(t, name)
	r := cliWant(t, exitOK, cliOpts{}, "ping", "--socket", name, "--timeout", "20s")
	if !strings.Contains(r.stdout, fmt.Sprintf("(pid %d)", p.PID())) {
		t.Errorf("the pong is not from the exec'd server %d:\n%s", p.PID(), r)
	}
	_, doc := statusJSON(t, name)
	if doc.Mode != "serve" || doc.Socket != name {
		t.Errorf("status: mode %q socket %q, want serve on %s", doc.Mode, doc.Socket, name)
	}
	if listeningInode(t, other) != "" {
		t.Errorf("the passed socket not used (%s) is still open; it should be closed", other)
	}
	if code := p.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestActivationByName: a passed socket named "pairvisor"
// (FileDescriptorName=) is taken whatever it is bound to, when none is
// bound to --socket; nothing is bound at --socket itself.
func TestActivationByName(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock, bound := filepath.Join(dir, "s"), filepath.Join(dir, "elsewhere")
	p := activate(t, []string{"-l", bound, "--fdname=pairvisor"}, "", "run", "--workers", "1", "--socket", sock, "--mode", "0660")
	p.waitBound(t, bound)
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", bound, "--timeout", "20s")
	if !gone(sock) {
		t.Errorf("something was bound at --socket %s although systemd passed the socket", sock)
	}
	if !strings.Contains(p.Stderr.String(), "--mode and --group do not apply") {
		t.Errorf("no warning that --mode does not apply to a passed socket\n%s", p.Output())
	}
	if code := p.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestActivationErrors: a passed socket that is not for --socket, or
// not a listening Unix stream socket, fails the command (exit 1) with a
// message naming what was passed, and nothing is bound at --socket.
func TestActivationErrors(t *testing.T) {
	t.Parallel()
	connect := func(tb testing.TB, addr string) {
		if c, err := net.Dial("unix", addr); err == nil {
			c.Close()
		}
	}
	cases := []struct {
		name    string
		sa      func(dir, sock string) []string
		trigger func(tb testing.TB, dir, sock string)
		want    []string
	}{
		{"none for the path",
			func(dir, sock string) []string { return []string{"-l", filepath.Join(dir, "other")} },
			func(tb testing.TB, dir, sock string) { connect(tb, filepath.Join(dir, "other")) },
			[]string{"none for --socket ", "fd 3 (a Unix socket bound to ", "/other)", "FileDescriptorName=pairvisor"}},
		{"two named pairvisor",
			func(dir, sock string) []string {
				return []string{"-l", filepath.Join(dir, "a"), "-l", filepath.Join(dir, "b"), "--fdname=pairvisor:pairvisor"}
			},
			func(tb testing.TB, dir, sock string) { connect(tb, filepath.Join(dir, "a")) },
			[]string{"more than one socket named \"pairvisor\"", `fd 3 named "pairvisor"`, `fd 4 named "pairvisor"`}},
		{"datagram",
			func(dir, sock string) []string { return []string{"--datagram", "-l", sock} },
			func(tb testing.TB, dir, sock string) {
				fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					tb.Fatal(err)
				}
				defer unix.Close(fd)
				unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrUnix{Name: sock})
			},
			[]string{"systemd passed fd 3", "not a listening Unix stream socket", "datagram (SOCK_DGRAM) socket bound to "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := tempDir(t)
			sock := filepath.Join(dir, "s")
			p := activate(t, tc.sa(dir, sock), "", "run", "--workers", "1", "--socket", sock)
			p.waitListenLines(t)
			tc.trigger(t, dir, sock)
			p.Wait(t, cliWait)
			if p.ExitCode() != exitFail {
				t.Errorf("exit %d, want 1\n%s", p.ExitCode(), p.Output())
			}
			for _, w := range tc.want {
				if !strings.Contains(p.Stderr.String(), w) {
					t.Errorf("stderr does not say %q\n%s", w, p.Output())
				}
			}
			if strings.Contains(tc.name, "datagram") {
				return // systemd-socket-activate bound the path itself
			}
			if !gone(sock) {
				t.Errorf("something was bound at --socket %s", sock)
			}
		})
	}

	// Accept=yes: systemd-socket-activate --accept passes each
	// connection, not the listening socket, to a child it forks.
	t.Run("connection", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(tempDir(t), "s")
		p := activate(t, []string{"--accept", "-l", sock}, "", "run", "--workers", "1", "--socket", sock)
		p.waitBound(t, sock)
		connect(t, sock)
		poll(t, "the child to fail", func() bool {
			return strings.Contains(p.Stderr.String(), "died with code 1")
		}, p.Output)
		for _, w := range []string{"not a listening Unix stream socket", "that is not listening (a connection, as systemd's Accept=yes passes?)"} {
			if !strings.Contains(p.Stderr.String(), w) {
				t.Errorf("stderr does not say %q\n%s", w, p.Output())
			}
		}
		p.stop(t, syscall.SIGTERM)
	})
}

// waitListenLines waits until systemd-socket-activate has said it
// listens on every socket it was given (one "Listening on" line each).
func (p *cliProc) waitListenLines(tb testing.TB) {
	tb.Helper()
	want := strings.Count(strings.Join(p.args, " "), "-l ")
	poll(tb, "systemd-socket-activate to listen on every socket", func() bool {
		return strings.Count(p.Stderr.String(), "Listening on") >= want || p.Exited()
	}, p.Output)
}

// TestActivationNotOurs: LISTEN_ variables meant for another process
// (LISTEN_PID is not ours) are ignored: the supervisor binds --socket
// itself, and the fd they describe is not touched.
func TestActivationNotOurs(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	cmd := cliCommand(t, cliOpts{}, "run", "--workers", "1", "--socket", sock)
	cmd.Env = append(cmd.Env, "LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=pairvisor")
	p := &cliProc{Process: testutil.StartProcess(t, cmd), args: cmd.Args}
	p.waitSocket(t, sock)
	if strings.Contains(p.Stderr.String(), "systemd passed") {
		t.Errorf("LISTEN_PID=1 was taken for ours\n%s", p.Output())
	}
	p.stopOK(t, syscall.SIGTERM, sock)
}

// TestPickPassed: the matching rules on their own — a path through a
// symlinked directory or relative to the working directory is the same
// socket; an abstract name matches only itself; the address rule wins
// over the name rule; a name matches "pairvisor" or the path's last
// element only.
func TestPickPassed(t *testing.T) {
	dir := tempDir(t)
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	bound := filepath.Join(real, "pv.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: bound}); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, bound)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		path, bound string
		want        bool
	}{
		{bound, bound, true},
		{filepath.Join(link, "pv.sock"), bound, true}, // the same file
		{rel, bound, true},                            // relative to our directory
		{filepath.Join(real, "other.sock"), bound, false},
		{"@pv", "@pv", true},
		{"@pv", "@pv2", false},
		{"@" + bound, bound, false},
		{bound, "", false},
	} {
		if got := sameAddr(tc.path, tc.bound); got != tc.want {
			t.Errorf("sameAddr(%q, %q) = %v, want %v", tc.path, tc.bound, got, tc.want)
		}
	}

	sock := passedSocket{fd: 3, unix: true, stream: true, listen: true, addr: bound}
	named := passedSocket{fd: 4, unix: true, stream: true, listen: true, addr: "/elsewhere", name: "pairvisor"}
	base := passedSocket{fd: 5, unix: true, stream: true, listen: true, addr: "/elsewhere2", name: "pv.sock"}
	other := passedSocket{fd: 6, unix: true, stream: true, listen: true, addr: "/x", name: "web"}
	inet := passedSocket{fd: 7, name: "metrics", stream: true, listen: true, tcp: netip.MustParseAddrPort("[::]:80")}
	for _, tc := range []struct {
		path   string
		passed []passedSocket
		want   int    // index, or -1 for none or an error
		errHas string // for an error
	}{
		{bound, []passedSocket{named, sock}, 1, ""}, // the address wins over the name
		{"/run/x/y.sock", []passedSocket{other, named}, 1, ""},
		{"/run/x/pv.sock", []passedSocket{other, base}, 1, ""}, // the path's last element
		{"/run/x/y.sock", []passedSocket{other, inet}, -1, ""}, // none: finish decides
		{"/run/x/pv.sock", []passedSocket{named, base}, -1, "more than one socket named"},
	} {
		got, err := pickPassed(tc.path, tc.passed, make([]bool, len(tc.passed)))
		if got != tc.want || (tc.errHas != "") != (err != nil) || err != nil && !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("pickPassed(%q, %v) = %d, %v; want %d (error saying %q)", tc.path, tc.passed, got, err, tc.want, tc.errHas)
		}
	}
	if got, err := pickPassed(bound, []passedSocket{sock}, []bool{true}); got != -1 || err != nil {
		t.Errorf("pickPassed offered a taken socket: %d, %v", got, err)
	}
}

// TestPassedNone: a --socket that no passed socket serves is an error
// listing what was passed, unless a --listen took one; a taken socket
// is not offered again.
func TestPassedNone(t *testing.T) {
	other := passedSocket{fd: 6, unix: true, stream: true, listen: true, addr: "/x", name: "web"}
	inet := passedSocket{fd: 7, name: "metrics", stream: true, listen: true, tcp: netip.MustParseAddrPort("[::]:80")}
	pool := func() *passedSockets {
		return &passedSockets{socks: []passedSocket{other, inet}, taken: make([]bool, 2), log: hclog.NewNullLogger()}
	}
	err := pool().finish("/run/x/y.sock", false)
	want := `systemd passed 2 socket(s) (LISTEN_FDS), none for --socket /run/x/y.sock: fd 6 named "web" (a Unix socket bound to /x); fd 7 named "metrics" (a TCP socket on [::]:80)`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("finish = %v, want an error saying %q", err, want)
	}
	p := pool()
	f, bound, err := p.forListen(config.Listen{Name: "http", Network: "tcp", Address: ":80"})
	if err != nil || bound != "[::]:80" || !p.taken[1] {
		t.Fatalf("forListen(tcp://:80) = %v, %q, %v; want fd 7's socket", f, bound, err)
	}
	if f, _, err := p.forListen(config.Listen{Name: "metrics", Network: "tcp", Address: ":81"}); f != nil || err != nil {
		t.Errorf("a taken socket was offered again: %v, %v", f, err)
	}
	if err := p.finish("/run/x/y.sock", false); err != nil {
		t.Errorf("finish after a --listen took a socket = %v, want nil (--socket binds its own)", err)
	}
}

// TestActivationListen: under systemd-socket-activate with a TCP socket
// named "http", a Unix socket for --socket and one more Unix socket,
// `run --listen http=tcp://…` hands the passed TCP socket to its
// workers instead of binding one (the tool holds the port, so a bind
// would fail): a connection queued before the supervisor existed is
// answered by a worker, and so are later ones, across a worker's
// restart. --socket takes its own passed socket, and the third, which
// nothing asks for, is closed with a warning.
func TestActivationListen(t *testing.T) {
	t.Parallel()
	python := testutil.RequireTool(t, "python3")
	dir := tempDir(t)
	sock, extra := filepath.Join(dir, "s"), filepath.Join(dir, "extra")
	script := filepath.Join(dir, "pid_server.py")
	err := os.WriteFile(script, []byte(`import os, socket
s = socket.socket(fileno=3)  # the first listener: LISTEN_FDS=1
assert os.environ["LISTEN_FDNAMES"] == "http" and os.environ["LISTEN_PID"] == str(os.getpid())
while True:
    c, _ = s.accept()
    c.sendall(b"%d\n" % os.getpid())
    c.close()
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	p := activate(t, []string{"-l", addr, "-l", sock, "-l", extra, "--fdname=http:pairvisor:extra"},
		"", "run", "--workers", "2", "--socket", sock, "--listen", "http=tcp://"+addr,
		"--ready", "started", "--start-secs", "10ms", "--", python, script)
	p.waitBound(t, sock)
	ask := func() int {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, cliWait)
		if err != nil {
			t.Fatalf("connecting to %s: %v\n%s", addr, err, p.Output())
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(cliWait))
		line, err := bufio.NewReader(c).ReadString('\n')
		pid, _ := strconv.Atoi(strings.TrimSpace(line))
		if err != nil || pid <= 0 {
			t.Fatalf("reading %s: %q, %v\n%s", addr, line, err, p.Output())
		}
		return pid
	}
	// The tool execs the supervisor at the first connection: this one,
	// queued on the passed TCP socket before the supervisor exists.
	firstPID := ask()
	workers := readyWorkers(t, sock, 2)
	if !slices.Contains(workers, firstPID) {
		t.Errorf("the first connection was answered by pid %d, not a worker %v", firstPID, workers)
	}
	p.replaceWorker(t, sock, 2, workers[0])
	workers = readyWorkers(t, sock, 2)
	for range 4 {
		if pid := ask(); !slices.Contains(workers, pid) {
			t.Errorf("answered by pid %d, not a worker %v", pid, workers)
		}
	}
	loose, _ := statusJSON(t, sock)
	if ls, _ := json.Marshal(loose["listeners"]); !strings.Contains(string(ls), `"bound":"`+addr+`"`) {
		t.Errorf("status lists the listeners %s, want http bound to %s", ls, addr)
	}
	log := p.Stderr.String()
	for _, want := range []string{"closing a socket systemd passed that no --socket or --listen asks for", `named \"extra\"`,
		"using the socket systemd passed: listener=http"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q\n%s", want, p.Output())
		}
	}
	if code := p.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestPassedMatchListen: the address rules of --listen on their own: a
// wildcard address (empty, *, 0.0.0.0, ::) matches a passed wildcard
// socket on the same port; a socket of the wrong family is no match by
// address (so two passed sockets on one port, v4 and v6 only, are not
// ambiguous for tcp4://); --socket's name rule takes only Unix sockets.
func TestPassedMatchListen(t *testing.T) {
	v6any := passedSocket{fd: 3, stream: true, listen: true, tcp: netip.MustParseAddrPort("[::]:80")}
	v4any := passedSocket{fd: 4, stream: true, listen: true, tcp: netip.MustParseAddrPort("0.0.0.0:80")}
	lo := passedSocket{fd: 5, stream: true, listen: true, tcp: netip.MustParseAddrPort("127.0.0.1:8080")}
	named := passedSocket{fd: 6, stream: true, listen: true, name: "http", tcp: netip.MustParseAddrPort("[::]:9000")}
	for _, tc := range []struct {
		addr   string
		passed []passedSocket
		want   int // fd, 0 for none
	}{
		{"tcp://:80", []passedSocket{v6any}, 3},
		{"tcp://*:80", []passedSocket{v6any}, 3},
		{"tcp://0.0.0.0:80", []passedSocket{v6any}, 3},
		{"tcp://[::]:80", []passedSocket{v6any}, 3},
		{"tcp4://:80", []passedSocket{v6any, v4any}, 4},
		{"tcp6://:80", []passedSocket{v4any, v6any}, 3},
		{"tcp://127.0.0.1:8080", []passedSocket{v6any, lo}, 5},
		{"tcp://127.0.0.1:80", []passedSocket{lo}, 0},
		{"tcp://:81", []passedSocket{v6any}, 0},
		{"http=tcp://:1234", []passedSocket{named}, 6}, // by name
	} {
		spec, err := config.ParseListen(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		p := &passedSockets{socks: tc.passed, taken: make([]bool, len(tc.passed)), log: hclog.NewNullLogger()}
		_, _, err = p.forListen(spec)
		got := 0
		for i, taken := range p.taken {
			if taken {
				got = tc.passed[i].fd
			}
		}
		if err != nil || got != tc.want {
			t.Errorf("forListen(%s) among %v took fd %d (%v), want %d", tc.addr, tc.passed, got, err, tc.want)
		}
	}
	tcpNamed := passedSocket{fd: 7, stream: true, listen: true, name: "pairvisor", tcp: netip.MustParseAddrPort("[::]:80")}
	if i, err := pickPassed("/run/x/s", []passedSocket{tcpNamed}, []bool{false}); i != -1 || err != nil {
		t.Errorf("--socket took a TCP socket by its name: %d, %v", i, err)
	}
}
