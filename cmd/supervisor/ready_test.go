//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestReadyProbe: `ready` exits 0 only when every program checked has
// at least --min ready workers, and says what is missing otherwise:
// with none, some and all of the workers ready.
func TestReadyProbe(t *testing.T) {
	t.Parallel()
	testutil.RequireTool(t, "systemd-notify")
	for _, tc := range []struct {
		name  string
		ready []int // workers that become ready
	}{
		{"none", nil},
		{"some", []int{1}},
		{"all", []int{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := tempDir(t)
			for _, i := range tc.ready {
				if err := os.WriteFile(filepath.Join(dir, "ok"+string(rune('0'+i))), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			sock := filepath.Join(dir, "s")
			script := "if [ -e " + dir + "/ok%i ]; then systemd-notify --ready; fi; exec sleep 1000"
			run := cliStart(t, "run", "--workers", "2", "--socket", sock, "--ready", "notify", "--start-timeout", "1h", "--", "sh", "-c", script)
			run.waitSocket(t, sock)
			poll(t, "the ready workers", func() bool {
				_, doc := statusJSON(t, sock)
				n := 0
				for _, w := range doc.Workers {
					if w.State == "ready" {
						n++
					}
				}
				return n == len(tc.ready)
			}, run.Output)

			for min := 1; min <= 2; min++ {
				want := exitFail
				if len(tc.ready) >= min {
					want = exitOK
				}
				r := cliWant(t, want, cliOpts{}, "ready", "--socket", sock, "--min", string(rune('0'+min)))
				switch {
				case want == exitOK && !strings.HasPrefix(r.stdout, "ready: worker "):
					t.Errorf("ready --min %d: %s", min, r)
				case want == exitFail && !strings.Contains(r.stderr, "worker has "+string(rune('0'+len(tc.ready)))+" ready of 2, needs "):
					t.Errorf("ready --min %d should say what is missing: %s", min, r)
				}
			}
			cliWant(t, exitFail, cliOpts{}, "ready", "--socket", sock, "--program", "nope")
			cliWant(t, exitUsage, cliOpts{}, "ready", "--socket", sock, "--min", "0")
			run.stopOK(t, os.Interrupt, sock)
		})
	}
}
