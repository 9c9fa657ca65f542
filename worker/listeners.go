package worker

// Listeners: the sockets a supervisor binds and passes to every worker
// in the systemd socket-activation layout (see internal/contract and
// docs/LISTENERS.md). This is the layout's reader, in a few lines of
// its own rather than go-systemd's activation package, which would link
// crypto/tls into every worker. It hands out *os.File values, not
// net.Listeners: the supervisor command is itself a worker (it
// re-executes itself), and package net would link the cgo resolver into
// it, making it a dynamically linked binary that pays the dynamic
// loader at every worker start. A program that wants a net.Listener
// imports net itself (net.FileListener).

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
)

// ErrNoListener reports that the supervisor passed no listener of the
// name asked for.
var ErrNoListener = errors.New("worker: no such listener")

// maxListenFDs bounds LISTEN_FDS (the supervisor passes at most 64).
const maxListenFDs = 1024

// Listener is a socket that the supervisor passed to this worker.
type Listener struct {
	// Name is its name in LISTEN_FDNAMES, "unknown" if it has none.
	Name string
	// File is the socket, close-on-exec: for the supervisor command's
	// listeners (`run --listen`) a non-blocking listening TCP or Unix
	// stream socket, shared with the supervisor and the other workers.
	File *os.File
}

// inherited is what FromEnv found of the listeners: their descriptors
// and names, or why they are unusable. Listeners turns them into files
// once.
type inherited struct {
	fds   []int
	names []string
	err   error

	once sync.Once
	ls   []Listener
	lerr error
}

// channelFD returns the channel's descriptor number as PAIRVISOR_FD
// says: 3 when it is missing (supervisors before listeners), else a
// number from 3.
func channelFD(getenv func(string) (string, bool)) (int, error) {
	s, ok := getenv(contract.EnvFD)
	if !ok {
		return contract.ChannelFD, nil
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < contract.ChannelFD || fd > contract.ListenFDStart+maxListenFDs {
		return 0, fmt.Errorf("%s=%q is not a descriptor number from %d", contract.EnvFD, s, contract.ChannelFD)
	}
	return fd, nil
}

// parseListenEnv reads the systemd layout from LISTEN_FDS,
// LISTEN_FDNAMES and LISTEN_PID, for process pid whose channel is on
// chfd. Descriptors that are not ours (no LISTEN_FDS, or a LISTEN_PID
// that is not pid, as sd_listen_fds(3) requires) are none. A layout
// that is ours but malformed is an error.
func parseListenEnv(getenv func(string) (string, bool), pid, chfd int) (fds []int, names []string, err error) {
	nStr, ok := getenv(contract.EnvListenFDs)
	if !ok {
		return nil, nil, nil
	}
	pidStr, _ := getenv(contract.EnvListenPID)
	if p, err := strconv.Atoi(pidStr); err != nil || p != pid {
		return nil, nil, nil
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, nil, fmt.Errorf("%s=%q is not a count of descriptors", contract.EnvListenFDs, nStr)
	}
	if n == 0 {
		return nil, nil, nil
	}
	if chfd != contract.ListenFDStart+n {
		return nil, nil, fmt.Errorf("%s=%d listeners, so the channel should be fd %d, but %s is %d", contract.EnvListenFDs, n, contract.ListenFDStart+n, contract.EnvFD, chfd)
	}
	names = make([]string, n)
	if namesStr, ok := getenv(contract.EnvListenFDNames); ok {
		parts := strings.Split(namesStr, ":")
		if len(parts) != n {
			return nil, nil, fmt.Errorf("%s has %d names for %d descriptors", contract.EnvListenFDNames, len(parts), n)
		}
		for i, p := range parts {
			if !contract.ValidListenName(p) {
				return nil, nil, fmt.Errorf("%s: name %d, %q, is not a valid listener name", contract.EnvListenFDNames, i+1, p)
			}
		}
		copy(names, parts)
	} else {
		for i := range names {
			names[i] = contract.UnnamedListener
		}
	}
	fds = make([]int, n)
	for i := range fds {
		fds[i] = contract.ListenFDStart + i
	}
	return fds, names, nil
}

// markInheritedCloexec marks the channel and the listeners of a worker
// close-on-exec, so that no child of the worker inherits them. The
// package's init calls it, before main and before the init functions of
// the packages that import this one; FromEnv calls it again. It is a
// few fcntl calls, and only in a process the environment calls a
// worker.
func markInheritedCloexec() {
	if _, ok := os.LookupEnv(contract.EnvWorker); !ok {
		return
	}
	chfd, err := channelFD(os.LookupEnv)
	if err != nil {
		return // FromEnv refuses
	}
	unix.CloseOnExec(chfd)
	fds, _, _ := parseListenEnv(os.LookupEnv, os.Getpid(), chfd)
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
}

// takeListenEnv reads the listeners' layout for FromEnv, which removes
// the variables once the process proves a worker (clearListenEnv), as
// sd_listen_fds(1) does, so the worker's children do not take the
// descriptors for theirs.
func takeListenEnv(chfd int) *inherited {
	fds, names, err := parseListenEnv(os.LookupEnv, os.Getpid(), chfd)
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return &inherited{fds: fds, names: names, err: err}
}

// clearListenEnv removes LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID.
func clearListenEnv() {
	for _, k := range []string{contract.EnvListenFDs, contract.EnvListenFDNames, contract.EnvListenPID} {
		os.Unsetenv(k)
	}
}

// Listeners returns the sockets the supervisor passed to this worker
// (Config.Listeners of package supervisor, or `run --listen`), in their
// order, named as in LISTEN_FDNAMES; none, and no error, for a worker
// given none. The first call wraps each inherited descriptor in an
// *os.File; later calls return the same files. The files are the
// caller's: it closes each once done with it. To serve one with package
// net, make a listener of it and close the file (the listener holds a
// duplicate of its own):
//
//	f, err := w.Listener("http")
//	...
//	ln, err := net.FileListener(f)
//	f.Close()
//	...
//	go http.Serve(ln, handler)
//
// Closing a worker's file or listener stops this worker accepting on
// it (http.Server.Shutdown closes the listener), while the socket,
// which the supervisor and the other workers hold, goes on accepting
// connections for them. It fails only if the layout was malformed.
func (w *Worker) Listeners() ([]Listener, error) {
	in := w.listen
	if in == nil {
		return nil, nil
	}
	in.once.Do(func() {
		if in.err != nil {
			in.lerr = fmt.Errorf("worker: listeners: %w", in.err)
			return
		}
		for i, fd := range in.fds {
			in.ls = append(in.ls, Listener{Name: in.names[i], File: os.NewFile(uintptr(fd), in.names[i])})
		}
	})
	return in.ls, in.lerr
}

// Listener returns the file of the first listener named name (see
// Listeners), or an error wrapping ErrNoListener.
func (w *Worker) Listener(name string) (*os.File, error) {
	ls, err := w.Listeners()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ls))
	for _, l := range ls {
		if l.Name == name {
			return l.File, nil
		}
		names = append(names, l.Name)
	}
	return nil, fmt.Errorf("%w: %q (the supervisor passed %d: %s)", ErrNoListener, name, len(ls), strings.Join(names, ", "))
}
