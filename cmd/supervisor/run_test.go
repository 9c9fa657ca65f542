//go:build linux

package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Tests of `run`: a timed run, and a service on a socket.

func TestRunDuration(t *testing.T) {
	t.Parallel()
	r := cliWant(t, exitOK, cliOpts{}, "run", "--workers", "2", "--duration", "2s", "--ping-interval", "100ms")
	if !strings.Contains(r.stdout, "  result     ok\n") {
		t.Errorf("summary does not say ok:\n%s", r)
	}
	if !strings.Contains(r.stdout, "  workers    2 (restarts 0, failures 0)") {
		t.Errorf("summary does not report 2 workers without restarts:\n%s", r)
	}
	m := regexp.MustCompile(`echoes\s+(\d+) sent, (\d+) verified \((\d+) bytes\), 0 mismatched, 0 failed`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no clean echo line in the summary:\n%s", r)
	}
	if n, _ := strconv.Atoi(m[2]); n == 0 {
		t.Errorf("no echo verified:\n%s", r)
	}
	m = regexp.MustCompile(`pings\s+(\d+) sent, (\d+) answered`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no ping line in the summary:\n%s", r)
	}
	if n, _ := strconv.Atoi(m[2]); n < 10 {
		t.Errorf("%s pings answered in 2s at 100ms intervals for 2 workers:\n%s", m[2], r)
	}
}

func TestRunStopUnderTraffic(t *testing.T) {
	// Echoes still in flight when the run ends are cut short by the stop,
	// not failures: the summary must still say ok.
	t.Parallel()
	for i := range 4 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, "run", "--workers", "2", "--duration", "300ms",
				"--echo-interval", "1ms", "--echo-max", "1024", "--log-level", "warn")
			if !strings.Contains(r.stdout, "  result     ok\n") || !strings.Contains(r.stdout, " 0 mismatched, 0 failed") {
				t.Errorf("summary:\n%s", r)
			}
		})
	}
}

func TestRunSocket(t *testing.T) {
	t.Parallel()
	run, sock, pids := startRun(t, 2, "--ping-misses", "20")
	loose, doc := statusJSON(t, sock)
	if doc.Mode != "run" || doc.PID != run.PID() || loose["workers"] == nil {
		t.Errorf("status %+v, want mode run and pid %d", doc, run.PID())
	}
	r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
	for _, pid := range pids {
		if !regexp.MustCompile(`(?m)^worker\s+\d+\s+` + strconv.Itoa(pid) + `\s+ready\s`).MatchString(r.stdout) {
			t.Errorf("status does not list worker pid %d as ready:\n%s", pid, r)
		}
	}

	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
	if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "hello"); r.stdout != "hello\n" {
		t.Errorf("echo: got %q", r.stdout)
	}
	p := randomBytes(1 << 20)
	if r := cliWant(t, exitOK, cliOpts{stdin: bytes.NewReader(p)}, "echo", "--socket", sock); r.stdout != string(p) {
		t.Errorf("echo of 1 MiB: got %d bytes back", len(r.stdout))
	}

	t.Run("echo-served-by-workers", func(t *testing.T) {
		// With every worker stopped, echoes wait (and time out) while
		// pings, which the supervisor answers itself, still work.
		cont := func() {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
		defer cont()
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}
		r := cliWant(t, exitFail, cliOpts{}, "echo", "--socket", sock, "--timeout", "1s", "stuck")
		if !strings.Contains(r.stderr, "timeout") {
			t.Errorf("echo with stopped workers:\n%s", r)
		}
		cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
		cont()
		if r := cliWant(t, exitOK, cliOpts{}, "echo", "--socket", sock, "again"); r.stdout != "again\n" {
			t.Errorf("echo after SIGCONT: %q", r.stdout)
		}
	})

	t.Run("raw-client", func(t *testing.T) {
		socat := testutil.RequireTool(t, "socat")
		rawEcho(t, append([]byte("raw through run\n"), randomBytes(16<<10)...), socat, "-", "UNIX-CONNECT:"+sock)
	})

	r = cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
	if !strings.Contains(r.stdout, "rolling restart done") {
		t.Errorf("reload:\n%s", r)
	}
	newPids := readyWorkers(t, sock, 2)
	for _, np := range newPids {
		for _, op := range pids {
			if np == op {
				t.Errorf("worker pid %d survived the reload (before %v, after %v)", np, pids, newPids)
			}
		}
	}

	run.stopOK(t, syscall.SIGTERM, sock)
	if !strings.Contains(run.Stdout.String(), "  result     ok\n") {
		t.Errorf("run summary not ok:\n%s", run.Output())
	}
	all := append(pids, newPids...)
	poll(t, "every worker to be gone", func() bool {
		for _, pid := range all {
			if !processGone(pid) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("workers %v", all) })
}
