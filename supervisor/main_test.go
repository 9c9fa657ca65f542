//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/worker"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// The test binary is also every worker: Config.Executable defaults to
// os.Executable, so each worker re-executes this binary, and TestMain
// runs the role a test picked (through Config.Env) instead of the
// tests. The pattern is os/exec's exec_test.go.
const (
	envRole = testutil.RoleEnv      // which role a helper process runs
	envFile = "PAIRVISOR_TEST_FILE" // a file the role reports into
)

// A worker started without a role (the supervisor passes Config.Env on)
// exits 2 rather than run the tests.
var harness = testutil.NewHarness(testutil.HarnessConfig{ChildEnv: contract.EnvWorker})

func TestMain(m *testing.M) {
	for name, f := range workerRoles {
		harness.Register(name, func(...string) int {
			file := os.Getenv(envFile) // before FromEnv removes every PAIRVISOR_ variable
			w, err := worker.FromEnv()
			if w == nil {
				fmt.Fprintf(os.Stderr, "test worker %s: not a worker: %v\n", name, err)
				return 2
			}
			return f(w, file)
		})
	}
	for name, f := range helperRoles {
		harness.Register(name, func(...string) int { return f(os.Getenv(envFile)) })
	}
	harness.Main(m)
}

// helperRoles are helper processes that are not workers.
var helperRoles = map[string]func(file string) int{
	"supervisor-helper": supervisorHelper,
}

// workerRoles are the behaviours a worker started by a test can have.
// Each returns the process's exit status.
var workerRoles = map[string]func(w *worker.Worker, file string) int{
	"echo": func(w *worker.Worker, _ string) int {
		return serve(context.Background(), w, worker.Config{})
	},
	"whoami": func(w *worker.Worker, _ string) int {
		// Answers each message with its worker id and the message.
		return serve(context.Background(), w, worker.Config{Handler: func(_ context.Context, msg []byte) ([]byte, error) {
			return fmt.Appendf(nil, "%d:%s", w.ID(), msg), nil
		}})
	},
	"slow-hello": func(w *worker.Worker, _ string) int {
		time.Sleep(500 * time.Millisecond)
		return serve(context.Background(), w, worker.Config{})
	},
	"hello-on-file": helloOnFile,
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
		// Worker 1 crashes right after each hello; the others say
		// hello once the test has created file.
		if w.ID() == 1 {
			return crashAfterHello(w, file)
		}
		return helloOnFile(w, file)
	},
}

// role returns the Config.Env entry that makes workers run the named
// role, and records that a test used it.
func role(t testing.TB, name string) string {
	t.Helper()
	return harness.Use(t, name)
}

// helloOnFile says hello once the test has created file: the worker is
// starting for as long as the test wants, however slow the machine.
func helloOnFile(w *worker.Worker, file string) int {
	for {
		if _, err := os.Stat(file); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling for the file
	}
	return serve(context.Background(), w, worker.Config{})
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

// alive reports whether pid is a process that has not exited. A zombie
// has exited: an orphan's zombie waits for init, not for us.
func alive(pid int) bool {
	p, ok := testutil.ReadProc(pid)
	return ok && p.State != "Z" && p.State != "X"
}
