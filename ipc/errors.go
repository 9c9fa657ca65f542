package ipc

import (
	"errors"
	"fmt"
)

// Sentinel errors. Test for them with errors.Is; the values returned
// by this package wrap them in a *[wire.FrameError] or *[OpError] that
// adds the detail. Malformed frames are reported with package wire's
// sentinels ([wire.ErrFrameTooLarge], ...).
var (
	// ErrClosed is returned by calls on a Conn that has been closed,
	// by either side or after a protocol error.
	ErrClosed = errors.New("ipc: connection closed")

	// ErrPeerClosed reports that the peer closed its end (EOF between
	// frames). It wraps ErrClosed.
	ErrPeerClosed = fmt.Errorf("%w by peer", ErrClosed)

	// ErrUnexpected reports a frame that is valid on its own but not
	// allowed where it arrived (a request before the hello, a second
	// hello).
	ErrUnexpected = errors.New("ipc: unexpected frame")

	// ErrVersion reports that the peers share no protocol version.
	ErrVersion = errors.New("ipc: no common protocol version")

	// ErrStalled reports a peer that holds the Conn up: it does not read
	// the replies we owe it (nothing written or released for
	// WriteTimeout), or it stopped sending in the middle of a reply
	// whose caller had already given up. The Conn is closed.
	ErrStalled = errors.New("ipc: peer stalled")

	// ErrNotSocket reports a path or descriptor that is not a socket.
	ErrNotSocket = errors.New("ipc: not a socket")

	// ErrUntrustedPeer reports a server that [Dial] reached but does not
	// trust: it runs as neither root, nor the caller's effective uid,
	// nor one of [ConnConfig].TrustUIDs. Dial sends it nothing; the
	// error names the server's uid and pid.
	ErrUntrustedPeer = errors.New("ipc: server runs as an untrusted user")

	// ErrDetached reports a Conn that was detached (Conn.Detach,
	// ConnConfig.DetachAt): its connection goes on elsewhere. It wraps
	// ErrClosed.
	ErrDetached = fmt.Errorf("%w: detached", ErrClosed)

	// ErrNoFiles reports file descriptors for a connection that cannot
	// carry them: it speaks a version below 3 (one side has no
	// ConnConfig.MaxFiles, or the system passes none: Linux only).
	ErrNoFiles = errors.New("ipc: connection does not pass file descriptors")

	// ErrTooManyFiles reports more file descriptors with one frame than
	// the protocol allows (wire.MaxFiles) or the receiver accepts
	// (ConnConfig.MaxFiles).
	ErrTooManyFiles = errors.New("ipc: too many file descriptors")
)

// OpError is the error type returned by the functions and methods of
// this package that touch the operating system or the peer. It names the
// operation and, where there is one, the socket path.
type OpError struct {
	Op   string // "dial", "listen", "read", "write", "call ping", ...
	Addr string // socket path or "@name"; empty for socketpairs
	Err  error
}

func (e *OpError) Error() string {
	s := e.Op
	if e.Addr != "" {
		s += " " + e.Addr
	}
	return s + ": " + e.Err.Error()
}

func (e *OpError) Unwrap() error { return e.Err }

// ErrIdle reports a Conn closed because nothing arrived within its
// IdleTimeout.
var ErrIdle = errors.New("ipc: idle timeout")
