//go:build linux

package frontdoor_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"golang.org/x/sys/unix"
)

// Helpers shared with package listen's tests (copied: test packages
// cannot import each other's helpers). Every helper here is prefixed
// with "uds" so that it cannot collide with the other test files'.

// udsWait bounds every wait for something that should happen promptly.
// It is generous for -race on two cores; exceeding it means a hang.
const udsWait = 10 * time.Second

// udsToolForOthers is testutil.RequireTool for a program that a test
// runs as another user: it picks the first one in $PATH that every user
// may run (a shim under /root, such as pyenv's, does not qualify).
func udsToolForOthers(tb testing.TB, name string) string {
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

// udsLog is a goroutine-safe buffer for hclog output.
type udsLog struct {
	testutil.Buffer
}

// waitFor polls until the log contains all of want, or fails the test.
func (b *udsLog) waitFor(tb testing.TB, want ...string) {
	tb.Helper()
	udsPoll(tb, "log lines "+strconv.Quote(strings.Join(want, "…")), func() bool {
		s := b.String()
		for _, w := range want {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return true
	}, func() string { return "log:\n" + b.String() })
}

func udsLogger(b *udsLog) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "test", Output: b, Level: hclog.Debug})
}

// udsPoll calls cond every few milliseconds until it is true, failing
// the test after udsWait. detail, if not nil, adds to the failure.
func udsPoll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, udsWait, 5*time.Millisecond, what, cond, detail)
}

// udsConnect connects a blocking stream socket to path; the caller owns
// the returned fd.
func udsConnect(path string) (int, error) {
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

// udsMustConnect connects to path and closes the fd at cleanup.
func udsMustConnect(tb testing.TB, path string) int {
	tb.Helper()
	fd, err := udsConnect(path)
	if err != nil {
		tb.Fatalf("connect %s: %v", path, err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// udsStale leaves a stale socket file at path: bound, never listened
// on, closed without unlinking, as a crashed server leaves it.
func udsStale(tb testing.TB, path string) {
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

func udsGone(tb testing.TB, paths ...string) {
	tb.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("%s still exists after Close (lstat: %v)", p, err)
		}
	}
}

// udsPVLeftovers lists the temporary ".pv*" directories left in dir.
func udsPVLeftovers(tb testing.TB, dir string) []string {
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
