//go:build linux

package testutil

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RoleEnv is the environment variable that tells a re-executed test
// binary which registered role to play.
const RoleEnv = "PAIRVISOR_TEST_ROLE"

// DefaultLeakWait is how long [Harness.Main] gives leftovers of the
// tests (a reader goroutine a few scheduling rounds from its end, a
// child being reaped) to go away before it calls them leaks.
const DefaultLeakWait = 10 * time.Second

// HarnessConfig configures a [Harness]. The zero value is ready to use:
// a process plays a role only when [RoleEnv] names one.
type HarnessConfig struct {
	// ChildEnv, if not "", names a variable whose presence marks a
	// process that the code under test, not a test, started from this
	// binary: a worker that a supervisor re-executed, marked by the
	// worker contract's PAIRVISOR_WORKER. The supervisor removes
	// RoleEnv from a worker's environment along with every other
	// PAIRVISOR_ variable, and without the mark such a process would
	// run the tests again. A marked process without RoleEnv plays
	// DefaultRole.
	ChildEnv string

	// DefaultRole is the role a process marked by ChildEnv plays when
	// RoleEnv is not set. "" makes such a process exit with status 2.
	DefaultRole string

	// LeakWait bounds the wait for leftovers after the tests; zero means
	// DefaultLeakWait.
	LeakWait time.Duration

	// Parallel, if above GOMAXPROCS, is how many parallel tests run at
	// once unless -test.parallel is given: for a package whose tests
	// spend their time waiting on the processes they start, not on the
	// CPU (go test's default is GOMAXPROCS, 2 on a 2-core machine).
	Parallel int
}

// A Harness is a test binary's helper-process set-up, after os/exec's
// exec_test.go: the test binary doubles as every helper process the
// tests start. A test starts it with [RoleEnv] naming a registered role
// ([Harness.Command], [Harness.Use]); [Harness.Main], called from
// TestMain, runs that role and exits before the tests would run. After
// the tests it fails the run on a registered role that no test used, and
// on descriptors, goroutines or child processes (zombies included) the
// tests left behind. It also sets GODEBUG=execwait=2, so that an
// exec.Cmd started and never waited for panics when it is collected,
// and GORACE=atexit_sleep_ms=0, so that race-enabled helpers do not
// sleep a second at exit; children inherit both.
//
// A test package declares one Harness in a package variable, registers
// its roles from init, and calls Main from TestMain:
//
//	var harness = testutil.NewHarness(testutil.HarnessConfig{})
//
//	func init() { harness.Register("serve", helperServe) }
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
// Use, Command and the other methods are safe for concurrent use by
// parallel tests.
type Harness struct {
	cfg   HarnessConfig
	roles map[string]func(args ...string) int
	used  sync.Map // role name → true, once a test started it
}

// NewHarness returns a Harness with no roles.
func NewHarness(cfg HarnessConfig) *Harness {
	if cfg.LeakWait <= 0 {
		cfg.LeakWait = DefaultLeakWait
	}
	return &Harness{cfg: cfg, roles: make(map[string]func(args ...string) int)}
}

// Register adds a role: f runs in a process whose RoleEnv names it,
// with the process's arguments (os.Args[1:]), and returns its exit
// status. Call it from init, before Main. It panics if the role is
// registered already, as a mistake in the test code.
func (h *Harness) Register(role string, f func(args ...string) int) {
	if role == "" || f == nil {
		panic("testutil: Register needs a role name and a function")
	}
	if h.roles[role] != nil {
		panic("testutil: duplicate helper role " + role)
	}
	h.roles[role] = f
}

// Use records that the test starts a process playing role and returns
// the environment entry ("PAIRVISOR_TEST_ROLE=role") that selects it,
// for code that builds the process's environment itself (a
// supervisor.Config's Env). It fails the test if role is not
// registered.
func (h *Harness) Use(tb testing.TB, role string) string {
	tb.Helper()
	if h.roles[role] == nil {
		tb.Fatalf("unknown helper role %q", role)
	}
	h.used.Store(role, true)
	return RoleEnv + "=" + role
}

// Command returns a command that runs this test binary with args,
// playing role, in this process's environment. It records the use of
// role as Use does. The caller starts it (see [StartProcess]).
func (h *Harness) Command(tb testing.TB, role string, args ...string) *exec.Cmd {
	tb.Helper()
	env := h.Use(tb, role)
	cmd := exec.Command(Executable(), args...)
	cmd.Env = append(os.Environ(), env)
	return cmd
}

// Executable returns the absolute path of this test binary (os.Args[0]
// may be relative, and a test may run a helper in another directory).
func Executable() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

// Main runs the role this process is to play, or else the tests and
// the checks after them, and exits with the result. It never returns.
// Call it from TestMain in place of m.Run.
func (h *Harness) Main(m *testing.M) {
	setEnvOption("GODEBUG", ",", "execwait=2")
	setEnvOption("GORACE", " ", "atexit_sleep_ms=0")
	if name, f := h.role(os.Getenv); name != "" {
		if f == nil {
			fmt.Fprintf(os.Stderr, "test helper: unknown role %q\n", name)
			os.Exit(2)
		}
		os.Exit(f(os.Args[1:]...))
	}
	flag.Parse()
	if h.cfg.Parallel > runtime.GOMAXPROCS(0) && !flagSet("test.parallel") {
		flag.Set("test.parallel", strconv.Itoa(h.cfg.Parallel))
	}
	before := TakeSnapshot()
	code := m.Run()
	code = h.after(os.Stderr, code, before, runFlags{
		filtered: flagValue("test.run") != "" || flagValue("test.skip") != "" || flagValue("test.list") != "" ||
			flagValue("test.fuzzworker") == "true",
		fuzzing: flagValue("test.fuzz") != "" || flagValue("test.fuzzworker") == "true",
	})
	// A couple of collections give the execwait=2 finalizers a chance
	// to report an exec.Cmd that was started and never waited for.
	runtime.GC()
	runtime.GC()
	os.Exit(code)
}

// role returns the role a process with the environment getenv plays
// ("" for none: it runs the tests) and its function (nil if no such
// role is registered).
func (h *Harness) role(getenv func(string) string) (string, func(args ...string) int) {
	name := getenv(RoleEnv)
	if name == "" && h.cfg.ChildEnv != "" && getenv(h.cfg.ChildEnv) != "" {
		name = h.cfg.DefaultRole
		if name == "" {
			// A marked child with no role to play must not run the
			// tests; "" never names a registered role.
			return "(none; " + h.cfg.ChildEnv + " is set)", nil
		}
	}
	return name, h.roles[name]
}

// runFlags are what the test flags say about the run.
type runFlags struct {
	filtered bool // -run, -skip, -list, or a fuzzing worker: some tests do not run
	fuzzing  bool // -fuzz, or a fuzzing worker
}

// after makes the checks that follow a run that ended with code,
// reporting failures to w, and returns the run's exit status.
func (h *Harness) after(w io.Writer, code int, before Snapshot, fl runFlags) int {
	if code != 0 {
		return code
	}
	if !fl.filtered {
		if unused := h.unused(); len(unused) > 0 {
			fmt.Fprintf(w, "FAIL: helper roles registered but used by no test: %s\n", strings.Join(unused, ", "))
			return 1
		}
	}
	// The fuzzing engine keeps goroutines of its own (os/signal's loop)
	// running after the tests: no goroutine count to compare then.
	if err := before.check(h.cfg.LeakWait, !fl.fuzzing); err != nil {
		fmt.Fprintln(w, "FAIL: leak check after all tests:", err)
		return 1
	}
	return code
}

// unused returns the registered roles that no test used, sorted.
func (h *Harness) unused() []string {
	var names []string
	for name := range h.roles {
		if _, ok := h.used.Load(name); !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// setEnvOption adds opt to the list in the environment variable name
// (items separated by sep) unless it is there already, so that nested
// helpers do not grow it.
func setEnvOption(name, sep, opt string) {
	cur := os.Getenv(name)
	if slices.Contains(strings.Split(cur, sep), opt) {
		return
	}
	if cur != "" {
		cur += sep
	}
	os.Setenv(name, cur+opt)
}

func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
