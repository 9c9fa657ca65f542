package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// ErrNotWorker reports that the environment marks this process as a
// worker but a supervisor did not start it: the PAIRVISOR_ variables
// (and perhaps fd 3) were inherited from elsewhere. Every refusal of
// [FromEnv] wraps it; a program that has another role should go on in
// that role.
var ErrNotWorker = errors.New("worker: not started by a supervisor")

// ErrNotSocket reports that the inherited channel descriptor is not a
// socket, so the process was not started by a pairvisor supervisor. An
// error wrapping it also wraps [ErrNotWorker].
var ErrNotSocket = errors.New("worker: inherited channel is not a socket")

// init marks the channel (and the listeners, if any) close-on-exec as
// soon as the package is initialised, before main and before the init
// functions of packages that import this one, so no child of the worker
// can inherit them even if one is started before FromEnv. It is one
// fcntl per descriptor, and only in a process that the environment
// calls a worker.
func init() { markInheritedCloexec() } // listeners.go

// shutdownLinger bounds how long Serve waits, after acknowledging a
// shutdown request, for the supervisor to close its end.
const shutdownLinger = time.Second

// Config configures [Worker.Serve]. The zero value serves pings and
// echoes and refuses application messages.
type Config struct {
	// Handler answers application messages. It runs in its own
	// goroutine per message. ctx is cancelled when the channel closes
	// and when the supervisor cancels the message (protocol version 2:
	// the caller whose message it is gave up); the handler should then
	// return soon, and what it returns is dropped. A returned
	// *wire.RemoteError is sent as is, any other error with
	// wire.CodeInternal. A Handler that panics answers its message
	// with wire.CodeCrashed, the panic and its stack go to Logger, and
	// the worker serves on. Nil refuses messages with
	// wire.CodeUnsupported.
	Handler func(ctx context.Context, msg []byte) ([]byte, error)

	// FilesHandler, if set, answers application messages in Handler's
	// place (files.go), with the file descriptors that came with each
	// (none, or those the supervisor sent with SendFiles: close-on-exec,
	// the handler's to close) and returns, besides its reply, files to
	// send with it, which the worker closes once they are sent. Without
	// it a message that comes with files is refused with
	// wire.CodeUnsupported, its files closed.
	FilesHandler func(ctx context.Context, msg []byte, files []*os.File) (reply []byte, replyFiles []*os.File, err error)

	// MaxClients bounds the clients of the supervisor's socket path
	// that the worker serves at once when the supervisor hands them
	// over (clients.go): the handler answers their messages directly.
	// Zero means DefaultMaxClients; negative takes none (the
	// supervisor then serves them itself).
	MaxClients int

	// Logger receives the worker's own log lines. Nil means
	// [Worker.Logger]: hclog JSON on stderr at the supervisor's level.
	Logger hclog.Logger

	// maxVersion caps the protocol version offered (ipc.ConnConfig's
	// MaxVersion), for tests that play an older worker.
	maxVersion uint16
}

// ErrNotServing is returned by [Worker.Call] before Serve has said hello
// or after it has returned.
var ErrNotServing = errors.New("worker: not serving")

// ErrChannelClosed is returned, wrapping the channel's own error, by a
// [Worker.Serve] whose channel ended without a shutdown request: the
// supervisor went away or dropped the channel (it wraps ipc.ErrPeerClosed
// then), or the channel broke. The worker should exit with a non-zero
// status: an exit with status 0 tells the supervisor that the worker
// ended on purpose, which its on-failure policy does not restart.
var ErrChannelClosed = errors.New("worker: channel closed without a shutdown request")

// Worker is this process's side of a supervisor's channel.
type Worker struct {
	id    int
	file  *os.File
	level hclog.Level
	conn  atomic.Pointer[ipc.Conn] // while Serve runs

	listen *inherited // the listeners (listeners.go); nil if none

	// unwatch stops the watch on the supervisor that FromEnv started
	// where the system has no parent-death signal (parent_bsd.go); Serve
	// calls it when it returns. A no-op on Linux.
	unwatch func()
}

// Call sends an application message to the supervisor and returns its
// reply (the supervisor's Config.Handler answers it). It may be called
// from any goroutine while Serve runs, handlers included; before and
// after, it returns [ErrNotServing].
func (w *Worker) Call(ctx context.Context, msg []byte) ([]byte, error) {
	c := w.conn.Load()
	if c == nil {
		return nil, ErrNotServing
	}
	return c.Call(ctx, wire.TypeMessage, msg, nil)
}

// FromEnv reports whether this process was started as a worker. When
// it was not (no PAIRVISOR_WORKER in the environment), FromEnv returns
// nil, nil and changes nothing. Otherwise it removes every PAIRVISOR_
// variable from the environment (fd 3 is close-on-exec already: the
// package's init marks it), so children of the worker neither think
// they are workers nor inherit the channel, and checks that a
// supervisor really started this process:
//
//   - PAIRVISOR_WORKER is a worker id (a number from 1);
//   - the parent process is the one PAIRVISOR_PARENT_PID names;
//   - the channel, fd 3 (or 3+n after n listeners, as PAIRVISOR_FD
//     says), is a socket whose peer credentials (SO_PEERCRED) name that
//     same parent: a socketpair's are those of the process that created
//     it, so a socket inherited from anyone else does not pass. On
//     darwin and FreeBSD the credentials are LOCAL_PEERCRED's: their
//     uid must be ours, and on darwin the peer's pid (LOCAL_PEERPID)
//     the parent's; FreeBSD records no pid there, so only the uid is
//     checked.
//
// It also takes the listeners the supervisor passed, if any (see
// [Worker.Listeners]), and removes LISTEN_FDS, LISTEN_FDNAMES and
// LISTEN_PID.
//
// When every check passes it returns the Worker, which owns the channel
// until Serve returns. On darwin and FreeBSD it also starts watching the
// supervisor in place of the parent-death signal (see the package doc). When one fails it returns nil and an error wrapping
// [ErrNotWorker] (and [ErrNotSocket] when fd 3 is no socket): the
// variables were inherited by mistake, and the program should carry on
// in its other role, leaving fd 3 alone.
//
// Call FromEnv early in main, before anything else can fork.
func FromEnv() (*Worker, error) {
	idStr, ok := os.LookupEnv(contract.EnvWorker)
	if !ok {
		return nil, nil
	}
	ppidStr := os.Getenv(contract.EnvParentPID)
	level := hclog.LevelFromString(os.Getenv(contract.EnvLogLevel))
	chfd, fdErr := channelFD(os.LookupEnv) // PAIRVISOR_FD: 3, or 3+n after n listeners
	var listen *inherited
	if fdErr == nil {
		listen = takeListenEnv(chfd) // marks them close-on-exec
		unix.CloseOnExec(chfd)       // in case the variables were set after init
	}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PAIRVISOR_") {
			os.Unsetenv(k)
		}
	}
	if fdErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotWorker, fdErr)
	}
	id, err := strconv.Atoi(idStr)
	if err != nil || id < 1 {
		return nil, fmt.Errorf("%w: %s=%q is not a worker id", ErrNotWorker, contract.EnvWorker, idStr)
	}
	ppid := os.Getppid()
	if want, err := strconv.Atoi(ppidStr); err != nil || want != ppid {
		return nil, fmt.Errorf("%w: %s=%q but the parent is pid %d: environment inherited from elsewhere", ErrNotWorker, contract.EnvParentPID, ppidStr, ppid)
	}
	var st unix.Stat_t
	if err := unix.Fstat(chfd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%w: %w (fd %d)", ErrNotWorker, ErrNotSocket, chfd)
	}
	if err := checkPeer(chfd, ppid); err != nil {
		return nil, err
	}
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	clearListenEnv() // only now: a refused process may be socket-activated itself
	return &Worker{id: id, file: os.NewFile(uintptr(chfd), "pairvisor-channel"), level: level, unwatch: watchParent(ppid), listen: listen}, nil
}

// ID returns the worker's id (1 for the first worker).
func (w *Worker) ID() int { return w.id }

// Logger returns a logger that writes hclog JSON to stderr at the
// supervisor's level; the supervisor relays each line under the
// worker's name with its level and fields.
func (w *Worker) Logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true, Level: w.level})
}

// Serve says hello on the channel, which tells the supervisor that the
// worker is ready, and serves requests until the supervisor closes its
// end, asks for a shutdown, or ctx ends. Call it once set-up is done:
// the supervisor neither routes requests nor health-checks a worker
// before its hello.
//
// Serve returns nil after a shutdown request (once it has answered
// every message that came before it, sent the shutdown's reply and seen
// the supervisor close its end, or waited a second for that), and when
// ctx ends: the worker is done, and should exit with status 0. It
// returns an error wrapping [ErrChannelClosed] when the channel ended
// any other way: the worker should exit with a non-zero status (see
// ErrChannelClosed). Either way the process should exit once Serve has
// returned: it must never outlive its channel. Serve closes the channel
// in every case.
func (w *Worker) Serve(ctx context.Context, cfg Config) error {
	if w.unwatch != nil {
		defer w.unwatch()
	}
	log := cfg.Logger
	if log == nil {
		log = w.Logger()
	}
	shutdown := make(chan struct{})
	clients := newClientSet(&cfg, clientName(w.id), log) // clients.go
	handle := func(hctx context.Context, req ipc.Request) ([]byte, error) {
		switch req.Type {
		case wire.TypeClient:
			return clients.serve(hctx, req)
		case wire.TypeMessage:
			if cfg.FilesHandler != nil || len(req.Files) > 0 {
				return handleFiles(hctx, req, &cfg) // files.go
			}
			if cfg.Handler == nil {
				return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: "worker has no message handler"}
			}
			return cfg.Handler(hctx, req.Payload)
		case wire.TypeShutdown:
			// The Conn calls this once, after answering every earlier
			// request, and refuses later ones.
			close(shutdown)
			return nil, nil
		default:
			return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: req.Type.String() + " is not served by workers"}
		}
	}
	conn, err := ipc.NewConn(ctx, w.file, ipc.ConnConfig{
		Name:          "worker." + strconv.Itoa(w.id),
		Handler:       handle,
		Logger:        log,
		MaxVersion:    cfg.maxVersion,
		MaxFiles:      wire.MaxFiles,   // files.go
		MaxConcurrent: clients.slots(), // clients.go
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.conn.Store(conn)
	defer w.conn.Store(nil)
	go clients.watch(conn) // ends when conn is done
	log.Debug("ready", "version", conn.Version())
	select {
	case <-conn.Done():
		select {
		case <-shutdown:
			// Asked to shut down, and the channel closed since: the
			// handler closes shutdown before the Conn can be done.
			log.Debug("shutdown requested; supervisor closed the channel")
			return nil
		default:
		}
		err := conn.Err()
		log.Debug("channel closed without a shutdown request", "error", err)
		return fmt.Errorf("%w: %w", ErrChannelClosed, err)
	case <-shutdown:
		log.Debug("shutdown requested")
		// The supervisor closes its end once it has our reply.
		select {
		case <-conn.Done():
		case <-time.After(shutdownLinger):
		}
	case <-ctx.Done():
	}
	conn.Close()
	return nil
}
