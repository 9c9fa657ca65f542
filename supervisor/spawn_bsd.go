//go:build darwin || freebsd

package supervisor

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// kqueueRetry is the pause before trying again when a kqueue cannot be
// made or armed (out of descriptors or memory): a worker must never be
// taken for dead because it could not be watched.
const kqueueRetry = 100 * time.Millisecond

// workerAttr returns the attributes a worker process starts with: its
// own session, as on Linux (see spawn_linux.go). These systems have no
// parent-death signal; package worker watches its parent instead, and
// a worker also ends on EOF on its channel.
func workerAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true}
}

// waitExited blocks until the child pid has exited, without reaping it,
// so that its zombie still pins its process group id when the caller
// signals the group. It waits for a kqueue EVFILT_PROC/NOTE_EXIT event
// on the pid, in a kevent call that holds an OS thread while the
// worker lives. A pid the kernel no longer finds (ESRCH) has exited:
// this process is its only reaper. exitRecheck bounds each wait where
// an exit could slip between the lookup and the knote's attachment
// (darwin), and exitedNow is asked then.
//
// The kqueue is this call's own and closed before it returns; kqueues
// are never inherited across fork, so no child can hold it.
func waitExited(pid int) {
	kq, err := unix.Kqueue()
	for err != nil {
		time.Sleep(kqueueRetry)
		kq, err = unix.Kqueue()
	}
	defer unix.Close(kq)
	change := make([]unix.Kevent_t, 1)
	unix.SetKevent(&change[0], pid, unix.EVFILT_PROC, unix.EV_ADD|unix.EV_ONESHOT)
	change[0].Fflags = unix.NOTE_EXIT
	// With no room for events, an error in the change is the call's.
	for {
		_, err := unix.Kevent(kq, change, nil, nil)
		if err == nil {
			break
		}
		if err == unix.ESRCH {
			return
		}
		if err != unix.EINTR {
			time.Sleep(kqueueRetry)
		}
	}
	var timeout *unix.Timespec
	if exitRecheck > 0 {
		ts := unix.NsecToTimespec(exitRecheck.Nanoseconds())
		timeout = &ts
	}
	events := make([]unix.Kevent_t, 1)
	for {
		n, err := unix.Kevent(kq, nil, events, timeout)
		switch {
		case n > 0:
			return
		case err == nil && exitedNow(pid): // timed out
			return
		case err != nil && err != unix.EINTR:
			time.Sleep(kqueueRetry)
		}
	}
}
