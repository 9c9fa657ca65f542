//go:build linux

package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// procIDs returns the real uid and gid of pid and its HOME and USER, as
// /proc shows them.
func procIDs(tb testing.TB, pid int) (uid, gid, home, user string) {
	tb.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid = f[1]
		} else if len(f) > 1 && f[0] == "Gid:" {
			gid = f[1]
		}
	}
	// environ reads empty while the process is between two programs
	// (the worker's shell execs sleep right after it is ready).
	var env []byte
	poll(tb, fmt.Sprintf("process %d's environment", pid), func() bool {
		var err error
		if env, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil {
			tb.Fatal(err)
		}
		return len(env) > 0
	}, func() string { return "" })
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "HOME="); ok {
			home = v
		} else if v, ok := strings.CutPrefix(kv, "USER="); ok {
			user = v
		}
	}
	return uid, gid, home, user
}

// TestRunUser: run --user nobody starts its workers and their health
// command as nobody, with nobody's HOME and USER, and takes their
// READY=1 from nobody's notify datagrams (systemd-notify waits until
// they are read, so it is placed in the worker's tree).
func TestRunUser(t *testing.T) {
	t.Parallel()
	dir, _ := otherUser(t)
	notify := testutil.ToolForOthers(t, "systemd-notify")
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--workers", "2", "--socket", sock, "--user", "nobody", "--ready", "notify",
		"--health-cmd", `echo "$(id -u) $HOME $USER" > `+out+"/health.%i", "--health-interval", "50ms",
		"--", "sh", "-c", notify+" --ready && exec sleep 1000")
	run.waitSocket(t, sock)
	for _, pid := range readyWorkers(t, sock, 2) {
		// The worker is sleep, exec'd by the shell the supervisor started.
		uid, gid, home, user := procIDs(t, pid)
		if uid != "65534" || gid != "65534" || home != "/nonexistent" || user != "nobody" {
			t.Errorf("worker %d runs as uid %s gid %s, HOME=%s USER=%s; want nobody's (65534, 65534, /nonexistent, nobody)",
				pid, uid, gid, home, user)
		}
	}
	for i := 1; i <= 2; i++ {
		path := filepath.Join(out, "health."+strconv.Itoa(i))
		var got []byte
		poll(t, "worker "+strconv.Itoa(i)+"'s health command to write its uid", func() bool {
			got, _ = os.ReadFile(path)
			return strings.HasSuffix(string(got), "\n")
		}, func() string { return fmt.Sprintf("%s holds %q\n%s", path, got, run.Output()) })
		if string(got) != "65534 /nonexistent nobody\n" {
			t.Errorf("health command ran as uid, HOME, USER %q; want nobody's (65534 /nonexistent nobody)", got)
		}
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunUserPrivilegedPort: the supervisor (root) binds a port below
// 1024 and its workers, which run as nobody, serve it.
func TestRunUserPrivilegedPort(t *testing.T) {
	t.Parallel()
	dir, _ := otherUser(t)
	python := testutil.ToolForOthers(t, "python3")
	script := filepath.Join(dir, "uid_server.py")
	err := os.WriteFile(script, []byte(`import os, socket
s = socket.socket(fileno=3)  # the first (and only) listener
while True:
    c, _ = s.accept()
    c.sendall(b"%d\n" % os.getuid())
    c.close()
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	port := freePrivilegedPort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	run := cliStart(t, "run", "--workers", "1", "--user", "nobody", "--ready", "started", "--start-secs", "10ms",
		"--listen", "tcp://"+addr, "--", python, script)
	var got string
	poll(t, "an answer on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, cliWait)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(cliWait))
		line, _ := bufio.NewReader(c).ReadString('\n')
		got = line
		return line != ""
	}, func() string { return run.Output() })
	if got != "65534\n" {
		t.Errorf("the server on %s runs as uid %q, want 65534", addr, got)
	}
	if code := run.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d\n%s", code, run.Output())
	}
}

// freePrivilegedPort returns a port below 1024 that nothing listens on
// at 127.0.0.1 (this test runs as root).
func freePrivilegedPort(tb testing.TB) int {
	tb.Helper()
	for port := 600 + os.Getpid()%300; port < 1024; port++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			l.Close()
			return port
		}
	}
	tb.Skip("no free port below 1024")
	return 0
}

// TestRunUserRefused: --user errors are usage errors that name the
// flag: an unknown account, a command the user may not run, and any
// other account when the supervisor is not root. check-config reports
// a bad user key with its file and line.
func TestRunUserRefused(t *testing.T) {
	t.Parallel()
	dir, exe := otherUser(t)
	private := filepath.Join(dir, "private.sh")
	if err := os.WriteFile(private, []byte("#!/bin/sh\nexec sleep 1000\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A supervisor binary that only root may run: workers with
	// listeners start through it (the exec shim).
	privateExe := testutil.CopyExecutable(t, dir, "supervisor-private")
	if err := os.Chmod(privateExe, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    cliOpts
		args []string
		want string
	}{
		{cliOpts{}, []string{"run", "--user", "no-such-user-pv", "--", "true"}, `--user: userdb: no such user or group: user "no-such-user-pv"`},
		{cliOpts{}, []string{"run", "--user", "nobody:no-such-group-pv", "--", "true"}, `group "no-such-group-pv"`},
		{cliOpts{}, []string{"run", "--user", "nobody", "--", private}, "may not run " + private},
		{cliOpts{exe: exe, cred: nobody}, []string{"run", "--user", "root", "--", "true"}, "--user: running workers as root (uid 0, gid 0) takes root; this runs as uid 65534"},
		{cliOpts{exe: privateExe}, []string{"run", "--user", "nobody", "--listen", "tcp://127.0.0.1:0", "--", "true"},
			"--user: uid 65534 may not run " + privateExe + " (mode 0700, owner 0, group 0): workers with listeners start through this program"},
	} {
		r := cliWant(t, exitUsage, tc.o, tc.args...)
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: stderr does not say %q:\n%s", tc.args, tc.want, r)
		}
	}

	conf := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(conf, []byte("[programs.a]\ncommand = \"true\"\nuser = \"no-such-user-pv\"\n\n[programs.b]\ncommand = \"true\"\nuser = \"x:\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cliWant(t, exitUsage, cliOpts{}, "check-config", conf)
	for _, want := range []string{conf + `:7: programs.b.user: must be "USER" or "USER:GROUP"`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("check-config: stderr does not say %q:\n%s", want, r)
		}
	}
	if err := os.WriteFile(conf, []byte("[programs.a]\ncommand = \"true\"\nuser = \"no-such-user-pv\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = cliWant(t, exitUsage, cliOpts{}, "check-config", conf)
	if want := conf + `:1: programs.a: user: userdb: no such user or group`; !strings.Contains(r.stderr, want) {
		t.Errorf("check-config: stderr does not say %q:\n%s", want, r)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("[programs.a]\ncommand = \"true\"\nuser = \"nobody:nogroup\"\n\n[programs.b]\ncommand = \"true\"\nuser = \"root\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cliWant(t, exitOK, cliOpts{}, "check-config", good)
	// check-config as another user looks the accounts up, and needs no
	// root for them.
	cliWant(t, exitOK, cliOpts{exe: exe, cred: nobody}, "check-config", good)
}

// TestRunUserNotifyStranger: workers run as nobody with --ready notify.
// A process of nobody's outside the worker's tree sends READY=1 to the
// worker's NOTIFY_SOCKET and exits: it is refused (the uid may be
// shared, and the abstract name is visible to all), whether its
// datagram is read while it runs or after it has gone (which of the two
// happens is the scheduler's choice; TestTrustGone covers the rule for
// the second), and the worker becomes ready only when it says READY=1
// itself.
func TestRunUserNotifyStranger(t *testing.T) {
	t.Parallel()
	dir, _ := otherUser(t)
	python := testutil.ToolForOthers(t, "python3")
	notify := testutil.ToolForOthers(t, "systemd-notify")
	goFile := filepath.Join(dir, "go")
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--workers", "1", "--socket", sock, "--user", "nobody", "--ready", "notify",
		"--start-timeout", "1h", "--log-level", "debug", "--",
		"sh", "-c", "while [ ! -e "+goFile+" ]; do sleep 0.05; done; "+notify+" --ready && exec sleep 1000")
	run.waitSocket(t, sock)
	var pid int
	poll(t, "the worker's pid", func() bool {
		_, doc := statusJSON(t, sock)
		if len(doc.Workers) == 1 {
			pid = doc.Workers[0].PID
		}
		return pid > 0
	}, run.Output)
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
			addr = v
		}
	}
	if !strings.HasPrefix(addr, "@") {
		t.Fatalf("worker %d has NOTIFY_SOCKET %q", pid, addr)
	}
	stranger := exec.Command(python, "-c", `import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", "\0" + sys.argv[1][1:])`, addr)
	stranger.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	if out, err := stranger.CombinedOutput(); err != nil {
		t.Fatalf("the stranger's send: %v\n%s", err, out)
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	readyWorkers(t, sock, 1)
	want := fmt.Sprintf("sender_pid=%d sender_uid=65534", stranger.Process.Pid)
	poll(t, "the stranger's datagram refused in the log", func() bool {
		return strings.Contains(run.Stderr.String(), "notify datagram refused") && strings.Contains(run.Stderr.String(), want)
	}, run.Output)
	run.stopOK(t, syscall.SIGTERM, sock)
}
