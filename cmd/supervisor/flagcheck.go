package main

import (
	"flag"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Checks of flag values. Every invalid value is a usage error (exit 2)
// whose message names the flag, the valid range and the value given.
// A duration flag is 0 only where 0 means "off" or "none" (--duration,
// --echo-interval, ping --interval); elsewhere it must be positive.
// --max-restarts 0 likewise means "no limit".

// positive requires d > 0.
func positive(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("--%s must be a positive duration (like 500ms or 2s), got %v", name, d)
	}
	return nil
}

// zeroOrPositive requires d >= 0; zero means what off says.
func zeroOrPositive(name string, d time.Duration, off string) error {
	if d < 0 {
		return fmt.Errorf("--%s must be 0 (%s) or a positive duration, got %v", name, off, d)
	}
	return nil
}

// atLeast requires n >= lo.
func atLeast(name string, n, lo int) error {
	if n < lo {
		return fmt.Errorf("--%s must be at least %d, got %d", name, lo, n)
	}
	return nil
}

// between requires lo <= n <= hi; why, if not empty, says where hi
// comes from.
func between(name string, n, lo, hi int, why string) error {
	if n < lo || n > hi {
		if why != "" {
			why = " (" + why + ")"
		}
		return fmt.Errorf("--%s must be between %d and %d%s, got %d", name, lo, hi, why, n)
	}
	return nil
}

// firstError returns the first non-nil error.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// Descriptor accounting, for the checks of --workers, --max-conns and
// bench --clients against RLIMIT_NOFILE.
const (
	// fdsPerWorker is what one worker holds in the supervisor at the
	// peak of its spawn: both ends of its socketpair and of its stdout
	// and stderr pipes (6). Once it runs, the child's ends are closed
	// and the pidfd it is waited on through and the channel's poller
	// registration take their place (5).
	fdsPerWorker = 6
	// fdReserve is what the process needs besides workers and clients:
	// stdio, the runtime's poller, the socket, its lock file and the
	// directory opened to bind it, one more worker for a rolling
	// restart's replacement, and slack.
	fdReserve = 32
)

// fdLimit returns RLIMIT_NOFILE's soft limit, which the Go runtime has
// already raised to the hard limit at start-up.
func fdLimit() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<30 {
		return 1 << 30
	}
	return int(r.Cur)
}
