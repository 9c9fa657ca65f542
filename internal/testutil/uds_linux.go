package testutil

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Helpers for tests of sockets at paths (packages listen and frontdoor).

// UDSWait bounds every wait for something on a socket that should
// happen promptly. It is generous for -race on two cores; exceeding it
// means a hang.
const UDSWait = 10 * time.Second

// LogBuffer is a goroutine-safe buffer for hclog output.
type LogBuffer struct{ Buffer }

// WaitFor polls until the log contains all of want, or fails the test.
func (b *LogBuffer) WaitFor(tb testing.TB, want ...string) {
	tb.Helper()
	Poll(tb, UDSWait, 5*time.Millisecond, "log lines "+strconv.Quote(strings.Join(want, "…")), func() bool {
		s := b.String()
		for _, w := range want {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return true
	}, func() string { return "log:\n" + b.String() })
}

// DebugLogger returns a text logger at debug level writing into b.
func DebugLogger(b *LogBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "test", Output: b, Level: hclog.Debug})
}

// ConnectUnix connects a blocking stream socket to path; the caller owns
// the returned fd.
func ConnectUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// MustConnectUnix connects to path and closes the fd at cleanup.
func MustConnectUnix(tb testing.TB, path string) int {
	tb.Helper()
	fd, err := ConnectUnix(path)
	if err != nil {
		tb.Fatalf("connect %s: %v", path, err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// StaleSocket leaves a stale socket file at path: bound, never listened
// on, closed without unlinking, as a crashed server leaves it.
func StaleSocket(tb testing.TB, path string) {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		tb.Fatalf("bind %s: %v", path, err)
	}
}

// AssertGone fails the test for each of paths that still exists.
func AssertGone(tb testing.TB, paths ...string) {
	tb.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("%s still exists after Close (lstat: %v)", p, err)
		}
	}
}

// PVLeftovers lists the temporary ".pv*" directories left in dir.
func PVLeftovers(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".pv") {
			left = append(left, e.Name())
		}
	}
	return left
}

// ToolForOthers is RequireTool for a program that a test runs as
// another user: it picks the first one in $PATH that every user may run
// (a shim under /root, such as pyenv's, does not qualify).
func ToolForOthers(tb testing.TB, name string) string {
	tb.Helper()
	worldOK := func(p string) bool {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return false
		}
		for q := real; ; q = filepath.Dir(q) {
			st, err := os.Stat(q)
			if err != nil || st.Mode().Perm()&0o001 == 0 {
				return false
			}
			if q == "/" {
				return true
			}
		}
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if p := filepath.Join(dir, name); dir != "" && worldOK(p) {
			return p
		}
	}
	if os.Getenv("PAIRVISOR_REQUIRE_TOOLS") == "1" {
		tb.Fatalf("%s is required (PAIRVISOR_REQUIRE_TOOLS=1) but there is none in $PATH that other users may run", name)
	}
	tb.Skipf("no %s in $PATH that other users may run", name)
	return ""
}
