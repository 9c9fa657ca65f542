package conformance

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// TestReadFrame: frames back to back come out whole, io.EOF only between
// frames, and a stream cut anywhere inside a frame is an error that says
// so, never io.EOF.
func TestReadFrame(t *testing.T) {
	frames := [][]byte{
		wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, []byte("abc")),
		wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, wire.CodeProtocol, "no")),
		wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 9}, nil),
	}
	stream := bytes.Join(frames, nil)
	r := bytes.NewReader(stream)
	for i, f := range frames {
		h, p, err := readFrame(r)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got := wire.AppendFrame(nil, h, p); !bytes.Equal(got, f) {
			t.Fatalf("frame %d: read %x, want %x", i, got, f)
		}
	}
	if _, _, err := readFrame(r); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	for cut := 1; cut < len(frames[0]); cut++ {
		_, _, err := readFrame(bytes.NewReader(frames[0][:cut]))
		if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "stream ended after") {
			t.Errorf("cut at %d: %v", cut, err)
		}
	}
	bad := bytes.Clone(frames[0])
	bad[2] = 200
	if _, _, err := readFrame(bytes.NewReader(bad)); !errors.Is(err, wire.ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
}

func TestDescribe(t *testing.T) {
	for _, c := range []struct {
		h    wire.Header
		p    []byte
		want string
	}{
		{wire.Header{Type: wire.TypeHello, Flags: 1, ID: 3}, nil, "hello (flags 0x1, id 3)"},
		{wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: 7}, wire.AppendError(nil, wire.CodeTooLarge, "big"), `error reply (id 7): code 5 (too large) "big"`},
		{wire.Header{Type: wire.TypeError, ID: 0}, nil, `error request (id 0): code 8 (protocol) "malformed error frame"`},
		{wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 2}, []byte("xy"), "echo reply (id 2, 2 bytes)"},
	} {
		if got := describe(c.h, c.p); got != c.want {
			t.Errorf("describe(%+v) = %q, want %q", c.h, got, c.want)
		}
	}
}

// FuzzReadFrame: whatever the bytes, readFrame returns frames within the
// limit whose re-encoding is the input they came from, or an error, and
// io.EOF only where a frame ended.
func FuzzReadFrame(f *testing.F) {
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, []byte("ping")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, Name: "w"})))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, wire.CodeCrashed, "x")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 5}, nil))
	f.Add([]byte{0xC1, 0x50, 3, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		off := 0
		for {
			h, p, err := readFrame(r)
			if err != nil {
				if errors.Is(err, io.EOF) && off != len(b) {
					t.Fatalf("io.EOF at offset %d of %d", off, len(b))
				}
				return
			}
			if h.Length > wire.MaxPayload || int(h.Length) != len(p) {
				t.Fatalf("header %+v with %d payload bytes", h, len(p))
			}
			n := wire.HeaderSize + len(p)
			if got := wire.AppendFrame(nil, h, p); !bytes.Equal(got, b[off:off+n]) {
				t.Fatalf("frame at %d re-encodes as %x, input %x", off, got, b[off:off+n])
			}
			off += n
		}
	})
}
