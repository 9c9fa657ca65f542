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
	harness.Register("serve-v1", serveV1Role)
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

// serveRole serves until Serve returns with serveHandler.
func serveRole(...string) int { return serveUntil(context.Background(), Config{Handler: serveHandler}) }

// serveV1Role is serveRole speaking protocol version 1 only.
func serveV1Role(...string) int {
	return serveUntil(context.Background(), Config{Handler: serveHandler, maxVersion: 1})
}

// serveHandler echoes messages, except:
//   - "slow": it reports "handler started" on stdout, waits 300ms and
//     answers "done";
//   - "wait-cancel": it reports "handler started", waits until its
//     context is cancelled (or childWait), reports "handler cancelled"
//     (or "handler timed out") and returns;
//   - "panic": it panics.
func serveHandler(ctx context.Context, msg []byte) ([]byte, error) {
	switch string(msg) {
	case "slow":
		fmt.Println("handler started")
		time.Sleep(300 * time.Millisecond)
		return []byte("done"), nil
	case "wait-cancel":
		fmt.Println("handler started")
		select {
		case <-ctx.Done():
			fmt.Println("handler cancelled")
		case <-time.After(childWait):
			fmt.Println("handler timed out")
		}
		return nil, ctx.Err()
	case "panic":
		panic("worker handler boom")
	}
	return msg, nil
}

// serveCtxRole serves for 200ms and ends Serve through its context.
func serveCtxRole(...string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	return serveUntil(ctx, Config{})
}

// serveUntil takes over the channel and serves with cfg until ctx ends
// or Serve returns, and prints what Serve returned: "serve returned:
// <nil>", or for an error wrapping ErrChannelClosed "serve returned:
// channel closed (peer closed: B)", B saying whether it also wraps
// ipc.ErrPeerClosed (a plain EOF), followed by the error. It exits as a
// worker should: 0 after nil, 1 after an error.
func serveUntil(ctx context.Context, cfg Config) int {
	w, err := FromEnv()
	if err != nil || w == nil {
		fmt.Fprintln(os.Stderr, "FromEnv:", w, err)
		return 2
	}
	err = w.Serve(ctx, cfg)
	switch {
	case err == nil:
		fmt.Println("serve returned: <nil>")
		return 0
	case errors.Is(err, ErrChannelClosed):
		fmt.Printf("serve returned: channel closed (peer closed: %v)\n", errors.Is(err, ipc.ErrPeerClosed))
	default:
		fmt.Printf("serve returned: %v\n", err)
	}
	fmt.Fprintln(os.Stderr, "serve:", err)
	return 1
}

// eofLine is what serveUntil prints when the channel ended with EOF and
// no shutdown request.
const eofLine = "serve returned: channel closed (peer closed: true)"

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
