//go:build linux

package sdnotify

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"", "77", 0, false},
		{"400000", "", 400 * time.Millisecond, false},
		{"400000", "42", 400 * time.Millisecond, false},
		{"400000", "43", 0, false}, // another process's
		{"1", "", time.Microsecond, false},
		{"0", "", 0, true},
		{"-5", "", 0, true},
		{"+5", "", 0, true},
		{" 5", "", 0, true},
		{"5s", "", 0, true},
		{"18446744073709551615", "", 0, true}, // systemd's infinity
		{strconv.FormatUint(maxWatchdogUSec, 10), "", time.Duration(maxWatchdogUSec) * time.Microsecond, false},
		{strconv.FormatUint(maxWatchdogUSec+1, 10), "", 0, true},
		{"400000", "x", 0, true},
		{"400000", "0", 0, true},
		{"400000", "-42", 0, true},
	} {
		got, err := watchdogInterval(tc.usec, tc.pid, 42)
		if got != tc.want || (err != nil) != tc.err || err != nil && !errors.Is(err, ErrEnv) {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v (error: %v)", tc.usec, tc.pid, got, err, tc.want, tc.err)
		}
	}
}

// TestWatchdogIntervalEnv: the exported function reads the environment
// with our own pid.
func TestWatchdogIntervalEnv(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "250000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d, err := WatchdogInterval(); d != 250*time.Millisecond || err != nil {
		t.Fatalf("WatchdogInterval() = %v, %v", d, err)
	}
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getppid()))
	if d, err := WatchdogInterval(); d != 0 || err != nil {
		t.Fatalf("with the parent's pid: %v, %v; want 0, nil", d, err)
	}
}

// FuzzWatchdogInterval: never a panic, never a negative interval; an
// interval only for a WATCHDOG_PID that is empty or ours; an error
// always wraps ErrEnv.
func FuzzWatchdogInterval(f *testing.F) {
	for _, s := range [][2]string{{"", ""}, {"400000", ""}, {"1", "42"}, {"0", "42"}, {"9223372036854775", "7"}, {"18446744073709551615", ""}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, usec, pid string) {
		d, err := watchdogInterval(usec, pid, 42)
		if err != nil {
			if !errors.Is(err, ErrEnv) || d != 0 {
				t.Fatalf("%q %q: %v, %v", usec, pid, d, err)
			}
			return
		}
		if p, _ := strconv.Atoi(pid); d < 0 || d > 0 && pid != "" && p != 42 {
			t.Fatalf("%q %q: interval %v", usec, pid, d)
		}
		if d > 0 && time.Duration(mustUint(t, usec))*time.Microsecond != d {
			t.Fatalf("%q: %v", usec, d)
		}
	})
}

func mustUint(t *testing.T, s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("accepted %q: %v", s, err)
	}
	return n
}

// TestSendBounded: a service manager that does not read cannot hold
// Send for ever: once its queue is full, a send fails with
// os.ErrDeadlineExceeded after the timeout. The sends are counted, not
// timed.
func TestSendBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("queue limits differ")
	}
	path := filepath.Join(t.TempDir(), "n")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	for i := range 10000 {
		err := sendTo(path, "WATCHDOG=1", 50*time.Millisecond)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("send %d: %v, want a deadline's error", i+1, err)
		}
		if i == 0 {
			t.Fatal("the first send timed out")
		}
		return
	}
	t.Fatal("10000 datagrams queued at a receiver that reads none")
}

// TestMonotonicUSec: the assignment carries CLOCK_MONOTONIC in µs.
func TestMonotonicUSec(t *testing.T) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	v, ok := strings.CutPrefix(MonotonicUSec(), "MONOTONIC_USEC=")
	n, err := strconv.ParseInt(v, 10, 64)
	if !ok || err != nil || n < ts.Nano()/1000 {
		t.Fatalf("MonotonicUSec() = %q, clock %d µs before", MonotonicUSec(), ts.Nano()/1000)
	}
}
