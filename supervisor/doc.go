// Package supervisor starts, health-checks, restarts and stops worker
// processes, each connected to the supervisor by its own socketpair.
//
// # Process model
//
// [Supervisor.Run] keeps [Config].Workers slots filled. For each worker
// it creates a socketpair (close-on-exec), starts the worker executable
// (by default this very binary, re-executed; see package worker) with
// the child's end as fd 3 in exec.Cmd.ExtraFiles, closes its copy of
// that end right after Start, and waits for the worker's hello. Each
// worker runs in its own process group, with SIGKILL as its
// parent-death signal; children are started from one goroutine locked
// to its OS thread for the supervisor's whole life, because Linux fires
// the parent-death signal when the forking thread, not the process,
// exits. A worker also exits on EOF on its channel, so none outlives
// the supervisor, even one killed with SIGKILL.
//
// A worker inherits exactly stdin (/dev/null), stdout and stderr (pipes
// to the supervisor) and the channel on fd 3, whatever else the program
// holds: right before each fork, the spawn thread marks every
// descriptor from 3 up close-on-exec (close_range(2), or a walk of
// /proc/self/fd on kernels before 5.11). A descriptor the program
// inherited or opened without close-on-exec is therefore close-on-exec
// from the first spawn on, for every child the program starts; pass
// descriptors to other children through exec.Cmd.ExtraFiles, which is
// unaffected.
//
// If the supervisor cannot start a worker for want of its own
// resources (socketpair, pipe, fork or exec failing with EMFILE,
// ENFILE, EAGAIN, ENOMEM or ENOBUFS), that is no failure of the worker:
// the attempt is retried with backoff (BackoffMin, doubling, at most a
// second), counted in [Stats].SpawnFailures, never in Failures,
// Restarts or toward MaxRestarts, and logged at most once every ten
// seconds. Run keeps serving with the workers it has.
//
// A ready worker is pinged every PingInterval; PingMisses failures in a
// row declare it hung, and it is killed with SIGKILL (which also ends a
// stopped process). Workers that end are restarted under the
// [RestartPolicy] with jittered exponential backoff, reset once a
// worker stayed ready for HealthyAfter; more than MaxRestarts restarts
// within RestartWindow make Run stop everything and return
// [ErrCrashLoop].
//
// Stopping (ctx cancelled) sends each worker a shutdown message, then
// SIGTERM at half of StopTimeout, then SIGKILL; [Supervisor.Kill] skips
// the wait. The signals go to the worker's process group and to every
// descendant of the worker outside it (found by walking /proc from the
// worker down), each through a pidfd checked against the process's
// start time, and to the group only while the unreaped leader pins the
// group id, so a reused pid is never hit. Run returns once every worker
// is reaped and every goroutine it started has ended.
//
// A worker that dies of SIGTERM or SIGINT (or exits 143 or 130) that
// the supervisor did not send is given a second for Run's context to
// end: systemd's default KillMode, a terminal's Ctrl-C and a kill of
// the process group signal the workers and the supervisor at once. If
// the context ends, the exit is part of the stop, like every exit after
// the context ended: not a failure, not restarted, and Run returns nil.
// Otherwise it is a failure like any other.
//
// # Readiness and health beyond the hello
//
// Config.Ready says when a worker is ready: at its hello (ReadyHello, the
// default), at "READY=1" on the sd_notify socket each worker process is given in
// NOTIFY_SOCKET (ReadyNotify: a program written for systemd's Type=notify runs
// unchanged; STATUS=, RELOADING=1, STOPPING=1, EXTEND_TIMEOUT_USEC=, ERRNO= and
// the watchdog are understood, see docs/PROTOCOL.md), or once it has stayed
// alive Config.ReadyAfter (ReadyStarted). Outside ReadyHello the channel on fd 3
// is optional. Config.Watchdog and Config.HealthCmd add health checks; failing
// one makes the worker hung (ExitHung, with Check saying which).
//
// When every worker has ended and the policy restarts none of them, Run returns
// by itself: nil if each exited 0, else an error wrapping ErrWorkersFailed.
//
// # Several programs
//
// A Group runs several named programs, each a Supervisor, starting a program
// once those it names in Program.After are ready (every worker ready once) and
// stopping in the reverse order. Start, Stop, Restart and Reload act on one
// program; Replace applies a new set of programs, starting the added, stopping
// the removed, restarting the changed and leaving the rest alone. One goroutine,
// the group loop, owns the programs; group.go's top comment lists the hand-offs.
//
// # Orphans
//
// While Run runs, the process is a child subreaper
// (PR_SET_CHILD_SUBREAPER; the first Run in the process sets it, the
// last one clears it unless the program had set it before), so a
// worker's descendant whose parent dies is re-parented to the
// supervisor instead of init, even one that called setsid. Such an
// adopted orphan
//   - is left running while it is still in the process group of a live
//     worker (a background job of a shell the worker ran), and killed
//     with that group when the worker ends;
//   - is otherwise killed with SIGKILL, with its own descendants and
//     group, as soon as the supervisor finds it, even while its worker
//     lives: one that left its worker's group and lost its parent (a
//     daemon's double fork) can no longer be told apart from any other
//     orphan, so it is treated as escaped;
//   - is reaped once dead.
//
// As PID 1 (a container's init) the process adopts every orphan of its
// pid namespace, also those of what an operator started there (docker
// exec, kubectl exec): an orphan that is not in a worker's session
// (each worker leads one) is left running and reaped once dead, as tini
// does; one in a worker's session is handled as above. /proc must be
// the namespace's own; with another's, orphans are not swept (Run logs
// a warning).
//
// The supervisor looks for orphans every second and whenever a worker
// or an orphan it killed is reaped, never with wait(-1): it tells
// adopted processes from the program's own children by the pidfd that
// os/exec holds for every child it started until Wait. Children the
// program starts without os/exec (syscall.ForkExec, cgo) hold none and
// must not run beside a supervisor. Orphans in the program's own
// process group are only reaped: they cannot come from workers, which
// lead their own sessions, so none of their descendants can join that
// group. When Run returns, no orphan it could kill is left alive.
// This needs Linux 5.4 (pidfd fdinfo); without it orphans go to init as
// before, and Run logs a warning.
//
// # Output
//
// Each worker's stdout and stderr are relayed line by line into the
// sub-logger "worker.N": hclog JSON lines keep their level and fields,
// other lines are logged as text; lines over 64 KiB are cut, binary
// junk is quoted.
//
// # Routing
//
// [Supervisor.Call] and [Supervisor.Echo] send a request to a ready
// worker, round robin, retrying idempotent requests on another worker
// when theirs goes away; [Supervisor.Reload] replaces workers one at a
// time without failing a request. Reloads requested while one runs are
// coalesced into one more run after it.
//
// # Outcomes
//
// How each worker process ended is an [ExitReason]: exited with a code,
// killed by a signal, hung, no hello, a protocol violation, its channel
// closed, replaced by a rolling restart, or not started at all; each
// may be part of a stop. [WorkerStatus].Exit holds the last one of a
// slot, WorkerStatus.LastExit (JSON "last_exit") its text, and the logs
// show it under "reason". Conditions callers test are sentinel errors:
// [ErrCrashLoop], [ErrNoWorker], [ErrNotRunning], [ErrAlreadyRun],
// [ErrUnsupported].
//
// # Goroutines and who owns what
//
// One goroutine, the loop (it runs on Run's goroutine), owns all
// supervision state: the slots and which process is in each, every
// process's phase and deadlines, backoff and its reset, the crash-loop
// window, readiness, hang verdicts, rolling restarts and the Reload
// calls waiting for them, spawn-failure retries and the stop order. It
// reads the time through one clock and arms one timer, for its
// earliest deadline. Every other goroutine talks to it by message:
//   - a tender per worker process runs the process's blocking steps
//     (the start, the hello, a probe's write, the shutdown request,
//     closing the channel) and reports each as a typed event;
//   - the process's wait goroutine reports its reaping, its two relay
//     goroutines log its output, and the orphan sweeper handles
//     adopted processes: they own the OS side and send the loop
//     nothing else;
//   - the channel's reader records health pongs in atomics the loop
//     reads at its next tick;
//   - Reload sends the loop a request and waits for its answer; Kill
//     closes a channel the loop watches; Status and Stats read the
//     snapshot the loop publishes after each step; Call and Echo read
//     the routing table the loop publishes, without a lock.
//
// Senders also watch for the loop's end, so none blocks on a loop that
// has returned; the loop returns only once every process is reaped,
// and Run once every goroutine it started has ended. The comment at the
// top of loop.go lists every hand-off.
//
// # darwin and FreeBSD
//
// The package builds there (it is tested on Linux only). Workers start
// the same way, in a session of their own, after every descriptor from
// 3 up is marked close-on-exec (close_range(2) on FreeBSD 13.1 and
// later, else a walk of /dev/fd, which on FreeBSD lists every
// descriptor only where fdescfs is mounted). There is no parent-death
// signal: package worker watches its supervisor instead (kqueue
// NOTE_EXIT) and kills itself when it exits. A worker's exit is learnt
// from a kqueue EVFILT_PROC/NOTE_EXIT event, without reaping it, so its
// group is still killed while the zombie pins the group id; the wait
// holds an OS thread per worker. Missing there: Ready: ReadyNotify (New
// fails with [ErrUnsupported]), the adoption and sweeping of orphans
// (Run logs a warning, and a descendant that leaves its worker's group
// and loses its parent goes to init), and signals to descendants
// outside the worker's process group (there is no /proc to find them).
package supervisor
