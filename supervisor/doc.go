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
// A ready worker is pinged every PingInterval; PingMisses failures in a
// row declare it hung, and it is killed with SIGKILL (which also ends a
// stopped process). Workers that end are restarted under the
// [RestartPolicy] with jittered exponential backoff, reset once a
// worker stayed ready for HealthyAfter; more than MaxRestarts restarts
// within RestartWindow make Run stop everything and return
// [ErrCrashLoop].
//
// Stopping (ctx cancelled) sends each worker a shutdown message, then
// SIGTERM to its process group at half of StopTimeout, then SIGKILL;
// [Supervisor.Kill] skips the wait. Workers are signalled through their
// os.Process or, for the group, only while the unreaped leader pins the
// group id, so a reused pid is never hit. Run returns once every worker
// is reaped and every goroutine it started has ended.
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
// time without failing a request.
package supervisor
