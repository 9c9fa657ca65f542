package sdnotify

import (
	"bytes"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// MaxDatagram is the longest datagram Read accepts, in bytes: systemd's
// limit (NOTIFY_BUFFER_MAX, which is PIPE_BUF).
const MaxDatagram = 4096

// maxErrno is the largest errno value ERRNO= may carry (systemd's
// ERRNO_MAX).
const maxErrno = 4095

// Cred is a sender's credentials as SCM_CREDENTIALS carried them,
// translated by the kernel into our pid and user namespaces.
type Cred struct {
	PID      int32
	UID, GID uint32
}

// Message is what one valid datagram said. Fields whose key was absent
// are zero; the Has fields tell an absent key from a zero value.
type Message struct {
	// Sender is who sent the datagram (set by Read; Parse leaves it
	// zero).
	Sender Cred

	// Ready, Reloading and Stopping are READY=1, RELOADING=1 and
	// STOPPING=1. They are independent; see the package doc for
	// systemd's precedence.
	Ready, Reloading, Stopping bool

	// Status is STATUS=, valid UTF-8; HasStatus reports the key, since an
	// empty status is valid and clears the previous one.
	Status    string
	HasStatus bool

	// Watchdog is WATCHDOG=1, a keep-alive ping; WatchdogTrigger is
	// WATCHDOG=trigger, the program's request to be handled as if its
	// watchdog had expired.
	Watchdog        bool
	WatchdogTrigger bool

	// WatchdogInterval is WATCHDOG_USEC=, a new watchdog interval (0: off).
	WatchdogInterval    time.Duration
	HasWatchdogInterval bool

	// ExtendTimeout is EXTEND_TIMEOUT_USEC=, more time asked for the
	// start or stop in progress.
	ExtendTimeout    time.Duration
	HasExtendTimeout bool

	// Errno is ERRNO=, 0..4095.
	Errno    int
	HasErrno bool

	// MainPID is MAINPID=, the process the sender says is now its main
	// one; 0 when absent.
	MainPID int

	// MonotonicUSec is MONOTONIC_USEC=, in microseconds of
	// CLOCK_MONOTONIC; 0 when absent (or sent as 0).
	MonotonicUSec uint64

	// Barrier is BARRIER=1, alone in its datagram. Read has closed the
	// descriptor that came with it, which is what the sender waits for;
	// there is nothing left for the caller to do.
	Barrier bool
}

// Parse decodes the body of one sd_notify datagram, following the rules
// in the package doc. It returns an error wrapping ErrInvalid, naming
// the first offending line, if the datagram is invalid. It allocates
// only the Status string and, for an invalid datagram, the error.
func Parse(p []byte) (Message, error) {
	var m Message
	// One trailing NUL is tolerated, as in systemd; any other NUL is not.
	if n := len(p); n > 0 && p[n-1] == 0 {
		p = p[:n-1]
	}
	if i := bytes.IndexByte(p, 0); i >= 0 {
		return Message{}, invalid("NUL byte at offset %d", i)
	}
	var seen seenKeys
	lines := 0
	for len(p) > 0 {
		// Lines end at \n or \r; empty ones are skipped.
		end := bytes.IndexAny(p, "\n\r")
		line := p
		if end >= 0 {
			line, p = p[:end], p[end+1:]
		} else {
			p = nil
		}
		if len(line) == 0 {
			continue
		}
		lines++
		key, value, ok := bytes.Cut(line, []byte("="))
		if !ok {
			return Message{}, invalid("line %s has no '='", quote(line))
		}
		if err := m.assign(key, value, &seen); err != nil {
			return Message{}, err
		}
	}
	if m.Barrier && lines > 1 {
		return Message{}, invalid("BARRIER=1 with other assignments")
	}
	return m, nil
}

// seenKeys records the valued keys already assigned, so that the first
// occurrence of each counts (systemd's lookups return the first match).
type seenKeys uint16

const (
	seenStatus seenKeys = 1 << iota
	seenWatchdog
	seenWatchdogInterval
	seenExtendTimeout
	seenErrno
	seenMainPID
	seenMonotonic
)

// first reports whether k is met for the first time, and records it.
func (s *seenKeys) first(k seenKeys) bool {
	f := *s&k == 0
	*s |= k
	return f
}

// assign applies one assignment to m. Unknown keys are ignored.
func (m *Message) assign(key, value []byte, seen *seenKeys) error {
	switch string(key) {
	case "READY":
		return flag(&m.Ready, key, value)
	case "RELOADING":
		return flag(&m.Reloading, key, value)
	case "STOPPING":
		return flag(&m.Stopping, key, value)
	case "BARRIER":
		return flag(&m.Barrier, key, value)
	case "STATUS":
		if !utf8.Valid(value) {
			return invalid("STATUS= is not UTF-8: %s", quote(value))
		}
		if seen.first(seenStatus) {
			m.Status, m.HasStatus = string(value), true
		}
	case "WATCHDOG":
		var ping, trigger bool
		switch string(value) {
		case "1":
			ping = true
		case "trigger":
			trigger = true
		default:
			return invalid("WATCHDOG=%s: want 1 or trigger", quote(value))
		}
		if seen.first(seenWatchdog) {
			m.Watchdog, m.WatchdogTrigger = ping, trigger
		}
	case "WATCHDOG_USEC":
		d, err := usec(key, value)
		if err != nil {
			return err
		}
		if seen.first(seenWatchdogInterval) {
			m.WatchdogInterval, m.HasWatchdogInterval = d, true
		}
	case "EXTEND_TIMEOUT_USEC":
		d, err := usec(key, value)
		if err != nil {
			return err
		}
		if seen.first(seenExtendTimeout) {
			m.ExtendTimeout, m.HasExtendTimeout = d, true
		}
	case "MONOTONIC_USEC":
		n, err := decimal(key, value, math.MaxUint64)
		if err != nil {
			return err
		}
		if seen.first(seenMonotonic) {
			m.MonotonicUSec = n
		}
	case "ERRNO":
		n, err := decimal(key, value, maxErrno)
		if err != nil {
			return err
		}
		if seen.first(seenErrno) {
			m.Errno, m.HasErrno = int(n), true
		}
	case "MAINPID":
		n, err := decimal(key, value, math.MaxInt32)
		if err != nil {
			return err
		}
		if n == 0 {
			return invalid("MAINPID=0: not a pid")
		}
		if seen.first(seenMainPID) {
			m.MainPID = int(n)
		}
	}
	return nil
}

// flag applies KEY=1 (sets *f) or KEY=0 (nothing, as systemd does);
// any other value is invalid.
func flag(f *bool, key, value []byte) error {
	switch string(value) {
	case "1":
		*f = true
	case "0":
	default:
		return invalid("%s=%s: want 1 (or 0)", key, quote(value))
	}
	return nil
}

// decimal parses value as an unsigned decimal integer no larger than
// max: digits only, no sign, blanks or prefix.
func decimal(key, value []byte, max uint64) (uint64, error) {
	for _, c := range value {
		if c < '0' || c > '9' {
			return 0, invalid("%s=%s: want a decimal number", key, quote(value))
		}
	}
	n, err := strconv.ParseUint(string(value), 10, 64)
	if err != nil || n > max {
		return 0, invalid("%s=%s: want a decimal number up to %d", key, quote(value), max)
	}
	return n, nil
}

// usec parses a number of microseconds as a Duration, the largest
// Duration for values beyond its range.
func usec(key, value []byte) (time.Duration, error) {
	n, err := decimal(key, value, math.MaxUint64)
	if err != nil {
		return 0, err
	}
	if n > math.MaxInt64/uint64(time.Microsecond) {
		return math.MaxInt64, nil
	}
	return time.Duration(n) * time.Microsecond, nil
}
