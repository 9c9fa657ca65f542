//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Tests of `run --config`: several named programs from a file, started
// in dependency order, controlled one by one, and the file re-read on
// SIGHUP or `reload`.

// TestConfigStartStopOrder: the programs of testdata/three.toml start
// in dependency order, each once the one it starts after is ready (db,
// api, web), status groups their workers by program, and SIGTERM stops
// them in reverse, each once the one that starts after it has stopped.
func TestConfigStartStopOrder(t *testing.T) {
	t.Parallel()
	run, sock, pids := startThree(t)
	inOrder(t, run.Stderr.String(), "start",
		"starting program: program=db", "program ready: program=db",
		"starting program: program=api", "program ready: program=api",
		"starting program: program=web", "program ready: program=web")

	_, doc := statusJSON(t, sock)
	var names []string
	for _, p := range doc.Programs {
		names = append(names, fmt.Sprintf("%s:%s:%d:%v", p.Name, p.State, len(p.Workers), p.After))
	}
	if want := []string{"db:ready:1:[]", "api:ready:1:[db]", "web:ready:2:[api]"}; !slices.Equal(names, want) {
		t.Errorf("programs %q, want %q", names, want)
	}
	if w := workerOf(t, doc, "api", 1); w.StatusText != "api 1" {
		t.Errorf("api's status text %q, want %q", w.StatusText, "api 1")
	}
	r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
	if !regexp.MustCompile(`(?ms)^db\s+1\s+\d+\s+ready\s.*^api\s+1\s+\d+\s+ready\s.*^web\s+1\s+\d+\s+ready\s.*^web\s+2\s`).MatchString(r.stdout) {
		t.Errorf("status does not list db, api and web in order:\n%s", r)
	}

	run.stopOK(t, syscall.SIGTERM, sock)
	_, stopping, _ := strings.Cut(run.Stderr.String(), "stopping every program")
	inOrder(t, stopping, "stop",
		"stopping program: program=web", "program stopped: program=web",
		"stopping program: program=api", "program stopped: program=api",
		"stopping program: program=db", "program stopped: program=db")
	waitGone(t, pids...)
}

// startThree starts `run --config testdata/three.toml` and waits until
// its four workers are ready.
func startThree(t *testing.T) (*cliProc, string, []int) {
	t.Helper()
	testutil.RequireTool(t, "systemd-notify")
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--config", filepath.Join("testdata", "three.toml"), "--socket", sock)
	run.waitSocket(t, sock)
	return run, sock, readyWorkers(t, sock, 4)
}

// TestCheckConfig: check-config accepts testdata/three.toml, listing
// its programs, and refuses a file with a dependency cycle or an
// unknown key with exit 2 and the file and line; run refuses them
// likewise, starting nothing.
func TestCheckConfig(t *testing.T) {
	t.Parallel()
	three := filepath.Join("testdata", "three.toml")
	r := cliWant(t, exitOK, cliOpts{}, "check-config", three)
	if want := three + ": ok, 3 program(s): db (1) api (1) web (2)\n"; r.stdout != want {
		t.Errorf("check-config printed %q, want %q", r.stdout, want)
	}
	for file, want := range map[string]string{
		"cycle.toml":       "testdata/cycle.toml:5: programs.a.after: dependency cycle: a -> b -> a",
		"unknown-key.toml": `testdata/unknown-key.toml:5: programs.a: unknown key "wrokers" (did you mean "workers"?)`,
	} {
		path := filepath.Join("testdata", file)
		r := cliWant(t, exitUsage, cliOpts{}, "check-config", path)
		if !strings.Contains(r.stderr, want) {
			t.Errorf("check-config %s: stderr does not say %q:\n%s", file, want, r)
		}
		r = cliWant(t, exitUsage, cliOpts{}, "run", "--config", path)
		if !strings.Contains(r.stderr, want) || strings.Contains(r.stderr, "starting") {
			t.Errorf("run --config %s: stderr does not say %q, or something started:\n%s", file, want, r)
		}
	}
}

// TestControlProgram: `stop NAME` stops a program and it stays stopped,
// even when the program it starts after restarts; `restart NAME` gives
// it new workers; `start NAME` brings it back; an unknown NAME is a
// failure that says so.
func TestControlProgram(t *testing.T) {
	t.Parallel()
	run, sock, _ := startThree(t)
	_, doc := statusJSON(t, sock)
	web0, api0 := programPIDs(t, doc, "web"), programPIDs(t, doc, "api")

	if r := cliWant(t, exitOK, cliOpts{}, "stop", "--socket", sock, "web"); r.stdout != "stop web done\n" {
		t.Errorf("stop web printed %q", r.stdout)
	}
	stopped := func(what string) {
		t.Helper()
		_, doc := statusJSON(t, sock)
		if p := programOf(t, doc, "web"); p.State != supervisor.ProgramStopped || len(p.Workers) != 0 {
			t.Errorf("%s: web is %s with %d workers, want stopped with none", what, p.State, len(p.Workers))
		}
	}
	stopped("after stop web")
	waitGone(t, web0...)

	if r := cliWant(t, exitOK, cliOpts{}, "restart", "--socket", sock, "api"); r.stdout != "restart api done\n" {
		t.Errorf("restart api printed %q", r.stdout)
	}
	waitProgram(t, run, sock, "api", 1, api0)
	waitGone(t, api0...)
	stopped("after api, which web starts after, restarted and became ready")
	r := cliWant(t, exitOK, cliOpts{}, "status", "--socket", sock)
	if !regexp.MustCompile(`(?m)^web\s+-\s+-\s+stopped\s`).MatchString(r.stdout) {
		t.Errorf("status does not show web stopped:\n%s", r)
	}

	if r := cliWant(t, exitOK, cliOpts{}, "start", "--socket", sock, "web"); r.stdout != "start web done\n" {
		t.Errorf("start web printed %q", r.stdout)
	}
	waitProgram(t, run, sock, "web", 2, web0)

	for _, op := range []string{"stop", "start", "restart", "reload"} {
		r := cliWant(t, exitFail, cliOpts{}, op, "--socket", sock, "nope")
		if !strings.Contains(r.stderr, `no such program: "nope"`) {
			t.Errorf("%s of an unknown program: stderr does not say no such program:\n%s", op, r)
		}
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestConfigReload: SIGHUP, and `reload` without a NAME, re-read the
// config file and apply what changed: an added program starts, a
// removed one stops, a changed one starts again with its new settings,
// an unchanged one keeps its workers, and clients of the front program
// (unchanged) see no failed request meanwhile. A file that does not load
// changes nothing and says why, with its file and line.
func TestConfigReload(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "pairvisor.toml")
	// front: the built-in echo worker (this test binary re-executed as
	// a worker plays the command line, which serves as one).
	front := fmt.Sprintf("[programs.front]\ncommand = %q\nworkers = 2\n", testutil.Executable())
	sleeper := func(name string, workers int) string {
		return fmt.Sprintf("\n[programs.%s]\ncommand = \"sleep\"\nargs = [\"1000\"]\nworkers = %d\nready = \"started\"\nstart_secs = \"100ms\"\nstop_timeout = \"2s\"\n", name, workers)
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(front + sleeper("keep", 1) + sleeper("change", 1) + sleeper("gone", 1))
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, "run", "--config", conf, "--socket", sock)
	run.waitSocket(t, sock)
	v1 := waitPrograms(t, run, sock, "front", 2, "keep", 1, "change", 1, "gone", 1)
	load := startEchoLoad(t, sock, 4)
	load.waitMore(t, 50, run)

	// SIGHUP: change gets 2 workers, gone goes, added comes.
	v2text := front + sleeper("keep", 1) + sleeper("change", 2) + sleeper("added", 1)
	write(v2text)
	if err := run.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	v2 := waitPrograms(t, run, sock, "front", 2, "keep", 1, "change", 2, "added", 1)
	samePIDs(t, "front", v1, v2)
	samePIDs(t, "keep", v1, v2)
	if slices.ContainsFunc(v2["change"], func(pid int) bool { return slices.Contains(v1["change"], pid) }) {
		t.Errorf("changed program kept a worker: pids %v, then %v", v1["change"], v2["change"])
	}
	waitGone(t, append(v1["gone"], v1["change"]...)...)
	poll(t, "the log line saying what was applied", func() bool {
		return strings.Contains(run.Stderr.String(), `config file applied: added=["added"] removed=["gone"] changed=["change"] unchanged=["front", "keep"]`)
	}, run.Output)
	load.waitMore(t, 50, run)

	// A broken file: nothing changes, one line says why.
	broken := v2text + "wrokers = 2\n"
	line := strings.Count(v2text, "\n") + 1
	write(broken)
	if err := run.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll(t, "the failed reload's log line", func() bool { return strings.Contains(run.Stderr.String(), "reload failed") }, run.Output)
	var failed []string
	for _, l := range strings.Split(run.Stderr.String(), "\n") {
		if strings.Contains(l, "reload failed") || strings.Contains(l, "wrokers") {
			failed = append(failed, l)
		}
	}
	if want := fmt.Sprintf(`%s:%d: programs.added: unknown key \"wrokers\"`, conf, line); len(failed) != 1 || !strings.Contains(failed[0], want) {
		t.Errorf("want one log line saying %s, got %q", want, failed)
	}
	v3 := waitPrograms(t, run, sock, "front", 2, "keep", 1, "change", 2, "added", 1)
	for _, name := range []string{"front", "keep", "change", "added"} {
		samePIDs(t, name, v2, v3)
	}
	load.waitMore(t, 50, run)

	// Fixed, with added given a second worker, and applied by `reload`.
	write(front + sleeper("keep", 1) + sleeper("change", 2) + sleeper("added", 2))
	cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
	v4 := waitPrograms(t, run, sock, "front", 2, "keep", 1, "change", 2, "added", 2)
	for _, name := range []string{"front", "keep", "change"} {
		samePIDs(t, name, v3, v4)
	}
	waitGone(t, v3["added"]...)
	load.waitMore(t, 50, run)

	ok, errs := load.stop()
	for _, err := range errs {
		t.Errorf("request to the unchanged front program failed: %v", err)
	}
	t.Logf("%d echoes through the front door across three reloads", ok)
	run.stopOK(t, syscall.SIGTERM, sock)
}

// waitPrograms polls status until the programs are those named, in
// that order, each with its count of workers all ready, and returns
// each program's pids (sorted). want is name, count, name, count, ….
func waitPrograms(t *testing.T, run *cliProc, sock string, want ...any) map[string][]int {
	t.Helper()
	var doc statusDoc
	var got map[string][]int
	poll(t, fmt.Sprintf("programs %v, every worker ready", want), func() bool {
		_, doc = statusJSON(t, sock)
		if len(doc.Programs) != len(want)/2 {
			return false
		}
		got = map[string][]int{}
		for i, p := range doc.Programs {
			if p.Name != want[2*i] || len(p.Workers) != want[2*i+1] || p.State != supervisor.ProgramReady {
				return false
			}
			for _, w := range p.Workers {
				if w.State != supervisor.StateReady || w.PID <= 0 {
					return false
				}
				got[p.Name] = append(got[p.Name], w.PID)
			}
			slices.Sort(got[p.Name])
		}
		return true
	}, func() string { return fmt.Sprintf("last status: %+v\n%s", doc.Programs, run.Output()) })
	return got
}

// waitProgram polls status until program name is ready with n workers,
// none of them one of old, and returns their pids.
func waitProgram(t *testing.T, run *cliProc, sock, name string, n int, old []int) []int {
	t.Helper()
	var p programDoc
	var pids []int
	poll(t, fmt.Sprintf("program %s ready with %d new workers", name, n), func() bool {
		_, doc := statusJSON(t, sock)
		p = programOf(t, doc, name)
		pids = nil
		for _, w := range p.Workers {
			if w.State != supervisor.StateReady || slices.Contains(old, w.PID) {
				return false
			}
			pids = append(pids, w.PID)
		}
		return p.State == supervisor.ProgramReady && len(pids) == n
	}, func() string { return fmt.Sprintf("last seen: %+v (old pids %v)\n%s", p, old, run.Output()) })
	return pids
}

// samePIDs fails the test unless program name has the same workers in
// a and b.
func samePIDs(t *testing.T, name string, a, b map[string][]int) {
	t.Helper()
	if !slices.Equal(a[name], b[name]) {
		t.Errorf("program %s: workers %v became %v, want them kept", name, a[name], b[name])
	}
}

// programOf returns program name of doc.
func programOf(t *testing.T, doc statusDoc, name string) programDoc {
	t.Helper()
	for _, p := range doc.Programs {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("status lists no program %s: %+v", name, doc.Programs)
	return programDoc{}
}

// programPIDs returns the pids of program name's workers in doc.
func programPIDs(t *testing.T, doc statusDoc, name string) []int {
	t.Helper()
	var pids []int
	for _, w := range programOf(t, doc, name).Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

// inOrder fails the test unless each of lines is in log, each after
// the one before it.
func inOrder(t *testing.T, log, what string, lines ...string) {
	t.Helper()
	at := 0
	for _, l := range lines {
		i := strings.Index(log[at:], l)
		if i < 0 {
			t.Errorf("%s order: no %q after %q in the log:\n%s", what, l, log[:at], log)
			return
		}
		at += i + len(l)
	}
}
