//go:build linux

package sdnotify_test

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestSystemdNotifyFromScript runs systemd-notify from a shell script,
// as a Type=notify service written in sh would. It sends READY=1 and
// STATUS=hi in one datagram, then BARRIER=1 with a pipe, and waits for
// the pipe to be closed (sd_notify_barrier) before it exits 0.
//
// The first datagram's sender is the shell, not systemd-notify: without
// --pid, systemd-notify names its parent (the script, the service's main
// process) in SCM_CREDENTIALS, which the kernel allows when it holds
// CAP_SYS_ADMIN; without the privilege it falls back to its own pid,
// which is the shell's child. Either way the sender is alive (it waits
// for the barrier) and in the shell's tree. The barrier is sent with
// systemd-notify's own credentials.
func TestSystemdNotifyFromScript(t *testing.T) {
	tool := testutil.RequireTool(t, "systemd-notify")
	s := listen(t)
	// "; exit $?" keeps sh from exec'ing systemd-notify in its place.
	cmd := exec.Command("sh", "-c", tool+" --ready --status=hi; exit $?")
	cmd.Env = workerEnv("NOTIFY_SOCKET=" + s.Addr())
	p := testutil.StartProcess(t, cmd)
	sh := int32(p.PID())

	m := readOK(t, s)
	if !m.Ready || m.Status != "hi" || !m.HasStatus || m.MainPID != 0 || m.Barrier {
		t.Errorf("systemd-notify --ready --status=hi sent %+v", m)
	}
	if m.Sender.UID != uint32(os.Geteuid()) {
		t.Errorf("sender uid %d, want ours (%d)", m.Sender.UID, os.Geteuid())
	}
	if os.Geteuid() == 0 && m.Sender.PID != sh {
		t.Errorf("privileged systemd-notify sent as pid %d, want its parent, the shell (%d)", m.Sender.PID, sh)
	}
	if !sdnotify.FromTree(m.Sender.PID, int(sh)) {
		t.Errorf("sender %d is not in the tree of the shell %d", m.Sender.PID, sh)
	}
	t.Logf("the ready datagram came as pid %d; the shell is %d", m.Sender.PID, sh)

	b := readOK(t, s)
	if b != (sdnotify.Message{Sender: b.Sender, Barrier: true}) || b.Sender.PID == sh {
		t.Errorf("second datagram %+v, want a barrier from systemd-notify itself, not from the shell (%d)", b, sh)
	}
	// It exits 0 only if its barrier's pipe was closed (within 5 s).
	p.WaitOK(t, exitTimeout)
}

// TestSystemdNotifyExeced runs systemd-notify WATCHDOG=1 as the process
// itself (sh execs it): its parent is then this test process, the
// supervisor. Privileged, it names that parent as the sender, which is
// outside the worker's tree, unless MANAGERPID names the parent, as the
// supervisor can do: then it sends with its own pid, the worker's.
func TestSystemdNotifyExeced(t *testing.T) {
	tool := testutil.RequireTool(t, "systemd-notify")
	for _, managerPID := range []bool{false, true} {
		t.Run("MANAGERPID="+strconv.FormatBool(managerPID), func(t *testing.T) {
			s := listen(t)
			cmd := exec.Command("sh", "-c", "exec "+tool+" WATCHDOG=1")
			cmd.Env = workerEnv("NOTIFY_SOCKET=" + s.Addr())
			if managerPID {
				cmd.Env = append(cmd.Env, "MANAGERPID="+strconv.Itoa(os.Getpid()))
			}
			p := testutil.StartProcess(t, cmd)
			worker := int32(p.PID())

			m := readOK(t, s)
			if m != (sdnotify.Message{Sender: m.Sender, Watchdog: true}) {
				t.Errorf("systemd-notify WATCHDOG=1 sent %+v", m)
			}
			want := worker
			if os.Geteuid() == 0 && !managerPID {
				want = int32(os.Getpid())
			}
			if m.Sender.PID != want {
				t.Errorf("sender pid %d, want %d (worker %d, supervisor %d)", m.Sender.PID, want, worker, os.Getpid())
			}
			if got := sdnotify.FromTree(m.Sender.PID, int(worker)); got != (want == worker) {
				t.Errorf("FromTree(sender %d, worker %d) = %v", m.Sender.PID, worker, got)
			}
			if b := readOK(t, s); !b.Barrier || b.Sender.PID != worker {
				t.Errorf("second datagram %+v, want a barrier from the worker (%d)", b, worker)
			}
			p.WaitOK(t, exitTimeout)
		})
	}
}

// TestPythonSender has python3 write datagrams itself, one key each and
// then several at once, as a program without libsystemd would.
func TestPythonSender(t *testing.T) {
	s := listen(t)
	p := startPython(t, s, `
send("READY=1")
send("STATUS=Serving 3 clients")
send("WATCHDOG=1")
send("EXTEND_TIMEOUT_USEC=5000000")
send("ERRNO=5")
send("STOPPING=1\nSTATUS=Shutting down\nERRNO=0\n")
`)
	want := []sdnotify.Message{
		{Ready: true},
		{Status: "Serving 3 clients", HasStatus: true},
		{Watchdog: true},
		{ExtendTimeout: 5 * time.Second, HasExtendTimeout: true},
		{Errno: 5, HasErrno: true},
		{Stopping: true, Status: "Shutting down", HasStatus: true, HasErrno: true},
	}
	sender := sdnotify.Cred{PID: int32(p.PID()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	for i, w := range want {
		w.Sender = sender
		if m := readOK(t, s); m != w {
			t.Errorf("datagram %d: %+v, want %+v", i, m, w)
		}
	}
	p.WaitOK(t, exitTimeout)
}

// TestPythonBarrier sends BARRIER=1 with a pipe's write end from
// python3, which then waits on the read end. The pipe stays open while
// the datagram waits in the socket, and reaches EOF once Read has
// returned it.
func TestPythonBarrier(t *testing.T) {
	s := listen(t)
	p := startPython(t, s, `
r, w = os.pipe()
send("BARRIER=1", [w])
os.close(w)
print("sent", flush=True)
print("eof" if os.read(r, 1) == b"" else "data", flush=True)
`)
	if line := p.Line(t, exitTimeout); line != "sent" {
		t.Fatalf("python3 said %q\n%s", line, p.Output())
	}
	// The datagram is queued (sendto returned): the write end is ours to
	// close, and until Read takes it python3 cannot see EOF.
	if p.Exited() {
		t.Fatalf("python3 ended before the barrier was read\n%s", p.Output())
	}
	m, err := read(t, s)
	if err != nil || m != (sdnotify.Message{Sender: m.Sender, Barrier: true}) || m.Sender.PID != int32(p.PID()) {
		t.Fatalf("Read = %+v, %v; want a barrier from %d", m, err, p.PID())
	}
	if line := p.Line(t, exitTimeout); line != "eof" {
		t.Errorf("python3 read %q from the barrier pipe, want eof", line)
	}
	p.WaitOK(t, exitTimeout)
}

// TestOtherUser sends from python3 running as nobody: the abstract name
// lets it reach the socket, and Read refuses the datagram for its uid.
func TestOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	setpriv := testutil.RequireTool(t, "setpriv")
	s := listen(t)
	p := startPython(t, s, `send("READY=1\nSTATUS=I am someone else")`,
		setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
	re := readRefused(t, s, sdnotify.ErrForeignUser)
	if re.Sender != (sdnotify.Cred{PID: int32(p.PID()), UID: 65534, GID: 65534}) {
		t.Errorf("refusal %+v, want one naming pid %d, uid and gid 65534", re, p.PID())
	}
	p.WaitOK(t, exitTimeout)
	send(t, s.Addr(), []byte("READY=1"))
	if m := readOK(t, s); !m.Ready {
		t.Errorf("after the refusal: %+v", m)
	}
	if n := s.Refused(); n != 1 {
		t.Errorf("Refused() = %d, want 1", n)
	}
}
