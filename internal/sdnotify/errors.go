package sdnotify

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrClosed is returned by Read once the Socket is closed, including
	// to a Read that was waiting when Close was called.
	ErrClosed = errors.New("sdnotify: socket closed")

	// ErrRefused is matched by every *RefusedError: Read refused one
	// datagram, and the socket remains usable.
	ErrRefused = errors.New("sdnotify: datagram refused")

	// ErrTooLarge reports a datagram longer than MaxDatagram bytes.
	ErrTooLarge = errors.New("sdnotify: datagram too large")

	// ErrControlTruncated reports a datagram whose ancillary data did
	// not fit (more than MaxFDs descriptors). Those that arrived were
	// closed, the kernel dropped the rest.
	ErrControlTruncated = errors.New("sdnotify: ancillary data truncated (too many descriptors)")

	// ErrNoCredentials reports a datagram without SCM_CREDENTIALS, or
	// with a pid of 0 (a sender our pid namespace cannot see).
	ErrNoCredentials = errors.New("sdnotify: datagram without sender credentials")

	// ErrForeignUser reports a sender whose uid is neither the
	// worker's, our effective uid nor root's.
	ErrForeignUser = errors.New("sdnotify: sender runs as another user")

	// ErrInvalid reports a datagram that is not a valid list of
	// assignments; Parse returns errors that wrap it.
	ErrInvalid = errors.New("sdnotify: invalid datagram")

	// ErrUnsupported is returned by Listen and Supported on systems
	// other than Linux: the socket needs SO_PASSCRED and abstract
	// socket names. Parse works everywhere.
	ErrUnsupported = errors.New("sdnotify: notify sockets need Linux")

	// ErrEnv reports a NOTIFY_SOCKET, WATCHDOG_USEC or WATCHDOG_PID
	// that Send or WatchdogInterval cannot use (the sending side).
	ErrEnv = errors.New("sdnotify: invalid service manager environment")
)

// A RefusedError describes a datagram that Read refused. It matches
// ErrRefused and Reason with errors.Is.
type RefusedError struct {
	// Reason is ErrTooLarge, ErrControlTruncated, ErrNoCredentials,
	// ErrForeignUser, or an error from Parse wrapping ErrInvalid.
	Reason error

	// Sender is who sent the datagram, as its credentials say; the zero
	// Cred if it carried none.
	Sender Cred

	// Size is the datagram's length in bytes, its real length even when
	// it was over the limit and not copied.
	Size int

	// FDs counts the descriptors that arrived with it. All were closed.
	FDs int
}

func (e *RefusedError) Error() string {
	var b strings.Builder
	b.WriteString("sdnotify: refused a ")
	b.WriteString(strconv.Itoa(e.Size))
	b.WriteString("-byte datagram")
	if e.FDs > 0 {
		fmt.Fprintf(&b, " with %d descriptors", e.FDs)
	}
	if e.Sender != (Cred{}) {
		fmt.Fprintf(&b, " from pid %d (uid %d, gid %d)", e.Sender.PID, e.Sender.UID, e.Sender.GID)
	}
	b.WriteString(": ")
	b.WriteString(strings.TrimPrefix(e.Reason.Error(), "sdnotify: "))
	return b.String()
}

// Unwrap returns ErrRefused and Reason.
func (e *RefusedError) Unwrap() []error { return []error{ErrRefused, e.Reason} }

// invalid returns an error wrapping ErrInvalid that says why.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// maxQuoted bounds what an error quotes from a datagram, so that a log
// line stays short whatever the sender wrote.
const maxQuoted = 40

// quote returns b as a quoted Go string, cut to maxQuoted bytes. Quoting
// escapes control characters, so a sender cannot write to a terminal
// through our log.
func quote(b []byte) string {
	if len(b) <= maxQuoted {
		return strconv.Quote(string(b))
	}
	return strconv.Quote(string(b[:maxQuoted])) + "..."
}
