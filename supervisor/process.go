//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
)

// relayGrace bounds how long output relays may run on after a worker
// is reaped (a grandchild that left the group may hold the pipes).
const relayGrace = time.Second

// process is one running worker process: its exec.Cmd, its channel and
// the goroutines relaying its output. It is owned by the slot goroutine
// that spawned it; the wait goroutine reaps it and then closes exited.
type process struct {
	id      int
	pid     int
	cmd     *exec.Cmd
	log     hclog.Logger
	started time.Time
	conn    *ipc.Conn // set once the hello arrived; closed by the owner

	outR, errR *os.File
	relays     sync.WaitGroup

	mu        sync.Mutex // held while signalling the group and while reaping
	done      bool       // reaped
	signalled bool       // signalGroup sent a signal before the reaping

	exited chan struct{} // closed once reaped and relays are done
	state  *os.ProcessState
	reaped func() // called by wait right after the reaping

	// probes is where this process's prober records each pong's round
	// trip (its lastRTT). Status shows it only while the process is its
	// slot's ready one, so an ended worker shows no RTT and a successor
	// never shows its predecessor's.
	probes *slot
}

// ownSpawnError reports that the supervisor could not start a worker
// for want of its own resources (descriptors, memory, processes): no
// fault of the worker, so it is retried and never counts as a failure.
type ownSpawnError struct{ err error }

func (e *ownSpawnError) Error() string { return e.err.Error() }
func (e *ownSpawnError) Unwrap() error { return e.err }

// resourceErrnos are the errors of fork, exec and descriptor creation
// that mean the supervisor itself is short of something.
var resourceErrnos = []syscall.Errno{unix.EMFILE, unix.ENFILE, unix.EAGAIN, unix.ENOMEM, unix.ENOBUFS}

// ownFault reports whether err, from starting a process, is the
// supervisor's own shortage rather than the worker's problem (a missing
// or broken executable).
func ownFault(err error) bool {
	for _, e := range resourceErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// spawnRequest asks the spawner thread to start cmd.
type spawnRequest struct {
	cmd *exec.Cmd
	err chan error
}

// workerEnv returns the environment for worker id: ours without any
// PAIRVISOR_ variables, then the contract, then extra.
func workerEnv(id int, level hclog.Level, extra []string) []string {
	env := make([]string, 0, len(os.Environ())+4+len(extra))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAIRVISOR_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		ipc.EnvWorker+"="+strconv.Itoa(id),
		ipc.EnvParentPID+"="+strconv.Itoa(os.Getpid()),
		ipc.EnvFD+"="+strconv.Itoa(ipc.ChannelFD),
		ipc.EnvLogLevel+"="+strings.ToLower(level.String()),
	)
	return append(env, extra...)
}

// spawn starts worker id with the child's end of a fresh socketpair as
// fd 3, in its own process group, with a parent-death signal. It returns
// the process and the parent's end of the channel, which the caller
// owns; everything else (the child's end, the pipes' write ends) is
// closed here, right after Start, so EOF on the channel and on the
// pipes means the worker is gone. On error nothing is left open.
//
// A failure to create the channel or the pipes, or a fork or exec that
// fails for want of descriptors, memory or processes, is returned as an
// *ownSpawnError: the supervisor's shortage, not the worker's fault.
func (s *Supervisor) spawn(id int) (*process, *os.File, error) {
	own := func(err error) error {
		return &ownSpawnError{fmt.Errorf("supervisor: starting worker %d: %w", id, err)}
	}
	parentEnd, childEnd, err := ipc.Socketpair()
	if err != nil {
		return nil, nil, own(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		parentEnd.Close()
		childEnd.Close()
		return nil, nil, own(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		parentEnd.Close()
		childEnd.Close()
		outR.Close()
		outW.Close()
		return nil, nil, own(err)
	}
	cmd := &exec.Cmd{
		Path:       s.cfg.Executable,
		Args:       append([]string{s.cfg.Executable}, s.cfg.Args...),
		Env:        workerEnv(id, s.cfg.Logger.GetLevel(), s.cfg.Env),
		Dir:        s.cfg.Dir,
		Stdout:     outW,
		Stderr:     errW,
		ExtraFiles: []*os.File{childEnd},
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,            // stop signals go to the worker's whole group
			Pdeathsig: syscall.SIGKILL, // see spawnLoop for the thread this binds to
		},
	}
	req := spawnRequest{cmd: cmd, err: make(chan error, 1)}
	s.spawnReqs <- req
	err = <-req.err
	childEnd.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		parentEnd.Close()
		outR.Close()
		errR.Close()
		var own *ownSpawnError
		if errors.As(err, &own) || ownFault(err) {
			return nil, nil, &ownSpawnError{fmt.Errorf("supervisor: starting worker %d: %w", id, err)}
		}
		return nil, nil, fmt.Errorf("supervisor: starting worker %d: %w", id, err)
	}
	pid := cmd.Process.Pid
	s.sweeper.addWorker(pid)
	p := &process{
		id:      id,
		pid:     pid,
		cmd:     cmd,
		started: s.cfg.now(),
		outR:    outR,
		errR:    errR,
		exited:  make(chan struct{}),
		reaped:  func() { s.sweeper.workerReaped(pid) },
		probes:  &slot{id: id},
	}
	p.log = s.log.Named("worker."+strconv.Itoa(id)).With("worker", id, "pid", p.pid)
	p.relays.Add(2)
	lim := newOutputLimit(time.Now) // one budget for both streams of a worker
	go func() { defer p.relays.Done(); relayTo(outR, p.log, "stdout", lim) }()
	go func() { defer p.relays.Done(); relayTo(errR, p.log, "stderr", lim) }()
	go p.wait()
	return p, parentEnd, nil
}

// wait waits for the worker to exit, kills whatever is left of its
// process group while the zombie leader still pins the group id (so the
// number cannot have been reused), reaps it, and lets the output relays
// drain. It is the only place a worker is reaped.
func (p *process) wait() {
	waitExited(p.pid)
	p.mu.Lock()
	unix.Kill(-p.pid, unix.SIGKILL)
	p.cmd.Wait()
	p.state = p.cmd.ProcessState
	p.done = true
	p.mu.Unlock()
	p.reaped() // its children, re-parented to us, are the sweeper's now

	drained := make(chan struct{})
	go func() { p.relays.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(relayGrace):
		p.outR.Close() // ends the relays' reads
		p.errR.Close()
		<-drained
	}
	p.outR.Close()
	p.errR.Close()
	close(p.exited)
}

// signalGroup sends sig to the worker's process group and to every
// descendant of the worker outside it (one that called setsid or
// setpgid), found by walking /proc from the worker down before the
// group is signalled. It is a no-op once the worker is reaped: only an
// unreaped leader guarantees the group id still names this worker's
// group. Descendants are signalled through pidfds checked against their
// start time, so a reused pid is never hit.
func (p *process) signalGroup(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.signalled = true
	for _, d := range descendants(p.pid) {
		if d.pgid != p.pid {
			signalExact(d, sig)
		}
	}
	if err := unix.Kill(-p.pid, sig); err != nil {
		// The leader may have moved out of its group; reach it at least.
		p.cmd.Process.Signal(sig)
	}
}

// endedOnItsOwn reports whether the worker exited without a signal
// from us. Valid after exited.
func (p *process) endedOnItsOwn() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.signalled
}

// exitReason describes how the worker ended. Valid after exited.
func (p *process) exitReason() string {
	return describeExit(p.state)
}

func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "unknown"
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return st.String()
	}
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		s := "killed by signal " + unix.SignalName(ws.Signal())
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return st.String()
}

// failed reports whether the exit counts as a failure: a nonzero
// status or a signal.
func (p *process) failed() bool {
	return p.state == nil || !p.state.Success()
}

// waitExited blocks until the child pid has exited, without reaping it.
// It waits on a pidfd through the runtime's poller, so a worker does
// not hold an OS thread for its whole life; where pidfds are missing
// (Linux before 5.10) it falls back to a blocking waitid.
func waitExited(pid int) {
	var info unix.Siginfo
	if fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK); err == nil {
		f := os.NewFile(uintptr(fd), "pidfd")
		defer f.Close()
		if rc, err := f.SyscallConn(); err == nil {
			err = rc.Read(func(fd uintptr) bool {
				err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT, nil)
				return err != unix.EAGAIN && err != unix.EINTR // EAGAIN: still running
			})
			if err == nil {
				return
			}
		}
	}
	for unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
}
