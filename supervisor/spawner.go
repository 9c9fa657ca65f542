package supervisor

import (
	"context"
	"syscall"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// The spawner seam. The loop starts worker processes only through a
// spawner, talks to them only through the handle and channel it
// returns, and reads the time only through Config's clock, so the
// restart policy, backoff, the crash-loop window, hang verdicts,
// rolling restarts and the stop order run the same on real processes
// (realSpawner, process.go) and on the fakes of policy_test.go.

// spawner starts worker processes.
type spawner interface {
	// open prepares to start processes. Run calls it once, before the
	// first start.
	open()
	// start starts worker id and returns its handle, or an error (an
	// *ownSpawnError when the supervisor itself is short of resources;
	// nothing is left running then). It may block for a fork and exec;
	// it is called from a tender goroutine, concurrently for several
	// workers. exited is called exactly once, from a goroutine of the
	// spawner's, once the process is reaped and its output drained; it
	// may be called before start returns.
	start(id int, exited func()) (handle, error)
	// close ends what open started. Run calls it once, after every
	// process started is reaped and every exited call returned.
	close()
}

// handle is one worker process.
type handle interface {
	pid() int
	// hello waits for the worker's hello on its channel until ctx ends
	// and returns the channel. The tender calls it exactly once, right
	// after start: it owns the parent's end of the channel, which it
	// closes on error.
	hello(ctx context.Context) (channel, error)
	// signal sends sig to the worker, its process group and its
	// descendants. It reports whether the worker was still unreaped
	// (only then is anything signalled).
	signal(sig syscall.Signal) bool
	// status is how the process ended (ExitCode or ExitSignal). It is
	// valid once exited was called.
	status() ExitReason
	// notice blocks for the worker's next sd_notify datagram
	// (ReadyNotify) and returns errNoNotices once the process is reaped,
	// or at once if it has no notify socket. One goroutine calls it.
	notice() (notice, error)
}

// channel is the loop's and the router's view of a worker's
// connection; *ipc.Conn is the real one.
type channel interface {
	Call(ctx context.Context, t wire.Type, payload, dst []byte) ([]byte, error)
	Ping(ctx context.Context) (time.Duration, error)
	Probe(ctx context.Context, done func(id uint64, err error)) (uint64, error)
	Forget(id uint64) bool
	Received() uint64
	Done() <-chan struct{}
	Err() error
	Close() error
}

var _ channel = (*ipc.Conn)(nil)
