package supervisor

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ExitKind says what ended a worker process, or kept one from running.
type ExitKind uint8

// Exit kinds. The first two are the process's own end; the others are
// the supervisor's verdicts, each of which ends the process with
// SIGKILL or a stop (the process's own status is then in Code or
// Signal too).
const (
	// ExitNone: no worker process of the slot has ended yet.
	ExitNone ExitKind = iota
	// ExitCode: the process exited with status Code.
	ExitCode
	// ExitSignal: the process was killed by Signal.
	ExitSignal
	// ExitHung: the process failed its health check (Check says
	// which: Misses pings or health commands in a row, or its watchdog)
	// and was killed.
	ExitHung
	// ExitNoHello: the process sent no hello within Timeout
	// (Config.StartTimeout) and was killed.
	ExitNoHello
	// ExitProtocol: the process broke the wire protocol (Err says how)
	// and lost its channel.
	ExitProtocol
	// ExitChannelClosed: the process closed its channel but lived on;
	// the supervisor stopped it.
	ExitChannelClosed
	// ExitReplaced: a rolling restart replaced the process.
	ExitReplaced
	// ExitSpawnFailed: the process could not be started (Err says
	// why).
	ExitSpawnFailed
	// ExitNotReady: the process did not send "READY=1" within Timeout
	// (Config.StartTimeout; ReadyNotify) and was killed.
	ExitNotReady
)

// HealthCheck names the health check an ExitHung failed.
type HealthCheck uint8

// Health checks.
const (
	CheckPing            HealthCheck = iota // pings on the channel (ReadyHello)
	CheckCommand                            // Config.HealthCmd
	CheckWatchdog                           // no WATCHDOG=1 within Config.Watchdog (ReadyNotify)
	CheckWatchdogTrigger                    // the worker sent WATCHDOG=trigger
)

var exitKindNames = [...]string{"none", "exited", "signaled", "hung", "no-hello", "protocol", "channel-closed", "replaced", "spawn-failed", "not-ready"}

// String returns a short lower-case name of k.
func (k ExitKind) String() string {
	if int(k) < len(exitKindNames) {
		return exitKindNames[k]
	}
	return fmt.Sprintf("ExitKind(%d)", k)
}

// ExitReason says how a worker process ended. [WorkerStatus].Exit holds
// the last one of each slot, the logs show it under "reason", and its
// String form is WorkerStatus.LastExit (the JSON field "last_exit").
// The zero value means no process has ended.
type ExitReason struct {
	Kind ExitKind

	// Code and Signal are the process's own exit status, for every kind
	// whose process ran and was reaped: Code when it exited (Signal is
	// then 0), Signal when a signal killed it.
	Code       int
	Signal     syscall.Signal
	CoreDumped bool

	// Check is the health check an ExitHung failed, and Misses how
	// many of its pings or commands failed in a row.
	Check  HealthCheck
	Misses int
	// Timeout is the StartTimeout an ExitNoHello or ExitNotReady ran
	// out of, or the Config.Watchdog interval of an ExitHung.
	Timeout time.Duration
	// Err is the cause of an ExitProtocol or ExitSpawnFailed.
	Err error

	// BeforeHello says the process ended before it was ready (its
	// hello, READY=1, or ReadyAfter): it never served.
	BeforeHello bool
	// Stopped says the process ended as part of the supervisor's stop
	// (Run's context ended, or the stop signal that ended it came
	// with the stop): not a failure, not restarted.
	Stopped bool
}

// String describes r the way Status and the logs show it, for
// example "exited with status 3", "stopped: killed by signal SIGKILL",
// "hung: 3 pings unanswered" or "exited with status 1 before its
// hello". It is "" for the zero ExitReason.
func (r ExitReason) String() string {
	var s string
	switch r.Kind {
	case ExitNone:
		return ""
	case ExitCode, ExitSignal:
		s = r.status()
	case ExitHung:
		switch r.Check {
		case CheckCommand:
			s = fmt.Sprintf("hung: health command failed %d times", r.Misses)
		case CheckWatchdog:
			s = fmt.Sprintf("hung: watchdog not fed within %v", r.Timeout)
		case CheckWatchdogTrigger:
			s = "hung: watchdog triggered by the worker"
		default:
			s = fmt.Sprintf("hung: %d pings unanswered", r.Misses)
		}
	case ExitNoHello:
		s = fmt.Sprintf("no hello within %v: killed", r.Timeout)
	case ExitNotReady:
		s = fmt.Sprintf("not ready within %v: killed", r.Timeout)
	case ExitProtocol:
		s = fmt.Sprintf("protocol violation: %v", r.Err)
	case ExitChannelClosed:
		s = "channel closed: " + r.status()
	case ExitReplaced:
		s = "replaced by rolling restart"
	case ExitSpawnFailed:
		s = fmt.Sprintf("spawn failed: %v", r.Err)
	default:
		s = r.Kind.String()
	}
	if r.BeforeHello && (r.Kind == ExitCode || r.Kind == ExitSignal) {
		s += " before it was ready"
	}
	if r.Stopped {
		s = "stopped: " + s
	}
	return s
}

// MarshalText returns r.String(), so that logs and JSON show a reason
// as its description.
func (r ExitReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// status describes the process's own exit status.
func (r ExitReason) status() string {
	switch {
	case r.Signal != 0:
		s := "killed by signal " + unix.SignalName(r.Signal)
		if r.CoreDumped {
			s += " (core dumped)"
		}
		return s
	case r.Kind == ExitCode || r.Kind == ExitSignal || r.Kind == ExitChannelClosed:
		return fmt.Sprintf("exited with status %d", r.Code)
	}
	return "unknown"
}

// success reports whether the process exited with status 0 on its own.
func (r ExitReason) success() bool { return r.Kind == ExitCode && r.Code == 0 }

// stopSignalled reports whether a stop signal ended the process: killed
// by SIGTERM or SIGINT, or exited with 128 plus one of them, as shells
// and many programs do on those signals.
func (r ExitReason) stopSignalled() bool {
	switch r.Kind {
	case ExitSignal:
		return r.Signal == syscall.SIGTERM || r.Signal == syscall.SIGINT
	case ExitCode:
		return r.Code == 128+int(syscall.SIGTERM) || r.Code == 128+int(syscall.SIGINT)
	}
	return false
}

// with returns the verdict r carrying the process status of st.
func (r ExitReason) with(st ExitReason) ExitReason {
	r.Code, r.Signal, r.CoreDumped = st.Code, st.Signal, st.CoreDumped
	return r
}

// exitStatus returns the ExitReason (ExitCode or ExitSignal) of a
// reaped process; an unknown status is exit status -1, as
// os.ProcessState.ExitCode has it.
func exitStatus(st *os.ProcessState) ExitReason {
	if st == nil {
		return ExitReason{Kind: ExitCode, Code: -1}
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		return ExitReason{Kind: ExitSignal, Signal: ws.Signal(), CoreDumped: ws.CoreDump()}
	case ok && ws.Exited():
		return ExitReason{Kind: ExitCode, Code: ws.ExitStatus()}
	}
	return ExitReason{Kind: ExitCode, Code: st.ExitCode()}
}
