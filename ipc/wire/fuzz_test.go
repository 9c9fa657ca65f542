package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime/metrics"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// fuzzMaxPayload is the payload limit FuzzReadFrame decodes with: small,
// so that an allocation for a hostile length stands out.
const fuzzMaxPayload = 1024

// FuzzReadFrame decodes the input as a stream of frames. ReadFrame must
// not panic; must not allocate more than the payload limit for a frame
// (it asks the reader for no more than that, and makes no allocation of
// runtime's large-object size);
// must stop only with io.EOF at a frame boundary or with a *FrameError
// that agrees with ParseHeader; must give the same result however the
// stream is split into reads; and every frame it returns must re-encode,
// with AppendFrame, to exactly the bytes it consumed.
//
// Seeds: the f.Add calls below and testdata/fuzz/FuzzReadFrame.
func FuzzReadFrame(f *testing.F) {
	hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: 1234, Name: "worker.1"})
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, hello))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 7}, nil))
	f.Add(wire.AppendFrame(wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 7}, []byte("work")),
		wire.Header{Type: wire.TypeCancel, ID: 7}, nil))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, Flags: wire.FlagReply, ID: 7}, []byte("x")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, wire.CodeCrashed, "panic")))
	f.Add(wire.AppendFrame(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 2}, []byte("echo me")),
		wire.Header{Type: wire.TypeEcho, Flags: wire.FlagReply, ID: 2}, []byte("echo me")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply, ID: 9}, wire.AppendError(nil, wire.CodeTooLarge, "no")))
	f.Add(header(wire.TypeMessage, 0, fuzzMaxPayload+1, 3))
	f.Add(header(wire.TypeEcho, 0, 0xFFFFFFFF, 3))
	f.Add(append(header(wire.TypeEcho, 0, 10, 3), "short"...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{})

	allocs := []metrics.Sample{{Name: "/gc/heap/allocs-by-size:bytes"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		large := largeAllocs(allocs)
		r := &sizeReader{r: bytes.NewReader(data)}
		frames, err := decodeStream(r, data)
		if n := largeAllocs(allocs) - large; n > 0 {
			t.Fatalf("decoding %d bytes made %d allocations over 32 KiB", len(data), n)
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.max > max(wire.HeaderSize, fuzzMaxPayload) {
			t.Fatalf("ReadFrame read into a buffer of %d bytes with a limit of %d", r.max, fuzzMaxPayload)
		}
		short, err := decodeStream(iotest.OneByteReader(bytes.NewReader(data)), data)
		if err != nil {
			t.Fatalf("one-byte reads: %v", err)
		}
		if short != frames {
			t.Fatalf("%d frames with whole reads, %d with one-byte reads", frames, short)
		}
	})
}

// largeAllocs returns the number of heap allocations of the runtime's
// large-object size (over 32 KiB) so far. Unlike the byte counts, which
// count small objects a span at a time, it is exact.
func largeAllocs(s []metrics.Sample) uint64 {
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	var n uint64
	for i, c := range h.Counts {
		if h.Buckets[i] > 32<<10 {
			n += c
		}
	}
	return n
}

// sizeReader records the largest buffer it was asked to read into.
type sizeReader struct {
	r   io.Reader
	max int
}

func (r *sizeReader) Read(p []byte) (int, error) {
	r.max = max(r.max, len(p))
	return r.r.Read(p)
}

// decodeStream reads frames from r, which yields data, until ReadFrame
// fails, and returns how many it read. Its error reports misbehaviour.
func decodeStream(r io.Reader, data []byte) (int, error) {
	for n, off := 0, 0; ; n++ {
		h, p, err := wire.ReadFrame(r, fuzzMaxPayload)
		rest := data[off:]
		if err != nil {
			if p != nil {
				return n, fmt.Errorf("ReadFrame returned a payload with %v", err)
			}
			want := expectedError(rest)
			if err != want && !errors.Is(err, want) {
				return n, fmt.Errorf("frame %d: ReadFrame error %v, want %v", n, err, want)
			}
			if want != io.EOF {
				var fe *wire.FrameError
				if !errors.As(err, &fe) {
					return n, fmt.Errorf("frame %d: error %v (%T) is not a *FrameError", n, err, err)
				}
			}
			return n, nil
		}
		if int(h.Length) != len(p) || cap(p) > fuzzMaxPayload {
			return n, fmt.Errorf("frame %d: header length %d, payload of %d bytes (cap %d)", n, h.Length, len(p), cap(p))
		}
		frame := wire.AppendFrame(nil, h, p)
		if !bytes.HasPrefix(rest, frame) {
			return n, fmt.Errorf("frame %d re-encodes as % x, but the input there is % x", n, frame, rest[:min(len(rest), len(frame))])
		}
		off += len(frame)
	}
}

// expectedError is how ReadFrame must fail on rest, derived from
// ParseHeader; nil when rest starts with a whole valid frame.
func expectedError(rest []byte) error {
	switch {
	case len(rest) == 0:
		return io.EOF
	case len(rest) < wire.HeaderSize:
		return wire.ErrTruncated
	}
	h, err := wire.ParseHeader(rest, fuzzMaxPayload)
	if err != nil {
		return errors.Unwrap(err)
	}
	if len(rest) < wire.HeaderSize+int(h.Length) {
		return wire.ErrTruncated
	}
	return nil
}

// FuzzParseHello checks that ParseHello never panics, accepts exactly the
// payloads the protocol allows, returns a valid UTF-8 name, and that what
// it accepts re-encodes to the same bytes (with invalid UTF-8 in the name
// replaced).
func FuzzParseHello(f *testing.F) {
	f.Add(wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: 1, Name: "supervisor"}))
	f.Add(wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 7, PID: 1 << 31}))
	f.Add(append(wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, PID: 9}), "w\xff\xc3"...))
	f.Add([]byte{0, 0, 1, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 0, 1, 0})
	f.Add(make([]byte, 265))
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := wire.ParseHello(p)
		valid := len(p) >= 8 && len(p) <= 8+256
		if valid {
			lo, hi := binary.LittleEndian.Uint16(p), binary.LittleEndian.Uint16(p[2:])
			valid = lo != 0 && lo <= hi
		}
		if (err == nil) != valid {
			t.Fatalf("ParseHello(% x) error %v", p, err)
		}
		if err != nil {
			var fe *wire.FrameError
			if !errors.Is(err, wire.ErrBadPayload) || !errors.As(err, &fe) {
				t.Fatalf("ParseHello error %v (%T), want a *FrameError for ErrBadPayload", err, err)
			}
			return
		}
		if !utf8.ValidString(h.Name) {
			t.Fatalf("ParseHello(% x) returned a name that is not UTF-8: %q", p, h.Name)
		}
		want := p
		if !utf8.Valid(p[8:]) {
			want = append(p[:8:8], strings.ToValidUTF8(string(p[8:]), "\uFFFD")...)
			if len(want) > wire.MaxHelloPayload {
				return // the replacement made the name longer: it is cut when sent
			}
		}
		if got := wire.AppendHello(nil, h); !bytes.Equal(got, want) {
			t.Fatalf("hello % x re-encodes as % x, want % x", p, got, want)
		}
	})
}
