package sdnotify

// The sending side of the protocol, for a process that a service
// manager runs (the supervisor under systemd): sd_notify(3),
// sd_watchdog_enabled(3). The receiving side, for the supervisor's own
// workers, is in socket_linux.go; both share only the sentinel errors.

import (
	"errors"
	"fmt"
	"github.com/pairvisor/pairvisor/internal/sysfd"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// SendTimeout bounds how long Send waits for room in the service
// manager's queue (a blocked sd_notify(3) would wait for ever).
const SendTimeout = 5 * time.Second

// Send sends state, newline-separated KEY=VALUE assignments such as
// "READY=1" or "STATUS=...", to the service manager, as sd_notify(3)
// does: to the AF_UNIX datagram socket named by $NOTIFY_SOCKET, an
// absolute path or "@name" (a Linux abstract socket). It reports
// whether it sent: with NOTIFY_SOCKET unset or empty there is no
// service manager listening, and Send returns false and no error. Any
// other NOTIFY_SOCKET (a relative path, systemd's "vsock:" addresses)
// is an error wrapping ErrEnv; so is "@name" on a system other than
// Linux.
//
// Each call uses a socket of its own (close-on-exec, closed before Send
// returns), connected to the address so that a full queue is waited for
// in the runtime's poller, for at most SendTimeout. It is safe for
// concurrent use.
func Send(state string) (sent bool, err error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	if state == "" {
		return false, errors.New("sdnotify: an empty state (sd_notify(3) refuses it with EINVAL)")
	}
	if err := sendTo(addr, state, SendTimeout); err != nil {
		return false, fmt.Errorf("sdnotify: sending to NOTIFY_SOCKET=%s: %w", addr, err)
	}
	return true, nil
}

// sendTo sends state as one datagram to addr, waiting at most timeout.
func sendTo(addr, state string, timeout time.Duration) error {
	switch {
	case addr[0] == '/':
	case addr[0] == '@' && runtime.GOOS == "linux":
	case addr[0] == '@':
		return fmt.Errorf("%w: abstract socket names (@name) exist on Linux only", ErrEnv)
	default:
		return fmt.Errorf("%w: want an absolute path or @name", ErrEnv)
	}
	fd, err := sysfd.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0, true)
	if err != nil {
		return err
	}
	// x/sys/unix turns a leading '@' into the abstract namespace's NUL.
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("connect", err)
	}
	f := os.NewFile(uintptr(fd), "sd-notify") // non-blocking: in the poller
	defer f.Close()
	if err := f.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	_, err = f.Write([]byte(state))
	return err
}

// WatchdogInterval returns the watchdog interval the service manager
// asks this process to keep, as sd_watchdog_enabled(3) does: 0 and no
// error when WATCHDOG_USEC is unset or empty, or when WATCHDOG_PID is
// set to another process's pid (the setting is not ours); the interval
// when WATCHDOG_USEC is a positive number of microseconds and
// WATCHDOG_PID is unset, empty or our pid. An unreadable value is an
// error wrapping ErrEnv. The process should send WATCHDOG=1 more often
// than the interval (systemd recommends every half interval).
func WatchdogInterval() (time.Duration, error) {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

// maxWatchdogUSec is the largest interval a time.Duration holds.
const maxWatchdogUSec = uint64(1<<63-1) / uint64(time.Microsecond)

func watchdogInterval(usec, pid string, ourPID int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(usec, 10, 64)
	if err != nil || n == 0 || n > maxWatchdogUSec {
		return 0, fmt.Errorf("%w: WATCHDOG_USEC=%q: want a positive number of microseconds", ErrEnv, usec)
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil || p <= 0 {
			return 0, fmt.Errorf("%w: WATCHDOG_PID=%q: want a process id", ErrEnv, pid)
		}
		if p != ourPID {
			return 0, nil
		}
	}
	return time.Duration(n) * time.Microsecond, nil
}

// MonotonicUSec returns "MONOTONIC_USEC=" and the CLOCK_MONOTONIC time
// in microseconds, the assignment systemd wants with RELOADING=1.
func MonotonicUSec() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "MONOTONIC_USEC=0" // read as absent
	}
	return "MONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/int64(time.Microsecond), 10)
}
