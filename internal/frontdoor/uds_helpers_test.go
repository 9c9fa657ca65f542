//go:build linux

package frontdoor_test

import (
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Every helper here is prefixed with "uds" so that it cannot collide
// with the other test files'.

// The socket helpers shared with the other socket tests live in
// package testutil.
type udsLog = testutil.LogBuffer

const udsWait = testutil.UDSWait

var (
	udsLogger        = testutil.DebugLogger
	udsConnect       = testutil.ConnectUnix
	udsMustConnect   = testutil.MustConnectUnix
	udsStale         = testutil.StaleSocket
	udsGone          = testutil.AssertGone
	udsPVLeftovers   = testutil.PVLeftovers
	udsToolForOthers = testutil.ToolForOthers
)

// udsPoll calls cond every few milliseconds until it is true, failing
// the test after udsWait. detail, if not nil, adds to the failure.
func udsPoll(tb testing.TB, what string, cond func() bool, detail func() string) {
	tb.Helper()
	testutil.Poll(tb, udsWait, 5*time.Millisecond, what, cond, detail)
}
