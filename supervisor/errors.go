package supervisor

import "errors"

// Sentinel errors. Test for them with errors.Is: the errors returned by
// this package wrap them with the detail.
var (
	// ErrCrashLoop is returned by Run when workers restarted more than
	// Config.MaxRestarts times within Config.RestartWindow. Run stopped
	// every worker before returning it.
	ErrCrashLoop = errors.New("supervisor: crash loop")

	// ErrNoWorker is returned by Call and Echo when no worker is ready
	// before the context ends; the error wraps the context's error too.
	ErrNoWorker = errors.New("supervisor: no ready worker")

	// ErrNotRunning is returned by calls made after Run returned, by
	// calls still waiting for a worker when Run begins to stop, and by
	// Reload once Run began to stop. (Calls made before Run wait for a
	// worker like any other.)
	ErrNotRunning = errors.New("supervisor: not running")

	// ErrAlreadyRun is returned by a second call to Run.
	ErrAlreadyRun = errors.New("supervisor: Run called twice")

	// ErrConfig is returned by New (and NewGroup) for a Config field
	// out of its range: a negative duration or count, BackoffMax below
	// BackoffMin, an unknown mode or policy.
	ErrConfig = errors.New("supervisor: invalid config")

	// ErrExecutable is returned by New when Config.Executable names no
	// executable file (not found in PATH, or not executable).
	ErrExecutable = errors.New("supervisor: cannot run the executable")

	// ErrWorkersFailed is returned by Run when every worker ended for
	// good (the restart policy restarts none of them) and at least one
	// of them did not exit with status 0.
	ErrWorkersFailed = errors.New("supervisor: workers failed")

	// ErrNoTaker is returned by HandOff when no worker took the client:
	// none is ready, speaks protocol version 3 and has room. Nothing
	// has touched the client's connection: the caller serves it.
	ErrNoTaker = errors.New("supervisor: no worker takes the client")

	// ErrUnsupported is returned by New when Config asks for a feature
	// this system lacks: Ready: ReadyNotify anywhere but Linux. The
	// error names the system.
	ErrUnsupported = errors.New("supervisor: not supported on this system")
)

// ownSpawnError reports that the supervisor could not start a worker
// for want of its own resources (descriptors, memory, processes): no
// fault of the worker, so it is retried and never counts as a failure.
type ownSpawnError struct{ err error }

func (e *ownSpawnError) Error() string { return e.err.Error() }
func (e *ownSpawnError) Unwrap() error { return e.err }
