// Package wire is pairvisor's frame codec: the 16-byte frame header,
// the message types and flags, the hello and error payloads, and the
// limits the protocol sets. It is pure encoding and decoding over byte
// slices and io.Readers, with no system calls, so it builds on every
// platform; docs/PROTOCOL.md is the language-neutral specification it
// implements.
//
// It is not a connection: package ipc runs the protocol over a socket
// (the hello exchange, request ids, pings answered, bounded buffers)
// and decides what the frames mean there (which version may carry which
// type, which id an error reply carries). The type registry here is the
// full one of the specification's highest version (status, reload and
// version 2's cancel included); what a peer does with each type is up
// to the packages above.
//
// Decoders never allocate more than the caller's payload limit and
// report malformed input as a *[FrameError] wrapping one of the
// sentinel errors ([ErrTruncated], [ErrBadMagic], [ErrUnknownType],
// [ErrBadFlags], [ErrFrameTooLarge], [ErrBadPayload]).
package wire
