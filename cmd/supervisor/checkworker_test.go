//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
			results := checkWorkerJSON(t, exitOK, cmd...)
			for _, want := range allChecks {
				res, ok := results[want]
				switch {
				case !ok:
					t.Errorf("no %q check", want)
				case !res.Pass:
					t.Errorf("%s: not passed: %+v", want, res)
				}
			}
			for _, res := range results {
				if !res.Pass && !res.Skip {
					t.Errorf("%s failed: %s", res.Check, res.Detail)
				}
			}
		})
	}
	// A worker held to protocol version 1: the CANCEL checks are skipped,
	// saying why, and the rest pass.
	t.Run("python version 1", func(t *testing.T) {
		t.Parallel()
		results := checkWorkerJSON(t, exitOK, py, brokenPyWorker(t, script, "v1"))
		for _, want := range allChecks {
			res := results[want]
			v2 := slices.Contains(v2Checks, want)
			switch {
			case v2 && (!res.Skip || !strings.Contains(res.Detail, "the worker speaks versions 1–1: this is a version 2 rule (CANCEL)")):
				t.Errorf("%s: %+v, want skipped for a version 1 worker", want, res)
			case !v2 && !res.Pass:
				t.Errorf("%s: %+v, want passed", want, res)
			}
		}
	})
	// A worker that answers a violation with the offending frame's id
	// instead of 0 fails exactly the checks whose offending frame had an
	// id, saying why.
	t.Run("broken: violation error with the frame's id", func(t *testing.T) {
		t.Parallel()
		results := checkWorkerJSON(t, exitFail, py, brokenPyWorker(t, script, "violation-id"))
		want := []string{"violation: unknown type", "violation: undefined flag bits", "violation: oversize length",
			"violation: CANCEL on a version 1 connection", "violation: CANCEL with a payload", "violation: hello with a non-zero id"}
		slices.Sort(want)
		if got := failed(results); !slices.Equal(got, want) {
			t.Errorf("failed checks %q, want %q", got, want)
		}
		for _, name := range want {
			if d := results[name].Detail; !strings.Contains(d, "(id 1)") || !strings.Contains(d, "an ERROR about a violation carries id 0") {
				t.Errorf("%s: %q", name, d)
			}
		}
	})
	// A worker that exits 0 whenever its channel ends fails the checks of
	// the channel ending without a SHUTDOWN, and only those.
	t.Run("broken: exit 0 without a SHUTDOWN", func(t *testing.T) {
		t.Parallel()
		results := checkWorkerJSON(t, exitFail, py, brokenPyWorker(t, script, "exit-0"))
		want := []string{"EOF without SHUTDOWN: exit non-zero", "ERROR with id 0 from the supervisor: close, exit non-zero"}
		for _, res := range results {
			if strings.HasPrefix(res.Check, "violation: ") {
				want = append(want, res.Check)
			}
		}
		slices.Sort(want)
		if got := failed(results); !slices.Equal(got, want) {
			t.Errorf("failed checks %q, want %q", got, want)
		}
		for _, name := range want {
			if d := results[name].Detail; !strings.Contains(d, "the worker exited 0: a worker whose channel ends without a SHUTDOWN must exit non-zero") {
				t.Errorf("%s: %q", name, d)
			}
		}
		if !results["SHUTDOWN drains, then exit 0"].Pass {
			t.Errorf("SHUTDOWN: %+v", results["SHUTDOWN drains, then exit 0"])
		}
	})
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

// allChecks are the checks every worker must pass (or skip, v2Checks,
// when it speaks version 1 only).
var allChecks = []string{
	"hello", "channel close-on-exec", "ping 0 B", "ping 64 B", "echo 0 B", "echo 16 MiB", "200 concurrent requests",
	"ping during a large request",
	"reply with an unknown id is dropped", "PING over 64 bytes: code 5 on its own id, connection open",
	"CANCEL of an unknown id is ignored", "CANCEL of an in-flight MESSAGE: exactly one reply",
	"violation: unknown type", "violation: undefined flag bits", "violation: oversize length", "violation: second HELLO",
	"violation: bad magic", "violation: request with id 0", "violation: CANCEL on a version 1 connection",
	"violation: CANCEL with a payload", "violation: hello with lowest above highest", "violation: hello with no common version",
	"violation: hello over 264 bytes", "violation: hello with a non-zero id",
	"SHUTDOWN drains, then exit 0", "EOF without SHUTDOWN: exit non-zero",
	"ERROR with id 0 from the supervisor: close, exit non-zero", "stderr relayed",
}

var v2Checks = []string{"CANCEL of an unknown id is ignored", "CANCEL of an in-flight MESSAGE: exactly one reply", "violation: CANCEL with a payload"}

// checkStepWait bounds the wait for each check's result. check-worker
// bounds every step of a check (a worker's start and hello, a reply, an
// exit) by its --timeout, 10 s by default, and a check has at most four
// steps; it prints each result as soon as its check is over. So the test
// waits for the run one check at a time, for as long as checks keep
// coming, rather than for the whole run (how long that takes depends on
// how many checks there are and on the machine).
const checkStepWait = 4*conformance.DefaultTimeout + cliWait

// checkWorkerJSON runs check-worker --json on cmd, wants exit status
// code, and returns the results by check (no check twice). It reads the
// results as they come, one line each, waiting checkStepWait for each.
func checkWorkerJSON(t *testing.T, code int, cmd ...string) map[string]conformance.Result {
	t.Helper()
	args := append([]string{"check-worker", "--json", "--quiet", "--"}, cmd...)
	p := testutil.StartProcess(t, cliCommand(t, cliOpts{}, args...))
	var lines []string
	for len(lines) == 0 || lines[len(lines)-1] != "]" {
		lines = append(lines, p.Line(t, checkStepWait))
	}
	err := p.Wait(t, cliWait) // it exits once the last line is out
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("supervisor %q: %v", args, err)
	}
	if p.ExitCode() != code {
		t.Fatalf("supervisor %q: want exit %d, got %d\n%s", args, code, p.ExitCode(), p.Output())
	}
	var results []conformance.Result
	if err := json.Unmarshal([]byte(p.Stdout.String()), &results); err != nil {
		t.Fatalf("check-worker --json: %v\n%s", err, p.Output())
	}
	if len(results) != len(lines)-2 {
		t.Errorf("check-worker --json: %d results on %d lines, want one a line between [ and ]\n%s", len(results), len(lines), p.Output())
	}
	byName := map[string]conformance.Result{}
	for _, res := range results {
		if _, dup := byName[res.Check]; dup {
			t.Errorf("check %q reported twice", res.Check)
		}
		byName[res.Check] = res
	}
	return byName
}

// failed returns the names of the failed checks, sorted.
func failed(results map[string]conformance.Result) []string {
	var names []string
	for name, res := range results {
		if !res.Pass && !res.Skip {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// brokenPyWorkers are Python workers built on the library next to the
// example (workers/python), each changed in one way.
var brokenPyWorkers = map[string]string{
	// Held to protocol version 1: nothing broken.
	"v1": `pv.serve(lambda p: p, max_version=1)`,
	// Answers a violation with the offending frame's id instead of 0.
	"violation-id": `
def violation(self, e):
    p = pv.encode_error(e.code, e.detail)
    self._writer.put(pv.encode_header(pv.MessageType.ERROR, pv.FLAG_REPLY, len(p), e.frame_id), p)
    self._writer.stop(flush=1.0)
    with self._lock:
        self._reason = self._reason or "protocol violation: " + e.detail
pv._Conn._violation = violation
pv.serve(lambda p: p)`,
	// Exits 0 however its channel ends.
	"exit-0": `
try:
    pv.serve(lambda p: p)
except pv.ChannelClosed:
    pass`,
}

// brokenPyWorker writes the worker named kind next to script (the
// example worker's copy) and returns its path.
func brokenPyWorker(t *testing.T, script, kind string) string {
	t.Helper()
	path := filepath.Join(filepath.Dir(script), kind+".py")
	src := "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\nimport pairvisor as pv\n" + brokenPyWorkers[kind] + "\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
