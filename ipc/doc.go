// Package ipc is pairvisor's transport: connected Unix stream sockets
// (a socketpair between a supervisor and a worker, or a connection to a
// socket path) carrying a small framed, versioned protocol. It knows
// nothing of processes; packages supervisor and worker build on it.
//
// # Frames
//
// Every frame is a 16-byte header (magic 0xC1 'P', type, flags, payload
// length, request id) followed by the payload. docs/PROTOCOL.md is the
// full specification, detailed enough to write a peer in another
// language. Each side first sends a hello with the protocol versions it
// speaks; the higher version both speak is used. Requests carry an id
// chosen by the sender and replies echo it, so any number of requests
// may be in flight in both directions at once: a health-check ping
// never waits for a 1 MiB echo's reply.
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
// connection; servers switch to it past [ServerConfig].PollAbove
// clients. Every fd this package creates is close-on-exec.
//
// # Health probes
//
// [Conn.Probe] sends a ping whose pong runs a callback on the reader
// goroutine, so a supervisor can health-check many workers from one
// tick without a goroutine waking for each pong.
//
// # Errors
//
// Failed operations return an *[OpError] naming the operation and the
// socket path. Malformed input yields a *[FrameError] wrapping one of
// the sentinel errors ([ErrFrameTooLarge], [ErrUnknownType],
// [ErrTruncated], ...); the Conn that read it is closed, never left
// half-read. Error replies from the peer are *[RemoteError] values.
package ipc
