package wire

import (
	"errors"
	"fmt"
)

// Sentinel errors of the codec. Test for them with errors.Is; the
// decoders return them wrapped in a *[FrameError] that adds the detail.
var (
	// ErrTruncated reports a stream that ended inside a frame.
	ErrTruncated = errors.New("wire: truncated frame")

	// ErrBadMagic reports a frame that does not start with 0xC1 'P'.
	ErrBadMagic = errors.New("wire: bad frame magic")

	// ErrUnknownType reports a frame type this version does not define.
	ErrUnknownType = errors.New("wire: unknown frame type")

	// ErrBadFlags reports undefined flag bits.
	ErrBadFlags = errors.New("wire: undefined frame flags")

	// ErrFrameTooLarge reports a payload length over the limit.
	ErrFrameTooLarge = errors.New("wire: frame too large")

	// ErrBadPayload reports a payload that does not decode for its type.
	ErrBadPayload = errors.New("wire: malformed payload")
)

// FrameError describes a malformed or unexpected frame. Err is one of
// the sentinel errors of this package or of the package that found the
// frame out of place (package ipc's ErrUnexpected, ErrVersion).
type FrameError struct {
	Err    error  // the sentinel error
	Detail string // what exactly was wrong
}

func (e *FrameError) Error() string {
	if e.Detail == "" {
		return e.Err.Error()
	}
	return e.Err.Error() + ": " + e.Detail
}

func (e *FrameError) Unwrap() error { return e.Err }

// RemoteError is an error reply: the decoded payload of a [TypeError]
// frame. A Handler in package ipc returns one to choose the code it
// sends; a call returns one when the peer answered with an error.
type RemoteError struct {
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("peer replied with error %d (%s): %s", uint16(e.Code), e.Code, e.Message)
}
