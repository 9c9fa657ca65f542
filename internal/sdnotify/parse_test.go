package sdnotify_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

func TestParseValid(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     sdnotify.Message
	}{
		{"empty", "", sdnotify.Message{}},
		{"ready", "READY=1", sdnotify.Message{Ready: true}},
		{"ready newline", "READY=1\n", sdnotify.Message{Ready: true}},
		{"ready trailing NUL", "READY=1\x00", sdnotify.Message{Ready: true}},
		// systemd acts on READY=1 only and passes over READY=0 silently.
		{"ready 0", "READY=0\nSTATUS=starting", sdnotify.Message{Status: "starting", HasStatus: true}},
		{"reloading", "RELOADING=1\nMONOTONIC_USEC=123456789", sdnotify.Message{Reloading: true, MonotonicUSec: 123456789}},
		{"stopping", "STOPPING=1", sdnotify.Message{Stopping: true}},
		{"all three", "READY=1\nRELOADING=1\nSTOPPING=1", sdnotify.Message{Ready: true, Reloading: true, Stopping: true}},
		{"status", "STATUS=Serving 3 clients, 2 ÷ 1", sdnotify.Message{Status: "Serving 3 clients, 2 ÷ 1", HasStatus: true}},
		{"status empty clears", "STATUS=", sdnotify.Message{HasStatus: true}},
		{"status keeps '=' and backslashes", `STATUS=a=b\n\`, sdnotify.Message{Status: `a=b\n\`, HasStatus: true}},
		{"status first wins", "STATUS=one\nSTATUS=two", sdnotify.Message{Status: "one", HasStatus: true}},
		{"watchdog", "WATCHDOG=1", sdnotify.Message{Watchdog: true}},
		{"watchdog trigger", "WATCHDOG=trigger", sdnotify.Message{WatchdogTrigger: true}},
		{"watchdog first wins", "WATCHDOG=trigger\nWATCHDOG=1", sdnotify.Message{WatchdogTrigger: true}},
		{"watchdog usec", "WATCHDOG_USEC=20000000", sdnotify.Message{WatchdogInterval: 20 * time.Second, HasWatchdogInterval: true}},
		{"watchdog usec 0", "WATCHDOG_USEC=0", sdnotify.Message{HasWatchdogInterval: true}},
		{"watchdog usec infinity", "WATCHDOG_USEC=18446744073709551615", sdnotify.Message{WatchdogInterval: math.MaxInt64, HasWatchdogInterval: true}},
		{"watchdog usec just fits", "WATCHDOG_USEC=9223372036854775", sdnotify.Message{WatchdogInterval: 9223372036854775 * time.Microsecond, HasWatchdogInterval: true}},
		{"watchdog usec just over", "WATCHDOG_USEC=9223372036854776", sdnotify.Message{WatchdogInterval: math.MaxInt64, HasWatchdogInterval: true}},
		{"extend timeout", "EXTEND_TIMEOUT_USEC=5000000", sdnotify.Message{ExtendTimeout: 5 * time.Second, HasExtendTimeout: true}},
		{"leading zeros", "EXTEND_TIMEOUT_USEC=0007", sdnotify.Message{ExtendTimeout: 7 * time.Microsecond, HasExtendTimeout: true}},
		{"errno", "ERRNO=2", sdnotify.Message{Errno: 2, HasErrno: true}},
		{"errno 0", "ERRNO=0", sdnotify.Message{HasErrno: true}},
		{"errno max", "ERRNO=4095", sdnotify.Message{Errno: 4095, HasErrno: true}},
		{"mainpid", "MAINPID=4242", sdnotify.Message{MainPID: 4242}},
		{"mainpid max", "MAINPID=2147483647", sdnotify.Message{MainPID: math.MaxInt32}},
		{"barrier", "BARRIER=1\n", sdnotify.Message{Barrier: true}},
		{"barrier 0", "BARRIER=0\nREADY=1", sdnotify.Message{Ready: true}},
		{"unknown keys ignored", "FDSTORE=1\nFDNAME=db\nBUSERROR=org.x.Y\nX_FOO=\x01\xff\nNOTIFYACCESS=all\nREADY=1", sdnotify.Message{Ready: true}},
		{"key taken as is", " READY=1\nready=1\nREADY =1", sdnotify.Message{}},
		{"empty key", "=x", sdnotify.Message{}},
		{"blank lines", "\n\nREADY=1\n\n\nSTATUS=x\n\n", sdnotify.Message{Ready: true, Status: "x", HasStatus: true}},
		{"CRLF", "READY=1\r\nSTATUS=x\r\n", sdnotify.Message{Ready: true, Status: "x", HasStatus: true}},
		{"lone CR", "READY=1\rWATCHDOG=1", sdnotify.Message{Ready: true, Watchdog: true}},
		{"systemd-notify", "READY=1\nSTATUS=hi\nMAINPID=77", sdnotify.Message{Ready: true, Status: "hi", HasStatus: true, MainPID: 77}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sdnotify.Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("Parse(%q) =\n%+v, want\n%+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, in, why string // why: in the error message
	}{
		{"no '='", "READY=1\nhello", `"hello" has no '='`},
		{"bare key", "READY", `"READY" has no '='`},
		{"ready 2", "READY=2", "READY="},
		{"ready yes", "READY=yes", "READY="},
		{"ready empty", "READY=", "READY="},
		{"ready space", "READY=1 ", "READY="},
		{"reloading 2", "RELOADING=2", "RELOADING="},
		{"stopping true", "STOPPING=true", "STOPPING="},
		{"barrier 2", "BARRIER=2", "BARRIER="},
		{"barrier with others", "BARRIER=1\nREADY=1", "BARRIER=1 with other"},
		{"barrier with unknown", "X=1\nBARRIER=1", "BARRIER=1 with other"},
		{"watchdog 0", "WATCHDOG=0", "WATCHDOG="},
		{"watchdog bad after good", "WATCHDOG=1\nWATCHDOG=2", "WATCHDOG="},
		{"watchdog usec abc", "WATCHDOG_USEC=abc", "WATCHDOG_USEC="},
		{"watchdog usec empty", "WATCHDOG_USEC=", "WATCHDOG_USEC="},
		{"watchdog usec negative", "WATCHDOG_USEC=-1", "WATCHDOG_USEC="},
		{"watchdog usec plus", "WATCHDOG_USEC=+1", "WATCHDOG_USEC="},
		{"watchdog usec hex", "WATCHDOG_USEC=0x10", "WATCHDOG_USEC="},
		{"watchdog usec space", "WATCHDOG_USEC= 1", "WATCHDOG_USEC="},
		{"watchdog usec overflow", "WATCHDOG_USEC=18446744073709551616", "WATCHDOG_USEC="},
		{"extend abc", "EXTEND_TIMEOUT_USEC=5s", "EXTEND_TIMEOUT_USEC="},
		{"monotonic bad", "MONOTONIC_USEC=1.5", "MONOTONIC_USEC="},
		{"errno -1", "ERRNO=-1", "ERRNO="},
		{"errno 4096", "ERRNO=4096", "ERRNO="},
		{"errno name", "ERRNO=EIO", "ERRNO="},
		{"mainpid 0", "MAINPID=0", "MAINPID=0"},
		{"mainpid -1", "MAINPID=-1", "MAINPID="},
		{"mainpid too big", "MAINPID=2147483648", "MAINPID="},
		{"status not utf-8", "STATUS=\xff\xfe", "STATUS= is not UTF-8"},
		{"status bad after good", "STATUS=ok\nSTATUS=\xc3", "STATUS= is not UTF-8"},
		{"embedded NUL", "READY=1\x00STATUS=x", "NUL byte at offset 7"},
		{"two trailing NULs", "READY=1\x00\x00", "NUL byte at offset 7"},
		{"long line quoted short", "x" + strings.Repeat("y", 3000), `"x` + strings.Repeat("y", 39) + `"...`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := sdnotify.Parse([]byte(tc.in))
			if !errors.Is(err, sdnotify.ErrInvalid) {
				t.Fatalf("Parse(%.80q) = %+v, %v; want ErrInvalid", tc.in, m, err)
			}
			if m != (sdnotify.Message{}) {
				t.Errorf("Parse(%.80q) returned %+v with its error; want the zero Message", tc.in, m)
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Errorf("Parse(%.80q): error %q does not say %q", tc.in, err, tc.why)
			}
			if len(err.Error()) > 300 {
				t.Errorf("Parse(%.80q): error is %d bytes long", tc.in, len(err.Error()))
			}
		})
	}
}

// TestParseAllocs checks that Parse allocates nothing for a datagram
// without STATUS=, and one string for a STATUS=.
func TestParseAllocs(t *testing.T) {
	for in, want := range map[string]float64{
		"READY=1\nWATCHDOG=1\nWATCHDOG_USEC=100\nERRNO=5\nMAINPID=9\nX=y\n": 0,
		"READY=1\nSTATUS=" + strings.Repeat("s", 4000):                      1,
	} {
		p := []byte(in)
		if got := testing.AllocsPerRun(100, func() { sdnotify.Parse(p) }); got != want {
			t.Errorf("Parse(%.30q...) allocates %v times, want %v", in, got, want)
		}
	}
}
