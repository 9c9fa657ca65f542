package wire_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// TestHeaderLayout pins the wire layout given in docs/PROTOCOL.md.
func TestHeaderLayout(t *testing.T) {
	t.Parallel()
	b := make([]byte, wire.HeaderSize)
	wire.PutHeader(b, wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, Length: 0x01020304, ID: 0x0102030405060708})
	want := []byte{0xC1, 'P', 3, 1, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1}
	if !bytes.Equal(b, want) {
		t.Fatalf("PutHeader wrote % x, want % x", b, want)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	t.Parallel()
	for _, h := range []wire.Header{
		{Type: wire.TypeHello},
		{Type: wire.TypePing, ID: 1},
		{Type: wire.TypePing, Flags: wire.FlagReply, Length: wire.MaxPingPayload, ID: 1},
		{Type: wire.TypeEcho, Length: wire.MaxPayload, ID: 1<<64 - 1},
		{Type: wire.TypeMessage, Length: 12345, ID: 77},
		{Type: wire.TypeShutdown},
		{Type: wire.TypeStatus, Flags: wire.FlagReply},
		{Type: wire.TypeReload, ID: 1 << 32},
		{Type: wire.TypeError, Flags: wire.FlagReply, Length: 2},
		{Type: wire.TypeMessage, Flags: wire.FlagFiles, Length: 3, ID: 5},
		{Type: wire.TypeMessage, Flags: wire.FlagReply | wire.FlagFiles, ID: 5},
	} {
		b := make([]byte, wire.HeaderSize, wire.HeaderSize+3)
		wire.PutHeader(b, h)
		got, err := wire.ParseHeader(append(b, "xyz"...), 0) // bytes after a header are not its concern
		if err != nil || got != h {
			t.Errorf("ParseHeader(PutHeader(%+v)) = %+v, %v", h, got, err)
		}
		if got.IsReply() != (h.Flags&wire.FlagReply != 0) {
			t.Errorf("%+v: IsReply() = %v", h, got.IsReply())
		}
		if got.HasFiles() != (h.Flags&wire.FlagFiles != 0) {
			t.Errorf("%+v: HasFiles() = %v", h, got.HasFiles())
		}
	}
}

func TestParseHeaderErrors(t *testing.T) {
	t.Parallel()
	valid := header(wire.TypeEcho, 0, 10, 99)
	with := func(i int, v byte) []byte {
		b := bytes.Clone(valid)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		max    uint32
		want   error
		detail string // in the error text
		id     bool   // the returned Header still carries the ID
	}{
		{"empty", nil, 0, wire.ErrTruncated, "header has 0 of 16 bytes", false},
		{"short", valid[:15], 0, wire.ErrTruncated, "header has 15 of 16 bytes", false},
		{"magic0", with(0, 'G'), 0, wire.ErrBadMagic, "got 0x47 0x50, want 0xc1 0x50", false},
		{"magic1", with(1, 'Q'), 0, wire.ErrBadMagic, "got 0xc1 0x51", false},
		{"text", []byte("{\"type\":\"ping\"}\n"), 0, wire.ErrBadMagic, "got 0x7b 0x22", false},
		{"type0", with(2, 0), 0, wire.ErrUnknownType, "type byte 0", true},
		{"type10", with(2, 10), 0, wire.ErrUnknownType, "type byte 10", true},
		{"type14", with(2, 14), 0, wire.ErrUnknownType, "type byte 14", true},
		{"type16", with(2, 16), 0, wire.ErrUnknownType, "type byte 16", true},
		{"type255", with(2, 255), 0, wire.ErrUnknownType, "type byte 255", true},
		{"flags4", with(3, 4), 0, wire.ErrBadFlags, "flags 0x04", true},
		{"flags80", with(3, 0x81), 0, wire.ErrBadFlags, "flags 0x81", true},
		{"over-max", valid, 9, wire.ErrFrameTooLarge, "echo payload of 10 bytes exceeds the limit of 9", true},
		{"over-protocol", header(wire.TypeMessage, 0, wire.MaxPayload+1, 99), 0, wire.ErrFrameTooLarge, "message payload of 16777217 bytes exceeds the limit of 16777216", true},
		{"max-clamped", header(wire.TypeMessage, 0, wire.MaxPayload+1, 99), 1 << 30, wire.ErrFrameTooLarge, "exceeds the limit of 16777216", true},
		{"huge", header(wire.TypeEcho, 0, 0xFFFFFFFF, 99), 0, wire.ErrFrameTooLarge, "4294967295 bytes exceeds the limit", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := wire.ParseHeader(tc.b, tc.max)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseHeader(% x) error %v, want %v", tc.b, err, tc.want)
			}
			var fe *wire.FrameError
			if !errors.As(err, &fe) || fe.Err != tc.want {
				t.Fatalf("error %v (%T) is not a *FrameError for %v", err, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.detail) || !strings.HasPrefix(err.Error(), tc.want.Error()+": ") {
				t.Errorf("error text %q, want %q followed by %q", err, tc.want, tc.detail)
			}
			if tc.id && h.ID != 99 {
				t.Errorf("Header.ID = %d after %v, want 99 (the decoded header, for the error's detail)", h.ID, tc.want)
			}
		})
	}

	// The limit itself is allowed.
	for _, tc := range []struct {
		length, max uint32
	}{{0, 0}, {10, 10}, {wire.MaxPayload, 0}, {wire.MaxPayload, 1 << 31}} {
		if _, err := wire.ParseHeader(header(wire.TypeEcho, 0, tc.length, 1), tc.max); err != nil {
			t.Errorf("length %d with limit %d: %v", tc.length, tc.max, err)
		}
	}
}

func TestAppendFrame(t *testing.T) {
	t.Parallel()
	// Length comes from the payload, whatever the Header says.
	got := wire.AppendFrame([]byte("pre"), wire.Header{Type: wire.TypeMessage, Length: 999, ID: 5}, []byte("body"))
	want := append([]byte("pre"), header(wire.TypeMessage, 0, 4, 5)...)
	want = append(want, "body"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendFrame = % x, want % x", got, want)
	}
	if got := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing}, nil); len(got) != wire.HeaderSize {
		t.Fatalf("empty frame of %d bytes", len(got))
	}
}

func TestReadFrame(t *testing.T) {
	t.Parallel()
	frames := []struct {
		h wire.Header
		p []byte
	}{
		{wire.Header{Type: wire.TypeHello}, wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: 7, Name: "x"})},
		{wire.Header{Type: wire.TypePing, ID: 1}, nil},
		{wire.Header{Type: wire.TypeEcho, ID: 2}, randBytes(2, 5000)},
		{wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: 2}, wire.AppendError(nil, wire.CodeInternal, "oops")},
	}
	var stream []byte
	for _, f := range frames {
		stream = wire.AppendFrame(stream, f.h, f.p)
	}
	for _, r := range []struct {
		name string
		r    func([]byte) io.Reader
	}{
		{"whole", func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"one-byte", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }},
		{"half", func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) }},
	} {
		t.Run(r.name, func(t *testing.T) {
			rd := r.r(stream)
			for i, f := range frames {
				h, p, err := wire.ReadFrame(rd, 8000)
				want := f.h
				want.Length = uint32(len(f.p))
				if err != nil || h != want || !bytes.Equal(p, f.p) {
					t.Fatalf("frame %d: %+v, %d bytes, %v; want %+v, %d bytes", i, h, len(p), err, want, len(f.p))
				}
			}
			if _, _, err := wire.ReadFrame(rd, 0); err != io.EOF {
				t.Fatalf("at the end of the stream: %v, want io.EOF", err)
			}
		})
	}

	// The payload is the caller's, not a view of some buffer.
	buf := bytes.NewBuffer(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho}, []byte("abc")))
	_, p, _ := wire.ReadFrame(buf, 0)
	p[0] = 'X'
	if _, p2, _ := wire.ReadFrame(bytes.NewReader(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho}, []byte("abc"))), 0); string(p2) != "abc" {
		t.Fatal("payloads share memory")
	}
}

func TestReadFrameErrors(t *testing.T) {
	t.Parallel()
	frame := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 3}, []byte("0123456789"))
	for _, tc := range []struct {
		name   string
		b      []byte
		max    uint32
		want   error
		detail string
		rest   int // bytes ReadFrame must leave unread
	}{
		{"header", frame[:5], 0, wire.ErrTruncated, "header has 5 of 16 bytes", 0},
		{"payload", frame[:wire.HeaderSize+3], 0, wire.ErrTruncated, "echo payload has 3 of 10 bytes", 0},
		{"empty-payload", frame[:wire.HeaderSize], 0, wire.ErrTruncated, "echo payload has 0 of 10 bytes", 0},
		{"too-large", frame, 9, wire.ErrFrameTooLarge, "exceeds the limit of 9", 10},
		{"magic", []byte("SSH-2.0-OpenSSH_9.6\r\n"), 0, wire.ErrBadMagic, "got 0x53 0x53", 5},
		{"type", append(header(0x42, 0, 1, 0), 'x'), 0, wire.ErrUnknownType, "type byte 66", 1},
		{"flags", header(wire.TypeEcho, 4, 0, 0), 0, wire.ErrBadFlags, "flags 0x04", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.b)
			_, p, err := wire.ReadFrame(r, tc.max)
			if !errors.Is(err, tc.want) || p != nil {
				t.Fatalf("ReadFrame: %d bytes, %v; want %v", len(p), err, tc.want)
			}
			var fe *wire.FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v (%T) is not a *FrameError", err, err)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error text %q does not contain %q", err, tc.detail)
			}
			if r.Len() != tc.rest {
				t.Errorf("%d bytes left unread, want %d", r.Len(), tc.rest)
			}
		})
	}
}

// TestReadFrameHostileLength checks that a length over the limit is
// refused before anything is allocated for it.
func TestReadFrameHostileLength(t *testing.T) {
	// Not parallel: it measures this process's allocations.
	b := header(wire.TypeMessage, 0, wire.MaxPayload, 1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, _, err := wire.ReadFrame(bytes.NewReader(b), 4096); !errors.Is(err, wire.ErrFrameTooLarge) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("100 refused 16 MiB frames allocated %d bytes", d)
	}
}

func TestHello(t *testing.T) {
	t.Parallel()
	for _, h := range []wire.Hello{
		{MinVersion: 1, MaxVersion: 1, PID: 1, Name: ""},
		{MinVersion: 1, MaxVersion: 3, PID: 1 << 31, Name: "worker.3"},
		{MinVersion: 65535, MaxVersion: 65535, PID: 0, Name: strings.Repeat("n", 256)},
		{MinVersion: 2, MaxVersion: 9, PID: 42, Name: "ünïcødé"},
	} {
		p := wire.AppendHello(nil, h)
		got, err := wire.ParseHello(p)
		if err != nil || got != h {
			t.Errorf("ParseHello(AppendHello(%+v)) = %+v, %v", h, got, err)
		}
	}
	if p := wire.AppendHello([]byte("pre"), wire.Hello{MinVersion: 1, MaxVersion: 2, PID: 0x01020304, Name: "ab"}); !bytes.Equal(p, []byte("pre\x01\x00\x02\x00\x04\x03\x02\x01ab")) {
		t.Errorf("AppendHello wrote % x", p)
	}

	// Over-long names are cut to 256 bytes, at a character boundary.
	got, err := wire.ParseHello(wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, Name: strings.Repeat("n", 300)}))
	if err != nil || len(got.Name) != 256 {
		t.Errorf("hello with a 300-byte name: name of %d bytes, %v", len(got.Name), err)
	}
	long := "n" + strings.Repeat("é", 200) // 401 bytes; byte 256 is inside an é
	got, err = wire.ParseHello(wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, Name: long}))
	if err != nil || got.Name != long[:255] {
		t.Errorf("hello with a long two-byte name: %q (%d bytes), %v; want its first 255 bytes", got.Name, len(got.Name), err)
	}

	// A name that is not UTF-8 is accepted; invalid bytes become U+FFFD,
	// whoever sent them.
	raw := append([]byte{1, 0, 2, 0, 7, 0, 0, 0}, "w\xff\xfe.1"...)
	got, err = wire.ParseHello(raw)
	if err != nil || got.Name != "w\uFFFD.1" || got.MaxVersion != 2 || got.PID != 7 {
		t.Errorf("ParseHello with a name that is not UTF-8 = %+v, %v; want the name w\uFFFD.1", got, err)
	}
	if p := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, Name: "a\x80b"}); string(p[8:]) != "a\uFFFDb" {
		t.Errorf("AppendHello sent the name % x, want valid UTF-8", p[8:])
	}

	for _, tc := range []struct {
		name   string
		p      []byte
		detail string
	}{
		{"empty", nil, "hello payload of 0 bytes, want 8 to 264"},
		{"short", []byte{1, 0, 1, 0, 0, 0, 0}, "hello payload of 7 bytes"},
		{"long", append([]byte{1, 0, 1, 0, 0, 0, 0, 0}, make([]byte, 257)...), "hello payload of 265 bytes"},
		{"min-zero", []byte{0, 0, 1, 0, 0, 0, 0, 0}, "hello version range 0..1"},
		{"inverted", []byte{3, 0, 2, 0, 0, 0, 0, 0}, "hello version range 3..2"},
	} {
		_, err := wire.ParseHello(tc.p)
		var fe *wire.FrameError
		if !errors.Is(err, wire.ErrBadPayload) || !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%s: ParseHello error %v, want ErrBadPayload with %q", tc.name, err, tc.detail)
		}
	}
}

func TestErrorPayload(t *testing.T) {
	t.Parallel()
	p := wire.AppendError(nil, wire.CodeUnavailable, "no worker free")
	if !bytes.Equal(p, []byte("\x03\x00no worker free")) {
		t.Errorf("AppendError wrote % x", p)
	}
	re := wire.ParseError(p)
	if re.Code != wire.CodeUnavailable || re.Message != "no worker free" {
		t.Errorf("ParseError = %+v", re)
	}
	if s := re.Error(); !strings.Contains(s, "3") || !strings.Contains(s, "no worker free") {
		t.Errorf("RemoteError text %q lacks the code or message", s)
	}
	if re := wire.ParseError(wire.AppendError(nil, 500, "")); re.Code != 500 || re.Message != "" {
		t.Errorf("ParseError of an empty message = %+v", re)
	}
	for _, short := range [][]byte{nil, {1}} {
		if re := wire.ParseError(short); re.Code != wire.CodeProtocol || re.Message != "malformed error frame" {
			t.Errorf("ParseError(% x) = %+v, want a protocol error", short, re)
		}
	}
}

func TestTypeString(t *testing.T) {
	t.Parallel()
	for typ, want := range map[wire.Type]string{
		wire.TypeHello: "hello", wire.TypePing: "ping", wire.TypeEcho: "echo", wire.TypeMessage: "message",
		wire.TypeShutdown: "shutdown", wire.TypeStatus: "status", wire.TypeReload: "reload", wire.TypeError: "error",
		wire.TypeCancel: "cancel", wire.TypeClient: "client", 0: "type(0)", 10: "type(10)", 14: "type(14)", 16: "type(16)", 255: "type(255)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("Type(%d).String() = %q, want %q", uint8(typ), got, want)
		}
		if typ.Known() != !strings.HasPrefix(want, "type(") {
			t.Errorf("Type(%d).Known() = %v", uint8(typ), typ.Known())
		}
	}
}

func TestErrorTypes(t *testing.T) {
	t.Parallel()
	if got := (&wire.FrameError{Err: wire.ErrTruncated}).Error(); got != wire.ErrTruncated.Error() {
		t.Errorf("FrameError without detail: %q", got)
	}
	fe := &wire.FrameError{Err: wire.ErrBadMagic, Detail: "got 0x00 0x00"}
	if got, want := fe.Error(), "wire: bad frame magic: got 0x00 0x00"; got != want {
		t.Errorf("FrameError text %q, want %q", got, want)
	}
	if !errors.Is(fe, wire.ErrBadMagic) {
		t.Error("FrameError does not unwrap to its sentinel")
	}
	re := wire.ParseError(wire.AppendError(nil, wire.CodeDenied, "no"))
	if got, want := re.Error(), "peer replied with error 9 (denied): no"; got != want {
		t.Errorf("RemoteError text %q, want %q", got, want)
	}
}

func TestCodeString(t *testing.T) {
	t.Parallel()
	for c, want := range map[wire.Code]string{
		wire.CodeBadRequest: "bad request", wire.CodeUnavailable: "unavailable",
		wire.CodeDenied: "denied", wire.CodeCrashed: "crashed", 0: "code(0)", 11: "code(11)", 0xFFFF: "code(65535)",
	} {
		if got := c.String(); got != want {
			t.Errorf("Code(%d).String() = %q, want %q", uint16(c), got, want)
		}
	}
}

// header encodes a header as is, without validating it.
func header(t wire.Type, flags uint8, length uint32, id uint64) []byte {
	b := make([]byte, wire.HeaderSize)
	wire.PutHeader(b, wire.Header{Type: t, Flags: flags, Length: length, ID: id})
	return b
}

// randBytes returns n pseudo-random bytes determined by seed.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}).Read(b)
	return b
}
