package supervisor

// Listeners: sockets the caller binds once and every worker inherits,
// in the systemd socket-activation layout (see internal/contract and
// docs/LISTENERS.md).
//
// Descriptors and their owners:
//
//   - Config.Listeners[i].File is the caller's. The supervisor never
//     closes it and never changes its flags; the caller may close it as
//     soon as New has returned.
//   - New takes one close-on-exec duplicate of each (realSpawner.lfiles),
//     not registered with the runtime's poller, so the supervisor is not
//     woken by the connections its workers accept. The Supervisor owns
//     them: Run closes them when it returns, after every worker is
//     reaped; a Supervisor that is never run leaves them to the garbage
//     collector (os.File's cleanup closes them).
//   - Each spawn names those duplicates in exec.Cmd.ExtraFiles; the child
//     dup2s them to fds 3…3+n−1 after the fork. Nothing is opened per
//     spawn.
//
// LISTEN_PID must be the worker's own pid, unknown before the fork, and
// Go cannot run code in the child between fork and exec; so a worker
// with listeners is started through internal/execshim: this program's
// own executable with PAIRVISOR_EXEC_SHIM naming the real one, whose
// init sets LISTEN_PID=getpid() and execs it (same pid, same fds).

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/execshim"
)

// MaxListeners is the most listeners a Config may have.
const MaxListeners = 64

// Listener is a descriptor, normally a listening socket, that every
// worker inherits in the systemd socket-activation layout: the
// listeners are fds 3, 4, … in Config.Listeners order, LISTEN_FDS
// counts them, LISTEN_FDNAMES names them (colon-separated) and
// LISTEN_PID is the worker's pid; the channel follows them (fd 3+n,
// named by PAIRVISOR_FD). A program written for systemd socket
// activation runs unchanged, and a Go worker gets them from
// worker.Worker.Listeners.
//
// The caller binds the socket and owns File: see [Config].Listeners.
// Every worker shares the socket, and with it the open file
// description's flags: a listener is best passed non-blocking (as Go's
// net package creates them), and no worker should clear O_NONBLOCK, or
// the accept(2) of a Go worker sharing it would block in the kernel
// where closing the listener cannot interrupt it.
type Listener struct {
	// Name is the listener's name in LISTEN_FDNAMES: 1 to 255 of A-Z,
	// a-z, 0-9, '_', '.' and '-'. Empty means "unknown", systemd's name
	// for an unnamed descriptor. Names may repeat, as under systemd.
	Name string
	// File is the descriptor.
	File *os.File
}

// NewListener returns a Listener named name for a close-on-exec
// duplicate of c's descriptor: a *net.TCPListener, a *net.UnixListener,
// an *os.File, or anything else with a SyscallConn. The caller owns
// both c, which it may close at once, and the returned File. Unlike the
// File methods of package net, the duplicate is not registered with the
// runtime's poller (this process is not woken by each connection that
// a worker accepts) and its Fd method leaves O_NONBLOCK, which every
// holder of the socket shares, as it is.
func NewListener(name string, c syscall.Conn) (Listener, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Listener{}, fmt.Errorf("supervisor: listener %q: %w", name, err)
	}
	f, err := dupUnpolledConn(rc, name)
	if err != nil {
		return Listener{}, fmt.Errorf("supervisor: listener %q: %w", name, err)
	}
	return Listener{Name: name, File: f}, nil
}

// dupUnpolledConn duplicates rc's descriptor with dupUnpolled.
func dupUnpolledConn(rc syscall.RawConn, name string) (*os.File, error) {
	var (
		f    *os.File
		derr error
	)
	if err := rc.Control(func(fd uintptr) { f, derr = dupUnpolled(int(fd), name) }); err != nil {
		return nil, err
	}
	return f, derr
}

// checkListeners validates Config.Listeners; env is Config.Env.
func checkListeners(ls []Listener, env []string) error {
	if len(ls) == 0 {
		return nil
	}
	if len(ls) > MaxListeners {
		return fmt.Errorf("%w: %d Listeners, more than the limit of %d", ErrConfig, len(ls), MaxListeners)
	}
	for i, l := range ls {
		if l.Name != "" && !contract.ValidListenName(l.Name) {
			return fmt.Errorf("%w: Listeners[%d]: name %q: want 1 to %d of A-Z, a-z, 0-9, '_', '.' and '-'", ErrConfig, i, l.Name, contract.MaxListenNameLen)
		}
		if l.File == nil {
			return fmt.Errorf("%w: Listeners[%d] (%s) has no File", ErrConfig, i, listenerName(l))
		}
	}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case contract.EnvListenFDs, contract.EnvListenFDNames, contract.EnvListenPID:
			return fmt.Errorf("%w: Env sets %s, which the supervisor sets for workers with Listeners", ErrConfig, k)
		}
	}
	return nil
}

// listenerName is l's name in LISTEN_FDNAMES.
func listenerName(l Listener) string {
	if l.Name == "" {
		return contract.UnnamedListener
	}
	return l.Name
}

// takeListeners makes the spawner's own duplicates of the configured
// listeners and finds the shim; on error nothing is left open. Called
// by New.
func (sp *realSpawner) takeListeners() error {
	ls := sp.cfg.Listeners
	if len(ls) == 0 {
		return nil
	}
	shim, err := execshim.Path()
	if err != nil {
		return fmt.Errorf("supervisor: finding own executable for the exec shim: %w", err)
	}
	files := make([]*os.File, 0, len(ls))
	names := make([]string, 0, len(ls))
	for i, l := range ls {
		rc, err := l.File.SyscallConn()
		var f *os.File
		if err == nil {
			f, err = dupUnpolledConn(rc, listenerName(l))
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return fmt.Errorf("supervisor: duplicating Listeners[%d] (%s): %w", i, listenerName(l), err)
		}
		files = append(files, f)
		names = append(names, listenerName(l))
	}
	sp.lfiles, sp.lnames, sp.shim = files, strings.Join(names, ":"), shim
	return nil
}

// closeListeners closes the spawner's duplicates. Called once every
// worker is reaped.
func (sp *realSpawner) closeListeners() {
	for _, f := range sp.lfiles {
		f.Close()
	}
	sp.lfiles = nil
}

// withListeners adapts a worker's command to the listeners, if there
// are any: the listeners become fds 3…3+n−1 ahead of the channel, the
// channel moves to 3+n (PAIRVISOR_FD, replacing the "3" workerEnv
// wrote), LISTEN_FDS and LISTEN_FDNAMES are set, and the command runs
// through the exec shim, which adds LISTEN_PID.
func (sp *realSpawner) withListeners(cmd *exec.Cmd) {
	n := len(sp.lfiles)
	if n == 0 {
		return
	}
	cmd.ExtraFiles = append(append(make([]*os.File, 0, n+len(cmd.ExtraFiles)), sp.lfiles...), cmd.ExtraFiles...)
	fd := contract.EnvFD + "=" + strconv.Itoa(contract.ListenFDStart+n)
	for i, kv := range cmd.Env {
		if strings.HasPrefix(kv, contract.EnvFD+"=") {
			cmd.Env[i] = fd
		}
	}
	cmd.Env = append(cmd.Env,
		contract.EnvListenFDs+"="+strconv.Itoa(n),
		contract.EnvListenFDNames+"="+sp.lnames,
		execshim.Env(cmd.Path),
	)
	cmd.Path = sp.shim
}
