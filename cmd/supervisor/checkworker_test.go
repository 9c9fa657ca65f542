//go:build linux

package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/internal/conformance"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestCheckWorker: check-worker passes the Go echo worker (this binary)
// and the Python library's example worker, every check but the ones it
// cannot observe; it fails, saying why, a program that is no worker.
func TestCheckWorker(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	_, script := pyWorkerCopy(t)
	for name, cmd := range map[string][]string{
		"go":     {testutil.Executable()},
		"python": {py, script},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, append([]string{"check-worker", "--json", "--quiet", "--"}, cmd...)...)
			var results []conformance.Result
			if err := json.Unmarshal([]byte(r.stdout), &results); err != nil {
				t.Fatalf("check-worker --json: %v\n%s", err, r)
			}
			checks := map[string]bool{}
			for _, res := range results {
				checks[res.Check] = true
				if !res.Pass && !res.Skip {
					t.Errorf("%s failed: %s", res.Check, res.Detail)
				}
			}
			for _, want := range []string{"hello", "channel close-on-exec", "ping 64 B", "echo 16 MiB", "200 concurrent requests",
				"ping during a large request", "violation: unknown type", "violation: oversize length", "violation: second HELLO",
				"SHUTDOWN drains, then exit 0", "EOF makes the worker exit"} {
				if !checks[want] {
					t.Errorf("no %q check in %s", want, r.stdout)
				}
			}
		})
	}
	t.Run("not a worker", func(t *testing.T) {
		t.Parallel()
		r := cliWant(t, exitFail, cliOpts{}, "check-worker", "--timeout", "500ms", "--", "sh", "-c", "echo not a worker >&2; exec sleep 1000")
		if !strings.Contains(r.stdout, "FAIL  hello: no valid hello within 500ms") || !strings.Contains(r.stderr, "| not a worker") {
			t.Errorf("check-worker of a non-worker: %s", r)
		}
	})
	t.Run("usage", func(t *testing.T) {
		t.Parallel()
		cliWant(t, exitUsage, cliOpts{}, "check-worker")
		cliWant(t, exitUsage, cliOpts{}, "check-worker", "--timeout", "-1s", "--", "true")
		cliWant(t, exitUsage, cliOpts{}, "check-worker", "--", "no-such-program-xyz")
	})
}
