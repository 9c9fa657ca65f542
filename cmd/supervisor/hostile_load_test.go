//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Heavy load through `run --socket`: 300 clients echoing 1 MiB each
// while one more client sends 1 MiB echoes and never reads its
// replies. Every echo comes back byte for byte, no worker is taken for
// hung (tight health settings and --max-restarts 1, so one false
// verdict would end the run), the greedy client is cut off, and the
// supervisor's memory stays bounded.
//
// Twice, with the same tight health settings: with the supervisor
// forwarding every echo (--handoff=false), and with the clients handed
// to the workers (the default), which then do the work out of the
// supervisor's sight. Under go test -race -count=3 on two busy cores
// (load 12 to 30) both variants used to cut off 140 to 190 of the 300
// clients ("peer stalled": a 1 MiB reply had to be written within the
// WriteTimeout of 10 s however fast the client read, and the test's
// clients, starved of CPU, read slowly); a Conn now ends a client only
// when it takes no byte for WriteTimeout (ipc, write.go).
func TestRunHeavyLoad(t *testing.T) {
	t.Parallel()
	health := []string{"--ping-timeout", "500ms", "--ping-misses", "3"}
	t.Run("forwarded", func(t *testing.T) {
		t.Parallel()
		heavyLoad(t, append([]string{"--handoff=false"}, health...)...)
	})
	t.Run("handed-over", func(t *testing.T) {
		t.Parallel()
		heavyLoad(t, health...)
	})
}

func heavyLoad(t *testing.T, args ...string) {
	const (
		clients = 300
		size    = 1 << 20
	)
	srv, sock, before := startRun(t, 3, append([]string{"--echo-interval", "0", "--ping-interval", "100ms", "--max-restarts", "1"}, args...)...)
	rss0 := rssKiB(t, srv.PID())

	// The greedy client: 1 MiB echo requests, never a read.
	greedyDone := startGreedy(t, sock, size)

	var (
		wg     sync.WaitGroup
		failed atomic.Int64
		busy   atomic.Int64 // "server busy" answers, retried
		first  atomic.Value
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				c, err := ipc.Dial(ctx, sock, ipc.ConnConfig{Name: "load", Poll: true})
				if err != nil {
					return err
				}
				defer c.Close()
				payload := make([]byte, size)
				r := rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)})
				r.Read(payload)
				for { // a busy server may ask us to come back (CodeUnavailable)
					reply, err := c.Echo(ctx, payload, nil)
					if re := (*wire.RemoteError)(nil); errors.As(err, &re) && re.Code == wire.CodeUnavailable {
						busy.Add(1)
						time.Sleep(10 * time.Millisecond) // back off, as a client should
						continue
					}
					if err != nil {
						return err
					}
					if !bytes.Equal(reply, payload) {
						return fmt.Errorf("client %d: the echo came back different", i)
					}
					return nil
				}
			}()
			if err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d clients failed; first: %v\n%s", n, clients, first.Load(), srv.Output())
	}

	handed, _ := connStats(t, sock)
	if forwarded := slices.Contains(args, "--handoff=false"); forwarded != (handed == 0) {
		t.Errorf("%d clients handed over to workers (forwarded: %v)", handed, forwarded)
	}
	t.Logf("%d clients × 1 MiB echoed, %d \"server busy\" answers retried, %d handed over", clients, busy.Load(), handed)
	select {
	case sent := <-greedyDone:
		t.Logf("the client that never read was cut off after sending %d MiB", sent>>20)
	case <-time.After(2 * time.Minute):
		t.Fatalf("the client that never reads its replies was not cut off\n%s", srv.Output())
	}
	t.Logf("the supervisor's RSS grew by %d MiB (a -race build; see TestRunClientNeverReads for the bound)", (rssKiB(t, srv.PID())-rss0)>>10)
	after := readyWorkers(t, sock, 3)
	_, doc := statusJSON(t, sock)
	for _, w := range doc.Workers {
		if w.Restarts != 0 {
			t.Errorf("worker %d restarted %d times under load (pids %v → %v)\n%s", w.ID, w.Restarts, before, after, srv.Output())
		}
	}
	if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d\n%s", code, srv.Output())
	}
}

// rssKiB returns a process's resident set size.
func rssKiB(tb testing.TB, pid int) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// A client that sends 1 MiB echo requests and never reads its replies
// is cut off, and the supervisor holds no more for it than one Conn's
// bound (before: 1.3 GiB in 4 s, the connection never closed).
func TestRunClientNeverReads(t *testing.T) {
	t.Parallel()
	srv, sock, _ := startRun(t, 1, "--echo-interval", "0")
	rss0 := rssKiB(t, srv.PID())
	var peak int64
	done := startGreedy(t, sock, 1<<20)
	deadline := time.After(2 * time.Minute)
	for cut := false; !cut; {
		select {
		case sent := <-done:
			t.Logf("cut off after sending %d MiB", sent>>20)
			cut = true
		case <-deadline:
			t.Fatalf("the client that never reads its replies was not cut off\n%s", srv.Output())
		case <-time.After(50 * time.Millisecond): // sample the memory meanwhile
		}
		peak = max(peak, rssKiB(t, srv.PID())-rss0)
	}
	// One Conn may hold 32 MiB for its peer; the -race runtime adds its
	// shadow memory and the GC its slack on top.
	if peak > 256<<10 {
		t.Errorf("the supervisor grew by %d MiB for one client that does not read", peak>>10)
	}
	t.Logf("RSS grew by at most %d MiB", peak>>10)
	if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d\n%s", code, srv.Output())
	}
}

// startGreedy connects a framed client to sock that says hello and then
// sends size-byte echo requests without ever reading; the channel gets
// the bytes it sent once the server cuts it off. The client is closed
// at cleanup.
func startGreedy(tb testing.TB, sock string, size int) <-chan int64 {
	tb.Helper()
	greedy, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { greedy.Close() })
	done := make(chan int64, 1)
	go func() {
		frame := make([]byte, wire.HeaderSize, wire.HeaderSize+64)
		frame = wire.AppendHello(frame, wire.Hello{MinVersion: wire.MinProtocolVersion, MaxVersion: wire.ProtocolVersion, Name: "greedy"})
		wire.PutHeader(frame, wire.Header{Type: wire.TypeHello, Length: uint32(len(frame) - wire.HeaderSize)})
		req := make([]byte, wire.HeaderSize+size)
		var sent int64
		if _, err := greedy.Write(frame); err != nil {
			done <- sent
			return
		}
		for id := uint64(1); ; id++ {
			wire.PutHeader(req, wire.Header{Type: wire.TypeEcho, ID: id, Length: uint32(size)})
			n, err := greedy.Write(req)
			sent += int64(n)
			if err != nil { // the server cut us off
				done <- sent
				return
			}
		}
	}()
	return done
}
