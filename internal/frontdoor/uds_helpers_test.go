//go:build linux

package frontdoor_test

import (
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Every helper here is prefixed with "uds" so that it cannot collide
// with the other test files'.

// udsPoll calls cond every few milliseconds until it is true, failing
// the test after testutil.UDSWait. detail, if not nil, adds to the failure.
func udsPoll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, testutil.UDSWait, 5*time.Millisecond, what, cond, detail)
}
