//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/worker"
)

func init() {
	workerRoles["files"] = filesRole
	workerRoles["old-protocol"] = oldProtocolRole
}

// filesRole answers messages with FilesHandler: "ask" makes it ask the
// supervisor for files (CallFiles "give") and answer with their
// contents; any other message is answered with the contents of the
// files that came with it, each followed by ":cloexec" when its
// descriptor is close-on-exec, and one pipe holding "from-worker" per
// file.
func filesRole(w *worker.Worker, _ string) int {
	return serve(context.Background(), w, worker.Config{FilesHandler: func(ctx context.Context, msg []byte, files []*os.File) ([]byte, []*os.File, error) {
		if string(msg) == "ask" {
			reply, got, err := w.CallFiles(ctx, []byte("give"), nil)
			if err != nil {
				return nil, nil, err
			}
			return []byte(string(reply) + "=" + contents(got)), nil, nil
		}
		var back []*os.File
		for range files {
			back = append(back, pipeHolding("from-worker"))
		}
		return []byte(contents(files)), back, nil
	}})
}

// oldProtocolRole is a worker that speaks protocol version 2 only, as
// one written from the version 2 specification would: echoes messages.
func oldProtocolRole(*worker.Worker, string) int {
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	c, err := ipc.NewConn(ctx, os.NewFile(contract.ChannelFD, "channel"), ipc.ConnConfig{Name: "old", Handler: func(_ context.Context, req ipc.Request) ([]byte, error) {
		return req.Payload, nil
	}})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "old-protocol:", err)
		return 1
	}
	<-c.Done()
	return 0
}

// contents reads and closes files and returns their contents, each
// followed by ":cloexec" if its descriptor was close-on-exec, joined by
// "|".
func contents(files []*os.File) string {
	var parts []string
	for _, f := range files {
		b, err := io.ReadAll(f)
		if err != nil {
			b = []byte("error: " + err.Error())
		}
		if cloexecFile(f) {
			b = append(b, ":cloexec"...)
		}
		f.Close()
		parts = append(parts, string(b))
	}
	return strings.Join(parts, "|")
}

func cloexecFile(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFD, 0) })
	return flags&unix.FD_CLOEXEC != 0
}

// pipeHolding returns the read end of a pipe that holds s and EOF.
func pipeHolding(s string) *os.File {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	w.WriteString(s)
	w.Close()
	return r
}

// countFDs counts this process's open descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents) - 1
}

// TestFilesWithWorkers: the supervisor hands a worker open files with a
// message (SendFiles) and gets the worker's back; a worker asks the
// supervisor for files (CallFiles), which Config.Handler attaches. The
// files arrive close-on-exec on both sides, with their contents, and
// the supervisor's process is left with no descriptor more than before.
// Not parallel: it counts this process's descriptors.
func TestFilesWithWorkers(t *testing.T) {
	cfg := testConfig(t, "files", 2)
	cfg.PingInterval = time.Hour // no health traffic while we count
	cfg.Handler = func(_ context.Context, req ipc.Request) ([]byte, error) {
		if string(req.Payload) != "give" {
			return nil, errors.New("unexpected message")
		}
		if err := req.AttachFiles(pipeHolding("from-supervisor-1"), pipeHolding("from-supervisor-2")); err != nil {
			return nil, err
		}
		return []byte("given"), nil
	}
	r := startSupervisor(t, cfg)
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	// One round trip of each first: the channels' first calls allocate
	// what they keep (the Conns' buffers), not descriptors, but the Go
	// runtime may open its poller's on first use.
	if _, _, err := r.s.SendFiles(ctx, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	before := countFDs(t)
	for i := range 4 { // both workers, round robin
		files := []*os.File{pipeHolding(fmt.Sprintf("a%d", i)), pipeHolding(fmt.Sprintf("b%d", i))}
		reply, back, err := r.s.SendFiles(ctx, []byte("take"), files)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("a%d:cloexec|b%d:cloexec", i, i); string(reply) != want {
			t.Errorf("reply %q, want %q", reply, want)
		}
		if got := contents(back); got != "from-worker:cloexec|from-worker:cloexec" {
			t.Errorf("files from the worker hold %q", got)
		}
		reply, back, err = r.s.SendFiles(ctx, []byte("ask"), nil)
		if err != nil || len(back) != 0 {
			t.Fatalf("ask: %q, %d files, %v", reply, len(back), err)
		}
		if want := "given=from-supervisor-1:cloexec|from-supervisor-2:cloexec"; string(reply) != want {
			t.Errorf("ask: %q, want %q", reply, want)
		}
	}
	deadline := time.Now().Add(eventWait)
	for n := countFDs(t); n != before; n = countFDs(t) {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open after the calls, %d before", n, before)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFilesOldWorker: workers that speak protocol version 2 are never
// sent descriptors: SendFiles fails at once with ipc.ErrNoFiles, and
// plain messages work as before.
func TestFilesOldWorker(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "old-protocol", 1))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	f := pipeHolding("x")
	defer f.Close()
	if _, _, err := r.s.SendFiles(ctx, []byte("take"), []*os.File{f}); !errors.Is(err, ipc.ErrNoFiles) {
		t.Fatalf("SendFiles to a version 2 worker: %v, want ErrNoFiles", err)
	}
	if reply, err := r.s.Send(ctx, []byte("hi")); err != nil || string(reply) != "hi" {
		t.Fatalf("Send: %q, %v", reply, err)
	}
}

// TestFilesWorkerWithoutFilesHandler: a Go worker without FilesHandler
// refuses a message that comes with files (code 2) and serves on.
func TestFilesWorkerWithoutFilesHandler(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "echo", 1))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	f := pipeHolding("x")
	defer f.Close()
	_, _, err := r.s.SendFiles(ctx, []byte("take"), []*os.File{f})
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Fatalf("SendFiles to a worker without FilesHandler: %v, want code 2", err)
	}
	if reply, back, err := r.s.SendFiles(ctx, []byte("hi"), nil); err != nil || string(reply) != "hi" || len(back) != 0 {
		t.Fatalf("SendFiles without files: %q, %d files, %v", reply, len(back), err)
	}
}
