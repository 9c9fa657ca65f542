//go:build linux

package listen_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// TestListenChmodStaysOurs: an operator's chmod of the running socket
// changes its change time, not its owner: the watcher must not take it
// for a replacement, and Close still removes it.
func TestListenChmodStaysOurs(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	var logs testutil.Buffer
	l := udsListen(t, path, listen.Config{
		WatchPeriod: 20 * time.Millisecond,
		Logger:      hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn}),
	})
	time.Sleep(5 * time.Millisecond) // a different change time, whatever the clock's grain
	if err := os.Chmod(path, 0o660); err != nil {
		t.Fatal(err)
	}
	// Let the watcher look at it several times.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if logs.String() != "" {
			t.Fatalf("the watcher took the chmod'ed socket for something else:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.AssertGone(t, path, path+".lock")
}
