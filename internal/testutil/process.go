//go:build linux

package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// ReapWait bounds the wait for a killed process to be reaped. It is
// generous: the suites run under -race on two busy cores.
const ReapWait = 30 * time.Second

// A Process is a child process that a test started (a helper playing a
// role, a CLI run, an external tool), with its output captured.
type Process struct {
	Cmd *exec.Cmd

	// Stdout and Stderr hold what the process wrote, unless the caller
	// gave Cmd writers of its own before StartProcess.
	Stdout, Stderr Buffer

	done chan struct{} // closed once Cmd.Wait has returned
	err  error         // Cmd.Wait's result, set before done is closed
	read int           // bytes of Stdout that Line has returned
}

// StartProcess starts cmd and waits for it in the background. It fails
// the test if cmd does not start. The caller still owns any ExtraFiles
// (close the child's ends after StartProcess, so that their EOF means
// the child is gone). At the end of the test a process still running
// is killed; either way it is reaped, and one not reaped within
// ReapWait fails the test.
//
// Cmd.Wait returns only once the process has exited and its output is
// copied: a grandchild that keeps the output pipes open keeps it (and
// the goroutine that calls it) waiting, unless the caller sets
// Cmd.WaitDelay.
func StartProcess(tb testing.TB, cmd *exec.Cmd) *Process {
	tb.Helper()
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &p.Stderr
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %q: %v", cmd.Args, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		if !p.Exited() {
			cmd.Process.Kill()
		}
		select {
		case <-p.done:
		case <-time.After(ReapWait):
			tb.Errorf("process %d %q not reaped within %v of SIGKILL\n%s", p.PID(), cmd.Args, ReapWait, p.Output())
		}
	})
	return p
}

// PID returns the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done returns a channel that is closed once the process has exited and
// been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited and been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns what Cmd.Wait returned. Call it only once Done is closed.
func (p *Process) Err() error { return p.err }

// ExitCode returns the exit status, or -1 if a signal ended the
// process. Call it only once Done is closed.
func (p *Process) ExitCode() int { return p.Cmd.ProcessState.ExitCode() }

// Output returns the captured output, for failure messages.
func (p *Process) Output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", p.Stdout.String(), p.Stderr.String())
}

// Wait waits up to timeout for the process to exit and returns what
// Cmd.Wait returned. If it has not exited by then, Wait kills it, fails
// the test (without stopping it) and returns the resulting error.
func (p *Process) Wait(tb testing.TB, timeout time.Duration) error {
	tb.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
	}
	p.Cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(ReapWait):
		tb.Fatalf("process %d %q did not exit within %v, nor after SIGKILL\n%s", p.PID(), p.Cmd.Args, timeout, p.Output())
	}
	tb.Errorf("process %d %q did not exit within %v; killed (%v)\n%s", p.PID(), p.Cmd.Args, timeout, p.err, p.Output())
	return p.err
}

// WaitOK is Wait that also fails the test, without stopping it, unless
// the process exited with status 0.
func (p *Process) WaitOK(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := p.Wait(tb, timeout); err != nil {
		tb.Errorf("process %d %q: %v\n%s", p.PID(), p.Cmd.Args, err, p.Output())
	}
}

// Stop sends sig and waits up to timeout for the process to exit, as
// Wait does, and returns its exit status. A process that has exited
// already is not an error.
func (p *Process) Stop(tb testing.TB, sig os.Signal, timeout time.Duration) int {
	tb.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil && !p.Exited() {
		tb.Fatalf("signal %v to %d: %v", sig, p.PID(), err)
	}
	p.Wait(tb, timeout)
	return p.ExitCode()
}

// Line waits up to timeout for the next complete line of Stdout, the
// first one that Line has not returned yet, and returns it without its
// newline. It fails the test if the process exits without writing one.
// Only one goroutine may call Line.
func (p *Process) Line(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	deadline := time.After(timeout)
	done := p.done
	for {
		out, wrote := p.Stdout.next()
		if line, _, ok := strings.Cut(out[p.read:], "\n"); ok {
			p.read += len(line) + 1
			return line
		}
		if done == nil { // it has exited, and every write came before
			tb.Fatalf("process %d %q exited (%v) without another line\n%s", p.PID(), p.Cmd.Args, p.err, p.Output())
		}
		select {
		case <-wrote:
		case <-done:
			done = nil // one more look at the output, then fail
		case <-deadline:
			tb.Fatalf("no line from process %d %q within %v\n%s", p.PID(), p.Cmd.Args, timeout, p.Output())
		}
	}
}
