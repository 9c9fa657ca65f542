package sdnotify_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

// encode writes m as a datagram in one canonical form, for the round
// trip: Parse(encode(m)) must give m back.
func encode(m sdnotify.Message) []byte {
	var lines []string
	add := func(ok bool, kv string) {
		if ok {
			lines = append(lines, kv)
		}
	}
	usec := func(d time.Duration) string { return strconv.FormatInt(int64(d/time.Microsecond), 10) }
	add(m.Ready, "READY=1")
	add(m.Reloading, "RELOADING=1")
	add(m.Stopping, "STOPPING=1")
	add(m.HasStatus, "STATUS="+m.Status)
	add(m.Watchdog, "WATCHDOG=1")
	add(m.WatchdogTrigger, "WATCHDOG=trigger")
	add(m.HasWatchdogInterval, "WATCHDOG_USEC="+usec(m.WatchdogInterval))
	add(m.HasExtendTimeout, "EXTEND_TIMEOUT_USEC="+usec(m.ExtendTimeout))
	add(m.HasErrno, "ERRNO="+strconv.Itoa(m.Errno))
	add(m.MainPID != 0, "MAINPID="+strconv.Itoa(m.MainPID))
	add(m.MonotonicUSec != 0, "MONOTONIC_USEC="+strconv.FormatUint(m.MonotonicUSec, 10))
	add(m.Barrier, "BARRIER=1")
	return []byte(strings.Join(lines, "\n"))
}

// FuzzParse checks that Parse never panics, that what it accepts obeys
// the documented ranges, that what it rejects wraps ErrInvalid with a
// short message, and that an accepted Message survives a round trip
// through a canonical encoding.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"",
		"READY=1",
		"READY=1\nSTATUS=Processing requests...\n",
		"READY=0\x00",
		"RELOADING=1\nMONOTONIC_USEC=123456789\n",
		"STOPPING=1\r\nERRNO=2\r\n",
		"WATCHDOG=1",
		"WATCHDOG=trigger\nWATCHDOG_USEC=18446744073709551615",
		"EXTEND_TIMEOUT_USEC=5000000\nMAINPID=4242",
		"BARRIER=1",
		"FDSTORE=1\nFDNAME=x",
		"READY=2",
		"STATUS=\xff",
		"READY=1\x00STATUS=x",
		"no equals",
		"ERRNO=4096",
		"MAINPID=0",
		"WATCHDOG_USEC=9223372036854776",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := sdnotify.Parse(p)
		if err != nil {
			if !errors.Is(err, sdnotify.ErrInvalid) {
				t.Fatalf("Parse(%q): error %v does not wrap ErrInvalid", p, err)
			}
			if m != (sdnotify.Message{}) {
				t.Fatalf("Parse(%q) = %+v with error %v", p, m, err)
			}
			if len(err.Error()) > 300 || !utf8.ValidString(err.Error()) {
				t.Fatalf("Parse(%q): error message %q is too long or not UTF-8", p, err)
			}
			return
		}
		switch {
		case m.Sender != (sdnotify.Cred{}):
			t.Fatalf("Parse(%q) set a sender: %+v", p, m)
		case !utf8.ValidString(m.Status) || strings.ContainsAny(m.Status, "\n\r\x00"):
			t.Fatalf("Parse(%q): status %q", p, m.Status)
		case !m.HasStatus && m.Status != "",
			!m.HasErrno && m.Errno != 0,
			!m.HasWatchdogInterval && m.WatchdogInterval != 0,
			!m.HasExtendTimeout && m.ExtendTimeout != 0:
			t.Fatalf("Parse(%q): a value without its Has flag: %+v", p, m)
		case m.Errno < 0 || m.Errno > 4095, m.MainPID < 0,
			m.WatchdogInterval < 0, m.ExtendTimeout < 0,
			m.Watchdog && m.WatchdogTrigger:
			t.Fatalf("Parse(%q): out of range: %+v", p, m)
		case m.Barrier && m != (sdnotify.Message{Barrier: true}):
			t.Fatalf("Parse(%q): barrier with more: %+v", p, m)
		}
		// A Duration clamped to its maximum does not survive the trip
		// exactly; its microseconds do.
		q := encode(m)
		back, err := sdnotify.Parse(q)
		if err != nil {
			t.Fatalf("Parse(%q) = %+v; its encoding %q does not parse: %v", p, m, q, err)
		}
		back.WatchdogInterval = back.WatchdogInterval.Truncate(time.Microsecond)
		m.WatchdogInterval = m.WatchdogInterval.Truncate(time.Microsecond)
		back.ExtendTimeout = back.ExtendTimeout.Truncate(time.Microsecond)
		m.ExtendTimeout = m.ExtendTimeout.Truncate(time.Microsecond)
		if back != m {
			t.Fatalf("round trip of %q:\n%+v became\n%+v (via %q)", p, m, back, q)
		}
	})
}
