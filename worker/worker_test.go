//go:build linux

package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
)

// The test binary doubles as the child processes these tests start: a
// test sets envRole, and TestMain runs that role instead of the tests
// (the re-exec helper pattern of os/exec's tests).
const envRole = "PAIRVISOR_TEST_ROLE"

// childWait bounds every wait for a child process.
const childWait = 10 * time.Second

// report is what the "report" role prints about FromEnv.
type report struct {
	Nil       bool     `json:"nil"`        // FromEnv returned a nil Worker
	Err       string   `json:"err"`        // its error, if any
	NotSocket bool     `json:"not_socket"` // the error wraps ErrNotSocket
	NotWorker bool     `json:"not_worker"` // the error wraps ErrNotWorker
	PPID      int      `json:"ppid"`       // the child's parent
	ID        int      `json:"id"`
	Level     string   `json:"level"`
	Env       []string `json:"env"`     // PAIRVISOR_ variables left afterwards
	CloExec   bool     `json:"cloexec"` // fd 3 is close-on-exec afterwards
}

var roles = map[string]func() int{
	// report calls FromEnv and prints what it did.
	"report": func() int {
		w, err := FromEnv()
		rep := report{Nil: w == nil}
		if err != nil {
			rep.Err = err.Error()
			rep.NotSocket = errors.Is(err, ErrNotSocket)
			rep.NotWorker = errors.Is(err, ErrNotWorker)
		}
		rep.PPID = os.Getppid()
		if w != nil {
			rep.ID = w.ID()
			rep.Level = w.Logger().GetLevel().String()
		}
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "PAIRVISOR_") {
				rep.Env = append(rep.Env, kv)
			}
		}
		if flags, err := fcntlGetfd(ipc.ChannelFD); err == nil {
			rep.CloExec = flags&syscall.FD_CLOEXEC != 0
		}
		json.NewEncoder(os.Stdout).Encode(rep)
		return 0
	},
	// serve serves until Serve returns; its handler echoes messages,
	// and for "slow" reports on stdout, waits 300ms and answers "done".
	"serve": func() int {
		w, err := FromEnv()
		if err != nil || w == nil {
			fmt.Fprintln(os.Stderr, "FromEnv:", w, err)
			return 2
		}
		err = w.Serve(context.Background(), Config{Handler: func(ctx context.Context, msg []byte) ([]byte, error) {
			if string(msg) == "slow" {
				fmt.Println("handler started")
				time.Sleep(300 * time.Millisecond)
				return []byte("done"), nil
			}
			return msg, nil
		}})
		fmt.Printf("serve returned: %v\n", err)
		if err != nil {
			return 1
		}
		return 0
	},
	// serve-ctx serves for 200ms and ends Serve through its context.
	"serve-ctx": func() int {
		w, err := FromEnv()
		if err != nil || w == nil {
			fmt.Fprintln(os.Stderr, "FromEnv:", w, err)
			return 2
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err = w.Serve(ctx, Config{})
		fmt.Printf("serve returned: %v\n", err)
		if err != nil {
			return 1
		}
		return 0
	},
}

var rolesUsed sync.Map

func TestMain(m *testing.M) {
	if name := os.Getenv(envRole); name != "" {
		f := roles[name]
		if f == nil {
			fmt.Fprintf(os.Stderr, "unknown test role %q\n", name)
			os.Exit(2)
		}
		os.Exit(f())
	}
	// A race-enabled binary sleeps a second in exit by default.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	// Let the runtime open its poller's descriptors before the baseline.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fds := countFDs()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for countFDs() > fds || len(children()) > 0 {
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "FAIL: %d descriptors open, %d at start; children left: %v\n", countFDs(), fds, children())
				code = 1
				break
			}
			time.Sleep(20 * time.Millisecond) // polling for stragglers
		}
	}
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" {
		for name := range roles {
			if _, ok := rolesUsed.Load(name); !ok {
				fmt.Fprintf(os.Stderr, "FAIL: test role %q is never used\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// children returns the pids of this process's children, zombies too.
func children() []int {
	var kids []int
	for _, p := range testutil.Children() {
		kids = append(kids, p.PID)
	}
	return kids
}

func fcntlGetfd(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// child is a helper process started by a test.
type child struct {
	cmd    *exec.Cmd
	lines  chan string // its stdout, line by line
	waited chan error
	stderr *bytes.Buffer
}

// startChild starts this binary in role with the contract variables
// (extra added) and fd3 as its descriptor 3 (none if nil). It kills and
// reaps the child at the end of the test.
func startChild(t *testing.T, role string, fd3 *os.File, extra ...string) *child {
	t.Helper()
	return startChildVia(t, nil, role, fd3, extra...)
}

// startChildVia is startChild with the child started through wrapper:
// the command line wrapper followed by this binary's path.
func startChildVia(t *testing.T, wrapper []string, role string, fd3 *os.File, extra ...string) *child {
	t.Helper()
	if roles[role] == nil {
		t.Fatalf("unknown role %q", role)
	}
	rolesUsed.Store(role, true)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), wrapper...), exe)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), envRole+"="+role)
	cmd.Env = append(cmd.Env, extra...)
	if fd3 != nil {
		cmd.ExtraFiles = []*os.File{fd3}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 100), waited: make(chan error, 1), stderr: &bytes.Buffer{}}
	cmd.Stderr = &syncWriter{w: c.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.waited <- cmd.Wait() // after the reads, as StdoutPipe requires
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-c.waited:
		case <-time.After(childWait):
			t.Errorf("child %d not reaped", cmd.Process.Pid)
		}
	})
	return c
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// line waits for the child's next stdout line.
func (c *child) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("child's stdout ended; stderr:\n%s", c.stderr)
		}
		return l
	case <-time.After(childWait):
		t.Fatalf("no line from the child within %v", childWait)
		return ""
	}
}

// wait waits for the child to exit and returns its error from Wait.
func (c *child) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	timeout := time.After(d)
	lines := c.lines
	for {
		select {
		case _, ok := <-lines: // Wait comes after stdout is drained
			if !ok {
				lines = nil
			}
		case err := <-c.waited:
			c.waited <- err // for the cleanup
			return err
		case <-timeout:
			t.Fatalf("child did not exit within %v", d)
			return nil
		}
	}
}

// contract returns the contract variables naming us as the parent.
func contract(id string) []string {
	return []string{
		ipc.EnvWorker + "=" + id,
		ipc.EnvParentPID + "=" + strconv.Itoa(os.Getpid()),
		ipc.EnvFD + "=3",
	}
}

func TestFromEnvNotAWorker(t *testing.T) {
	if _, ok := os.LookupEnv(ipc.EnvWorker); ok {
		t.Setenv(ipc.EnvWorker, "") // restored at the end
		os.Unsetenv(ipc.EnvWorker)
	}
	t.Setenv(ipc.EnvParentPID, "not-looked-at")
	t.Setenv("PAIRVISOR_SOMETHING", "else")
	w, err := FromEnv()
	if w != nil || err != nil {
		t.Fatalf("FromEnv without %s = %v, %v; want nil, nil", ipc.EnvWorker, w, err)
	}
	if os.Getenv(ipc.EnvParentPID) != "not-looked-at" || os.Getenv("PAIRVISOR_SOMETHING") != "else" {
		t.Error("FromEnv changed the environment of a process that is not a worker")
	}
}

// TestFromEnvRefuses covers the checks made before fd 3 is touched, so
// it can run in the test process itself.
func TestFromEnvRefuses(t *testing.T) {
	cases := []struct {
		name, id, ppid, want string
	}{
		{"wrong parent", "1", strconv.Itoa(os.Getppid() + 1), "parent"},
		{"parent not a number", "1", "x", "parent"},
		{"no parent", "1", "", "parent"},
		{"id zero", "0", strconv.Itoa(os.Getppid()), "not a worker id"},
		{"id not a number", "one", strconv.Itoa(os.Getppid()), "not a worker id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(ipc.EnvWorker, c.id)
			t.Setenv(ipc.EnvParentPID, c.ppid)
			t.Setenv("PAIRVISOR_OTHER", "x")
			w, err := FromEnv()
			if w != nil || err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNotWorker) {
				t.Fatalf("FromEnv = %v, %v; want an error wrapping ErrNotWorker about the %s", w, err, c.want)
			}
			for _, kv := range os.Environ() {
				if strings.HasPrefix(kv, "PAIRVISOR_") {
					t.Errorf("%s left in the environment after a refusal", kv)
				}
			}
		})
	}
}

func runReport(t *testing.T, fd3 *os.File, extra ...string) report {
	t.Helper()
	c := startChild(t, "report", fd3, extra...)
	var rep report
	if l := c.line(t); json.Unmarshal([]byte(l), &rep) != nil {
		t.Fatalf("report %q; stderr:\n%s", l, c.stderr)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("child: %v; stderr:\n%s", err, c.stderr)
	}
	return rep
}

func TestFromEnvNotSocket(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep := runReport(t, f, contract("1")...)
	if !rep.Nil || !rep.NotSocket || !rep.NotWorker {
		t.Errorf("FromEnv with a regular file as fd 3: %+v, want nil and ErrNotSocket wrapped with ErrNotWorker", rep)
	}
}

func TestFromEnvTakesOver(t *testing.T) {
	t.Parallel()
	parent, childEnd, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	defer childEnd.Close()
	rep := runReport(t, childEnd, append(contract("7"), ipc.EnvLogLevel+"=warn", "PAIRVISOR_EXTRA=1")...)
	if rep.Nil || rep.Err != "" || rep.ID != 7 || rep.Level != "warn" {
		t.Errorf("FromEnv in a worker: %+v, want worker 7 at level warn", rep)
	}
	if len(rep.Env) > 0 {
		t.Errorf("PAIRVISOR_ variables left after FromEnv: %q", rep.Env)
	}
	if !rep.CloExec {
		t.Error("fd 3 is not close-on-exec after FromEnv")
	}
}

// startWorker starts a child in role as worker id with a raw socketpair
// and returns our end of the channel.
func startWorker(t *testing.T, role, id string) (*child, *ipc.Conn) {
	t.Helper()
	parent, childEnd, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, role, childEnd, append(contract(id), ipc.EnvLogLevel+"=debug")...)
	childEnd.Close() // the child has its copy; EOF must mean it is gone
	ctx, cancel := context.WithTimeout(context.Background(), childWait)
	defer cancel()
	conn, err := ipc.NewConn(ctx, parent, ipc.ConnConfig{Name: "test-supervisor"})
	if err != nil {
		t.Fatalf("hello from the worker: %v; stderr:\n%s", err, c.stderr)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.Peer(); p.Name != "worker."+id || int(p.PID) != c.cmd.Process.Pid {
		t.Errorf("worker's hello: %+v, want name worker.%s and pid %d", p, id, c.cmd.Process.Pid)
	}
	return c, conn
}

func TestServeEndsOnEOF(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "3")
	ctx, cancel := context.WithTimeout(context.Background(), childWait)
	defer cancel()
	for _, n := range []int{0, 1, 64 << 10, 1 << 20} {
		payload := bytes.Repeat([]byte{byte(n), 0, 0xff}, n/3+1)[:n]
		got, err := conn.Echo(ctx, payload, nil)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes: %d bytes back, %v", n, len(got), err)
		}
	}
	if _, err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	got, err := conn.Call(ctx, ipc.TypeMessage, []byte("hi"), nil)
	if err != nil || string(got) != "hi" {
		t.Errorf("message: %q, %v; want the handler's echo", got, err)
	}
	var re *ipc.RemoteError
	if _, err := conn.Call(ctx, ipc.TypeStatus, nil, nil); !errors.As(err, &re) || re.Code != ipc.CodeUnsupported {
		t.Errorf("status request to a worker: %v, want a remote error with CodeUnsupported", err)
	}
	conn.Close()
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("worker after EOF: %v; stderr:\n%s", err, c.stderr)
	}
}

func TestServeShutdown(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "1")
	ctx, cancel := context.WithTimeout(context.Background(), childWait)
	defer cancel()
	slow := make(chan error, 1)
	go func() {
		got, err := conn.Call(ctx, ipc.TypeMessage, []byte("slow"), nil)
		if err == nil && string(got) != "done" {
			err = fmt.Errorf("reply %q", got)
		}
		slow <- err
	}()
	if l := c.line(t); l != "handler started" {
		t.Fatalf("child said %q", l)
	}
	// The shutdown waits for the message in progress.
	if _, err := conn.Call(ctx, ipc.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case err := <-slow:
		if err != nil {
			t.Errorf("the message in progress at the shutdown: %v", err)
		}
	case <-time.After(childWait):
		t.Fatal("no reply to the message in progress")
	}
	// New messages are refused once the shutdown is under way; pings
	// are still answered.
	var re *ipc.RemoteError
	if _, err := conn.Call(ctx, ipc.TypeMessage, []byte("late"), nil); !errors.As(err, &re) || re.Code != ipc.CodeShutdown {
		t.Errorf("message after the shutdown: %v, want CodeShutdown", err)
	}
	if _, err := conn.Ping(ctx); err != nil {
		t.Errorf("ping after the shutdown: %v", err)
	}
	conn.Close()
	if l := c.line(t); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("worker after the shutdown: %v; stderr:\n%s", err, c.stderr)
	}
}

// TestServeShutdownLinger: after a shutdown the worker waits a while for
// the supervisor to close its end, then leaves anyway.
func TestServeShutdownLinger(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve", "1")
	ctx, cancel := context.WithTimeout(context.Background(), childWait)
	defer cancel()
	start := time.Now()
	if _, err := conn.Call(ctx, ipc.TypeShutdown, nil, nil); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-conn.Done():
		if !errors.Is(conn.Err(), ipc.ErrPeerClosed) {
			t.Errorf("channel closed with %v, want ErrPeerClosed", conn.Err())
		}
	case <-time.After(shutdownLinger + childWait):
		t.Fatal("worker kept its end open after a shutdown")
	}
	if d := time.Since(start); d < shutdownLinger*9/10 {
		t.Errorf("worker closed its end %v after the shutdown, before the linger of %v", d, shutdownLinger)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("worker: %v; stderr:\n%s", err, c.stderr)
	}
}

func TestServeEndsWithContext(t *testing.T) {
	t.Parallel()
	c, conn := startWorker(t, "serve-ctx", "2")
	select {
	case <-conn.Done():
	case <-time.After(childWait):
		t.Fatal("worker kept its end open after its context ended")
	}
	if l := c.line(t); l != "serve returned: <nil>" {
		t.Errorf("child said %q", l)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("worker: %v; stderr:\n%s", err, c.stderr)
	}
}
