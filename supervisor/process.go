package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/ipc"
)

// relayGrace bounds how long output relays may run on after a worker
// is reaped (a grandchild that left the group may hold the pipes).
const relayGrace = time.Second

// pollAbove: supervisors of more workers than this wait for their
// channels through the runtime poller (ipc.ConnConfig.Poll).
const pollAbove = 16

// realSpawner starts real worker processes: each from the one spawn
// thread (spawnThread), with a fresh socketpair as fd 3, stdout and
// stderr relayed into the log, and the orphan sweeper told of each
// worker's start and reaping (see reap_linux.go).
type realSpawner struct {
	cfg     *Config
	log     hclog.Logger
	reqs    chan spawnRequest
	thread  chan struct{} // closed when the spawn thread has ended
	sweeper *sweeper
	waits   sync.WaitGroup // the processes' wait goroutines

	adopting             bool // the process is a subreaper for this Run
	sweepStop, sweepDone chan struct{}

	// Listeners (listeners.go): the spawner's own duplicates of
	// Config.Listeners, taken by New and closed by close; their
	// LISTEN_FDNAMES; the exec shim's path. Empty without listeners.
	lfiles []*os.File
	lnames string
	shim   string
}

func newRealSpawner(cfg *Config) *realSpawner {
	return &realSpawner{
		cfg:       cfg,
		log:       cfg.Logger,
		reqs:      make(chan spawnRequest),
		thread:    make(chan struct{}),
		sweeper:   newSweeper(cfg.Logger),
		sweepStop: make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
}

// open starts the spawn thread and, where orphans can be told apart,
// makes the process a child subreaper and starts the sweeper, so that
// a worker's descendant that leaves its tree is re-parented to us
// rather than to init.
func (sp *realSpawner) open() {
	go sp.spawnThread()
	if err := orphanSupport(); err != nil {
		sp.log.Warn("cannot adopt workers' orphaned descendants on this system", "error", err)
	} else if err := acquireSubreaper(); err != nil {
		sp.log.Warn("cannot become a child subreaper", "error", err)
	} else {
		sp.adopting = true
		go func() { defer close(sp.sweepDone); sp.sweeper.run(sp.sweepStop) }()
	}
}

// close ends the spawn thread once every wait goroutine has ended, then
// sweeps the last orphans while they still come to us (their children
// too), stops adopting (if no other Run goes on), and sweeps what came
// meanwhile: no orphan is left alive.
func (sp *realSpawner) close() {
	sp.waits.Wait()
	close(sp.reqs)
	<-sp.thread
	if sp.adopting {
		close(sp.sweepStop)
		<-sp.sweepDone
		releaseSubreaper()
		sp.sweeper.drain()
	}
	sp.closeListeners() // no spawn can come now
}

// spawnThread starts every worker from one goroutine locked to its OS
// thread for the supervisor's whole life. Linux sends a child its
// parent-death signal when the *thread* that forked it exits, and the Go
// runtime retires threads as it pleases; starting children from an
// ordinary goroutine would let them be killed at random. The goroutine
// returns (and its thread exits) only after Run has reaped every worker.
func (sp *realSpawner) spawnThread() {
	defer close(sp.thread)
	runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
	useRange := true
	for req := range sp.reqs {
		// A worker inherits exactly 0–2 and fd 3, whatever else the
		// program holds without close-on-exec.
		if err := markInheritedCloexec(&useRange); err != nil {
			req.err <- &ownSpawnError{fmt.Errorf("marking descriptors close-on-exec: %w", err)}
			continue
		}
		req.err <- req.cmd.Start()
	}
}

// process is one running worker process: its exec.Cmd, the parent's
// end of its channel until the hello, and the goroutines relaying its
// output. Its wait goroutine reaps it.
type process struct {
	sp  *realSpawner
	id  int
	pd  int
	cmd *exec.Cmd
	log hclog.Logger
	end *os.File // the parent's end of the channel; hello takes it

	notify *sdnotify.Socket // ReadyNotify: its socket, closed once reaped; nil otherwise

	outR, errR *os.File
	relays     sync.WaitGroup

	mu   sync.Mutex // held while signalling the group and while reaping
	done bool       // reaped

	state *os.ProcessState // set once reaped, before exited is called
}

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

// resourceErrnos are the errors of fork, exec and descriptor creation
// that mean the supervisor itself is short of something.
var resourceErrnos = []syscall.Errno{unix.EMFILE, unix.ENFILE, unix.EAGAIN, unix.ENOMEM, unix.ENOBUFS}

// spawnRequest asks the spawn thread to start cmd.
type spawnRequest struct {
	cmd *exec.Cmd
	err chan error
}

// workerEnv returns the environment for worker id: ours without any
// PAIRVISOR_ variables, then the contract, then extra.
func workerEnv(id int, level hclog.Level, extra []string) []string {
	env := withoutContract(os.Environ())
	env = append(env,
		contract.EnvWorker+"="+strconv.Itoa(id),
		contract.EnvParentPID+"="+strconv.Itoa(os.Getpid()),
		contract.EnvFD+"="+strconv.Itoa(contract.ChannelFD),
		contract.EnvLogLevel+"="+strings.Replace(strings.ToLower(level.String()), "none", "off", 1), // a nil Logger's NoLevel: nothing is logged
	)
	return append(env, expandAll(extra, id, true)...)
}

// start starts worker id with the child's end of a fresh socketpair as
// fd 3, in its own process group, with a parent-death signal where the
// system has one (workerAttr). The process keeps the parent's end of
// the channel for hello; everything else (the child's end, the pipes'
// write ends) is closed here, right after Start, so EOF on the channel
// and on the pipes means the worker is gone. On error nothing is left
// open.
//
// A failure to create the channel or the pipes, or a fork or exec that
// fails for want of descriptors, memory or processes, is returned as an
// *ownSpawnError: the supervisor's shortage, not the worker's fault.
func (sp *realSpawner) start(id int, exited func()) (handle, error) {
	own := func(err error) error {
		return &ownSpawnError{fmt.Errorf("supervisor: starting worker %d: %w", id, err)}
	}
	parentEnd, childEnd, err := ipc.Socketpair()
	if err != nil {
		return nil, own(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		parentEnd.Close()
		childEnd.Close()
		return nil, own(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		parentEnd.Close()
		childEnd.Close()
		outR.Close()
		outW.Close()
		return nil, own(err)
	}
	env := workerEnv(id, sp.cfg.Logger.GetLevel(), sp.cfg.Env)
	var notify *sdnotify.Socket
	if sp.cfg.Ready == ReadyNotify {
		if notify, err = sdnotify.Listen(sp.cfg.workerUID()); err != nil {
			for _, f := range []*os.File{parentEnd, childEnd, outR, outW, errR, errW} {
				f.Close()
			}
			return nil, own(err)
		}
		env = append(env, notifyEnv(notify, sp.cfg.Watchdog)...)
	}
	cmd := &exec.Cmd{
		Path:        sp.cfg.Executable,
		Args:        append([]string{sp.cfg.Executable}, expandAll(sp.cfg.Args, id, false)...),
		Env:         env,
		Dir:         sp.cfg.Dir,
		Stdout:      outW,
		Stderr:      errW,
		ExtraFiles:  []*os.File{childEnd},
		SysProcAttr: workerAttr(),
	}
	cmd.SysProcAttr.Credential = sp.cfg.Credential
	sp.withListeners(cmd) // listeners.go: fds 3…, the channel after them, the exec shim
	req := spawnRequest{cmd: cmd, err: make(chan error, 1)}
	sp.reqs <- req
	err = <-req.err
	childEnd.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		parentEnd.Close()
		outR.Close()
		errR.Close()
		if notify != nil {
			notify.Close()
		}
		var own *ownSpawnError
		if errors.As(err, &own) || ownFault(err) {
			return nil, &ownSpawnError{fmt.Errorf("supervisor: starting worker %d: %w", id, err)}
		}
		return nil, fmt.Errorf("supervisor: starting worker %d: %w", id, err)
	}
	pid := cmd.Process.Pid
	sp.sweeper.addWorker(pid)
	p := &process{sp: sp, id: id, pd: pid, cmd: cmd, end: parentEnd, outR: outR, errR: errR, notify: notify}
	p.log = sp.log.Named(workerLogName(sp.cfg.Name, id)).With("worker", id, "pid", pid)
	p.relays.Add(2)
	lim := newOutputLimit(time.Now) // one budget for both streams of a worker
	go func() { defer p.relays.Done(); relayTo(outR, p.log, "stdout", lim) }()
	go func() { defer p.relays.Done(); relayTo(errR, p.log, "stderr", lim) }()
	sp.waits.Add(1)
	go func() { defer sp.waits.Done(); p.wait(); exited() }()
	return p, nil
}

func (p *process) pid() int { return p.pd }

// hello exchanges hellos on the channel and returns it. Past a few
// workers, a thread blocked in read(2) per channel costs more in
// wake-ups than it saves in latency, so the channels of larger
// supervisors are polled.
func (p *process) hello(ctx context.Context) (channel, error) {
	end := p.end
	p.end = nil
	conn, err := ipc.NewConn(ctx, end, ipc.ConnConfig{
		Name:     "supervisor",
		Handler:  p.sp.cfg.Handler,
		Logger:   p.log,
		Poll:     p.sp.cfg.Workers > pollAbove,
		MaxFiles: channelMaxFiles, // files.go
	})
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// wait waits for the worker to exit, kills whatever is left of its
// process group while the zombie leader still pins the group id (so the
// number cannot have been reused), reaps it, and lets the output relays
// drain. It is the only place a worker is reaped.
func (p *process) wait() {
	waitExited(p.pd)
	p.mu.Lock()
	unix.Kill(-p.pd, unix.SIGKILL)
	p.cmd.Wait()
	p.state = p.cmd.ProcessState
	p.done = true
	p.mu.Unlock()
	p.sp.sweeper.workerReaped(p.pd) // its children, re-parented to us, are the sweeper's now
	if p.notify != nil {
		p.notify.Close() // ends the notify reader (listenNotify)
	}

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
}

// signal sends sig to the worker's process group and to every
// descendant of the worker outside it (one that called setsid or
// setpgid), found by walking /proc from the worker down before the
// group is signalled (on Linux; elsewhere the group alone). It is a no-op once the worker is reaped: only an
// unreaped leader guarantees the group id still names this worker's
// group. Descendants are signalled through pidfds checked against their
// start time, so a reused pid is never hit.
func (p *process) signal(sig syscall.Signal) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return false
	}
	for _, d := range descendants(p.pd) {
		if d.pgid != p.pd {
			signalExact(d, sig)
		}
	}
	if err := unix.Kill(-p.pd, sig); err != nil {
		// The leader may have moved out of its group; reach it at least.
		p.cmd.Process.Signal(sig)
	}
	return true
}

// status is how the worker ended. Valid once reaped.
func (p *process) status() ExitReason {
	p.mu.Lock()
	defer p.mu.Unlock()
	return exitStatus(p.state)
}
