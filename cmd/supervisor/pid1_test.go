//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Tests of `run` as PID 1 of a pid namespace, as in a container: it
// is started with unshare --pid --fork --mount-proc (and, as container
// runtimes do, as the leader of a session of its own with setsid, or
// not). The test looks at the namespace from outside, in the host's
// /proc: the namespace's processes are PID 1's descendants there (every
// orphan in the namespace is re-parented to it), zombies included, and
// their host pids can be signalled.

// requireNamespaces skips the test unless it runs as root with the
// tools it needs (it fails instead under PAIRVISOR_REQUIRE_TOOLS=1).
func requireNamespaces(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("PAIRVISOR_REQUIRE_TOOLS") == "1" {
			t.Fatal("needs root to create a pid namespace (unshare --pid), and PAIRVISOR_REQUIRE_TOOLS=1")
		}
		t.Skip("needs root to create a pid namespace (unshare --pid); CI runs as root")
	}
	for _, tool := range []string{"unshare", "nsenter", "setsid"} {
		testutil.RequireTool(t, tool)
	}
}

// nsRun is a CLI run as PID 1 of a new pid namespace.
type nsRun struct {
	*cliProc     // unshare, which exits with PID 1's status
	init     int // PID 1's pid in the host's namespace
}

// startPID1 runs the CLI with args as PID 1 of a new pid namespace,
// with a /proc of its own; as a session leader if leader. Killing
// unshare (at the end of a failed test) kills PID 1, and with it the
// namespace (--kill-child).
func startPID1(t *testing.T, leader bool, args ...string) *nsRun {
	t.Helper()
	cmdArgs := []string{"--pid", "--fork", "--mount-proc", "--kill-child"}
	if leader {
		cmdArgs = append(cmdArgs, "setsid") // not a group leader, so it does not fork
	}
	cmdArgs = append(append(cmdArgs, testutil.Executable()), args...)
	cmd := exec.Command("unshare", cmdArgs...)
	cmd.Env = append(os.Environ(), harness.Use(t, "cli"))
	r := &nsRun{cliProc: &cliProc{Process: testutil.StartProcess(t, cmd), args: cmd.Args}}
	poll(t, "PID 1 of the new namespace", func() bool {
		if r.Exited() {
			t.Fatalf("unshare exited (%v)\n%s", r.Err(), r.Output())
		}
		for _, p := range hostProcs() {
			if p.PPID == r.PID() {
				r.init = p.PID
			}
		}
		return r.init != 0 && nsPID(r.init) == 1
	}, r.Output)
	return r
}

// nsPID returns the innermost pid of host pid (the last of NSpid), or 0.
func nsPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// hostProcs reads every process in /proc (the host's: the test's).
func hostProcs() []testutil.Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ps []testutil.Proc
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if p, ok := testutil.ReadProc(pid); ok {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// nsProc is a process of the namespace, seen from the host.
type nsProc struct {
	testutil.Proc
	cmdline string // "" for a zombie
}

// procs returns PID 1's descendants, zombies included.
func (r *nsRun) procs() []nsProc {
	kids := make(map[int][]testutil.Proc)
	for _, p := range hostProcs() {
		kids[p.PPID] = append(kids[p.PPID], p)
	}
	var out []nsProc
	queue := []int{r.init}
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		for _, p := range kids[parent] {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
			out = append(out, nsProc{Proc: p, cmdline: strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))})
			queue = append(queue, p.PID)
		}
	}
	return out
}

// describe lists the namespace's processes, for failure messages.
func (r *nsRun) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "namespace of PID 1 (host pid %d):\n", r.init)
	for _, p := range r.procs() {
		fmt.Fprintf(&b, "  %d ppid %d pgid %d %s %s %q\n", p.PID, p.PPID, p.PGID, p.State, p.Comm, p.cmdline)
	}
	return b.String() + r.Output()
}

// count returns how many of the namespace's processes match.
func (r *nsRun) count(match func(p nsProc) bool) int {
	n := 0
	for _, p := range r.procs() {
		if match(p) {
			n++
		}
	}
	return n
}

// holds reports whether process pid has the file path open.
func holds(pid int, path string) bool {
	dir := fmt.Sprintf("/proc/%d/fd/", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if t, _ := os.Readlink(dir + e.Name()); t == path {
			return true
		}
	}
	return false
}

// gate is a fifo that processes of the namespace block on (cat FIFO)
// until Open ends: the test holds it open for reading and writing, so
// their opens succeed at once and their reads wait; Open's close gives
// every reader EOF.
type gate struct {
	path string
	f    *os.File
}

func newGate(t *testing.T, path string) *gate {
	t.Helper()
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &gate{path: path, f: f}
}

func (g *gate) open() { g.f.Close() }

// TestPID1Orphans: as PID 1, with and without a session of its own,
// the supervisor reaps every orphan of the namespace; leaves running
// the orphans that are not from a worker (what an operator started
// with nsenter, as docker exec or kubectl exec do), which finish their
// work; kills a worker's descendant that left the worker's group; and
// stops on SIGTERM from outside with exit 0, leaving no process.
func TestPID1Orphans(t *testing.T) {
	t.Parallel()
	requireNamespaces(t)
	python := testutil.RequireTool(t, "python3")
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		python = "/usr/bin/python3" // not a pyenv shim
	}
	for _, leader := range []bool{true, false} {
		t.Run(fmt.Sprintf("session-leader=%v", leader), func(t *testing.T) {
			t.Parallel()
			dir := tempDir(t)
			sock := filepath.Join(dir, "s")
			wg := newGate(t, filepath.Join(dir, "worker-gate"))
			ng := newGate(t, filepath.Join(dir, "nonworker-gate"))
			// Ten orphans in the worker's group (background jobs whose
			// shell exited), and one that leaves the group but not the
			// worker's session.
			script := fmt.Sprintf(`for i in 1 2 3 4 5 6 7 8 9 10; do (cat %s > /dev/null &); done
(%s -c 'import os, time; os.setpgid(0, 0); time.sleep(1000)' &)
exec sleep 1000`, wg.path, python)
			r := startPID1(t, leader, "run", "--workers", "1", "--socket", sock, "--ready", "started", "--start-secs", "200ms",
				"--log-level", "debug", "--", "sh", "-c", script)
			r.waitSocket(t, sock)
			readyWorkers(t, sock, 1)

			isCat := func(g *gate) func(p nsProc) bool {
				return func(p nsProc) bool { return strings.Contains(p.cmdline, "cat "+g.path) }
			}
			poll(t, "the worker's ten orphans, adopted by PID 1, waiting at their gate", func() bool {
				return r.count(func(p nsProc) bool { return isCat(wg)(p) && p.PPID == r.init && holds(p.PID, wg.path) }) == 10
			}, r.describe)
			poll(t, "the orphan that left its worker's group to be killed", func() bool {
				return strings.Contains(r.Stderr.String(), "killing a process that escaped its worker") &&
					r.count(func(p nsProc) bool { return strings.Contains(p.cmdline, "setpgid") }) == 0
			}, r.describe)

			// The operator's processes: three jobs left behind by a
			// shell that nsenter started in the namespace, which
			// finish their work when the gate opens, and one that runs
			// on until the end.
			// (Their output goes elsewhere than nsenter's pipes, which
			// would keep nsenter's Wait waiting for them.)
			nsScript := fmt.Sprintf(`exec > /dev/null 2>&1
for i in 1 2 3; do (cat %s > /dev/null; echo done > %s/job.$i) & done
(sleep 999 &)`, ng.path, dir)
			ns := exec.Command("nsenter", "-t", strconv.Itoa(r.init), "-p", "--", "sh", "-c", nsScript)
			testutil.StartProcess(t, ns).WaitOK(t, cliWait)
			poll(t, "the operator's orphans, adopted by PID 1", func() bool {
				jobs := r.count(func(p nsProc) bool {
					return p.PPID == r.init && strings.Contains(p.cmdline, "job.$i") && slices.ContainsFunc(r.procs(), func(c nsProc) bool {
						return c.PPID == p.PID && holds(c.PID, ng.path)
					})
				})
				return jobs == 3 && r.count(func(p nsProc) bool { return p.PPID == r.init && p.cmdline == "sleep 999" }) == 1
			}, r.describe)

			wg.open()
			ng.open()
			poll(t, "every released orphan to exit and be reaped, and the operator's jobs to finish", func() bool {
				for i := 1; i <= 3; i++ {
					if b, _ := os.ReadFile(fmt.Sprintf("%s/job.%d", dir, i)); string(b) != "done\n" {
						return false
					}
				}
				return r.count(func(p nsProc) bool {
					return p.State == "Z" || isCat(wg)(p) || isCat(ng)(p) || strings.Contains(p.cmdline, "job.$i")
				}) == 0
			}, r.describe)
			if n := r.count(func(p nsProc) bool { return p.cmdline == "sleep 999" }); n != 1 {
				t.Errorf("the operator's long job was killed (%d left)\n%s", n, r.describe())
			}

			left := r.procs()
			syscall.Kill(r.init, syscall.SIGTERM)
			r.Wait(t, cliWait)
			if r.ExitCode() != exitOK {
				t.Errorf("PID 1 exited %d after SIGTERM, want 0\n%s", r.ExitCode(), r.describe())
			}
			for _, p := range append(left, nsProc{Proc: testutil.Proc{PID: r.init}}) {
				if !processGone(p.PID) {
					t.Errorf("process %d %q outlived PID 1", p.PID, p.cmdline)
				}
			}
		})
	}
}

// TestPID1Signals: as PID 1, SIGUSR1 and SIGUSR2 from outside reach
// every worker and stop nothing, SIGHUP replaces the workers one by
// one, and SIGINT stops everything with exit 0.
func TestPID1Signals(t *testing.T) {
	t.Parallel()
	requireNamespaces(t)
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	script := fmt.Sprintf(`trap 'echo usr1 >> %[1]s/sig.%%i' USR1
trap 'echo usr2 >> %[1]s/sig.%%i' USR2
while :; do sleep 1 & wait $!; done`, dir)
	r := startPID1(t, true, "run", "--workers", "2", "--socket", sock, "--ready", "started", "--start-secs", "200ms",
		"--", "sh", "-c", script)
	r.waitSocket(t, sock)
	before := readyWorkers(t, sock, 2)

	for _, sig := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2} {
		word := map[syscall.Signal]string{syscall.SIGUSR1: "usr1", syscall.SIGUSR2: "usr2"}[sig]
		syscall.Kill(r.init, sig)
		poll(t, "both workers to get "+word, func() bool {
			for i := 1; i <= 2; i++ {
				if b, _ := os.ReadFile(fmt.Sprintf("%s/sig.%d", dir, i)); !strings.Contains(string(b), word) {
					return false
				}
			}
			return true
		}, r.describe)
	}
	if now := readyWorkers(t, sock, 2); !slices.Equal(now, before) {
		t.Errorf("workers %v became %v after SIGUSR1/2: forwarding must not restart them", before, now)
	}

	syscall.Kill(r.init, syscall.SIGHUP)
	poll(t, "SIGHUP's rolling restart to replace both workers", func() bool {
		now := readyWorkers(t, sock, 2)
		return !slices.Contains(now, before[0]) && !slices.Contains(now, before[1])
	}, r.describe)

	left := r.procs()
	syscall.Kill(r.init, syscall.SIGINT)
	r.Wait(t, cliWait)
	if r.ExitCode() != exitOK {
		t.Errorf("PID 1 exited %d after SIGINT, want 0\n%s", r.ExitCode(), r.Output())
	}
	for _, p := range left {
		if !processGone(p.PID) {
			t.Errorf("process %d %q outlived PID 1", p.PID, p.cmdline)
		}
	}
}

// TestPID1Failure: as PID 1, a crash loop ends the run with exit 1.
func TestPID1Failure(t *testing.T) {
	t.Parallel()
	requireNamespaces(t)
	// Not startPID1: the crash loop may end the namespace before a poll
	// could see its PID 1.
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "setsid", testutil.Executable(),
		"run", "--workers", "1", "--ready", "started", "--max-restarts", "2",
		"--backoff-min", "10ms", "--backoff-max", "20ms", "--", "false")
	cmd.Env = append(os.Environ(), harness.Use(t, "cli"))
	r := testutil.StartProcess(t, cmd)
	r.Wait(t, cliWait)
	if r.ExitCode() != exitFail || !strings.Contains(r.Stderr.String(), "restart") {
		t.Errorf("PID 1 exited %d, want 1 for a crash loop\n%s", r.ExitCode(), r.Output())
	}
}

// TestPID1ForeignProc: as PID 1 with the host's /proc (no
// --mount-proc), where /proc names other processes by our pids, the
// supervisor does not sweep orphans (it would signal the wrong
// processes) and says why; it still runs and stops cleanly.
func TestPID1ForeignProc(t *testing.T) {
	t.Parallel()
	requireNamespaces(t)
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", testutil.Executable(),
		"run", "--workers", "1", "--duration", "1s", "--log-level", "warn")
	cmd.Env = append(os.Environ(), harness.Use(t, "cli"))
	p := testutil.StartProcess(t, cmd)
	p.Wait(t, cliWait)
	if p.ExitCode() != exitOK {
		t.Errorf("exit %d, want 0\n%s", p.ExitCode(), p.Output())
	}
	if !strings.Contains(p.Stderr.String(), "/proc belongs to another pid namespace") {
		t.Errorf("no warning about the foreign /proc\n%s", p.Output())
	}
}

// TestPID1Serve: `serve` as PID 1 reaps the orphans of its namespace
// (here: an operator's background jobs, whose shell has exited) when
// they exit, leaves them running until then, and stops on SIGTERM with
// exit 0. Without the reaper the jobs would stay zombies.
func TestPID1Serve(t *testing.T) {
	t.Parallel()
	requireNamespaces(t)
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	g := newGate(t, filepath.Join(dir, "gate"))
	r := startPID1(t, true, "serve", "--socket", sock)
	r.waitSocket(t, sock)

	script := fmt.Sprintf("exec > /dev/null 2>&1\nfor i in 1 2 3; do (cat %s > /dev/null &); done", g.path)
	ns := exec.Command("nsenter", "-t", strconv.Itoa(r.init), "-p", "--", "sh", "-c", script)
	testutil.StartProcess(t, ns).WaitOK(t, cliWait)
	isJob := func(p nsProc) bool { return strings.Contains(p.cmdline, "cat "+g.path) }
	poll(t, "three orphaned jobs adopted by PID 1, running", func() bool {
		return r.count(func(p nsProc) bool { return isJob(p) && p.PPID == r.init && holds(p.PID, g.path) }) == 3
	}, r.describe)
	g.open()
	poll(t, "the jobs to exit and be reaped (no zombie left)", func() bool {
		return r.count(func(p nsProc) bool { return p.State == "Z" || isJob(p) }) == 0
	}, r.describe)

	syscall.Kill(r.init, syscall.SIGTERM)
	r.Wait(t, cliWait)
	if r.ExitCode() != exitOK {
		t.Errorf("serve as PID 1 exited %d after SIGTERM, want 0\n%s", r.ExitCode(), r.describe())
	}
}
