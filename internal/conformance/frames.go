package conformance

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// readFrame reads one frame from r: io.EOF at a clean end between
// frames; the reader's own error (such as a deadline's, which wraps
// os.ErrDeadlineExceeded) as it is; otherwise an error saying how the
// frame was malformed or cut short. The payload is allocated only after
// the header has passed wire.ParseHeader, so at most wire.MaxPayload
// bytes.
func readFrame(r io.Reader) (wire.Header, []byte, error) {
	var hb [wire.HeaderSize]byte
	n, err := io.ReadFull(r, hb[:])
	switch {
	case err == io.EOF:
		return wire.Header{}, nil, io.EOF
	case err == io.ErrUnexpectedEOF:
		return wire.Header{}, nil, fmt.Errorf("stream ended after %d of %d header bytes", n, wire.HeaderSize)
	case err != nil:
		return wire.Header{}, nil, err
	}
	h, err := wire.ParseHeader(hb[:], wire.MaxPayload)
	if err != nil {
		return h, nil, fmt.Errorf("malformed frame from the worker: %w", err)
	}
	p := make([]byte, h.Length)
	if n, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("stream ended after %d of %d payload bytes of a %s frame", n, h.Length, h.Type)
		}
		return h, nil, err
	}
	return h, p, nil
}

// readWithin reads one frame from conn, waiting at most d.
func readWithin(conn *os.File, d time.Duration) (wire.Header, []byte, error) {
	conn.SetReadDeadline(time.Now().Add(d))
	defer conn.SetReadDeadline(time.Time{})
	return readFrame(conn)
}

// writeWithin writes frames to conn, waiting at most d.
func writeWithin(conn *os.File, d time.Duration, frames ...[]byte) error {
	conn.SetWriteDeadline(time.Now().Add(d))
	defer conn.SetWriteDeadline(time.Time{})
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	_, err := conn.Write(b)
	return err
}

// timedOut reports whether err is a deadline's.
func timedOut(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// describe says what a frame from the worker is, for a report.
func describe(h wire.Header, p []byte) string {
	kind := h.Type.String() + " request"
	if h.IsReply() {
		kind = h.Type.String() + " reply"
	}
	switch h.Type {
	case wire.TypeHello:
		return fmt.Sprintf("hello (flags %#x, id %d)", h.Flags, h.ID)
	case wire.TypeError:
		e := wire.ParseError(p)
		return fmt.Sprintf("%s (id %d): code %d (%v) %q", kind, h.ID, uint16(e.Code), e.Code, e.Message)
	}
	return fmt.Sprintf("%s (id %d, %d bytes)", kind, h.ID, len(p))
}
