//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/worker"
)

// envEscape tells the escapee roles whether the intermediate process
// exits as soon as the grandchild runs ("exit") or stays ("stay").
const envEscape = "TEST_ESCAPE_MODE"

// envMiddle passes the intermediate's pid and start time to the
// grandchild, which may be orphaned before it can look.
const envMiddle = "TEST_ESCAPE_MIDDLE"

func init() {
	workerRoles["escapee"] = escapeeWorker
	helperRoles["escapee-middle"] = escapeeMiddle
	helperRoles["escapee-grandchild"] = escapeeGrandchild
}

// escapees keeps the helpers' unwaited Cmds reachable: GODEBUG
// execwait=2 makes a collected, unwaited Cmd panic.
var escapees struct {
	sync.Mutex
	cmds []*exec.Cmd
}

// startEscapee starts this binary in role with fd 3 as its fd 3.
func startEscapee(roleName, file string, fd3 *os.File, setsid bool, env ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), envRole+"="+roleName, envFile+"="+file), env...)
	cmd.ExtraFiles = []*os.File{fd3}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: setsid}
	if err := cmd.Start(); err != nil {
		return err
	}
	escapees.Lock()
	escapees.cmds = append(escapees.cmds, cmd)
	escapees.Unlock()
	return nil
}

// escapeeWorker starts a child (escapee-middle) that hands a copy of
// the worker's channel to a grandchild in a session of its own, then
// serves.
func escapeeWorker(w *worker.Worker, file string) int {
	fd, err := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	channel := os.NewFile(uintptr(fd), "channel copy")
	err = startEscapee("escapee-middle", file, channel, false)
	channel.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return serve(context.Background(), w, worker.Config{})
}

// escapeeMiddle starts the grandchild with setsid, holding fd 3, and
// exits once the grandchild has reported, or stays, as envEscape says.
func escapeeMiddle(file string) int {
	me, ok := readProc(os.Getpid())
	if !ok {
		fmt.Fprintln(os.Stderr, "escapee-middle: no /proc")
		return 1
	}
	middle := fmt.Sprintf("%s=%d %d", envMiddle, me.pid, me.start)
	if err := startEscapee("escapee-grandchild", file, os.NewFile(3, "channel"), true, middle); err != nil {
		fmt.Fprintln(os.Stderr, "escapee-middle:", err)
		return 1
	}
	if os.Getenv(envEscape) == "exit" {
		// Once orphaned, the grandchild may be killed at any moment:
		// let it report first.
		marker := file + "." + strconv.Itoa(me.pid)
		if !await(readyWait, func() bool { _, err := os.Stat(marker); return err == nil }) {
			return 1
		}
		return 0
	}
	for {
		time.Sleep(time.Hour)
	}
}

// escapeeGrandchild reports its pid and start time, those of the
// middle process and its session, then sleeps, holding the channel on
// fd 3.
func escapeeGrandchild(file string) int {
	me, ok := readProc(os.Getpid())
	var st unix.Stat_t
	if !ok || unix.Fstat(3, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		fmt.Fprintln(os.Stderr, "escapee-grandchild: no channel on fd 3, or no /proc")
		return 1
	}
	sid, _ := unix.Getsid(0)
	line := fmt.Sprintf("%d %d %s %d", me.pid, me.start, os.Getenv(envMiddle), sid)
	if err := writeFileAtomic(file, []byte(line)); err != nil {
		fmt.Fprintln(os.Stderr, "escapee-grandchild:", err)
		return 1
	}
	middle, _, _ := strings.Cut(os.Getenv(envMiddle), " ")
	if err := writeFileAtomic(file+"."+middle, nil); err != nil { // for the middle process
		fmt.Fprintln(os.Stderr, "escapee-grandchild:", err)
		return 1
	}
	for {
		time.Sleep(time.Hour)
	}
}

// escapee is what the grandchild reported.
type escapee struct {
	grandchild, middle procInfo
	sid                int
}

// readEscapee waits for a grandchild other than old to report in file.
func readEscapee(t *testing.T, file string, old int) escapee {
	t.Helper()
	var e escapee
	if !await(readyWait, func() bool {
		b, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		if len(f) != 5 {
			t.Fatalf("escapee report %q", b)
		}
		n := make([]uint64, 5)
		for i := range f {
			n[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		e = escapee{procInfo{pid: int(n[0]), start: n[1]}, procInfo{pid: int(n[2]), start: n[3]}, int(n[4])}
		return e.grandchild.pid != old
	}) {
		t.Fatalf("no escapee report within %v", readyWait)
	}
	if e.sid != e.grandchild.pid {
		t.Fatalf("set-up: the grandchild %d is not in a session of its own (sid %d)", e.grandchild.pid, e.sid)
	}
	return e
}

// TestSetsidDescendantsDie: a worker's grandchild that calls setsid
// and holds the channel does not outlive its worker, whether the
// process between them exits at once (a daemon's double fork) or
// stays, and whether the worker is SIGKILLed, replaced by a rolling
// restart, or stopped with the supervisor. None is left as a zombie
// either. An orphan that left its worker's group is killed as soon as
// it is found, even while its worker lives (see the package doc).
func TestSetsidDescendantsDie(t *testing.T) {
	t.Parallel()
	role(t, "escapee-middle")
	role(t, "escapee-grandchild")
	for _, mode := range []string{"exit", "stay"} {
		for _, how := range []string{"kill-worker", "reload", "stop"} {
			t.Run(mode+"/"+how, func(t *testing.T) {
				t.Parallel()
				file := tempFile(t, "escapee")
				cfg := testConfig(t, "escapee", 1)
				cfg.Env = append(cfg.Env, envFile+"="+file, envEscape+"="+mode)
				r := startSupervisor(t, cfg)
				r.waitReady()
				wpid := r.s.Status().Workers[0].PID
				e := readEscapee(t, file, 0)
				if mode == "exit" {
					// Orphaned at once: killed while the worker lives.
					// (The middle process is the worker's zombie.)
					waitProcGone(t, "the orphaned grandchild", e.grandchild, eventWait)
					if !alive(wpid) {
						t.Errorf("worker %d died with its orphaned grandchild", wpid)
					}
				} else if procGone(e.grandchild) || procGone(e.middle) {
					t.Fatalf("set-up: grandchild or middle process gone early: %+v", e)
				}
				switch how {
				case "kill-worker":
					kill(t, wpid, syscall.SIGKILL)
					r.waitStatus("worker restarted", func(st Status) bool {
						return st.Workers[0].State == StateReady && st.Workers[0].PID != wpid
					})
				case "reload":
					ctx, cancel := context.WithTimeout(context.Background(), eventWait)
					err := r.s.Reload(ctx)
					cancel()
					if err != nil {
						t.Fatalf("Reload: %v", err)
					}
				case "stop":
					if err := r.stop(); err != nil {
						t.Fatal(err)
					}
				}
				waitProcGone(t, "the setsid grandchild", e.grandchild, eventWait)
				waitProcGone(t, "the middle process", e.middle, eventWait)
				if how == "stop" {
					return
				}
				// The new worker made escapees of its own; stopping the
				// supervisor ends them too.
				e2 := readEscapee(t, file, e.grandchild.pid)
				if err := r.stop(); err != nil {
					t.Fatal(err)
				}
				// (Another test's supervisor may be reaping them: every
				// supervisor in a process sweeps every orphan.)
				waitProcGone(t, "the second worker's grandchild", e2.grandchild, eventWait)
				waitProcGone(t, "the second worker's middle process", e2.middle, eventWait)
			})
		}
	}
}

func init() { workerRoles["join-group"] = joinGroupWorker }

// joinGroupWorker tries to start a child in its supervisor's process
// group, writes the outcome to file, then serves.
func joinGroupWorker(w *worker.Worker, file string) int {
	pgid, err := unix.Getpgid(os.Getppid())
	if err != nil {
		fmt.Fprintln(os.Stderr, "join-group worker:", err)
		return 1
	}
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
	outcome := "joined"
	if err := cmd.Run(); err != nil {
		outcome = "refused: " + err.Error()
	}
	if err := writeFileAtomic(file, []byte(outcome)); err != nil {
		fmt.Fprintln(os.Stderr, "join-group worker:", err)
		return 1
	}
	return serve(context.Background(), w, worker.Config{})
}

// TestDescendantCannotJoinOurGroup: a worker runs in a session of its
// own, so none of its descendants can move into the supervisor's
// process group, where the orphan sweeper would leave it alone.
func TestDescendantCannotJoinOurGroup(t *testing.T) {
	t.Parallel()
	r, b := readyWorkerReport(t, "join-group")
	if !strings.HasPrefix(string(b), "refused") {
		t.Errorf("a worker's child joined the supervisor's process group (%s)", b)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
