package main

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// reapAsInit makes a process that starts no children of its own
// (`serve`) reap the orphans that the kernel gives it when it is PID 1
// of its pid namespace (a container's init), as tini does: each one
// that exits, in a container that runs `serve` alone, would otherwise
// stay a zombie until the container ends. (`run` does this and more
// through package supervisor's sweeper.) It returns a function that
// stops the reaper and waits for it to end; anywhere but PID 1 it does
// nothing. Waiting for any child is safe only because the process has
// none whose exit status someone else waits for.
func reapAsInit() (stop func()) {
	if os.Getpid() != 1 {
		return func() {}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	done, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		for {
			reapExited()
			select {
			case <-sig: // SIGCHLDs coalesce: reapExited takes every one
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		<-ended
	}
}

// reapExited reaps every child that has exited, without waiting: also
// one created by clone(2) with another exit signal than SIGCHLD (WALL).
func reapExited() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
