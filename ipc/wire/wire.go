package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Wire-format constants. docs/PROTOCOL.md is the normative description;
// these values must stay in step with it.
const (
	// HeaderSize is the fixed size of every frame header in bytes.
	HeaderSize = 16

	// Magic0 and Magic1 open every frame. 0xC1 never occurs in UTF-8
	// text, so a server can tell a framed client from a text client by
	// the first byte alone.
	Magic0 = 0xC1
	Magic1 = 'P'

	// ProtocolVersion is the highest protocol version pairvisor
	// speaks; MinProtocolVersion the lowest. Version 2 adds
	// [TypeCancel]; version 3 adds file descriptors passed with frames
	// ([FlagFiles]); everything else is as in version 1.
	ProtocolVersion    = 3
	MinProtocolVersion = 1

	// MaxFiles bounds the file descriptors one frame may carry
	// (version 3, [FlagFiles]).
	MaxFiles = 16

	// MaxPayload is the protocol's hard limit on a frame's payload
	// (16 MiB). A receiver may be configured with a lower limit.
	MaxPayload = 16 << 20

	// MaxPingPayload bounds the opaque payload a ping may carry; the
	// pong returns it unchanged.
	MaxPingPayload = 64

	// MaxHelloPayload bounds a hello's payload: 8 fixed bytes plus a
	// name of at most MaxNameLen bytes.
	MaxHelloPayload = 8 + MaxNameLen
	MaxNameLen      = 256
)

// Type is a frame's message type.
type Type uint8

// Message types. A reply carries its request's type with [FlagReply]
// set, except that any request may instead be answered by [TypeError].
// Hello and cancel frames are neither requests nor replies.
const (
	TypeHello    Type = 1 // version exchange; first frame in each direction, id 0
	TypePing     Type = 2 // health check; answered by a pong (TypePing|FlagReply)
	TypeEcho     Type = 3 // the reply carries the request's payload unchanged
	TypeMessage  Type = 4 // application message, answered by the peer's handler
	TypeShutdown Type = 5 // asks the peer to finish in-flight work and close
	TypeStatus   Type = 6 // asks for a JSON status document
	TypeReload   Type = 7 // asks a supervisor for a rolling restart
	TypeCancel   Type = 8 // version 2: the sender gave up on its request with this id; empty, never answered
	TypeClient   Type = 9 // version 3: a client's connection handed to a worker (client.go)
	TypeError    Type = 15
)

var typeNames = [...]string{
	TypeHello: "hello", TypePing: "ping", TypeEcho: "echo", TypeMessage: "message",
	TypeShutdown: "shutdown", TypeStatus: "status", TypeReload: "reload", TypeCancel: "cancel",
	TypeClient: "client", TypeError: "error",
}

// String returns the type's lower-case name, or "type(N)" when unknown.
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Known reports whether t is a type defined by the protocol (by its
// highest version: [TypeCancel] is known although a version 1
// connection must not carry it, and [TypeClient] likewise below
// version 3; package ipc checks that).
func (t Type) Known() bool { return int(t) < len(typeNames) && typeNames[t] != "" }

// Frame flags.
const (
	// FlagReply marks a frame as the answer to the request with the
	// same id.
	FlagReply uint8 = 1 << 0

	// FlagFiles (version 3) marks a frame that carries file
	// descriptors: 1 to [MaxFiles] of them, passed (SCM_RIGHTS) with
	// the frame's first byte. Package ipc checks that the connection's
	// version allows it and that the descriptors came.
	FlagFiles uint8 = 1 << 1

	knownFlags = FlagReply | FlagFiles
)

// Header is a decoded frame header.
//
//	offset size field
//	0      1    magic 0xC1
//	1      1    magic 'P' (0x50)
//	2      1    type
//	3      1    flags
//	4      4    payload length, little endian
//	8      8    request id, little endian
type Header struct {
	Type   Type
	Flags  uint8
	Length uint32
	ID     uint64
}

// IsReply reports whether the frame answers an earlier request.
func (h Header) IsReply() bool { return h.Flags&FlagReply != 0 }

// HasFiles reports whether the frame carries file descriptors
// ([FlagFiles]).
func (h Header) HasFiles() bool { return h.Flags&FlagFiles != 0 }

// PutHeader encodes h into b, which must be at least [HeaderSize] long.
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	b[0], b[1], b[2], b[3] = Magic0, Magic1, byte(h.Type), h.Flags
	binary.LittleEndian.PutUint32(b[4:8], h.Length)
	binary.LittleEndian.PutUint64(b[8:16], h.ID)
}

// ParseHeader decodes and validates the header at the start of b.
// maxPayload bounds the accepted length; zero means [MaxPayload].
// Errors are *[FrameError] values wrapping [ErrBadMagic],
// [ErrUnknownType], [ErrBadFlags] or [ErrFrameTooLarge], or
// [ErrTruncated] when b is shorter than a header.
func ParseHeader(b []byte, maxPayload uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, &FrameError{Err: ErrTruncated, Detail: fmt.Sprintf("header has %d of %d bytes", len(b), HeaderSize)}
	}
	if b[0] != Magic0 || b[1] != Magic1 {
		return Header{}, &FrameError{Err: ErrBadMagic, Detail: fmt.Sprintf("got %#02x %#02x, want %#02x %#02x", b[0], b[1], Magic0, Magic1)}
	}
	h := Header{
		Type:   Type(b[2]),
		Flags:  b[3],
		Length: binary.LittleEndian.Uint32(b[4:8]),
		ID:     binary.LittleEndian.Uint64(b[8:16]),
	}
	if !h.Type.Known() {
		return h, &FrameError{Err: ErrUnknownType, Detail: fmt.Sprintf("type byte %d", b[2])}
	}
	if h.Flags&^knownFlags != 0 {
		return h, &FrameError{Err: ErrBadFlags, Detail: fmt.Sprintf("flags %#02x", h.Flags)}
	}
	if maxPayload == 0 || maxPayload > MaxPayload {
		maxPayload = MaxPayload
	}
	if h.Length > maxPayload {
		return h, &FrameError{Err: ErrFrameTooLarge, Detail: fmt.Sprintf("%s payload of %d bytes exceeds the limit of %d", h.Type, h.Length, maxPayload)}
	}
	return h, nil
}

// AppendFrame appends a complete frame (header and payload) to dst.
func AppendFrame(dst []byte, h Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	var hb [HeaderSize]byte
	PutHeader(hb[:], h)
	return append(append(dst, hb[:]...), payload...)
}

// ReadFrame reads one frame from r. The payload is newly allocated,
// and only after the header has passed validation, so a hostile length
// cannot make ReadFrame allocate more than maxPayload bytes. A stream
// that ends inside a frame yields [ErrTruncated]; one that ends cleanly
// before a frame yields io.EOF.
//
// ReadFrame suits simple clients and tests; package ipc's Conn uses its
// own buffered reader.
func ReadFrame(r io.Reader, maxPayload uint32) (Header, []byte, error) {
	var hb [HeaderSize]byte
	if n, err := io.ReadFull(r, hb[:]); err != nil {
		if err == io.EOF {
			return Header{}, nil, io.EOF
		}
		return Header{}, nil, &FrameError{Err: ErrTruncated, Detail: fmt.Sprintf("header has %d of %d bytes: %v", n, HeaderSize, err)}
	}
	h, err := ParseHeader(hb[:], maxPayload)
	if err != nil {
		return h, nil, err
	}
	p := make([]byte, h.Length)
	if n, err := io.ReadFull(r, p); err != nil {
		return h, nil, &FrameError{Err: ErrTruncated, Detail: fmt.Sprintf("%s payload has %d of %d bytes: %v", h.Type, n, h.Length, err)}
	}
	return h, p, nil
}

// Hello is the content of a hello frame.
//
//	offset size field
//	0      2    lowest protocol version spoken, little endian
//	2      2    highest protocol version spoken, little endian
//	4      4    sender's process id, little endian
//	8      n    sender's name, UTF-8, at most 256 bytes
type Hello struct {
	MinVersion uint16
	MaxVersion uint16
	PID        uint32
	Name       string
}

// AppendHello appends h's encoding to dst. The name is sent as valid
// UTF-8 (invalid bytes replaced by U+FFFD) and cut, at a character
// boundary, to at most [MaxNameLen] bytes.
func AppendHello(dst []byte, h Hello) []byte {
	name := h.Name
	if !utf8.ValidString(name) {
		name = strings.ToValidUTF8(name, "\uFFFD")
	}
	if len(name) > MaxNameLen {
		n := MaxNameLen
		for n > 0 && !utf8.RuneStart(name[n]) {
			n--
		}
		name = name[:n]
	}
	dst = binary.LittleEndian.AppendUint16(dst, h.MinVersion)
	dst = binary.LittleEndian.AppendUint16(dst, h.MaxVersion)
	dst = binary.LittleEndian.AppendUint32(dst, h.PID)
	return append(dst, name...)
}

// ParseHello decodes a hello payload: 8 to [MaxHelloPayload] bytes,
// with a lowest version from 1 up to the highest. The name is not
// checked (it is for humans and logs): invalid UTF-8 in it is replaced
// by U+FFFD, so Name is always valid UTF-8.
func ParseHello(p []byte) (Hello, error) {
	if len(p) < 8 || len(p) > MaxHelloPayload {
		return Hello{}, &FrameError{Err: ErrBadPayload, Detail: fmt.Sprintf("hello payload of %d bytes, want 8 to %d", len(p), MaxHelloPayload)}
	}
	h := Hello{
		MinVersion: binary.LittleEndian.Uint16(p[0:2]),
		MaxVersion: binary.LittleEndian.Uint16(p[2:4]),
		PID:        binary.LittleEndian.Uint32(p[4:8]),
		Name:       string(p[8:]),
	}
	if !utf8.ValidString(h.Name) {
		h.Name = strings.ToValidUTF8(h.Name, "\uFFFD")
	}
	if h.MinVersion == 0 || h.MinVersion > h.MaxVersion {
		return h, &FrameError{Err: ErrBadPayload, Detail: fmt.Sprintf("hello version range %d..%d", h.MinVersion, h.MaxVersion)}
	}
	return h, nil
}

// Code is the error code carried by a [TypeError] frame.
type Code uint16

// Error codes. docs/PROTOCOL.md defines them; a peer may send codes
// this version does not know, which [Code.String] prints as "code(N)".
const (
	CodeBadRequest  Code = 1  // malformed or unexpected request
	CodeUnsupported Code = 2  // the peer has no handler for this type
	CodeUnavailable Code = 3  // no worker can take the request now
	CodeInternal    Code = 4  // the handler failed
	CodeTooLarge    Code = 5  // the frame exceeded the receiver's limit
	CodeShutdown    Code = 6  // the peer is shutting down
	CodeVersion     Code = 7  // no common protocol version
	CodeProtocol    Code = 8  // protocol violation; the sender closes after this frame
	CodeDenied      Code = 9  // the peer may not make this request (a control request from a user without the right)
	CodeCrashed     Code = 10 // the handler crashed (a Go panic) instead of answering; the connection goes on
)

var codeNames = [...]string{
	CodeBadRequest: "bad request", CodeUnsupported: "unsupported", CodeUnavailable: "unavailable",
	CodeInternal: "internal", CodeTooLarge: "too large", CodeShutdown: "shutdown",
	CodeVersion: "version", CodeProtocol: "protocol", CodeDenied: "denied", CodeCrashed: "crashed",
}

// String returns the code's name ("unavailable"), or "code(N)" when
// this version does not define it.
func (c Code) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// AppendError appends an error payload: a little-endian uint16 code
// followed by a UTF-8 message.
func AppendError(dst []byte, code Code, msg string) []byte {
	return append(binary.LittleEndian.AppendUint16(dst, uint16(code)), msg...)
}

// ParseError decodes an error payload into a *[RemoteError].
func ParseError(p []byte) *RemoteError {
	if len(p) < 2 {
		return &RemoteError{Code: CodeProtocol, Message: "malformed error frame"}
	}
	return &RemoteError{Code: Code(binary.LittleEndian.Uint16(p)), Message: string(p[2:])}
}
