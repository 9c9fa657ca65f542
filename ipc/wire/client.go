package wire

import (
	"encoding/binary"
	"fmt"
)

// The payload of a [TypeClient] request and of its reply (version 3;
// docs/PROTOCOL.md, "Handing clients to workers"): the state of a
// client's connection to a socket path, whose descriptor goes with the
// request. A supervisor sends it to hand the client to a worker; a
// worker that hands the client back replies with it.
//
//	offset size  field
//	0      1     flags: ClientControl, ClientEstablished, ClientHere
//	1      1     version: the negotiated protocol version if established, else 0
//	2      2     reserved, 0
//	4      4     uid of the client  } as its server read them (SO_PEERCRED)
//	8      4     gid of the client  } when it connected; the pid is 0 if
//	12     4     pid of the client  } in another pid namespace
//	16     4     idle timeout in milliseconds (0: none)
//	20     8     next request id of the server's side (established), else 0
//	28     2     n: length of the client's hello payload (established), else 0
//	30     n     the client's hello payload
//	30+n   4     b: length of the bytes already read, at most 16 KiB
//	34+n   b     bytes read from the connection that belong to frames not
//	             yet handled (before the hello exchange: the client's
//	             first bytes, its hello header)
//
// Integers are little endian.

// Client flags.
const (
	// ClientControl: the client may send requests that change state
	// (message, reload, shutdown); others get CodeDenied for them.
	ClientControl uint8 = 1 << 0
	// ClientEstablished: the hellos have been exchanged; the receiver
	// serves the connection on at Version without a hello of its own.
	// Without it the receiver runs the hello exchange, Buffered being
	// the start of the client's hello.
	ClientEstablished uint8 = 1 << 1
	// ClientHere (in a reply only): the worker hands the client back
	// because the next request is one only the supervisor serves
	// (status, reload); the supervisor serves the client itself. A
	// reply without it comes from a worker that is stopping: the client
	// may be handed to another worker.
	ClientHere uint8 = 1 << 2

	knownClientFlags = ClientControl | ClientEstablished | ClientHere

	// MaxClientBuffered bounds Client.Buffered: what a reader holds
	// between two frames.
	MaxClientBuffered = 16 << 10

	// clientFixed is the size of a client payload without its hello and
	// buffered bytes.
	clientFixed = 34

	// MaxClientPayload bounds a client payload.
	MaxClientPayload = clientFixed + MaxHelloPayload + MaxClientBuffered
)

// Client is the decoded payload of a [TypeClient] request or reply.
type Client struct {
	Flags   uint8
	Version uint16 // negotiated version, if ClientEstablished
	UID     uint32
	GID     uint32
	PID     uint32
	// IdleMillis closes the connection when nothing arrives for that
	// long (0: never).
	IdleMillis uint32
	// NextID is the next request id of the server's side (established).
	NextID uint64
	// Hello is the client's hello payload (established), undecoded.
	Hello []byte
	// Buffered are the bytes already read from the connection and not
	// yet handled.
	Buffered []byte
}

// AppendClient appends c's encoding to dst.
func AppendClient(dst []byte, c Client) []byte {
	dst = append(dst, c.Flags, byte(c.Version), 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, c.UID)
	dst = binary.LittleEndian.AppendUint32(dst, c.GID)
	dst = binary.LittleEndian.AppendUint32(dst, c.PID)
	dst = binary.LittleEndian.AppendUint32(dst, c.IdleMillis)
	dst = binary.LittleEndian.AppendUint64(dst, c.NextID)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(c.Hello)))
	dst = append(dst, c.Hello...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(c.Buffered)))
	return append(dst, c.Buffered...)
}

// ParseClient decodes a client payload. It checks every length against
// the payload and the limits, the flags, and that an established
// client has a version from 1 to [ProtocolVersion] and a valid hello
// ([ParseHello]) while one that is not has neither. Hello and Buffered
// alias p.
func ParseClient(p []byte) (Client, error) {
	bad := func(format string, args ...any) (Client, error) {
		return Client{}, &FrameError{Err: ErrBadPayload, Detail: "client payload: " + fmt.Sprintf(format, args...)}
	}
	if len(p) < clientFixed {
		return bad("%d bytes, want at least %d", len(p), clientFixed)
	}
	c := Client{
		Flags:      p[0],
		Version:    uint16(p[1]),
		UID:        binary.LittleEndian.Uint32(p[4:]),
		GID:        binary.LittleEndian.Uint32(p[8:]),
		PID:        binary.LittleEndian.Uint32(p[12:]),
		IdleMillis: binary.LittleEndian.Uint32(p[16:]),
		NextID:     binary.LittleEndian.Uint64(p[20:]),
	}
	if c.Flags&^knownClientFlags != 0 {
		return bad("flags %#02x", c.Flags)
	}
	if p[2] != 0 || p[3] != 0 {
		return bad("reserved bytes % x", p[2:4])
	}
	n := int(binary.LittleEndian.Uint16(p[28:]))
	rest := p[30:]
	if n > len(rest)-4 {
		return bad("hello of %d bytes in %d", n, len(rest))
	}
	c.Hello, rest = rest[:n:n], rest[n:]
	b := binary.LittleEndian.Uint32(rest)
	rest = rest[4:]
	switch {
	case b > MaxClientBuffered:
		return bad("%d bytes buffered, at most %d", b, MaxClientBuffered)
	case int(b) != len(rest):
		return bad("%d bytes buffered, %d follow", b, len(rest))
	}
	c.Buffered = rest
	if c.Flags&ClientEstablished == 0 {
		if c.Version != 0 || n != 0 || c.NextID != 0 || c.Flags&ClientHere != 0 {
			return bad("not established, yet version %d, a hello of %d bytes, next id %d, flags %#02x", c.Version, n, c.NextID, c.Flags)
		}
		return c, nil
	}
	if c.Version < MinProtocolVersion || c.Version > ProtocolVersion {
		return bad("version %d", c.Version)
	}
	if _, err := ParseHello(c.Hello); err != nil {
		return bad("the client's hello: %v", err)
	}
	return c, nil
}
