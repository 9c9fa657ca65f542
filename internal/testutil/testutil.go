//go:build linux

package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ShortDir returns a fresh directory whose name starts with prefix,
// created under os.TempDir and removed at cleanup. Its path is short, so
// that socket paths in it fit sun_path's 108 bytes (t.TempDir names can
// exceed it).
func ShortDir(tb testing.TB, prefix string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Buffer is a bytes.Buffer that is safe for concurrent use, for log
// output and a process's output. The zero value is ready to use.
type Buffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{} // closed by the next Write; nil until asked for
}

// Write appends p to the buffer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wrote != nil {
		close(b.wrote)
		b.wrote = nil
	}
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len returns how many bytes were written so far.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// next returns everything written so far and a channel that the next
// Write closes.
func (b *Buffer) next() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wrote == nil {
		b.wrote = make(chan struct{})
	}
	return b.buf.String(), b.wrote
}

// Poll calls cond every interval until it is true, failing the test
// after timeout with a message naming what it waited for. detail, if
// not nil, adds to the failure.
func Poll(tb testing.TB, timeout, interval time.Duration, what string, cond func() bool, detail func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			if detail != nil {
				msg = "\n" + detail()
			}
			tb.Fatalf("timed out after %v waiting for %s%s", timeout, what, msg)
		}
		time.Sleep(interval)
	}
}

// Receive waits up to timeout for a value from ch and returns it,
// failing the test with a message naming what it waited for if none
// comes.
func Receive[T any](tb testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		var zero T
		return zero
	}
}

// RequireTool returns the path of an external program, skipping the
// test when it is missing unless PAIRVISOR_REQUIRE_TOOLS=1, in which
// case the test fails.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("PAIRVISOR_REQUIRE_TOOLS") == "1" {
			tb.Fatalf("%s is required (PAIRVISOR_REQUIRE_TOOLS=1) but missing: %v", name, err)
		}
		tb.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// FD is an open descriptor of this process.
type FD struct {
	Num    string // the descriptor's number, as /proc/self/fd names it
	Target string // what its /proc/self/fd link points to; "" if unreadable
}

// String returns "num->target".
func (fd FD) String() string { return fd.Num + "->" + fd.Target }

// OpenFDs lists this process's open descriptors in the order
// /proc/self/fd lists them, leaving out the one it reads that directory
// through. A descriptor closed before its link is read has Target "".
func OpenFDs() ([]FD, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	self := strconv.Itoa(int(d.Fd()))
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var fds []FD
	for _, n := range names {
		if n == self {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + n)
		fds = append(fds, FD{Num: n, Target: target})
	}
	return fds, nil
}

// Proc is what /proc/<pid>/stat says about a process.
type Proc struct {
	PID, PPID, PGID int
	Comm, State     string
}

// ReadProc reads /proc/<pid>/stat. It reports false if there is no such
// process or the file cannot be parsed.
func ReadProc(pid int) (Proc, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Proc{}, false
	}
	// pid (comm) state ppid pgrp ...; comm may contain spaces and ')'.
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return Proc{}, false
	}
	f := strings.Fields(string(b[close+1:]))
	if len(f) < 3 {
		return Proc{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgid, _ := strconv.Atoi(f[2])
	return Proc{PID: pid, Comm: string(b[open+1 : close]), State: f[0], PPID: ppid, PGID: pgid}, true
}

// Children returns this process's child processes, zombies included.
func Children() []Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	me := os.Getpid()
	var kids []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := ReadProc(pid); ok && p.PPID == me {
			kids = append(kids, p)
		}
	}
	return kids
}

// Stacks returns the stacks of all goroutines as runtime.Stack formats
// them: separated by blank lines, the caller's first.
func Stacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}
