//go:build darwin || freebsd

package worker

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parentRecheck is how often the watch also compares getppid with the
// supervisor's pid (a process whose parent exits is re-parented), in
// case the supervisor exited between FromEnv's check and the knote's
// attachment (darwin attaches it only to a process it still finds, and
// may find one that is already exiting) or no knote could be attached.
const parentRecheck = time.Second

// watchStop is the ident of the EVFILT_USER event that ends the watch.
const watchStop = 1

// watchParent stands in for the parent-death signal these systems lack
// (a Linux supervisor gives every worker SIGKILL as one): a goroutine
// waits for a kqueue EVFILT_PROC/NOTE_EXIT event on the supervisor,
// process ppid, and sends this process SIGKILL when it comes (or when
// getppid, asked every parentRecheck, no longer names ppid), as the
// kernel would on Linux. It returns a function that ends the watch and
// returns once the goroutine has ended; Serve calls it when it returns.
// The kqueue is the watch's own, closed by that function after the
// goroutine ended; kqueues are never inherited across fork. If no
// kqueue can be had, there is no watch, and EOF on the channel is the
// only sign of the supervisor's end.
func watchParent(ppid int) func() {
	kq, err := unix.Kqueue()
	if err != nil {
		return func() {}
	}
	// With no room for events, an error in a change is the call's.
	ev := make([]unix.Kevent_t, 1)
	unix.SetKevent(&ev[0], watchStop, unix.EVFILT_USER, unix.EV_ADD|unix.EV_CLEAR)
	if _, err := unix.Kevent(kq, ev, nil, nil); err != nil {
		unix.Close(kq)
		return func() {}
	}
	// If this fails (ESRCH: the supervisor has exited since FromEnv
	// looked, or we may not see it), getppid alone is the watch.
	unix.SetKevent(&ev[0], ppid, unix.EVFILT_PROC, unix.EV_ADD|unix.EV_ONESHOT)
	ev[0].Fflags = unix.NOTE_EXIT
	unix.Kevent(kq, ev, nil, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		timeout := unix.NsecToTimespec(parentRecheck.Nanoseconds())
		gone := os.Getppid() != ppid
		for !gone {
			n, err := unix.Kevent(kq, nil, ev, &timeout)
			switch {
			case n > 0 && ev[0].Filter == unix.EVFILT_USER:
				return
			case n > 0:
				gone = true // NOTE_EXIT
			case err == nil:
				gone = os.Getppid() != ppid // timed out: re-parented?
			case err != unix.EINTR:
				time.Sleep(parentRecheck)
			}
		}
		unix.Kill(os.Getpid(), unix.SIGKILL)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			trigger := make([]unix.Kevent_t, 1) // ev is the goroutine's
			unix.SetKevent(&trigger[0], watchStop, unix.EVFILT_USER, 0)
			trigger[0].Fflags = unix.NOTE_TRIGGER
			unix.Kevent(kq, trigger, nil, nil)
			<-done
			unix.Close(kq)
		})
	}
}
