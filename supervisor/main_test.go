//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/worker"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// The test binary is also every worker: Config.Executable defaults to
// os.Executable, so each worker re-executes this binary, and TestMain
// runs the role a test picked (through Config.Env) instead of the
// tests. The pattern is os/exec's exec_test.go.
const (
	envRole = "PAIRVISOR_TEST_ROLE" // which role a helper process runs
	envFile = "PAIRVISOR_TEST_FILE" // a file the role reports into
)

// workerRoles are the behaviours a worker started by a test can have.
// Each returns the process's exit status.
var workerRoles = map[string]func(w *worker.Worker, file string) int{
	"echo": func(w *worker.Worker, _ string) int {
		return serve(context.Background(), w, worker.Config{})
	},
	"slow-hello": func(w *worker.Worker, _ string) int {
		time.Sleep(500 * time.Millisecond)
		return serve(context.Background(), w, worker.Config{})
	},
	"no-hello": func(*worker.Worker, string) int {
		for {
			time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock
		}
	},
	"crash":             func(*worker.Worker, string) int { return 3 },
	"crash-after-hello": crashAfterHello,
	"exit0": func(w *worker.Worker, _ string) int {
		// Serve for a moment after the hello, then end cleanly.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, JSONFormat: true, Output: onReady{f: func() {
			time.AfterFunc(200*time.Millisecond, cancel)
		}}})
		if err := w.Serve(ctx, worker.Config{Logger: log}); err != nil {
			return 1
		}
		return 0
	},
	"ignore-term": func(w *worker.Worker, _ string) int {
		signal.Ignore(syscall.SIGTERM)
		w.Serve(context.Background(), worker.Config{})
		for {
			time.Sleep(time.Hour) // neither the shutdown, nor EOF, nor SIGTERM ends us
		}
	},
	"stderr":     stderrRole,
	"grandchild": grandchildRole,
	"env-check":  envCheckRole,
	"flaky-first": func(w *worker.Worker, file string) int {
		// Worker 1 crashes right after each hello; the others are
		// slow to say hello.
		if w.ID() == 1 {
			return crashAfterHello(w, file)
		}
		time.Sleep(time.Second)
		return serve(context.Background(), w, worker.Config{})
	},
}

// helperRoles are helper processes that are not workers.
var helperRoles = map[string]func(file string) int{
	"supervisor-helper": supervisorHelper,
}

var rolesUsed sync.Map

// role returns the Config.Env entry that makes workers run the named
// role, and records that a test used it.
func role(t testing.TB, name string) string {
	t.Helper()
	if workerRoles[name] == nil && helperRoles[name] == nil {
		t.Fatalf("unknown test role %q", name)
	}
	rolesUsed.Store(name, true)
	return envRole + "=" + name
}

func init() {
	// Make exec.Cmds that are never waited for panic in their
	// finalizer, as os/exec's own tests do.
	godebug := os.Getenv("GODEBUG")
	if godebug != "" {
		godebug += ","
	}
	os.Setenv("GODEBUG", godebug+"execwait=2")
	// A race-enabled binary sleeps a second in exit by default
	// (atexit_sleep_ms); workers that take a second to exit would
	// meet SIGTERM in every graceful stop.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

func TestMain(m *testing.M) {
	// Read the role first: FromEnv removes every PAIRVISOR_ variable.
	roleName, file := os.Getenv(envRole), os.Getenv(envFile)
	w, err := worker.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		os.Exit(2)
	}
	if w != nil {
		f := workerRoles[roleName]
		if f == nil {
			fmt.Fprintf(os.Stderr, "test worker: unknown role %q\n", roleName)
			os.Exit(2)
		}
		os.Exit(f(w, file))
	}
	if roleName != "" {
		f := helperRoles[roleName]
		if f == nil {
			fmt.Fprintf(os.Stderr, "test helper: unknown role %q\n", roleName)
			os.Exit(2)
		}
		os.Exit(f(file))
	}

	// Let the runtime open its poller's descriptors before the baseline.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fds := openFDs()
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(fds); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: leak check after all tests:", err)
			code = 1
		}
	}
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" &&
		flag.Lookup("test.list").Value.String() == "" {
		for _, names := range []map[string]bool{keys(workerRoles), keys(helperRoles)} {
			for name := range names {
				if _, ok := rolesUsed.Load(name); !ok {
					fmt.Fprintf(os.Stderr, "FAIL: test role %q is never used\n", name)
					code = 1
				}
			}
		}
	}
	os.Exit(code)
}

func keys[V any](m map[string]V) map[string]bool {
	k := make(map[string]bool, len(m))
	for name := range m {
		k[name] = true
	}
	return k
}

// serve runs w.Serve and turns its result into an exit status.
func serve(ctx context.Context, w *worker.Worker, cfg worker.Config) int {
	if cfg.Handler == nil {
		cfg.Handler = func(_ context.Context, msg []byte) ([]byte, error) { return msg, nil }
	}
	if err := w.Serve(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return 0
}

// crashAfterHello exits with status 3 right after the hellos are
// exchanged: the channel logs "ready" at debug level at that point.
func crashAfterHello(w *worker.Worker, _ string) int {
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, JSONFormat: true, Output: exitOnReady{code: 3}})
	serve(context.Background(), w, worker.Config{Logger: log})
	return 4
}

// onReady is a log output that calls f when the channel logs "ready",
// which Serve does once the hellos are exchanged.
type onReady struct{ f func() }

func (o onReady) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"@message":"ready"`)) {
		o.f()
	}
	return len(p), nil
}

// exitOnReady is a log output that exits the process once the channel
// is ready.
type exitOnReady struct{ code int }

func (e exitOnReady) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"@message":"ready"`)) {
		os.Exit(e.code)
	}
	return len(p), nil
}

// Lines the stderr role writes; TestRelayWorkerOutput checks how they
// are relayed.
const (
	longLineLen = 200 << 10
	binaryJunk  = "\x00bin\xff\xfejunk\x00\x7f"
)

func stderrRole(w *worker.Worker, _ string) int {
	lines := []string{
		`{"@level":"trace","@message":"trace-line","@timestamp":"2024-01-01T00:00:00.000000Z"}`,
		`{"@level":"debug","@message":"debug-line","@timestamp":"2024-01-01T00:00:00.000000Z","k":"v"}`,
		`{"@level":"info","@message":"info-line","n":7}`,
		`{"@level":"warn","@message":"warn-line","@module":"sub"}`,
		`{"@level":"error","@message":"error-line","error":"boom"}`,
		`plain text line`,
		`[WARN] x`,
		`panic: oh no`,
		strings.Repeat("a", longLineLen-1) + "Z", // the Z must not be seen
		`after-long-line`,
		binaryJunk,
	}
	for _, l := range lines {
		os.Stderr.WriteString(l + "\n")
	}
	os.Stdout.WriteString("to-stdout\n")
	os.Stderr.WriteString("partial-last-line") // no newline: relayed at EOF
	// Serve's own log goes to stdout, so that it does not complete the
	// partial line.
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stdout, JSONFormat: true, Level: w.Logger().GetLevel()})
	return serve(context.Background(), w, worker.Config{Logger: log})
}

// grandchildRole starts a child in the worker's own process group,
// reports its pid, and serves. It never waits for the child.
func grandchildRole(w *worker.Worker, file string) int {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	if err := writeFileAtomic(file, []byte(strconv.Itoa(cmd.Process.Pid))); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return serve(context.Background(), w, worker.Config{})
}

// envReport is what the env-check role finds.
type envReport struct {
	ID             int      `json:"id"`
	Args           []string `json:"args"`
	Dir            string   `json:"dir"`
	Extra          string   `json:"extra"`
	Level          string   `json:"level"`
	OwnEnv         []string `json:"own_env"`     // PAIRVISOR_ variables left in the worker
	ChildEnv       []string `json:"child_env"`   // PAIRVISOR_ variables its child saw
	ChildFDs       []string `json:"child_fds"`   // its child's descriptors above 2
	ChildOut       string   `json:"child_out"`   // for failure messages
	ChildErr       string   `json:"child_err"`   // error running the child
	Sockets        int      `json:"sockets"`     // socket descriptors the child had
	FD3CloseOnExec bool     `json:"fd3_cloexec"` // fd 3 is close-on-exec in the worker
}

// envCheckRole reports what a child of the worker inherits.
func envCheckRole(w *worker.Worker, file string) int {
	var rep envReport
	rep.ID = w.ID()
	rep.Args = os.Args[1:]
	rep.Dir, _ = os.Getwd()
	rep.Extra = os.Getenv("TEST_EXTRA")
	rep.Level = w.Logger().GetLevel().String()
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PAIRVISOR_") {
			rep.OwnEnv = append(rep.OwnEnv, kv)
		}
	}
	if flags, err := fcntlGetfd(3); err == nil {
		rep.FD3CloseOnExec = flags&syscall.FD_CLOEXEC != 0
	}
	// $$ is the shell; listing its descriptors from ls shows what the
	// shell inherited (ls's own directory fd is in another process).
	out, err := exec.Command("/bin/sh", "-c", `env; echo ---; ls -l /proc/$$/fd`).Output()
	if err != nil {
		rep.ChildErr = err.Error()
	}
	rep.ChildOut = string(out)
	env, fds, _ := strings.Cut(string(out), "---\n")
	for _, kv := range strings.Split(env, "\n") {
		if strings.HasPrefix(kv, "PAIRVISOR_") {
			rep.ChildEnv = append(rep.ChildEnv, kv)
		}
	}
	for _, l := range strings.Split(fds, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[len(f)-2] != "->" {
			continue
		}
		// Descriptors the test process itself inherited without
		// close-on-exec reach the child too; the channel must not.
		if f[len(f)-3] == "3" || strings.HasPrefix(f[len(f)-1], "socket:") {
			rep.ChildFDs = append(rep.ChildFDs, l)
		}
	}
	b, _ := json.Marshal(rep)
	if err := writeFileAtomic(file, b); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return serve(context.Background(), w, worker.Config{})
}

func fcntlGetfd(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// supervisorHelper runs a supervisor of two echo workers, writes their
// pids to file once both are ready, and runs until it is killed.
func supervisorHelper(file string) int {
	s, err := New(Config{
		Workers:      2,
		Env:          []string{envRole + "=echo"},
		PingInterval: 50 * time.Millisecond,
		StopTimeout:  time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "supervisor helper:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case <-s.Ready():
	case err := <-done:
		fmt.Fprintln(os.Stderr, "supervisor helper: Run returned early:", err)
		return 1
	}
	var pids []string
	for _, ws := range s.Status().Workers {
		pids = append(pids, strconv.Itoa(ws.PID))
	}
	if err := writeFileAtomic(file, []byte(strings.Join(pids, " "))); err != nil {
		fmt.Fprintln(os.Stderr, "supervisor helper:", err)
		return 1
	}
	err = <-done // until SIGKILL
	fmt.Fprintln(os.Stderr, "supervisor helper: Run returned:", err)
	return 1
}

// writeFileAtomic writes data so that a reader sees all of it or no
// file at all.
func writeFileAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// openFDs returns this process's descriptors and what they refer to.
func openFDs() map[string]string {
	fds := make(map[string]string)
	open, _ := testutil.OpenFDs()
	for _, fd := range open {
		if fd.Target == "" {
			continue // closed by now
		}
		fds[fd.Num] = fd.Target
	}
	return fds
}

// newFDs returns the descriptors open now that were not in before.
func newFDs(before map[string]string) []string {
	var leaked []string
	for fd, target := range openFDs() {
		if before[fd] != target {
			leaked = append(leaked, fd+" -> "+target)
		}
	}
	sort.Strings(leaked)
	return leaked
}

// moduleGoroutines returns the stacks of goroutines, other than the
// caller's, that run or were started by code of this module.
func moduleGoroutines() []string {
	gs := strings.Split(testutil.Stacks(), "\n\n")
	var found []string
	for _, g := range gs[1:] { // gs[0] is the caller
		if strings.Contains(g, "github.com/pairvisor/pairvisor/") {
			found = append(found, g)
		}
	}
	return found
}

// alive reports whether pid is a process that has not exited. A zombie
// has exited: an orphan's zombie waits for init, not for us.
func alive(pid int) bool {
	p, ok := testutil.ReadProc(pid)
	return ok && p.State != "Z" && p.State != "X"
}

// checkLeaks reports descriptors, goroutines and child processes left
// over since before, allowing them a few seconds to go away.
func checkLeaks(before map[string]string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var problems []string
		if fds := newFDs(before); len(fds) > 0 {
			problems = append(problems, fmt.Sprintf("leaked descriptors: %v", fds))
		}
		if gs := moduleGoroutines(); len(gs) > 0 {
			problems = append(problems, fmt.Sprintf("%d leaked goroutines:\n%s", len(gs), strings.Join(gs, "\n\n")))
		}
		if kids := testutil.Children(); len(kids) > 0 {
			problems = append(problems, fmt.Sprintf("child processes left (zombies included): %+v", kids))
		}
		if len(problems) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s", strings.Join(problems, "\n"))
		}
		time.Sleep(50 * time.Millisecond) // polling for the leftovers to go away
	}
}
