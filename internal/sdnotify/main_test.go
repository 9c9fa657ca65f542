//go:build linux

package sdnotify_test

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// harness runs the leak checks after the tests (descriptors, goroutines,
// child processes); this package's tests start no helper roles of its
// own, only external programs.
var harness = testutil.NewHarness(testutil.HarnessConfig{})

func TestMain(m *testing.M) { harness.Main(m) }

// Bounds on waits. They are generous because the suite runs under
// -race on two busy cores; a healthy run takes milliseconds.
const (
	readTimeout = 20 * time.Second // for a datagram that is on its way
	exitTimeout = 20 * time.Second // for a process that is finishing
	leakWait    = 10 * time.Second // for leftovers to go away
)

// listen returns a new Socket, closed at the end of the test.
func listen(tb testing.TB) *sdnotify.Socket {
	tb.Helper()
	s, err := sdnotify.Listen(uint32(os.Geteuid()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

type readResult struct {
	m   sdnotify.Message
	err error
}

// read calls s.Read in a goroutine and waits up to readTimeout for its
// result, failing the test if none comes. A Read left waiting ends when
// the test's cleanup closes s.
func read(tb testing.TB, s *sdnotify.Socket) (sdnotify.Message, error) {
	tb.Helper()
	ch := make(chan readResult, 1)
	go func() {
		m, err := s.Read()
		ch <- readResult{m, err}
	}()
	r := testutil.Receive(tb, ch, readTimeout, "a datagram on "+s.Addr())
	return r.m, r.err
}

// readOK is read that fails the test unless a Message arrives.
func readOK(tb testing.TB, s *sdnotify.Socket) sdnotify.Message {
	tb.Helper()
	m, err := read(tb, s)
	if err != nil {
		tb.Fatalf("Read: %v", err)
	}
	return m
}

// readRefused is read that fails the test unless Read refuses a
// datagram for reason, and returns the refusal.
func readRefused(tb testing.TB, s *sdnotify.Socket, reason error) *sdnotify.RefusedError {
	tb.Helper()
	m, err := read(tb, s)
	var re *sdnotify.RefusedError
	if !errors.As(err, &re) || !errors.Is(err, sdnotify.ErrRefused) || !errors.Is(err, reason) {
		tb.Fatalf("Read = %+v, %v; want a refusal for %v", m, err, reason)
	}
	return re
}

// send sends payload to the abstract address addr ("@name") from a new
// unbound datagram socket of this process, with fds attached if any.
func send(tb testing.TB, addr string, payload []byte, fds ...int) {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(fd)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(fd, payload, oob, &unix.SockaddrUnix{Name: addr}, 0); err != nil {
		tb.Fatalf("sendmsg of %d bytes and %d fds to %s: %v", len(payload), len(fds), addr, err)
	}
}

// pipes opens n pipes and returns their read ends (non-blocking) and
// write ends; every end still open is closed at the end of the test
// (close those you close yourself through the returned closer).
func pipes(tb testing.TB, n int) (r, w []int, closeFD func(fd int)) {
	tb.Helper()
	open := make(map[int]bool)
	closeFD = func(fd int) {
		if open[fd] {
			unix.Close(fd)
			delete(open, fd)
		}
	}
	tb.Cleanup(func() {
		for fd := range open {
			unix.Close(fd)
		}
	})
	for range n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			tb.Fatal(err)
		}
		open[p[0]], open[p[1]] = true, true
		r, w = append(r, p[0]), append(w, p[1])
	}
	return r, w, closeFD
}

// atEOF reports whether the read end of a pipe (non-blocking) is at end
// of file: every copy of the write end is closed.
func atEOF(fd int) bool {
	var b [1]byte
	n, err := unix.Read(fd, b[:])
	return n == 0 && err == nil
}

// waitEOF waits for every read end in fds to reach end of file.
func waitEOF(tb testing.TB, what string, fds ...int) {
	tb.Helper()
	testutil.Poll(tb, readTimeout, time.Millisecond, what, func() bool {
		return !slices.ContainsFunc(fds, func(fd int) bool { return !atEOF(fd) })
	}, nil)
}

// workerEnv returns this process's environment without NOTIFY_SOCKET
// and MANAGERPID (systemd-notify reads both), plus extra.
func workerEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "MANAGERPID=")
	})
	return append(env, extra...)
}

// python returns a python3 to run: the system's, which other users can
// run and which is the process itself (no wrapper script in between),
// else the one on PATH.
func python(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return testutil.RequireTool(tb, "python3")
}

// pyPrelude opens a datagram socket to $NOTIFY_SOCKET (a leading '@'
// names the abstract namespace) and defines send(text, fds=()). It
// calls sendmsg itself: python 3.11's socket.send_fds drops its address
// argument.
const pyPrelude = `
import array, os, socket, sys
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(text, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([text.encode()], anc, 0, addr)
`

// startPython runs script (after pyPrelude) in python3 with
// NOTIFY_SOCKET set to s's address, as the user prefix says if any
// (a command such as setpriv that runs its arguments).
func startPython(tb testing.TB, s *sdnotify.Socket, script string, prefix ...string) *testutil.Process {
	tb.Helper()
	argv := append(prefix, python(tb), "-c", pyPrelude+script)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = workerEnv("NOTIFY_SOCKET=" + s.Addr())
	return testutil.StartProcess(tb, cmd)
}
