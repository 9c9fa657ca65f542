//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Tests of `run -- CMD`: supervising a program that knows nothing of
// the worker protocol, with each ready mode, the watchdog and the
// health command, and how such a run ends.

// TestRunCommandStarted: `--ready started` makes plain `sleep`
// processes ready workers of the program "worker", listed as such by
// status; SIGTERM stops them all and removes the socket.
func TestRunCommandStarted(t *testing.T) {
	t.Parallel()
	run, sock, pids := startRun(t, 2, "--ready", "started", "--start-secs", "300ms", "--", "sleep", "1000")
	_, doc := statusJSON(t, sock)
	if len(doc.Programs) != 1 || doc.Programs[0].Name != "worker" || doc.Programs[0].State != supervisor.ProgramReady {
		t.Errorf("programs %+v, want one ready program named worker", doc.Programs)
	}
	for _, w := range doc.Workers {
		if w.Program != "worker" {
			t.Errorf("worker %d of program %q, want worker", w.ID, w.Program)
		}
	}
	for _, pid := range pids {
		if p, ok := testutil.ReadProc(pid); !ok || p.Comm != "sleep" || p.PPID != run.PID() {
			t.Errorf("worker pid %d is %+v, want a sleep process, child of the supervisor %d", pid, p, run.PID())
		}
	}
	r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
	for _, pid := range pids {
		if !regexp.MustCompile(`(?m)^worker\s+[12]\s+` + strconv.Itoa(pid) + `\s+ready\s`).MatchString(r.stdout) {
			t.Errorf("status does not list pid %d as a ready worker of program worker:\n%s", pid, r)
		}
	}
	run.stopOK(t, syscall.SIGTERM, sock)
	waitGone(t, pids...)
}

// TestRunCommandNotify: `--ready notify` workers are ready at READY=1
// and status shows what they send as STATUS=, whether they use
// systemd-notify or a few lines of Python on $NOTIFY_SOCKET (an
// abstract name).
func TestRunCommandNotify(t *testing.T) {
	t.Parallel()
	for name, command := range map[string]func(t *testing.T) []string{
		"systemd-notify": func(t *testing.T) []string {
			testutil.RequireTool(t, "systemd-notify")
			return []string{"sh", "-c", `systemd-notify --ready --status="up %i"; exec sleep 1000`}
		},
		"python": func(t *testing.T) []string { return pyNotify(t, "ready", "up %i") },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			run, sock, _ := startRun(t, 2, append([]string{"--ready", "notify", "--"}, command(t)...)...)
			var doc statusDoc
			poll(t, `status texts "up 1" and "up 2"`, func() bool {
				var loose map[string]any
				loose, doc = statusJSON(t, sock)
				ok := len(doc.Workers) == 2
				for i, w := range doc.Workers {
					ok = ok && w.StatusText == fmt.Sprintf("up %d", w.ID) && w.State == supervisor.StateReady &&
						loose["workers"].([]any)[i].(map[string]any)["status_text"] == w.StatusText
				}
				return ok
			}, func() string { return fmt.Sprintf("%+v\n%s", doc.Workers, run.Output()) })
			r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
			if !regexp.MustCompile(`(?m)^worker\s+1\s+\d+\s+ready\s.*\sup 1$`).MatchString(r.stdout) {
				t.Errorf("status does not show worker 1's status text:\n%s", r)
			}
			run.stopOK(t, syscall.SIGTERM, sock)
		})
	}
}

// pyNotify returns the command that runs testdata/sdnotify.py with
// args (skipping the test without python3).
func pyNotify(t *testing.T, args ...string) []string {
	t.Helper()
	py := testutil.RequireTool(t, "python3")
	script, err := filepath.Abs(filepath.Join("testdata", "sdnotify.py"))
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{py, script}, args...)
}

// TestRunCommandNeverReady: a `--ready notify` program that never sends
// READY=1 is killed at --start-timeout and started again, over and
// over, and status says why.
func TestRunCommandNeverReady(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--workers", "1", "--socket", sock, "--ready", "notify", "--start-timeout", "1s",
		"--backoff-min", "10ms", "--backoff-max", "10ms", "--", "sleep", "1000")
	run.waitSocket(t, sock)
	// Each poll is a `status` process: under load it can take longer
	// than a worker lives, and a poll can fall between two workers (pid
	// 0 while spawning). So the wait is for two pids seen, not for the
	// first status with two restarts, which came once after one pid
	// seen. A pid seen again after a restart would be a worker not
	// replaced.
	var seen []int // the pids of worker 1 so far
	restarts := -1 // at the last pid seen
	w := waitWorker(t, run, sock, "worker", 1, "two restarts of a worker never ready, two of its pids seen", func(w supervisor.WorkerStatus) bool {
		if w.PID > 0 {
			switch i := slices.Index(seen, w.PID); {
			case i < 0:
				seen = append(seen, w.PID)
				restarts = w.Restarts
			case i < len(seen)-1 || w.Restarts != restarts:
				t.Fatalf("pid %d still worker 1's after a restart (pids %v, now %+v)", w.PID, seen, w)
			}
		}
		if w.State == supervisor.StateReady {
			t.Fatalf("a worker that sent no READY=1 is ready: %+v", w)
		}
		return w.Restarts >= 2 && len(seen) >= 2
	})
	if w.LastExit != "not ready within 1s: killed" {
		t.Errorf("last_exit %q, want %q", w.LastExit, "not ready within 1s: killed")
	}
	waitGone(t, seen[:len(seen)-1]...)
	if code := run.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d, want 0\n%s", code, run.Output())
	}
}

// TestRunCommandWatchdog: a `--ready notify --watchdog` worker lives as
// long as it sends WATCHDOG=1 in time, is killed as hung once it stops,
// and at once when it sends WATCHDOG=trigger; either way it is started
// again.
func TestRunCommandWatchdog(t *testing.T) {
	t.Parallel()
	t.Run("starved", func(t *testing.T) {
		t.Parallel()
		fed := filepath.Join(t.TempDir(), "fed")
		// 15 feeds over 1.5 watchdog intervals: a worker whose feeding
		// went unheard would be killed before it wrote to fed.
		run, sock, pids := startRun(t, 1, append([]string{"--ready", "notify", "--watchdog", "1s", "--"},
			pyNotify(t, "starve", "15", fed)...)...)
		w := waitWorker(t, run, sock, "worker", 1, "the starved worker's restart", func(w supervisor.WorkerStatus) bool {
			return w.Restarts >= 1 && w.LastExit != ""
		})
		if want := "hung: watchdog not fed within 1s"; w.LastExit != want {
			t.Errorf("last_exit %q, want %q", w.LastExit, want)
		}
		b, _ := os.ReadFile(fed)
		if !strings.Contains(string(b), fmt.Sprintf("%d fed 15\n", pids[0])) {
			t.Errorf("worker %d was killed before it stopped feeding its watchdog; it wrote %q\n%s", pids[0], b, run.Output())
		}
		waitGone(t, pids[0])
		run.stopOK(t, syscall.SIGTERM, sock)
	})
	t.Run("trigger", func(t *testing.T) {
		t.Parallel()
		// Never seen ready by status: it triggers as soon as it is.
		sock := filepath.Join(tempDir(t), "s")
		run := cliStart(t, append([]string{"run", "--workers", "1", "--socket", sock, "--ready", "notify", "--watchdog", "1h", "--"},
			pyNotify(t, "trigger")...)...)
		run.waitSocket(t, sock)
		w := waitWorker(t, run, sock, "worker", 1, "the restart of the worker that triggered its watchdog", func(w supervisor.WorkerStatus) bool {
			return w.Restarts >= 1 && w.LastExit != ""
		})
		if want := "hung: watchdog triggered by the worker"; w.LastExit != want {
			t.Errorf("last_exit %q, want %q", w.LastExit, want)
		}
		run.stopOK(t, syscall.SIGTERM, sock)
	})
}

// TestRunHealthCmd: --health-cmd runs for each ready worker with %i its
// number; while it passes the workers live on, and the worker whose
// command fails --health-misses times in a row is killed as hung and
// started again, the other left alone.
func TestRunHealthCmd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, f := range []string{"ok1", "ok2"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Each pass adds a line to passes%i, for the test to count.
	check := fmt.Sprintf("test -e %[1]s/ok%%i && echo pass >> %[1]s/passes%%i", dir)
	run, sock, _ := startRun(t, 2, "--ready", "started", "--start-secs", "200ms", "--health-cmd", check,
		"--health-interval", "200ms", "--health-misses", "2", "--", "sleep", "1000")
	passes := func(id int) int {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("passes%d", id)))
		return strings.Count(string(b), "pass\n")
	}
	poll(t, "three passes of each worker's health command", func() bool { return passes(1) >= 3 && passes(2) >= 3 }, run.Output)
	_, before := statusJSON(t, sock)
	for _, w := range before.Workers {
		if w.Restarts != 0 || w.State != supervisor.StateReady {
			t.Fatalf("worker %+v restarted or not ready while its health command passes\n%s", w, run.Output())
		}
	}
	one, two := workerOf(t, before, "worker", 1), workerOf(t, before, "worker", 2)

	if err := os.Remove(filepath.Join(dir, "ok1")); err != nil {
		t.Fatal(err)
	}
	w := waitWorker(t, run, sock, "worker", 1, "worker 1 killed for its failed health command", func(w supervisor.WorkerStatus) bool {
		return w.Restarts >= 1 && w.LastExit != ""
	})
	if want := "hung: health command failed 2 times"; w.LastExit != want {
		t.Errorf("worker 1: last_exit %q, want %q", w.LastExit, want)
	}
	waitGone(t, one.PID)
	mark := passes(2)
	poll(t, "more passes of worker 2", func() bool { return passes(2) >= mark+2 }, run.Output)
	_, after := statusJSON(t, sock)
	if w := workerOf(t, after, "worker", 2); w.PID != two.PID || w.Restarts != 0 || w.LastExit != "" || w.State != supervisor.StateReady {
		t.Errorf("worker 2 %+v was touched (before: %+v)", w, two)
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunCommandEndsByItself: a run whose workers all end for good (the
// restart policy starts none again) exits by itself: 0 if every one
// exited 0, 1 if not.
func TestRunCommandEndsByItself(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"--restart", "never", "--", "sh", "-c", "exit 0"}, exitOK},
		{[]string{"--restart", "never", "--", "sh", "-c", "exit 3"}, exitFail},
		{[]string{"--restart", "on-failure", "--", "true"}, exitOK},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, tc.code, cliOpts{}, append([]string{"run"}, tc.args...)...)
			result := map[bool]string{true: "ok", false: "FAILED"}[tc.code == exitOK]
			if !strings.Contains(r.stdout, "  result     "+result+"\n") || !strings.Contains(r.stderr, "every program has ended") {
				t.Errorf("want result %s after every program ended:\n%s", result, r)
			}
			if failed := strings.Contains(r.stderr, "workers failed"); failed != (tc.code != exitOK) {
				t.Errorf("stderr says workers failed: %v, want %v:\n%s", failed, tc.code != exitOK, r)
			}
		})
	}
}

// TestRunCommandUsageErrors: a bad flag for a program, a command that
// cannot be run, and per-program flags or a command with --config are
// usage errors (exit 2) naming what is wrong, and nothing starts.
func TestRunCommandUsageErrors(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "one.toml")
	if err := os.WriteFile(conf, []byte("[programs.one]\ncommand = \"sleep\"\nargs = [\"1000\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"--workers", "0", "--", "sleep", "1"}, "--workers must be between 1 and "},
		{[]string{"--start-secs", "-1s", "--", "sleep", "1"}, "--start-secs must be a positive duration"},
		{[]string{"--health-interval", "-1s", "--", "sleep", "1"}, "--health-interval must be a positive duration"},
		{[]string{"--ready", "bogus", "--", "sleep", "1"}, `--ready must be hello, notify or started, got "bogus"`},
		{[]string{"--stop-signal", "FOO", "--", "sleep", "1"}, `--stop-signal must be TERM, INT, HUP, QUIT, USR1, USR2 or KILL, got "FOO"`},
		{[]string{"--watchdog", "1s", "--", "sleep", "1"}, "--watchdog needs --ready notify"},
		{[]string{"--ready", "started", "--watchdog", "1s", "--", "sleep", "1"}, "--watchdog needs --ready notify"},
		{[]string{"--", "no-such-cmd-xyz"}, "command no-such-cmd-xyz: not found in PATH"},
		{[]string{"--", "./testdata/no-such-file"}, "command ./testdata/no-such-file: no such file"},
		{[]string{"--", "./testdata/not-executable"}, "command ./testdata/not-executable: permission denied"},
		{[]string{"--config", conf, "--workers", "3"}, "--workers is a program setting: with --config, set it in the file"},
		{[]string{"--config", conf, "--ready", "notify"}, "--ready is a program setting"},
		{[]string{"--config", conf, "--", "sleep", "1"}, "a command and --config do not go together"},
	} {
		t.Run(strings.ReplaceAll(strings.Join(tc.args, " "), conf, "FILE"), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitUsage, cliOpts{}, append([]string{"run"}, tc.args...)...)
			if !strings.HasPrefix(r.stderr, "supervisor run: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, r)
			}
			if strings.Contains(r.stderr, "starting") {
				t.Errorf("a usage error started something:\n%s", r)
			}
		})
	}
}

// waitWorker polls status until worker id of program satisfies cond,
// and returns it. cond sees every state of it that status shows.
func waitWorker(t *testing.T, run *cliProc, sock, program string, id int, what string, cond func(supervisor.WorkerStatus) bool) supervisor.WorkerStatus {
	t.Helper()
	var w supervisor.WorkerStatus
	poll(t, what, func() bool {
		_, doc := statusJSON(t, sock)
		w = workerOf(t, doc, program, id)
		return cond(w)
	}, func() string { return fmt.Sprintf("last seen: %+v\n%s", w, run.Output()) })
	return w
}

// workerOf returns worker id of program in doc.
func workerOf(t *testing.T, doc statusDoc, program string, id int) supervisor.WorkerStatus {
	t.Helper()
	for _, w := range doc.Workers {
		if w.Program == program && w.ID == id {
			return w
		}
	}
	t.Fatalf("status lists no worker %d of program %s: %+v", id, program, doc.Workers)
	return supervisor.WorkerStatus{}
}

// waitGone polls until none of pids is a process any more.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	poll(t, fmt.Sprintf("processes %v to be gone", pids), func() bool {
		return !slices.ContainsFunc(pids, func(pid int) bool { return !processGone(pid) })
	}, nil)
}
