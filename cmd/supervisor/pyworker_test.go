//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Tests of the Python worker library, workers/python: its own unittest
// suite, Python workers supervised by the real CLI, and the Python
// client against the CLI's socket.

// pythonTestWait bounds the wait for each line of the Python suite's
// verbose report, a test's at least: every wait in the suite is bounded
// by 20 s (WAIT in test_pairvisor.py), a test has a few. The suite is
// waited for one test at a time, for as long as tests keep passing,
// not for its whole run (which depends on how many tests there are).
const pythonTestWait = 2 * time.Minute

// pythonDir returns the absolute path of workers/python.
func pythonDir(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "workers", "python"))
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// pythonEnv is the environment for the python3 processes a test starts
// itself: no pairvisor contract, no bytecode written into the tree.
func pythonEnv() []string {
	env := []string{"PYTHONDONTWRITEBYTECODE=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAIRVISOR_") || strings.HasPrefix(kv, "PAIRVISOR_REQUIRE_TOOLS=") {
			env = append(env, kv)
		}
	}
	return env
}

func TestPythonUnittest(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	// unittest reports on stderr, a line a test with -v; the report
	// goes to stdout, where the test reads it line by line.
	sh := testutil.RequireTool(t, "sh")
	cmd := exec.Command(sh, "-c", `exec "$0" -u -m unittest -v 2>&1`, py)
	cmd.Dir = pythonDir(t)
	cmd.Env = pythonEnv()
	p := testutil.StartProcess(t, cmd)
	for ran := false; ; {
		line := p.Line(t, pythonTestWait)
		if strings.HasPrefix(line, "Ran ") {
			ran = true
		} else if ran && (line == "OK" || strings.HasPrefix(line, "OK (") || strings.HasPrefix(line, "FAILED")) {
			break
		}
	}
	if err := p.Wait(t, cliWait); err != nil {
		t.Fatalf("python3 -m unittest: %v\n%s", err, p.Output())
	}
	// "Ran N tests" and "OK" (maybe with skips), never a run of nothing.
	out := p.Stdout.String()
	m := regexp.MustCompile(`(?m)^Ran (\d+) tests? in `).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || !regexp.MustCompile(`(?m)^OK( \(skipped=\d+\))?$`).MatchString(out) {
		t.Fatalf("python3 -m unittest did not report a passing run:\n%s", p.Output())
	}
	t.Logf("python suite: %s tests", m[1])
}

// pyWorkerCopy copies the library and the example worker into a fresh
// directory, so that this test's worker processes can be told from
// every other's by their command line.
func pyWorkerCopy(tb testing.TB) (dir, script string) {
	tb.Helper()
	src := pythonDir(tb)
	dir = testutil.ShortDir(tb, "pvpy")
	for _, f := range []string{"pairvisor.py", "example_worker.py"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir, filepath.Join(dir, "example_worker.py")
}

// processesRunning returns the pids of the live processes (zombies
// excluded) whose command line contains s.
func processesRunning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		if p, ok := testutil.ReadProc(pid); ok && p.State != "Z" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cmdlineHas reports whether process pid's command line contains s.
func cmdlineHas(pid int, s string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && bytes.Contains(b, []byte(s))
}

// checkPyClient runs pyClientScript against the `run` with pid at sock
// and checks everything it saw.
func checkPyClient(t *testing.T, py, libDir, sock string, pid int) {
	t.Helper()
	out := runPyClient(t, py, libDir, sock, pyClientScript)
	want := map[string]any{
		"peer": "supervisor", "version": 2.0, "rtt_ok": true, "mode": "run", "status_pid": float64(pid),
		"echo":    map[string]any{"0": true, "1": true, "65536": true, "1048576": true},
		"message": "FROM PYTHON", "closed": true,
	}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Errorf("python client saw %v, want %v", out, want)
	}
}

// runPyClient runs script (Python, with workers/python on its path and
// the socket as argv[1]) and returns the JSON object it prints.
func runPyClient(t *testing.T, py, libDir, sock, script string) map[string]any {
	t.Helper()
	prelude := "import sys, json\nsys.path.insert(0, " + strconv.Quote(libDir) + ")\nimport pairvisor as pv\n"
	cmd := exec.Command(py, "-c", prelude+script, sock)
	cmd.Env = pythonEnv()
	p := testutil.StartProcess(t, cmd)
	if err := p.Wait(t, cliWait); err != nil {
		t.Fatalf("python client: %v\n%s", err, p.Output())
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(p.Stdout.String()), &out); err != nil {
		t.Fatalf("python client printed no JSON object: %v\n%s", err, p.Output())
	}
	return out
}

// pyClientScript exercises pairvisor.Client against argv[1] and prints
// what it saw as one JSON object.
const pyClientScript = `
import hashlib, os
c = pv.Client(sys.argv[1], timeout=20)
out = {"peer": c.peer.name, "version": c.version}
out["rtt_ok"] = c.ping() >= 0 and c.ping(b"\x00" * 64) >= 0
sizes = {}
for n in (0, 1, 64 << 10, 1 << 20):
    p = os.urandom(n)
    sizes[str(n)] = c.echo(p) == p
out["echo"] = sizes
st = c.status()
out["mode"] = st["mode"]
out["status_pid"] = st["pid"]
try:
    out["message"] = c.message(b"upper from python").decode()
except pv.RemoteError as e:
    out["message_error"] = [e.code, e.message]
c.close()
try:
    c.ping()
except pv.ConnectionClosed:
    out["closed"] = True
print(json.dumps(out))
`

func TestPythonWorkerRun(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	dir, script := pyWorkerCopy(t)
	// The supervisor forwards: messages are spread over the workers and
	// it cancels its calls to them. (A client handed over to one worker,
	// the default, is TestPythonWorkerHandoff's.)
	run, sock, pids := startRun(t, 2, "--handoff=false", "--ping-interval", "100ms", "--log-json", "--", py, script)
	seen := slices.Clone(pids) // every worker pid of the run, for the final check
	for _, pid := range pids {
		if !cmdlineHas(pid, script) {
			t.Fatalf("worker %d is not the Python example worker", pid)
		}
	}

	// The Python workers answer the supervisor's health pings.
	poll(t, "a health ping answered by each Python worker", func() bool {
		_, doc := statusJSON(t, sock)
		for _, w := range doc.Workers {
			if w.LastPingRTTUS <= 0 {
				return false
			}
		}
		return len(doc.Workers) == 2
	}, run.Output)

	// Their hclog JSON lines are relayed with their level and fields.
	ready := regexp.MustCompile(`"@level":"info","@message":"example worker ready","@module":"supervisor\.worker\.[12]"`)
	poll(t, "both workers' ready lines in the run's log", func() bool {
		return len(ready.FindAllString(run.Stderr.String(), -1)) == 2 && strings.Contains(run.Stderr.String(), `"w.worker":"2"`)
	}, run.Output)

	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	c, err := ipc.Dial(ctx, sock, ipc.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	t.Run("ping", func(t *testing.T) {
		// The supervisor answers pings on its socket itself.
		for _, n := range []int{0, 1, wire.MaxPingPayload} {
			p := randomBytes(n)
			got, err := c.Call(ctx, wire.TypePing, p, nil)
			if err != nil || !bytes.Equal(got, p) {
				t.Errorf("ping of %d bytes: %d bytes back, %v", n, len(got), err)
			}
		}
	})
	t.Run("echo", func(t *testing.T) {
		// Echoes go to the Python workers and back, byte for byte.
		for _, n := range []int{0, 1, 64 << 10, 1 << 20} {
			p := randomBytes(n)
			got, err := c.Echo(ctx, p, nil)
			if err != nil || !bytes.Equal(got, p) {
				t.Errorf("echo of %d bytes: %d bytes back, %v", n, len(got), err)
			}
		}
	})
	t.Run("message", func(t *testing.T) {
		sum := sha256.Sum256([]byte("hello"))
		if got, err := c.Call(ctx, wire.TypeMessage, []byte("sha256 hello"), nil); err != nil || string(got) != hex.EncodeToString(sum[:]) {
			t.Errorf("sha256 message: %q, %v", got, err)
		}
		if got, err := c.Call(ctx, wire.TypeMessage, []byte("upper abc"), nil); err != nil || string(got) != "ABC" {
			t.Errorf("upper message: %q, %v", got, err)
		}
		var re *wire.RemoteError
		if _, err := c.Call(ctx, wire.TypeMessage, []byte("frobnicate"), nil); !errors.As(err, &re) || re.Code != wire.CodeBadRequest || !strings.Contains(re.Message, "unknown command 'frobnicate'") {
			t.Errorf("unknown command: %v, want a bad-request error from the handler", err)
		}
		// Both workers answer: messages are spread over them.
		answered := map[int]bool{}
		for range 20 {
			got, err := c.Call(ctx, wire.TypeMessage, []byte("pid"), nil)
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(string(got))
			answered[pid] = true
		}
		if len(answered) != 2 || !answered[pids[0]] || !answered[pids[1]] {
			t.Errorf("messages answered by %v, want both workers %v", answered, pids)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		// A caller that gives up on a message: the supervisor cancels its
		// call to the Python worker (version 2), whose handler is told.
		cctx, ccancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Call(cctx, wire.TypeMessage, []byte("sleep 60"), nil)
			done <- err
		}()
		poll(t, "the worker's handler running the sleep", func() bool {
			return strings.Contains(run.Stderr.String(), `"@message":"sleeping"`)
		}, run.Output)
		ccancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled call: %v", err)
		}
		poll(t, "the worker's handler told of the cancel", func() bool {
			return strings.Contains(run.Stderr.String(), `"@message":"request cancelled"`)
		}, run.Output)
		// The connection to the worker goes on.
		if got, err := c.Call(ctx, wire.TypeMessage, []byte("upper after"), nil); err != nil || string(got) != "AFTER" {
			t.Errorf("message after the cancel: %q, %v", got, err)
		}
	})
	t.Run("concurrent-echoes", func(t *testing.T) {
		const conns, perConn = 4, 50
		var wg sync.WaitGroup
		errs := make(chan error, conns*perConn)
		for range conns {
			cc, err := ipc.Dial(ctx, sock, ipc.ConnConfig{})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			for i := range perConn {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := randomBytes((i * 1311) % (64 << 10))
					got, err := cc.Echo(ctx, p, nil)
					switch {
					case err != nil:
						errs <- err
					case !bytes.Equal(got, p):
						errs <- fmt.Errorf("echo of %d bytes came back as %d different bytes", len(p), len(got))
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("python-client", func(t *testing.T) {
		checkPyClient(t, py, dir, sock, run.PID())
	})
	t.Run("sigkill-restart", func(t *testing.T) {
		run.replaceWorker(t, sock, 2, pids[0])
		now := readyWorkers(t, sock, 2)
		for _, pid := range now {
			if !slices.Contains(seen, pid) {
				seen = append(seen, pid)
				if !cmdlineHas(pid, script) {
					t.Errorf("replacement %d is not the Python example worker", pid)
				}
			}
		}
		if got, err := c.Echo(ctx, []byte("after the restart"), nil); err != nil || string(got) != "after the restart" {
			t.Errorf("echo after the restart: %q, %v", got, err)
		}
	})
	c.Close()

	run.stopOK(t, syscall.SIGTERM, sock)
	// Each worker was asked to shut down and exited 0 by itself, rather
	// than by the stop signal.
	stopped := regexp.MustCompile(`"@message":"stopped".*"reason":"exited with status 0"`)
	if n := len(stopped.FindAllString(run.Stderr.String(), -1)); n != 2 {
		t.Errorf("%d workers stopped with status 0, want 2\n%s", n, run.Output())
	}
	for _, pid := range seen {
		if !processGone(pid) {
			t.Errorf("worker %d still exists after the run", pid)
		}
	}
	if left := processesRunning(dir); len(left) > 0 {
		t.Errorf("python processes of this run left: %v", left)
	}
}

func TestPythonClientServe(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	sock := filepath.Join(tempDir(t), "s")
	srv := cliStart(t, "serve", "--socket", sock)
	srv.waitSocket(t, sock)
	out := runPyClient(t, py, pythonDir(t), sock, pyClientScript)
	want := map[string]any{
		"peer": "supervisor-serve", "version": 2.0, "rtt_ok": true, "mode": "serve", "status_pid": float64(srv.PID()),
		"echo":          map[string]any{"0": true, "1": true, "65536": true, "1048576": true},
		"message_error": []any{float64(wire.CodeUnsupported), "message is not served by 'supervisor serve'"}, "closed": true,
	}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Errorf("python client saw %v, want %v", out, want)
	}
	srv.stopOK(t, syscall.SIGTERM, sock)
}

// TestPythonWorkerHandoff: with --handoff the supervisor hands framed
// clients to the Python workers (protocol version 3: the descriptor of
// the client's connection comes with a CLIENT request), which serve
// their echoes and messages themselves. A status request on the
// connection brings the client back to the supervisor, the next echo
// hands it over again, and a rolling restart moves a client that is
// echoing all the while to the new workers without losing a request.
func TestPythonWorkerHandoff(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	dir, script := pyWorkerCopy(t)
	run, sock, pids := startRun(t, 2, "--handoff", "--log-json", "--log-level", "debug", "--", py, script)
	// The Python workers offer and speak version 3.
	v3 := regexp.MustCompile(`"@message":"ready".*"w.version":3`)
	poll(t, "both workers at protocol version 3", func() bool {
		return len(v3.FindAllString(run.Stderr.String(), -1)) == 2
	}, run.Output)

	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	// Each client pings before its first echo: an echo right behind the
	// hello can catch the front door's Conn detaching during its hello
	// exchange (internal/frontdoor serveFramed: "framed client failed its
	// hello ... detached"), which leaves the client hanging; that is the
	// supervisor's, and not what this test is about.
	pingFirst := func(c *ipc.Conn) {
		t.Helper()
		if _, err := c.Ping(ctx); err != nil {
			t.Fatalf("ping: %v\n%s", err, run.Output())
		}
	}
	c := dialSock(t, sock)
	pingFirst(c)
	echo := func(c *ipc.Conn, what string, size int) error {
		p := randomBytes(size)
		got, err := c.Echo(ctx, p, nil)
		switch {
		case err != nil:
			return fmt.Errorf("%s: echo of %d bytes: %w", what, size, err)
		case !bytes.Equal(got, p):
			return fmt.Errorf("%s: echo of %d bytes: %d different bytes back", what, size, len(got))
		}
		return nil
	}
	if err := echo(c, "first", 100); err != nil {
		t.Fatalf("%v\n%s", err, run.Output())
	}
	var n, with int64
	poll(t, "the client with a Python worker", func() bool {
		n, with = connStats(t, sock)
		return n == 0 && with == 1
	}, func() string { return fmt.Sprintf("handed_off %d, with_workers %d\n%s", n, with, run.Output()) })
	// The worker, not the supervisor, serves this very client (its pid
	// is the test's): it says so in its log.
	served := regexp.MustCompile(`"@message":"pairvisor: serving a handed-over client".*"w.client_pid":` + strconv.Itoa(os.Getpid()) + `\b`)
	poll(t, "a Python worker's line about serving this client", func() bool {
		return served.MatchString(run.Stderr.String())
	}, run.Output)

	t.Run("echo", func(t *testing.T) {
		for _, size := range []int{0, 1, 64 << 10, 1 << 20, 4 << 20} {
			if err := echo(c, "with the worker", size); err != nil {
				t.Error(err)
			}
		}
		// Many in flight at once on the one connection, matched by id.
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 64 {
			wg.Go(func() {
				if err := echo(c, "concurrent", (i*7919)%(128<<10)); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("message", func(t *testing.T) {
		sum := sha256.Sum256([]byte("hello"))
		if got, err := c.Call(ctx, wire.TypeMessage, []byte("sha256 hello"), nil); err != nil || string(got) != hex.EncodeToString(sum[:]) {
			t.Errorf("sha256 message: %q, %v", got, err)
		}
		got, err := c.Call(ctx, wire.TypeMessage, []byte("pid"), nil)
		if pid, _ := strconv.Atoi(string(got)); err != nil || !slices.Contains(pids, pid) {
			t.Errorf("pid message: %q, %v; want one of the workers %v", got, err, pids)
		}
		var re *wire.RemoteError
		if _, err := c.Call(ctx, wire.TypeMessage, []byte("frobnicate"), nil); !errors.As(err, &re) || re.Code != wire.CodeBadRequest {
			t.Errorf("unknown command: %v, want the handler's bad-request error", err)
		}
	})
	t.Run("status-hands-back", func(t *testing.T) {
		statusHandsBack(t, c, run.PID(), sock)
		if err := echo(c, "handed over again", 4096); err != nil {
			t.Fatal(err)
		}
		if n, with = connStats(t, sock); n != 1 || with != 1 {
			t.Fatalf("after the next echo: handed_off %d, with_workers %d; want 1 and 1", n, with)
		}
	})
	t.Run("python-client", func(t *testing.T) {
		// The Python client, served by a Python worker: its echo hands it
		// over, its status brings it back, its message hands it over again.
		checkPyClient(t, py, dir, sock, run.PID())
	})
	t.Run("rolling-restart", func(t *testing.T) {
		// c2 echoes without pause while c asks for a reload: the stopping
		// workers hand c2 back before they answer their shutdown, and the
		// supervisor hands it to a new worker; no echo fails.
		c2 := dialSock(t, sock)
		pingFirst(c2)
		if err := echo(c2, "first", 10); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan error, 1)
		var echoes int
		go func() {
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				if err := echo(c2, "during the restart", 1000+echoes%5000); err != nil {
					done <- err
					return
				}
				echoes++
			}
		}()
		if got, err := c.Call(ctx, wire.TypeReload, nil, nil); err != nil || !strings.Contains(string(got), "rolling restart done") {
			t.Errorf("reload: %q, %v", got, err)
		}
		close(stop)
		if err := <-done; err != nil {
			t.Fatalf("after %d echoes: %v", echoes, err)
		}
		now := readyWorkers(t, sock, 2)
		got, err := c2.Call(ctx, wire.TypeMessage, []byte("pid"), nil)
		if pid, _ := strconv.Atoi(string(got)); err != nil || !slices.Contains(now, pid) || slices.Contains(pids, pid) {
			t.Errorf("pid after the restart: %q, %v; want a new worker %v (old %v)", got, err, now, pids)
		}
		if _, with := connStats(t, sock); with < 1 {
			t.Errorf("after the restart: with_workers %d, want c2 with a worker", with)
		}
		t.Logf("%d echoes during the rolling restart", echoes)
	})
	c.Close()
	run.stopOK(t, syscall.SIGTERM, sock)
	// Every Python worker, the restarted ones too, was asked to shut down
	// and exited 0 by itself.
	stopped := regexp.MustCompile(`"@message":"stopped".*"reason":"exited with status 0"`)
	if n := len(stopped.FindAllString(run.Stderr.String(), -1)); n != 4 {
		t.Errorf("%d workers stopped with status 0, want 4\n%s", n, run.Output())
	}
	if left := processesRunning(dir); len(left) > 0 {
		t.Errorf("python processes of this run left: %v", left)
	}
}
