// Package worker is the child side of a pairvisor supervisor.
//
// # Process model
//
// A supervisor starts each worker by re-executing a binary (usually its
// own) with the child's end of a socketpair as file descriptor 3 and the
// environment variables listed in package ipc's contract
// (PAIRVISOR_WORKER, PAIRVISOR_PARENT_PID, PAIRVISOR_FD,
// PAIRVISOR_LOG_LEVEL). The program calls [FromEnv] early in main:
//
//	func main() {
//		w, err := worker.FromEnv()
//		if err != nil && !errors.Is(err, worker.ErrNotWorker) {
//			log.Fatal(err)
//		}
//		if w != nil {
//			// set up, then serve until the supervisor is done with us
//			if err := w.Serve(context.Background(), worker.Config{Handler: handle}); err != nil {
//				log.Fatal(err) // the channel ended without a shutdown: exit 1
//			}
//			os.Exit(0) // asked to shut down
//		}
//		// ... the supervisor role ...
//	}
//
// FromEnv removes the variables, so the worker's own children never
// think they are workers; fd 3 is close-on-exec from the package's init
// on, so they never inherit the channel either. Before serving, FromEnv
// checks that the parent is the supervisor PAIRVISOR_PARENT_PID names
// and that fd 3 is a socket that supervisor created (its SO_PEERCRED
// pid): a process that merely inherited the variables and a socket
// gets an error wrapping [ErrNotWorker] and should carry on in its
// other role. [Worker.Serve] sends the hello that tells the supervisor
// the worker is ready, answers pings and echoes, runs the handler for
// application messages (cancelling its context when the supervisor's
// caller gives up on one), and returns when the supervisor closes its
// end or asks for a shutdown. A worker must not outlive its channel:
// when Serve returns, exit, with status 0 after a shutdown (Serve
// returned nil) and non-zero when the channel ended otherwise (an error
// wrapping [ErrChannelClosed]): a supervisor does not restart a worker
// that exited 0 under its default on-failure policy.
//
// The channel speaks protocol version 3 with a Go supervisor: messages
// may carry open file descriptors both ways ([Worker.CallFiles],
// [Config].FilesHandler), and a supervisor that serves a socket path
// may hand the worker clients of that path (CLIENT requests), which
// Serve then serves directly with the same Handler, up to
// [Config].MaxClients, handing them back when the supervisor stops the
// worker or a client asks for status or reload (docs/PROTOCOL.md,
// "Handing clients to workers").
//
// # Listeners
//
// A supervisor may pass the worker listening sockets (`run --listen`,
// Config.Listeners of package supervisor) in the systemd
// socket-activation layout. FromEnv takes them; [Worker.Listeners] and
// [Worker.Listener] hand them out as *os.File values, by name. A worker
// that serves them with package net makes a listener of each:
//
//	f, err := w.Listener("http")
//	if err != nil {
//		log.Fatal(err)
//	}
//	ln, err := net.FileListener(f) // a duplicate of its own
//	f.Close()
//	if err != nil {
//		log.Fatal(err)
//	}
//	go http.Serve(ln, handler)
//
// (This package does not import net: the supervisor command, a worker
// too, would then link the cgo resolver and become a dynamically linked
// binary, paying the dynamic loader at every worker start.)
//
// Log through [Worker.Logger] (hclog JSON on stderr): the supervisor
// relays each line under the worker's name with its level and fields.
// Anything else on stdout or stderr is relayed as plain text; none of it
// can disturb the protocol, which lives on fd 3 alone.
//
// # darwin and FreeBSD
//
// The package builds there (it is tested on Linux only). FromEnv reads
// the channel's peer credentials with LOCAL_PEERCRED: their uid must be
// ours, and on darwin the peer's pid (LOCAL_PEERPID) the parent's;
// FreeBSD gives no pid, so a socket another process of the same user
// created passes there. These systems have no parent-death signal, so
// FromEnv watches the supervisor (kqueue EVFILT_PROC/NOTE_EXIT) from a
// goroutine of its own and sends the process SIGKILL when the
// supervisor exits, as Linux does for a worker whose supervisor dies;
// Serve ends the watch when it returns. EOF on the channel ends Serve
// everywhere.
package worker
