//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// `run --socket` handing framed clients to its workers (handoff.go,
// internal/frontdoor/handoff.go, docs/PROTOCOL.md "Handing clients to
// workers"), with real processes: the CLI, its workers, Go clients.

// connStats returns the front door's connection counters from status:
// hand-overs that ended, and clients with workers now.
// statusHandsBack asks for the status on c, a client that a worker of
// the `run` with pid serves, and checks that the supervisor answered it
// (its document) and that the client is back with the front door: one
// hand-over ended, none going on.
func statusHandsBack(t *testing.T, c *ipc.Conn, pid int, sock string) {
	t.Helper()
	st, err := c.Call(context.Background(), wire.TypeStatus, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc statusDoc
	if err := json.Unmarshal(st, &doc); err != nil || doc.Mode != "run" || doc.PID != pid {
		t.Fatalf("status from a handed-over client: %v %+v", err, doc)
	}
	if n, with := connStats(t, sock); n != 1 || with != 0 {
		t.Fatalf("after the status: handed_off %d, with_workers %d; want 1 and 0", n, with)
	}
}

func connStats(tb testing.TB, sock string) (handedOff, withWorkers int64) {
	tb.Helper()
	_, doc := statusJSON(tb, sock)
	return doc.Connections.HandedOff, doc.Connections.WithWorkers
}

func dialSock(tb testing.TB, sock string) *ipc.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), cliPoll)
	defer cancel()
	c, err := ipc.Dial(ctx, sock, ipc.ConnConfig{Name: "test"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestRunHandoff: a client that pings stays with the supervisor; its
// first echo hands it to a worker, which serves its echoes and messages
// from then on; a status or reload request on the same connection hands
// it back, and the supervisor answers it; the next echo hands it over
// again. The client sees one connection throughout.
func TestRunHandoff(t *testing.T) {
	t.Parallel()
	run, sock, _ := startRun(t, 2, "--ping-misses", "20")
	c := dialSock(t, sock)
	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	for range 3 {
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := connStats(t, sock); n != 0 {
		t.Fatalf("%d clients handed over before any echo", n)
	}
	echo := func(what string, size int) {
		t.Helper()
		p := randomBytes(size)
		got, err := c.Echo(ctx, p, nil)
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("%s: echo of %d bytes: %d back, %v", what, size, len(got), err)
		}
	}
	echo("first", 100)
	var n, with int64
	poll(t, "the client to be with a worker", func() bool {
		n, with = connStats(t, sock)
		return n == 0 && with == 1 // handed_off counts hand-overs that ended
	}, func() string { return fmt.Sprintf("handed_off %d, with_workers %d\n%s", n, with, run.Output()) })
	for _, size := range []int{0, 1, 64 << 10, 1 << 20} {
		echo("with the worker", size)
	}
	if got, err := c.Call(ctx, wire.TypeMessage, []byte("msg"), nil); err != nil || string(got) != "msg" {
		t.Fatalf("message served by the worker: %q, %v", got, err)
	}

	// Status on the same connection: handed back, answered by the
	// supervisor (its document, with this very client among the
	// connections).
	statusHandsBack(t, c, run.PID(), sock)
	echo("handed over again", 4096)
	if n, with = connStats(t, sock); n != 1 || with != 1 {
		t.Fatalf("after the next echo: handed_off %d, with_workers %d; want 1 and 1", n, with)
	}

	// Reload on the same connection: the supervisor answers, after a
	// rolling restart of the very workers the client was with.
	if got, err := c.Call(ctx, wire.TypeReload, nil, nil); err != nil || !strings.Contains(string(got), "rolling restart done") {
		t.Fatalf("reload from a handed-over client: %q, %v", got, err)
	}
	echo("after the reload", 4096)
	if got, err := c.Call(ctx, wire.TypeShutdown, nil, nil); !isCode(err, wire.CodeUnsupported) {
		t.Errorf("shutdown from a handed-over client: %q, %v; want code 2, as the supervisor answers", got, err)
	}
	c.Close()
	run.stopOK(t, syscall.SIGTERM, sock)
}

func isCode(err error, code wire.Code) bool {
	var re *wire.RemoteError
	return errors.As(err, &re) && re.Code == code
}

// TestRunHandoffRollingRestart: clients keep echoing (random sizes up to
// 64 KiB, every reply checked) through three rolling restarts, with
// clients handed over (the default); the workers being stopped hand
// their clients back, which go to other workers. Every failed request
// is counted (a client whose connection ends dials again and goes on),
// and the count must be 0, with no echo corrupted, and the clients did
// move.
func TestRunHandoffRollingRestart(t *testing.T) {
	t.Parallel()
	run, sock, _ := startRun(t, 3, "--ping-misses", "20")
	const clients = 12
	var (
		stop                  atomic.Bool
		wg                    sync.WaitGroup
		done, failed, corrupt atomic.Int64
		firstErr              atomic.Value
	)
	ctx, cancel := context.WithTimeout(t.Context(), 4*cliPoll)
	defer cancel()
	for i := range clients {
		c := dialSock(t, sock)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for !stop.Load() {
				p := make([]byte, rng.IntN(64<<10))
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				got, err := c.Echo(ctx, p, nil)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("client %d: %w", i, err))
					if ctx.Err() != nil {
						return
					}
					c.Close()
					if c, err = ipc.Dial(ctx, sock, ipc.ConnConfig{Name: "test"}); err != nil {
						return
					}
					defer c.Close()
					continue
				}
				if !bytes.Equal(got, p) {
					corrupt.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	progress := func(what string) {
		t.Helper()
		n := done.Load()
		poll(t, what, func() bool { return done.Load() >= n+clients*5 }, run.Output)
	}
	progress("echoes before the reloads")
	for i := range 3 {
		r := cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
		if !strings.Contains(r.stdout, "rolling restart done") {
			t.Fatalf("reload %d:\n%s", i, r)
		}
		progress(fmt.Sprintf("echoes after reload %d", i+1))
	}
	stop.Store(true)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d requests failed through 3 rolling restarts; first: %v\n%s", n, firstErr.Load(), run.Output())
	}
	if corrupt.Load() != 0 {
		t.Errorf("%d echoes came back different", corrupt.Load())
	}
	if n, _ := connStats(t, sock); n <= clients {
		t.Errorf("%d hand-overs for %d clients over three rolling restarts: they did not move", n, clients)
	}
	t.Logf("%d echoes, %d failed, through 3 rolling restarts", done.Load(), failed.Load())
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunHandoffWorkerKilled: a client whose worker dies is lost (the
// connection's state died with the worker), and sees its connection
// end at once rather than hang; a new connection is served.
func TestRunHandoffWorkerKilled(t *testing.T) {
	t.Parallel()
	run, sock, pids := startRun(t, 1, "--ping-misses", "20", "--log-level", "debug")
	c := dialSock(t, sock)
	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	if _, err := c.Echo(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("%v\n%s", err, run.Output())
	}
	poll(t, "the client to be with the worker", func() bool {
		_, with := connStats(t, sock)
		return with == 1
	}, run.Output)
	run.replaceWorker(t, sock, 1, pids[0]) // SIGKILL, and wait for the replacement
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the client's connection did not end after its worker was killed")
	}
	c2 := dialSock(t, sock)
	if got, err := c2.Echo(ctx, []byte("again"), nil); err != nil || string(got) != "again" {
		t.Fatalf("echo on a new connection: %q, %v", got, err)
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunHandoffOff: with --handoff=false every client stays with the
// supervisor, which forwards echoes to the workers.
func TestRunHandoffOff(t *testing.T) {
	t.Parallel()
	run, sock, _ := startRun(t, 2, "--handoff=false")
	c := dialSock(t, sock)
	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	for range 5 {
		if got, err := c.Echo(ctx, []byte("e"), nil); err != nil || string(got) != "e" {
			t.Fatalf("echo: %q, %v", got, err)
		}
	}
	if n, with := connStats(t, sock); n != 0 || with != 0 {
		t.Errorf("handed_off %d, with_workers %d without --handoff", n, with)
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunHandoffVersion2Workers: workers that speak protocol version 2
// at most (here the Python library told so) are never handed a client:
// the supervisor forwards the clients' echoes to them as before. (Python
// workers at version 3 are handed clients: TestPythonWorkerHandoff.)
func TestRunHandoffVersion2Workers(t *testing.T) {
	t.Parallel()
	py := testutil.RequireTool(t, "python3")
	dir, _ := pyWorkerCopy(t)
	script := filepath.Join(dir, "v2_worker.py")
	if err := os.WriteFile(script, []byte("import pairvisor\npairvisor.serve(None, max_version=2)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run, sock, _ := startRun(t, 2, "--", py, script) // handing over is the default
	c := dialSock(t, sock)
	ctx, cancel := context.WithTimeout(t.Context(), cliPoll)
	defer cancel()
	for _, n := range []int{1, 64 << 10} {
		p := randomBytes(n)
		if got, err := c.Echo(ctx, p, nil); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("echo of %d bytes: %d back, %v", n, len(got), err)
		}
	}
	if n, with := connStats(t, sock); n != 0 || with != 0 {
		t.Errorf("handed_off %d, with_workers %d with version-2 workers", n, with)
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

// TestRunHandoffControl: a handed-over client that may not send control
// requests gets code 9 for a message from the worker, as from the
// supervisor; its echoes are served.
func TestRunHandoffControl(t *testing.T) {
	t.Parallel()
	messageRole := harness.Use(t, "message") // before a skip: the role is this test's
	dir, exe := otherUser(t)
	sock := dir + "/s"
	run := cliStart(t, "run", "--workers", "1", "--socket", sock, "--mode", "0666")
	run.waitSocket(t, sock)
	readyWorkers(t, sock, 1)
	r := cliRun(t, cliOpts{exe: exe, cred: nobody}, "echo", "--socket", sock, "hello")
	if r.code != exitOK || r.stdout != "hello\n" {
		t.Fatalf("nobody's echo:\n%s", r)
	}
	poll(t, "nobody's echo client handed over and done", func() bool {
		n, with := connStats(t, sock)
		return n == 1 && with == 0
	}, run.Output)
	// A message: the CLI has no command for one; the test binary's
	// "message" role sends it.
	r = cliRun(t, cliOpts{exe: exe, cred: nobody, env: []string{messageRole}}, sock)
	if r.code != exitOK || !strings.Contains(r.stdout, "code 9") {
		t.Fatalf("nobody's message after an echo:\n%s", r)
	}
	run.stopOK(t, syscall.SIGTERM, sock)
}

func init() {
	// message SOCKET: an echo (which hands the client to a worker),
	// then a message; prints the message's result.
	harness.Register("message", func(args ...string) int {
		ctx, cancel := context.WithTimeout(context.Background(), cliPoll)
		defer cancel()
		c, err := ipc.Dial(ctx, args[0], ipc.ConnConfig{Name: "message"})
		if err != nil {
			fmt.Println("dial:", err)
			return exitFail
		}
		defer c.Close()
		if _, err := c.Echo(ctx, []byte("first"), nil); err != nil {
			fmt.Println("echo:", err)
			return exitFail
		}
		_, err = c.Call(ctx, wire.TypeMessage, []byte("m"), nil)
		var re *wire.RemoteError
		if errors.As(err, &re) {
			fmt.Printf("code %d: %s\n", re.Code, re.Message)
			return exitOK
		}
		fmt.Println("message:", err)
		return exitFail
	})
}
