// Package ipc is pairvisor's connection engine: a [Conn] runs the
// framed, versioned protocol over one connected Unix stream socket (a
// socketpair between a supervisor and a worker from [Socketpair], a
// connection to a socket path from [Dial], or any connected socket given
// to [NewConn]).
//
// It is not the codec, the listener or a server: package ipc/wire
// encodes and decodes frames (and builds on every OS); package
// ipc/listen creates socket paths safely and accepts connections with
// their peers' credentials; serving many clients is the job of the
// program that accepts them. It knows nothing of processes either:
// packages supervisor and worker build on it.
//
// # Frames
//
// Every frame is a 16-byte header (magic 0xC1 'P', type, flags, payload
// length, request id) followed by the payload; package wire has the
// details and docs/PROTOCOL.md the full specification, detailed enough
// to write a peer in another language. Each side first sends a hello
// with the protocol versions it speaks; the higher version both speak is
// used (this package speaks 1 to 3, 3 only with [ConnConfig].MaxFiles;
// [ConnConfig].MaxVersion can hold it lower). Requests carry an id chosen by the sender and replies echo it,
// so any number of requests may be in flight in both directions at once,
// and replies come in whatever order they are ready: a health-check ping
// never waits for a handler's work. It may still wait for the frames
// ahead of it on the wire, a large echo's request or reply for example.
//
// # Cancellation and failing handlers
//
// On a version 2 connection, a [Conn.Call] whose context ends sends a
// cancel frame for its request, and the peer cancels the context of the
// [Handler] working on it; the reply that may still come is dropped. A
// Handler that panics answers its request with [wire.CodeCrashed], the
// panic is logged, and the Conn serves on (whatever the version).
//
// # File descriptors
//
// On a version 3 connection (both sides set [ConnConfig].MaxFiles;
// Linux) requests and replies may carry open file descriptors
// (SCM_RIGHTS): [Conn.CallFiles] sends files with a request and returns
// those of its reply, a [Handler] finds a request's in [Request].Files
// and sends some with its reply by [Request.AttachFiles]. They arrive
// close-on-exec (MSG_CMSG_CLOEXEC); the sender keeps its own, the
// receiver owns what arrives, and whatever nobody takes is closed (see
// fds.go and docs/PROTOCOL.md, "File descriptors").
//
// # Conn
//
// [NewConn] wraps a connected socket in a [Conn]. A Conn keeps its fd in
// blocking mode and reads it as a C program would, in read(2). The read
// side is one token: a caller of [Conn.Call] that is alone in waiting
// takes it and reads its own reply on its own thread (leader/follower),
// handing it to the next waiting caller when done; otherwise a
// background reader holds it, answers pings and echoes itself without
// allocating, hands other requests to the [Handler] and passes replies
// to the callers waiting for them. Writes are serialised by a FIFO lock
// and go out as blocking sendmsg(2) calls whose wait is cut into short
// slices (SO_SNDTIMEO), between which the writer checks its deadline, so
// a peer that stops reading cannot block a writer forever; what a Conn
// holds for its peer is bounded ([ConnConfig].MaxBuffered, [Budget]).
// With [ConnConfig].Poll the Conn waits through the Go runtime's poller
// instead: slower per round trip, but without an OS thread per idle
// connection, which suits a server with many clients. Every fd this
// package creates is close-on-exec.
//
// # Health probes
//
// [Conn.Probe] sends a ping whose pong runs a callback on the reader
// goroutine, so a supervisor can health-check many workers from one tick
// without a goroutine waking for each pong.
//
// # Errors
//
// Failed operations return an *[OpError] naming the operation and the
// socket path. Malformed input yields a *[wire.FrameError] wrapping one
// of the sentinel errors ([wire.ErrFrameTooLarge],
// [wire.ErrUnknownType], [wire.ErrTruncated], ...); the Conn that read
// it tells the peer in an error frame with id 0 and is closed, never
// left half-read. Error replies from the peer are *[wire.RemoteError]
// values.
package ipc
