//go:build linux

package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
)

func init() {
	// fd3-flags prints whether fd 3 is close-on-exec before FromEnv is
	// called: the package's init must have marked it already.
	roles["fd3-flags"] = func() int {
		flags, err := fcntlGetfd(ipc.ChannelFD)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println("cloexec:", flags&syscall.FD_CLOEXEC != 0)
		return 0
	}
}

// TestFromEnvChecksSocketPeer: a process whose parent is the one the
// environment names, but whose fd 3 was not created by that parent, is
// not a worker.
func TestFromEnvChecksSocketPeer(t *testing.T) {
	t.Parallel()
	sh, err := os.Stat("/bin/sh")
	if err != nil || sh.IsDir() {
		t.Skip("no /bin/sh")
	}
	t.Run("socket of the grandparent", func(t *testing.T) {
		t.Parallel()
		// We create the socketpair; a shell between us and the child
		// names itself as the parent, as a process that inherited the
		// variables and the socket from its own supervisor would.
		parent, childEnd, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		defer parent.Close()
		defer childEnd.Close()
		wrapper := []string{"/bin/sh", "-c", `PAIRVISOR_PARENT_PID=$$ "$0"; exit $?`}
		c := startChildVia(t, wrapper, "report", childEnd, ipc.EnvWorker+"=1", ipc.EnvFD+"=3")
		rep := readReport(t, c)
		if rep.PPID == os.Getpid() {
			t.Fatalf("set-up: the child's parent is the test process, not the shell: %+v", rep)
		}
		if !rep.Nil || !rep.NotWorker {
			t.Errorf("FromEnv with the grandparent's socket on fd 3: %+v, want nil and ErrNotWorker", rep)
		}
		if len(rep.Env) > 0 {
			t.Errorf("PAIRVISOR_ variables left after a refusal: %q", rep.Env)
		}
	})
	t.Run("unconnected socket", func(t *testing.T) {
		t.Parallel()
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "unconnected")
		defer f.Close()
		rep := runReport(t, f, contract("1")...)
		if rep.PPID != os.Getpid() {
			t.Fatalf("set-up: the child's parent is %d, not us", rep.PPID)
		}
		if !rep.Nil || !rep.NotWorker || rep.NotSocket {
			t.Errorf("FromEnv with an unconnected socket on fd 3: %+v, want nil and ErrNotWorker (not ErrNotSocket)", rep)
		}
	})
}

// TestFD3CloseOnExecAtInit: fd 3 is close-on-exec from the package's
// init, before main (or anything main starts) could fork.
func TestFD3CloseOnExecAtInit(t *testing.T) {
	t.Parallel()
	parent, childEnd, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	defer childEnd.Close()
	c := startChild(t, "fd3-flags", childEnd, contract("1")...)
	if l := c.line(t); l != "cloexec: true" {
		t.Errorf("before FromEnv, the child said %q, want fd 3 close-on-exec", l)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("child: %v; stderr:\n%s", err, c.stderr)
	}
}

func readReport(t *testing.T, c *child) report {
	t.Helper()
	var rep report
	if l := c.line(t); json.Unmarshal([]byte(l), &rep) != nil {
		t.Fatalf("report %q; stderr:\n%s", l, c.stderr)
	}
	if err := c.wait(t, childWait); err != nil {
		t.Fatalf("child: %v; stderr:\n%s", err, c.stderr)
	}
	return rep
}
