//go:build linux

package listen_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// Tests of Listen and Listener: the rules of "A listener on a path".
// Every helper here is prefixed with "uds" so that it cannot collide with
// the helpers of the package's other test files.

// udsPoll calls cond every few milliseconds until it is true, failing
// the test after testutil.UDSWait. detail, if not nil, adds to the failure.
func udsPoll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, testutil.UDSWait, 5*time.Millisecond, what, cond, detail)
}

// udsListen calls Listen and closes the Listener at cleanup.
func udsListen(tb testing.TB, path string, cfg listen.Config) *listen.Listener {
	tb.Helper()
	l, err := listen.New(path, cfg)
	if err != nil {
		tb.Fatalf("Listen(%q): %v", path, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// udsAccept accepts one connection within testutil.UDSWait. The fd is closed at
// cleanup.
func udsAccept(tb testing.TB, l *listen.Listener) (int, *listen.Cred) {
	tb.Helper()
	type result struct {
		fd   int
		cred *listen.Cred
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		fd, cred, err := udsAcceptFD(l)
		ch <- result{fd, cred, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-time.After(testutil.UDSWait):
		l.Close() // wakes Accept
		if r = <-ch; r.err == nil {
			unix.Close(r.fd)
		}
		tb.Fatalf("Accept did not return within %v", testutil.UDSWait)
	}
	if r.err != nil {
		tb.Fatalf("Accept: %v", r.err)
	}
	tb.Cleanup(func() { unix.Close(r.fd) })
	return r.fd, r.cred
}

// udsAcceptFD accepts a connection on l and returns it as a blocking
// descriptor, which the caller owns, for tests that read it with
// SO_RCVTIMEO; Close ends it.
func udsAcceptFD(l *listen.Listener) (int, *listen.Cred, error) {
	p, err := l.Accept(context.Background())
	if err != nil {
		return -1, nil, err
	}
	// Fd puts the file (and so its copy) in blocking mode.
	fd, err := unix.FcntlInt(p.File.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	p.File.Close()
	if err != nil {
		return -1, nil, err
	}
	return fd, &p.Cred, nil
}

// udsServes connects to path and checks that l accepts the connection
// and that bytes flow both ways. Connections that are already closed
// when accepted are skipped: a failed Listen probes a live server with
// a connect, which leaves such a connection in its accept queue. It
// returns both ends (closed at cleanup) and the accepted peer's
// credentials.
func udsServes(tb testing.TB, l *listen.Listener, path string) (c, s int, cred *listen.Cred) {
	tb.Helper()
	c = testutil.MustConnectUnix(tb, path)
	if _, err := unix.Write(c, []byte{'x'}); err != nil {
		tb.Fatalf("write: %v", err)
	}
	tv := unix.NsecToTimeval(testutil.UDSWait.Nanoseconds())
	for range 100 {
		s, cred = udsAccept(tb, l)
		unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		var buf [1]byte
		n, err := unix.Read(s, buf[:])
		if n == 0 && err == nil {
			continue // a probe's connection
		}
		if n != 1 || buf[0] != 'x' {
			tb.Fatalf("read on the accepted connection: %d %q %v", n, buf[:n], err)
		}
		udsExchange(tb, c, s)
		return c, s, cred
	}
	tb.Fatal("only closed connections accepted")
	return
}

// udsExchange checks that a and b are connected: a byte written on
// each arrives on the other.
func udsExchange(tb testing.TB, a, b int) {
	tb.Helper()
	for _, p := range [][2]int{{a, b}, {b, a}} {
		if _, err := unix.Write(p[0], []byte{'x'}); err != nil {
			tb.Fatalf("write: %v", err)
		}
		var buf [1]byte
		tv := unix.NsecToTimeval(testutil.UDSWait.Nanoseconds())
		unix.SetsockoptTimeval(p[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if n, err := unix.Read(p[1], buf[:]); n != 1 || err != nil || buf[0] != 'x' {
			tb.Fatalf("read: %d %q %v", n, buf[:n], err)
		}
	}
}

// udsDirNames lists dir's entries, for failure messages.
func udsDirNames(dir string) string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return "[" + strings.Join(names, " ") + "]"
}

// udsStat is what we compare to show a path was left untouched.
type udsStat struct {
	mode    uint32
	ino     uint64
	uid     uint32
	gid     uint32
	size    int64
	mtimeNs int64
	content string // regular file content or symlink target
}

func udsSnapshot(tb testing.TB, path string) udsStat {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		tb.Fatalf("lstat %s: %v", path, err)
	}
	s := udsStat{mode: st.Mode, ino: st.Ino, uid: st.Uid, gid: st.Gid, size: st.Size, mtimeNs: st.Mtim.Nano()}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		b, err := os.ReadFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		s.content = string(b)
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			tb.Fatal(err)
		}
		s.content = target
	case unix.S_IFDIR:
		s.content = udsDirNames(path)
	}
	return s
}

func udsSockStat(tb testing.TB, path string) unix.Stat_t {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		tb.Fatalf("lstat %s: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		tb.Fatalf("%s has mode %o, want a socket", path, st.Mode)
	}
	return st
}

func TestListenFresh(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	l := udsListen(t, path, listen.Config{})
	if l.Addr() != path {
		t.Errorf("Addr() = %q, want %q", l.Addr(), path)
	}
	st := udsSockStat(t, path)
	if st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()) {
		t.Errorf("socket owned by %d:%d, want %d:%d", st.Uid, st.Gid, os.Geteuid(), os.Getegid())
	}
	lock, err := os.ReadFile(path + ".lock")
	if err != nil {
		t.Fatalf("lock file: %v", err)
	}
	if want := fmt.Sprintf("pairvisor-lock %d\n", os.Getpid()); string(lock) != want {
		t.Errorf("lock file holds %q, want %q", lock, want)
	}
	_, _, cred := udsServes(t, l, path)
	if cred.PID != int32(os.Getpid()) || cred.UID != uint32(os.Geteuid()) {
		t.Errorf("peer credentials %+v, want pid %d uid %d", *cred, os.Getpid(), os.Geteuid())
	}
	if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	testutil.AssertGone(t, path, path+".lock")
	if _, err := l.Accept(t.Context()); !errors.Is(err, listen.ErrClosed) {
		t.Errorf("Accept after Close: %v, want ErrClosed", err)
	}
	if names := udsDirNames(dir); names != "[]" {
		t.Errorf("directory not empty after Close: %s", names)
	}
}

func TestListenStale(t *testing.T) {
	t.Parallel()
	for _, lockFile := range []string{"", "pairvisor-lock 999999\n", "pairvisor-lock "} {
		t.Run(fmt.Sprintf("lock=%q", lockFile), func(t *testing.T) {
			t.Parallel()
			dir := testutil.ShortDir(t, "pv")
			path := filepath.Join(dir, "s")
			testutil.StaleSocket(t, path)
			if lockFile != "" { // a crashed server's lock file, no longer locked
				if err := os.WriteFile(path+".lock", []byte(lockFile), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := testutil.ConnectUnix(path); !errors.Is(err, unix.ECONNREFUSED) {
				t.Fatalf("connect to the stale socket: %v, want ECONNREFUSED", err)
			}
			l := udsListen(t, path, listen.Config{})
			udsSockStat(t, path)
			udsServes(t, l, path) // the stale socket refused connections
			l.Close()
			testutil.AssertGone(t, path, path+".lock")
		})
	}
}

func TestListenLiveServer(t *testing.T) {
	t.Parallel()
	t.Run("pairvisor", func(t *testing.T) {
		// A live pairvisor listener: the second Listen finds the lock
		// held and names the live server's pid.
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		l := udsListen(t, path, listen.Config{})
		before := udsSockStat(t, path)
		l2, err := listen.New(path, listen.Config{})
		if err == nil {
			l2.Close()
			t.Fatal("second Listen succeeded")
		}
		if !errors.Is(err, listen.ErrInUse) {
			t.Errorf("second Listen: %v, want ErrInUse", err)
		}
		if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the live server (%s)", err, want)
		}
		if st := udsSockStat(t, path); st.Ino != before.Ino {
			t.Errorf("live server's socket replaced")
		}
		udsServes(t, l, path)
	})
	t.Run("foreign-process", func(t *testing.T) {
		// A live server in another process, without a lock file.
		t.Parallel()
		py := testutil.RequireTool(t, "python3")
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		cmd := exec.Command(py, "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(16)
print("listening", flush=True)
sys.stdin.read()
`, path)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr testutil.LogBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() {
			io.Copy(io.Discard, stdout)
			waited <- cmd.Wait()
		}()
		defer func() {
			stdin.Close() // the server exits at EOF
			select {
			case err := <-waited:
				if err != nil {
					t.Errorf("python server: %v; stderr:\n%s", err, stderr.String())
				}
			case <-time.After(testutil.UDSWait):
				cmd.Process.Kill()
				<-waited
				t.Errorf("python server did not exit")
			}
		}()
		udsPoll(t, "the python server's socket", func() bool {
			fd, err := testutil.ConnectUnix(path)
			if err == nil {
				unix.Close(fd)
			}
			return err == nil
		}, func() string { return "stderr: " + stderr.String() })
		before := udsSockStat(t, path)

		l, err := listen.New(path, listen.Config{})
		if err == nil {
			l.Close()
			t.Fatal("Listen stole a live server's path")
		}
		if !errors.Is(err, listen.ErrInUse) {
			t.Errorf("Listen: %v, want ErrInUse", err)
		}
		if want := fmt.Sprintf("pid %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the live server (%s)", err, want)
		}
		if st := udsSockStat(t, path); st.Ino != before.Ino {
			t.Errorf("live server's socket replaced")
		}
		testutil.AssertGone(t, path+".lock")
		if fd, err := testutil.ConnectUnix(path); err != nil {
			t.Errorf("live server unreachable after the failed Listen: %v", err)
		} else {
			unix.Close(fd)
		}
	})
	t.Run("backlog-full", func(t *testing.T) {
		// A live but stuck server whose accept queue is full: a
		// connect to it would block, so Listen must not block on it.
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeListener := sync.OnceFunc(func() { unix.Close(lfd) })
		defer closeListener()
		if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(lfd, 0); err != nil {
			t.Fatal(err)
		}
		// Fill the accept queue.
		for i := 0; ; i++ {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
			if errors.Is(err, unix.EAGAIN) {
				unix.Close(fd)
				break
			}
			if err != nil || i > 100 {
				unix.Close(fd)
				t.Fatalf("filling the backlog: connect %d: %v", i, err)
			}
			defer unix.Close(fd)
		}
		done := make(chan error, 1)
		go func() {
			l, err := listen.New(path, listen.Config{})
			if err == nil {
				l.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, listen.ErrInUse) {
				t.Errorf("Listen: %v, want ErrInUse", err)
			}
		case <-time.After(testutil.UDSWait):
			closeListener() // wakes a blocked connect
			<-done
			t.Fatalf("Listen blocked for %v on a live server with a full backlog", testutil.UDSWait)
		}
		udsSockStat(t, path)
	})
}

func TestListenNotOurs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		make   func(t *testing.T, path string)
		target string // a symlink's target, checked too
	}{
		{name: "regular-file", make: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious data\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "empty-file", make: func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "directory", make: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, "inside"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink-to-file", target: "target", make: func(t *testing.T, path string) {
			target := filepath.Join(filepath.Dir(path), "target")
			if err := os.WriteFile(target, []byte("the target\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink-to-stale-socket", target: "target", make: func(t *testing.T, path string) {
			target := filepath.Join(filepath.Dir(path), "target")
			testutil.StaleSocket(t, target)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "dangling-symlink", make: func(t *testing.T, path string) {
			if err := os.Symlink("/nonexistent/pairvisor", path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "fifo", make: func(t *testing.T, path string) {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := testutil.ShortDir(t, "pv")
			path := filepath.Join(dir, "s")
			tc.make(t, path)
			before := udsSnapshot(t, path)
			var targetBefore udsStat
			if tc.target != "" {
				targetBefore = udsSnapshot(t, filepath.Join(dir, tc.target))
			}
			l, err := listen.New(path, listen.Config{})
			if err == nil {
				l.Close()
				t.Fatalf("Listen over a %s succeeded", tc.name)
			}
			if !errors.Is(err, listen.ErrNotOurs) {
				t.Errorf("Listen: %v, want ErrNotOurs", err)
			}
			var op *os.PathError
			if !errors.As(err, &op) || op.Op != "listen" || op.Path != path {
				t.Errorf("Listen error %#v is not a PathError for listen %s", err, path)
			}
			if after := udsSnapshot(t, path); after != before {
				t.Errorf("path changed:\nbefore %+v\nafter  %+v", before, after)
			}
			if tc.target != "" {
				if after := udsSnapshot(t, filepath.Join(dir, tc.target)); after != targetBefore {
					t.Errorf("symlink target changed:\nbefore %+v\nafter  %+v", targetBefore, after)
				}
			}
			testutil.AssertGone(t, path+".lock")
			if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
				t.Errorf("temporary directories left: %v", left)
			}
		})
	}
}

func TestListenForeignLock(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		make func(t *testing.T, lock string)
	}{
		{name: "file", make: func(t *testing.T, lock string) {
			if err := os.WriteFile(lock, []byte("somebody else's lock\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink", make: func(t *testing.T, lock string) {
			target := filepath.Join(filepath.Dir(lock), "target")
			if err := os.WriteFile(target, []byte("pairvisor-lock 1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, lock); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "directory", make: func(t *testing.T, lock string) {
			if err := os.Mkdir(lock, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "fifo", make: func(t *testing.T, lock string) {
			if err := unix.Mkfifo(lock, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "socket", make: func(t *testing.T, lock string) { testutil.StaleSocket(t, lock) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := testutil.ShortDir(t, "pv")
			path := filepath.Join(dir, "s")
			lock := path + ".lock"
			tc.make(t, lock)
			before := udsSnapshot(t, lock)
			l, err := listen.New(path, listen.Config{})
			if err == nil {
				l.Close()
				t.Fatal("Listen with a foreign lock file succeeded")
			}
			if !errors.Is(err, listen.ErrNotOurs) {
				t.Errorf("Listen: %v, want ErrNotOurs", err)
			}
			if after := udsSnapshot(t, lock); after != before {
				t.Errorf("lock path changed:\nbefore %+v\nafter  %+v", before, after)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket created despite the foreign lock file (lstat: %v)", err)
			}
		})
	}
}

func TestListenRace(t *testing.T) {
	t.Parallel()
	const racers = 20
	for round, stale := range []bool{false, true, false, true} {
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		if stale {
			testutil.StaleSocket(t, path)
		}
		start := make(chan struct{})
		var (
			wg        sync.WaitGroup
			listeners = make([]*listen.Listener, racers)
			errs      = make([]error, racers)
		)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				listeners[i], errs[i] = listen.New(path, listen.Config{})
			}()
		}
		close(start)
		wg.Wait()
		var winners []*listen.Listener
		for i, err := range errs {
			switch {
			case err == nil:
				winners = append(winners, listeners[i])
			case errors.Is(err, listen.ErrLocked), errors.Is(err, listen.ErrInUse):
			default:
				t.Errorf("round %d: racer %d: %v, want ErrLocked or ErrInUse", round, i, err)
			}
		}
		if len(winners) != 1 {
			t.Errorf("round %d (stale socket: %v): %d winners, want exactly 1", round, stale, len(winners))
		}
		for _, l := range winners {
			udsServes(t, l, path)
			l.Close()
		}
		testutil.AssertGone(t, path, path+".lock")
		if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
			t.Errorf("round %d: temporary directories left: %v", round, left)
		}
	}
}

func TestListenPathTooLong(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	// A directory name that brings the socket path to exactly n bytes.
	pathOfLen := func(n int, name string) string {
		sub := strings.Repeat("d", n-len(dir)-2-len(name))
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, sub, name)
		if len(p) != n {
			t.Fatalf("built a path of %d bytes, want %d", len(p), n)
		}
		return p
	}

	long := pathOfLen(listen.MaxPathLen+1, "socket-name-long")
	l, err := listen.New(long, listen.Config{})
	if err == nil {
		l.Close()
		t.Fatalf("Listen on a %d-byte path succeeded", len(long))
	}
	if !errors.Is(err, listen.ErrPathTooLong) {
		t.Errorf("Listen: %v, want ErrPathTooLong", err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(listen.MaxPathLen)) {
		t.Errorf("error %q does not name the limit %d", err, listen.MaxPathLen)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(len(long))) {
		t.Errorf("error %q does not give the path's length %d", err, len(long))
	}
	testutil.AssertGone(t, long, long+".lock")
	if _, err := ipc.Dial(t.Context(), long, ipc.ConnConfig{}); !errors.Is(err, listen.ErrPathTooLong) {
		t.Errorf("Dial on a %d-byte path: %v, want ErrPathTooLong", len(long), err)
	}
	if l, err := listen.New("@"+strings.Repeat("a", listen.MaxPathLen), listen.Config{}); !errors.Is(err, listen.ErrPathTooLong) {
		if err == nil {
			l.Close()
		}
		t.Errorf("Listen on a %d-byte abstract name: %v, want ErrPathTooLong", listen.MaxPathLen+1, err)
	}

	// Exactly the limit works.
	exact := pathOfLen(listen.MaxPathLen, "socket-name-long")
	l = udsListen(t, exact, listen.Config{})
	udsServes(t, l, exact)
	l.Close()
	testutil.AssertGone(t, exact, exact+".lock")
}

// udsInotify returns the events recorded by inotify fd ifd so far, as
// name → OR of the masks.
func udsInotify(tb testing.TB, ifd int) map[string]uint32 {
	tb.Helper()
	events := map[string]uint32{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(ifd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return events
		}
		if err != nil {
			tb.Fatalf("reading inotify events: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+nameLen], "\x00"))
			events[name] |= mask
			off += unix.SizeofInotifyEvent + nameLen
		}
	}
}

func TestListenMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode os.FileMode
		want uint32
	}{
		{0, 0o600}, // the default
		{0o600, 0o600},
		{0o660, 0o660},
		{0o666, 0o666}, // wider than the umask allows: set with chmod, not at bind
		{0o700, 0o700},
	} {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			t.Parallel()
			dir := testutil.ShortDir(t, "pv")
			path := filepath.Join(dir, "s")
			ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(ifd)
			if _, err := unix.InotifyAddWatch(ifd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
				t.Fatal(err)
			}
			cfg := listen.Config{Mode: tc.mode, GID: -1}
			if tc.mode == 0 {
				cfg = listen.Config{} // the zero value
			}
			l := udsListen(t, path, cfg)
			st := udsSockStat(t, path)
			if got := st.Mode & 0o7777; got != tc.want {
				t.Errorf("socket mode %04o, want %04o", got, tc.want)
			}
			// The socket must appear at the path by a rename, with its
			// mode already set: no create, no chmod at the path itself.
			ev := udsInotify(t, ifd)
			if got := ev["s"]; got&unix.IN_MOVED_TO == 0 || got&(unix.IN_CREATE|unix.IN_ATTRIB) != 0 {
				t.Errorf("inotify events on the socket path: %#x, want IN_MOVED_TO only (events: %v)", got, ev)
			}
			if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
				t.Errorf("temporary directories left: %v", left)
			}
			l.Close()
			testutil.AssertGone(t, path, path+".lock")
		})
	}
}

func TestListenGID(t *testing.T) {
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		for i, cfg := range []listen.Config{{}, {GID: -1}, {Mode: 0o660, GID: -1}} {
			path := filepath.Join(dir, strconv.Itoa(i))
			udsListen(t, path, cfg)
			if st := udsSockStat(t, path); st.Gid != uint32(os.Getegid()) {
				t.Errorf("%+v: socket group %d, want our gid %d", cfg, st.Gid, os.Getegid())
			}
		}
	})
	t.Run("requested", func(t *testing.T) {
		t.Parallel()
		gid := -1
		if os.Geteuid() == 0 {
			gid = 4242 // root may give the file to any group
		} else {
			groups, _ := os.Getgroups()
			for _, g := range groups {
				if g != os.Getegid() {
					gid = g
					break
				}
			}
		}
		if gid < 0 {
			t.Skip("not root and in no supplementary group: no other group to give the socket to")
		}
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		l := udsListen(t, path, listen.Config{Mode: 0o660, GID: gid})
		st := udsSockStat(t, path)
		if st.Gid != uint32(gid) || st.Mode&0o7777 != 0o660 {
			t.Errorf("socket group %d mode %04o, want group %d mode 0660", st.Gid, st.Mode&0o7777, gid)
		}
		l.Close()
		testutil.AssertGone(t, path, path+".lock")
	})
}

// udsUnprivilegedEnv marks the re-executed test binary that
// TestListenUnprivileged runs as another user.
const udsUnprivilegedEnv = "PAIRVISOR_IPC_TEST_UNPRIVILEGED"

// TestListenUnprivileged checks Listen for a user who is not root: the
// zero ListenConfig must keep the caller's group (not try root's) and a
// group the user may not use must fail cleanly. Run as root, it runs
// itself again as uid/gid 65534 from a copy of the test binary (the
// original sits in go's 0700 build directory).
func TestListenUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		udsUnprivilegedChecks(t)
		return
	}
	if os.Getenv(udsUnprivilegedEnv) != "" {
		t.Fatal("still root in the re-executed test")
	}
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	copyPath := filepath.Join(dir, "ipc.test")
	dst, err := os.OpenFile(copyPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copyPath, "-test.run=^TestListenUnprivileged$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), udsUnprivilegedEnv+"=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestListenUnprivileged")) {
		t.Errorf("TestListenUnprivileged as uid 65534: %v\n%s", err, out)
	}
}

func udsUnprivilegedChecks(t *testing.T) {
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	l := udsListen(t, path, listen.Config{})
	st := udsSockStat(t, path)
	if st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()) || st.Mode&0o7777 != 0o600 {
		t.Errorf("zero ListenConfig: socket %d:%d mode %04o, want %d:%d 0600", st.Uid, st.Gid, st.Mode&0o7777, os.Geteuid(), os.Getegid())
	}
	_, _, cred := udsServes(t, l, path)
	if cred.UID != uint32(os.Geteuid()) {
		t.Errorf("peer uid %d, want %d", cred.UID, os.Geteuid())
	}
	l.Close()
	testutil.AssertGone(t, path, path+".lock")

	// A group we are not in: chown fails, and nothing is left behind.
	groups, _ := os.Getgroups()
	if os.Getegid() != 0 && !slices.Contains(groups, 0) {
		l, err := listen.New(path, listen.Config{Mode: 0o660, GID: 0})
		if err == nil {
			l.Close()
			t.Fatal("Listen gave the socket to root's group as an unprivileged user")
		}
		if !errors.Is(err, os.ErrPermission) {
			t.Errorf("Listen with a foreign group: %v, want a permission error", err)
		}
		testutil.AssertGone(t, path, path+".lock")
		if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
			t.Errorf("temporary directories left: %v", left)
		}
	}
}

func TestListenCloseLeavesReplacements(t *testing.T) {
	t.Parallel()
	// replace puts someone else's socket at path atomically (so that a
	// watcher never sees the path empty): a live one, listening, or a
	// stale one. It returns its inode.
	replace := func(t *testing.T, path string, live bool) uint64 {
		t.Helper()
		tmp := path + ".new"
		if live {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: tmp}); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(fd, 8); err != nil {
				t.Fatal(err)
			}
		} else {
			testutil.StaleSocket(t, tmp)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		return udsSockStat(t, path).Ino
	}
	t.Run("stale-socket-unwatched", func(t *testing.T) {
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		l := udsListen(t, path, listen.Config{WatchPeriod: -1})
		theirs := replace(t, path, false)
		l.Close()
		if st := udsSockStat(t, path); st.Ino != theirs {
			t.Errorf("Close removed a socket it did not create")
		}
		testutil.AssertGone(t, path+".lock")
	})
	t.Run("live-socket", func(t *testing.T) {
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		var logs testutil.LogBuffer
		l := udsListen(t, path, listen.Config{WatchPeriod: 50 * time.Millisecond, Logger: testutil.DebugLogger(&logs)})
		theirs := replace(t, path, true)
		logs.WaitFor(t, "socket path now holds something else; leaving it alone")
		l.Close()
		if st := udsSockStat(t, path); st.Ino != theirs {
			t.Errorf("a live server's socket was replaced")
		}
		if fd, err := testutil.ConnectUnix(path); err != nil {
			t.Errorf("the live replacement is unreachable: %v", err)
		} else {
			unix.Close(fd)
		}
		testutil.AssertGone(t, path+".lock")
	})
	t.Run("stale-socket-reclaimed", func(t *testing.T) {
		// The watcher treats a stale replacement like a stale socket at
		// start-up: it binds the path again.
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		var logs testutil.LogBuffer
		l := udsListen(t, path, listen.Config{WatchPeriod: 50 * time.Millisecond, Logger: testutil.DebugLogger(&logs)})
		replace(t, path, false)
		udsPoll(t, "the stale replacement to be reclaimed", func() bool {
			fd, err := testutil.ConnectUnix(path) // the stale socket refuses
			if err == nil {
				unix.Close(fd)
			}
			return err == nil
		}, func() string { return "log:\n" + logs.String() })
		logs.WaitFor(t, "stale socket", "path="+path)
		udsServes(t, l, path)
		l.Close()
		testutil.AssertGone(t, path, path+".lock")
	})
	t.Run("lock", func(t *testing.T) {
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		l := udsListen(t, path, listen.Config{WatchPeriod: -1})
		lock := path + ".lock"
		if err := os.Remove(lock); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(lock, []byte("not yours\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := udsSnapshot(t, lock)
		l.Close()
		testutil.AssertGone(t, path)
		if after := udsSnapshot(t, lock); after != before {
			t.Errorf("replaced lock file changed by Close:\nbefore %+v\nafter  %+v", before, after)
		}
	})
	t.Run("concurrent-close", func(t *testing.T) {
		t.Parallel()
		dir := testutil.ShortDir(t, "pv")
		path := filepath.Join(dir, "s")
		l := udsListen(t, path, listen.Config{})
		accepted := make(chan error, 1)
		go func() {
			p, err := l.Accept(context.Background())
			if err == nil {
				p.File.Close()
			}
			accepted <- err
		}()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { l.Close() })
		}
		wg.Wait()
		select {
		case err := <-accepted:
			if !errors.Is(err, listen.ErrClosed) {
				t.Errorf("Accept during Close: %v, want ErrClosed", err)
			}
		case <-time.After(testutil.UDSWait):
			t.Fatal("Accept did not return after Close")
		}
		testutil.AssertGone(t, path, path+".lock")
	})
}

func TestListenRebind(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	var logs testutil.LogBuffer
	cfg := listen.Config{Mode: 0o640, GID: -1, WatchPeriod: 50 * time.Millisecond, Logger: testutil.DebugLogger(&logs)}
	wantGID := uint32(os.Getegid())
	if os.Geteuid() == 0 {
		cfg.GID, wantGID = 4243, 4243
	}
	l := udsListen(t, path, cfg)

	// A connection accepted before the rebind keeps working after it.
	c1 := testutil.MustConnectUnix(t, path)
	s1, _ := udsAccept(t, l)

	// Accept is waiting while the file disappears.
	type result struct {
		fd  int
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		fd, _, err := udsAcceptFD(l)
		accepted <- result{fd, err}
	}()

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	udsPoll(t, "the socket file to be bound again", func() bool {
		var st unix.Stat_t
		return unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK
	}, func() string { return "log:\n" + logs.String() })
	st := udsSockStat(t, path)
	if st.Mode&0o7777 != 0o640 || st.Gid != wantGID {
		t.Errorf("rebound socket mode %04o group %d, want 0640 group %d", st.Mode&0o7777, st.Gid, wantGID)
	}
	logs.WaitFor(t, "socket file was removed", "path="+path)

	c2 := testutil.MustConnectUnix(t, path)
	select {
	case r := <-accepted:
		if r.err != nil {
			t.Fatalf("Accept across the rebind: %v", r.err)
		}
		defer unix.Close(r.fd)
		udsExchange(t, c2, r.fd)
	case <-time.After(testutil.UDSWait):
		l.Close()
		if r := <-accepted; r.err == nil {
			unix.Close(r.fd)
		}
		t.Fatal("Accept did not return the connection made after the rebind")
	}
	udsExchange(t, c1, s1)
	if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}
	l.Close()
	testutil.AssertGone(t, path, path+".lock")
}

func TestListenAbstract(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	name := fmt.Sprintf("@pairvisor-test-%d-%s", os.Getpid(), filepath.Base(dir))
	l := udsListen(t, name, listen.Config{WatchPeriod: 50 * time.Millisecond})
	if l.Addr() != name {
		t.Errorf("Addr() = %q, want %q", l.Addr(), name)
	}
	// No file, here or anywhere: the name lives in /proc/net/unix only.
	wd, _ := os.Getwd()
	for _, p := range []string{name, name + ".lock", filepath.Join(dir, name)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("abstract Listen created %s in %s", p, wd)
		}
	}
	// listening reports whether a listening socket (flag __SO_ACCEPTCON)
	// has the name; accepted sockets carry the name too.
	listening := func() bool {
		b, err := os.ReadFile("/proc/net/unix")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 8 && f[3] == "00010000" && f[7] == name {
				return true
			}
		}
		return false
	}
	if !listening() {
		t.Errorf("%s not listed in /proc/net/unix", name)
	}

	_, _, cred := udsServes(t, l, name)
	if cred.PID != int32(os.Getpid()) {
		t.Errorf("peer pid %d, want %d", cred.PID, os.Getpid())
	}

	l2, err := listen.New(name, listen.Config{})
	if err == nil {
		l2.Close()
		t.Fatal("second Listen on the abstract name succeeded")
	}
	if !errors.Is(err, listen.ErrInUse) {
		t.Errorf("second Listen: %v, want ErrInUse", err)
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the live server (%s)", err, want)
	}

	l.Close()
	if listening() {
		t.Errorf("%s still listed in /proc/net/unix after Close", name)
	}
	// The name is free again at once.
	l3 := udsListen(t, name, listen.Config{})
	l3.Close()
}

// TestListenMissingDir checks that Listen names the socket's directory
// when it does not exist or is not a directory (it used to blame the
// lock file).
func TestListenMissingDir(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dir string
		want      error
		says      string
	}{
		{"missing", filepath.Join(dir, "nope"), os.ErrNotExist, "does not exist"},
		{"not-a-directory", file, unix.ENOTDIR, "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(tc.dir, "pv.sock")
			l, err := listen.New(path, listen.Config{})
			if err == nil {
				l.Close()
				t.Fatal("Listen succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Listen: %v, want %v", err, tc.want)
			}
			msg := err.Error()
			if want := "socket directory " + tc.dir + " " + tc.says; !strings.Contains(msg, want) || strings.Contains(msg, "lock file") {
				t.Errorf("Listen error %q, want it to say %q (and not blame the lock file)", msg, want)
			}
		})
	}
}
