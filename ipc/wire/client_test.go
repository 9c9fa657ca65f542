package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

func TestClientRoundTrip(t *testing.T) {
	t.Parallel()
	hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, PID: 7, Name: "client"})
	hdr := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, Length: uint32(len(hello))}, nil)
	for _, c := range []wire.Client{
		{Flags: wire.ClientControl, UID: 1000, GID: 1000, PID: 4242, IdleMillis: 300000, Buffered: hdr},
		{UID: 1, Buffered: hdr[:3]},
		{},
		{Flags: wire.ClientEstablished, Version: 2, NextID: 9, Hello: hello, Buffered: bytes.Repeat([]byte{0xC1}, wire.MaxClientBuffered)},
		{Flags: wire.ClientEstablished | wire.ClientHere | wire.ClientControl, Version: 1, Hello: hello},
	} {
		p := wire.AppendClient(nil, c)
		if len(p) > wire.MaxClientPayload {
			t.Fatalf("%d bytes, over MaxClientPayload %d", len(p), wire.MaxClientPayload)
		}
		got, err := wire.ParseClient(p)
		if err != nil {
			t.Fatalf("ParseClient(AppendClient(%+v)): %v", c, err)
		}
		if got.Flags != c.Flags || got.Version != c.Version || got.UID != c.UID || got.GID != c.GID || got.PID != c.PID ||
			got.IdleMillis != c.IdleMillis || got.NextID != c.NextID || !bytes.Equal(got.Hello, c.Hello) || !bytes.Equal(got.Buffered, c.Buffered) {
			t.Errorf("round trip of %+v gave %+v", c, got)
		}
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, Name: "c"})
	valid := wire.AppendClient(nil, wire.Client{Flags: wire.ClientEstablished, Version: 2, Hello: hello, Buffered: []byte("abc")})
	with := func(i int, b byte) []byte { p := bytes.Clone(valid); p[i] = b; return p }
	for _, tc := range []struct {
		name string
		p    []byte
	}{
		{"empty", nil},
		{"short", valid[:33]},
		{"flags", with(0, 0x80)},
		{"reserved", with(2, 1)},
		{"version-0", with(1, 0)},
		{"version-high", with(1, wire.ProtocolVersion+1)},
		{"hello-long", with(28, 0xFF)},
		{"buffered-long", valid[:len(valid)-1]},
		{"buffered-short", append(bytes.Clone(valid), 'x')},
		{"buffered-over", wire.AppendClient(nil, wire.Client{Buffered: make([]byte, wire.MaxClientBuffered+1)})},
		{"bad-hello", wire.AppendClient(nil, wire.Client{Flags: wire.ClientEstablished, Version: 2, Hello: []byte("short")})},
		{"fresh-with-version", wire.AppendClient(nil, wire.Client{Version: 2})},
		{"fresh-with-hello", wire.AppendClient(nil, wire.Client{Hello: hello})},
		{"fresh-here", wire.AppendClient(nil, wire.Client{Flags: wire.ClientHere})},
		{"fresh-next-id", wire.AppendClient(nil, wire.Client{NextID: 1})},
	} {
		if _, err := wire.ParseClient(tc.p); !errors.Is(err, wire.ErrBadPayload) {
			t.Errorf("%s: ParseClient = %v, want ErrBadPayload", tc.name, err)
		}
	}
}

// FuzzParseClient: ParseClient must not panic, and what it accepts must
// encode back to exactly the input (the encoding is canonical).
//
// Seeds: the f.Add calls below.
func FuzzParseClient(f *testing.F) {
	hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, PID: 3, Name: "client"})
	f.Add(wire.AppendClient(nil, wire.Client{Flags: wire.ClientControl, UID: 1, GID: 2, PID: 3, IdleMillis: 5, Buffered: []byte{0xC1, 'P', 1, 0}}))
	f.Add(wire.AppendClient(nil, wire.Client{Flags: wire.ClientEstablished | wire.ClientHere, Version: 2, NextID: 4, Hello: hello, Buffered: []byte("rest")}))
	f.Add(wire.AppendClient(nil, wire.Client{}))
	f.Add([]byte{})
	f.Add(make([]byte, 34))
	f.Fuzz(func(t *testing.T, p []byte) {
		c, err := wire.ParseClient(p)
		if err != nil {
			if !errors.Is(err, wire.ErrBadPayload) {
				t.Fatalf("error %v does not wrap ErrBadPayload", err)
			}
			return
		}
		if q := wire.AppendClient(nil, c); !bytes.Equal(q, p) {
			t.Fatalf("ParseClient(% x) = %+v, which encodes to % x", p, c, q)
		}
	})
}
