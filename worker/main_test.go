//go:build linux

package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
)

// The test binary doubles as the child processes these tests start (see
// testutil.Harness): a test starts it playing one of the roles below,
// with the worker contract in its environment.

// A child with the worker contract but no role (none of these tests
// starts one) must not run the tests.
var harness = testutil.NewHarness(testutil.HarnessConfig{ChildEnv: contract.EnvWorker})

func TestMain(m *testing.M) { harness.Main(m) }

func init() {
	harness.Register("report", reportRole)
	harness.Register("serve", serveRole)
	harness.Register("serve-ctx", serveCtxRole)
	harness.Register("fd3-flags", fd3FlagsRole)
}

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

// reportRole calls FromEnv and prints what it did.
func reportRole(...string) int {
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
	if flags, err := fcntlGetfd(contract.ChannelFD); err == nil {
		rep.CloExec = flags&syscall.FD_CLOEXEC != 0
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// serveRole serves until Serve returns; its handler echoes messages,
// and for "slow" reports on stdout, waits 300ms and answers "done".
func serveRole(...string) int {
	return serveUntil(context.Background(), func(ctx context.Context, msg []byte) ([]byte, error) {
		if string(msg) == "slow" {
			fmt.Println("handler started")
			time.Sleep(300 * time.Millisecond)
			return []byte("done"), nil
		}
		return msg, nil
	})
}

// serveCtxRole serves for 200ms and ends Serve through its context.
func serveCtxRole(...string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	return serveUntil(ctx, nil)
}

// serveUntil takes over the channel and serves with handler until ctx
// ends or Serve returns, and prints what Serve returned.
func serveUntil(ctx context.Context, handler func(ctx context.Context, msg []byte) ([]byte, error)) int {
	w, err := FromEnv()
	if err != nil || w == nil {
		fmt.Fprintln(os.Stderr, "FromEnv:", w, err)
		return 2
	}
	err = w.Serve(ctx, Config{Handler: handler})
	fmt.Printf("serve returned: %v\n", err)
	if err != nil {
		return 1
	}
	return 0
}

// fd3FlagsRole prints whether fd 3 is close-on-exec before FromEnv is
// called: the package's init must have marked it already.
func fd3FlagsRole(...string) int {
	flags, err := fcntlGetfd(contract.ChannelFD)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("cloexec:", flags&syscall.FD_CLOEXEC != 0)
	return 0
}

func fcntlGetfd(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// startChild starts this binary in role with the contract variables
// (extra added) and fd3 as its descriptor 3 (none if nil). It kills and
// reaps the child at the end of the test.
func startChild(t *testing.T, role string, fd3 *os.File, extra ...string) *testutil.Process {
	t.Helper()
	return startChildVia(t, nil, role, fd3, extra...)
}

// startChildVia is startChild with the child started through wrapper:
// the command line wrapper followed by this binary's path.
func startChildVia(t *testing.T, wrapper []string, role string, fd3 *os.File, extra ...string) *testutil.Process {
	t.Helper()
	cmd := harness.Command(t, role)
	if len(wrapper) > 0 {
		cmd = exec.Command(wrapper[0], append(wrapper[1:], cmd.Path)...)
		cmd.Env = append(os.Environ(), harness.Use(t, role))
	}
	cmd.Env = append(cmd.Env, extra...)
	if fd3 != nil {
		cmd.ExtraFiles = []*os.File{fd3}
	}
	return testutil.StartProcess(t, cmd)
}

// socketpair returns the two ends of a channel, closed at the end of
// the test.
func socketpair(t *testing.T) (parent, child *os.File) {
	t.Helper()
	parent, child, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.Close()
		child.Close()
	})
	return parent, child
}

// contractEnv returns the contract variables naming us as the parent.
func contractEnv(id string) []string {
	return []string{
		contract.EnvWorker + "=" + id,
		contract.EnvParentPID + "=" + strconv.Itoa(os.Getpid()),
		contract.EnvFD + "=3",
	}
}
