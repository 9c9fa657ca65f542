//go:build linux

package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Orphans. While Run runs, the process is a child subreaper
// (PR_SET_CHILD_SUBREAPER): a descendant whose parent dies is
// re-parented to us instead of to init, so a worker's grandchild that
// called setsid cannot outlive its worker unseen. The sweeper finds
// those adopted orphans among our children and kills or reaps them.
//
// It must never touch children it did not adopt: a worker of any
// supervisor in the process, or a child the program started itself,
// whose exit status belongs to whoever called exec.Cmd.Wait. Such
// children were started through os.StartProcess, which holds a pidfd
// for each child until it is waited for; a child with no pidfd in our
// descriptor table was adopted. (Children started with raw fork or
// syscall.ForkExec hold none and would be taken for orphans: do not mix
// those with a running supervisor.) Candidates are checked against
// this supervisor's own workers first, so the descriptor table is read
// only when there is a child nobody here knows.
//
// An adopted orphan is
//   - reaped, if it is a zombie;
//   - left alone while it is in the process group of a child started
//     through os/exec (for a worker: its background job, killed with
//     its group when the worker ends) or in our own group (not from a
//     worker: workers lead their own groups);
//   - left alone too when the process is PID 1 (a container's init)
//     and the orphan is not in the session of a worker (see below);
//   - otherwise killed with SIGKILL, with its descendants and its
//     group, as soon as it is found, and reaped: it left its worker's
//     group (setsid, setpgid) and lost its parent, or its worker is
//     gone, and nothing ties it to a worker any more.
//
// PID 1. A subreaper adopts only its own descendants' orphans; the
// init of a pid namespace adopts every orphan in it: also those of
// processes that a `docker exec`, `kubectl exec` or nsenter started in
// the container, which are the operator's, not a worker's. Killing
// those would break `kubectl exec pod -- sh -c 'job &'`, so PID 1 does
// what tini does with them: leaves them running and reaps them when
// they exit (the kernel kills what is left when PID 1 exits). What came
// from a worker is known by its session: every worker leads a session
// of its own (Setsid), which its descendants keep unless they call
// setsid themselves, so an orphan whose session is a worker's, live or
// reaped, is a worker's and is handled as above. The sessions of reaped
// workers are remembered until a sweep finds no orphan left in them.
// A worker's descendant that started a session of its own (a daemon's
// double fork with setsid) cannot be told from the operator's
// processes: as PID 1 it is left running and reaped, not killed.
//
// /proc must be the one of our pid namespace (a container's own, or
// unshare --mount-proc): another namespace's /proc names other
// processes by the numbers of ours, so the sweeper does not run then
// (orphanSupport says why, and Run logs it).
//
// Sweeps run every orphanTick, whenever a worker or an orphan the
// sweeper killed is reaped (its children are ours then), and at the end
// of Run until no orphan is left to kill. They do not wait for SIGCHLD:
// only cmd/ handles signals, and os/signal would keep a goroutine and
// the signal's disposition for the life of the process. An adopted
// zombie that nobody killed is reaped within orphanTick.

// orphanTick is how often the sweeper looks for adopted orphans when
// nothing prompts it: being re-parented makes no event.
const orphanTick = time.Second

// orphanWait bounds the wait for one killed orphan to die.
const orphanWait = 5 * time.Second

// maxTree bounds a walk of a process's descendants.
const maxTree = 4096

// procInfo is what /proc/PID/stat says about a process. pid and start
// together name one process: a pid alone may have been reused.
type procInfo struct {
	pid, ppid, pgid, sid int
	state                byte
	start                uint64 // clock ticks after boot
	comm                 string
}

// readProc reads /proc/PID/stat. It reports false if there is no such
// process (or the file cannot be read or parsed).
func readProc(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice threads
	// itrealvalue starttime ...; comm may hold spaces and parentheses.
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return procInfo{}, false
	}
	f := bytes.Fields(b[close+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return procInfo{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err2 := strconv.Atoi(string(f[2]))
	sid, err3 := strconv.Atoi(string(f[3]))
	start, err4 := strconv.ParseUint(string(f[19]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, sid: sid, state: f[0][0], start: start, comm: string(b[open+1 : close])}, true
}

// haveChildrenFiles reports whether /proc/PID/task/TID/children exists
// (CONFIG_PROC_CHILDREN); without it children are found by scanning
// every process's stat file.
var haveChildrenFiles = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/task/" + strconv.Itoa(os.Getpid()) + "/children")
	return err == nil
})

// childrenOf returns the pids of pid's children: of each of its
// threads, since a child belongs to the thread that forked it.
func childrenOf(pid int) []int {
	var kids []int
	if haveChildrenFiles() {
		dir := "/proc/" + strconv.Itoa(pid) + "/task/"
		d, err := os.Open(dir)
		if err != nil {
			return nil
		}
		tids, _ := d.Readdirnames(-1)
		d.Close()
		for _, tid := range tids {
			b, err := os.ReadFile(dir + tid + "/children")
			if err != nil {
				continue // the thread ended
			}
			for _, f := range bytes.Fields(b) {
				if k, err := strconv.Atoi(string(f)); err == nil {
					kids = append(kids, k)
				}
			}
		}
		return kids
	}
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if k, err := strconv.Atoi(n); err == nil {
			if p, ok := readProc(k); ok && p.ppid == pid {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

// descendants returns pid's descendants, parents before their children,
// at most maxTree of them.
func descendants(pid int) []procInfo {
	var found []procInfo
	queue := []int{pid}
	for len(queue) > 0 && len(found) < maxTree {
		parent := queue[0]
		queue = queue[1:]
		for _, k := range childrenOf(parent) {
			if p, ok := readProc(k); ok && p.ppid == parent {
				found = append(found, p)
				queue = append(queue, k)
			}
		}
	}
	return found
}

// signalExact sends sig to the process p describes, and to no other
// process that may have taken its pid since: it opens a pidfd, then
// checks that the process behind it started when p did.
func signalExact(p procInfo, sig unix.Signal) {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			if now, ok := readProc(p.pid); ok && now.start == p.start {
				unix.Kill(p.pid, sig) // no pidfds: a small race remains
			}
		}
		return
	}
	defer unix.Close(fd)
	if now, ok := readProc(p.pid); ok && now.start == p.start {
		unix.PidfdSendSignal(fd, sig, nil, 0)
	}
}

// pidfdOwners returns the pids for which this process holds a pidfd:
// the children os.StartProcess started and nobody has waited for yet
// (and processes someone here is watching through a pidfd).
func pidfdOwners() (map[int]bool, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	owned := make(map[int]bool)
	for _, n := range names {
		target, err := os.Readlink("/proc/self/fd/" + n)
		if err != nil || target != "anon_inode:[pidfd]" && !strings.HasPrefix(target, "pidfd:") {
			continue
		}
		if pid, ok := pidfdPID("/proc/self/fdinfo/" + n); ok {
			owned[pid] = true
		}
	}
	return owned, nil
}

// pidfdPID reads the "Pid:" line of a pidfd's fdinfo file.
func pidfdPID(fdinfo string) (int, bool) {
	b, err := os.ReadFile(fdinfo)
	if err != nil {
		return 0, false
	}
	_, rest, ok := bytes.Cut(b, []byte("\nPid:"))
	if !ok {
		return 0, false
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	pid, err := strconv.Atoi(string(bytes.TrimSpace(line)))
	return pid, err == nil && pid > 0
}

// orphanSupport reports why orphans cannot be told from the program's
// own children here (nil if they can): the sweeper needs pidfds whose
// fdinfo names their pid (Linux 5.4), and a /proc of our own pid
// namespace.
var orphanSupport = sync.OnceValue(func() error {
	if self, err := os.Readlink("/proc/self"); err != nil {
		return err
	} else if self != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("/proc belongs to another pid namespace (it calls us %s, we are %d): mount one of ours (a container's own /proc, unshare --mount-proc)", self, os.Getpid())
	}
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(fd)
	if pid, ok := pidfdPID("/proc/self/fdinfo/" + strconv.Itoa(fd)); !ok || pid != os.Getpid() {
		return errors.New("pidfd fdinfo names no pid")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return err
	}
	return nil
})

// subreaper counts the Runs in progress in this process, which share
// its one child-subreaper attribute. It is package state because the
// attribute is the process's: the first Run sets it, the last clears it
// (unless the program had set it before).
var subreaper struct {
	mu    sync.Mutex
	refs  int
	clear bool // the last release clears the attribute
}

// acquireSubreaper makes the process a child subreaper for one Run.
func acquireSubreaper() error {
	subreaper.mu.Lock()
	defer subreaper.mu.Unlock()
	if subreaper.refs == 0 {
		var was int32
		if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0, 0, 0); err != nil {
			return os.NewSyscallError("prctl", err)
		}
		if was == 0 {
			if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
				return os.NewSyscallError("prctl", err)
			}
		}
		subreaper.clear = was == 0
	}
	subreaper.refs++
	return nil
}

// releaseSubreaper ends one Run's hold on the attribute.
func releaseSubreaper() {
	subreaper.mu.Lock()
	defer subreaper.mu.Unlock()
	subreaper.refs--
	if subreaper.refs == 0 && subreaper.clear {
		unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}
}

// sweeper finds and disposes of the orphans adopted by the process (see
// the comment at the top of this file). Each Supervisor has one; all
// of them sweep every orphan of the process, and the pidfd a sweeper
// holds on an orphan it is killing keeps the others off it.
type sweeper struct {
	log  hclog.Logger
	poke chan struct{} // a sweep is wanted soon

	mu       sync.Mutex
	workers  map[int]bool // this supervisor's workers, until reaped
	inflight map[int]bool // orphans being killed
	// ended holds the sessions of reaped workers (each worker leads
	// one, its id the worker's pid) until a sweep finds no orphan in
	// them; as PID 1 an orphan is a worker's if its session is a
	// worker's. Bounded by the workers reaped between two sweeps and
	// the sessions that still have orphans (which are killed).
	ended map[int]bool
	kills sync.WaitGroup
}

func newSweeper(log hclog.Logger) *sweeper {
	return &sweeper{log: log, poke: make(chan struct{}, 1), workers: make(map[int]bool), inflight: make(map[int]bool),
		ended: make(map[int]bool)}
}

// addWorker records a worker started by this supervisor.
func (sw *sweeper) addWorker(pid int) {
	sw.mu.Lock()
	sw.workers[pid] = true
	sw.mu.Unlock()
}

// workerReaped forgets a reaped worker, but not its session, and asks
// for a sweep: its children are ours now.
func (sw *sweeper) workerReaped(pid int) {
	sw.mu.Lock()
	delete(sw.workers, pid)
	sw.ended[pid] = true
	sw.mu.Unlock()
	sw.wake()
}

// wake asks for a sweep soon.
func (sw *sweeper) wake() {
	select {
	case sw.poke <- struct{}{}:
	default:
	}
}

// run sweeps on pokes and every orphanTick until stop is closed, then
// sweeps until no orphan is left to kill, and returns once every orphan
// it killed is reaped (or orphanWait passed for it).
func (sw *sweeper) run(stop <-chan struct{}) {
	t := time.NewTicker(orphanTick)
	defer t.Stop()
	for {
		select {
		case <-stop:
			sw.drain()
			return
		case <-t.C:
		case <-sw.poke:
		}
		sw.sweep()
	}
}

// drain sweeps until a sweep finds nothing to do and every orphan it
// killed is reaped: killing an orphan may leave us its children in
// turn. A process that survives SIGKILL does not keep it longer than
// twice orphanWait.
func (sw *sweeper) drain() {
	deadline := time.Now().Add(2 * orphanWait)
	for sw.sweep() > 0 && time.Now().Before(deadline) {
		sw.kills.Wait()
	}
	sw.kills.Wait()
}

// sweep looks at the process's children once: it reaps adopted zombies
// and starts killing the adopted orphans that belong to no live group.
// It returns how many orphans it reaped or began to kill.
func (sw *sweeper) sweep() int {
	me := os.Getpid()
	kids := childrenOf(me)
	sw.mu.Lock()
	cands := kids[:0]
	for _, pid := range kids {
		if !sw.workers[pid] && !sw.inflight[pid] {
			cands = append(cands, pid)
		}
	}
	sw.mu.Unlock()
	if len(cands) == 0 {
		sw.mu.Lock()
		if len(sw.inflight) == 0 {
			clear(sw.ended) // no orphan in any session
		}
		sw.mu.Unlock()
		return 0
	}
	// Read after the children: a child os/exec started before the
	// list was read holds its pidfd by now.
	owned, err := pidfdOwners()
	if err != nil {
		return 0 // whose they are is unknown; leave them until next time
	}
	ownGroup := unix.Getpgrp()
	asInit := me == 1                // a pid namespace's init: every orphan in it comes to us
	inSessions := make(map[int]bool) // the sessions orphans are in
	n := 0
	for _, pid := range cands {
		if owned[pid] {
			continue
		}
		c, ok := readProc(pid)
		if !ok || c.ppid != me {
			continue
		}
		inSessions[c.sid] = true
		switch {
		case c.state == 'Z':
			if sw.reap(c) {
				n++
				sw.wake() // its children are ours now
			}
		case c.pgid == ownGroup || owned[c.pgid] || sw.isWorker(c.pgid):
			// A background job of a live child's group, or not from a
			// worker: left alone.
		case asInit && !owned[c.sid] && !sw.workerSession(c.sid):
			// PID 1: an orphan of the namespace, not of a worker:
			// left alone, reaped when it exits.
		default:
			sw.kill(c)
			n++
		}
	}
	// A session is forgotten once no orphan is in it, and no kill is
	// under way (the children of the orphan being killed come to us).
	sw.mu.Lock()
	for sid := range sw.ended {
		if !inSessions[sid] && len(sw.inflight) == 0 {
			delete(sw.ended, sid)
		}
	}
	sw.mu.Unlock()
	return n
}

func (sw *sweeper) isWorker(pid int) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.workers[pid]
}

// workerSession reports whether sid is the session of one of this
// supervisor's workers, live or reaped.
func (sw *sweeper) workerSession(sid int) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.workers[sid] || sw.ended[sid]
}

// reap collects the exit status of c, an adopted zombie.
func (sw *sweeper) reap(c procInfo) bool {
	fd, err := unix.PidfdOpen(c.pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if now, ok := readProc(c.pid); !ok || now.start != c.start {
		return false
	}
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, fd, &si, unix.WEXITED|unix.WNOHANG, nil); err != nil {
		return false
	}
	sw.log.Debug("reaped an adopted orphan", "pid", c.pid, "command", c.comm)
	return true
}

// kill starts killing c, an adopted orphan, with its descendants and
// its process group, and reaping it.
func (sw *sweeper) kill(c procInfo) {
	sw.mu.Lock()
	sw.inflight[c.pid] = true
	sw.mu.Unlock()
	sw.kills.Add(1)
	go func() {
		defer sw.kills.Done()
		defer func() {
			sw.mu.Lock()
			delete(sw.inflight, c.pid)
			sw.mu.Unlock()
			sw.wake() // its children are ours now
		}()
		sw.killAndReap(c)
	}()
}

func (sw *sweeper) killAndReap(c procInfo) {
	fd, err := unix.PidfdOpen(c.pid, unix.PIDFD_NONBLOCK)
	wait := err == nil
	if errors.Is(err, unix.EINVAL) { // before Linux 5.10: reaped by a later sweep
		fd, err = unix.PidfdOpen(c.pid, 0)
	}
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	if now, ok := readProc(c.pid); !ok || now.start != c.start {
		return
	}
	tree := descendants(c.pid)
	sw.log.Warn("killing a process that escaped its worker", "pid", c.pid, "command", c.comm, "descendants", len(tree))
	for _, d := range tree {
		signalExact(d, unix.SIGKILL)
	}
	unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	if c.pgid == c.pid {
		unix.Kill(-c.pid, unix.SIGKILL) // its group, pinned by it until we reap it
	}
	if !wait {
		return
	}
	f.SetReadDeadline(time.Now().Add(orphanWait))
	rc, err := f.SyscallConn()
	if err == nil {
		var si unix.Siginfo
		err = rc.Read(func(fd uintptr) bool {
			err := unix.Waitid(unix.P_PIDFD, int(fd), &si, unix.WEXITED, nil)
			return err != unix.EAGAIN && err != unix.EINTR // EAGAIN: still alive
		})
	}
	if err != nil {
		sw.log.Warn("an orphan survived SIGKILL", "pid", c.pid, "command", c.comm, "error", fmt.Errorf("waiting for it: %w", err))
	}
}
