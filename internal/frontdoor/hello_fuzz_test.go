//go:build linux

package frontdoor

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// FuzzCheckHello checks the path socket's test of a framed client's
// first header: it must not panic, must accept exactly a whole hello
// header (type hello, no flags, id 0, a length of 8 to
// wire.MaxHelloPayload, within the payload limit), and must refuse
// anything else with code 5 (a length over a limit) or 8, in a message
// that says a hello was expected.
func FuzzCheckHello(f *testing.F) {
	hello := func(flags uint8, length uint32, id uint64) []byte {
		b := make([]byte, wire.HeaderSize)
		wire.PutHeader(b, wire.Header{Type: wire.TypeHello, Flags: flags, Length: length, ID: id})
		return b
	}
	f.Add(hello(0, 16, 0), uint32(0))
	f.Add(hello(0, 8, 0), uint32(1024))
	f.Add(hello(0, 7, 0), uint32(0))
	f.Add(hello(0, 265, 0), uint32(0))
	f.Add(hello(0, 300, 0), uint32(100))
	f.Add(hello(wire.FlagReply, 16, 0), uint32(0))
	f.Add(hello(wire.FlagFiles, 16, 0), uint32(0))
	f.Add(hello(0, 16, 9), uint32(0))
	f.Add(hello(0, 16, 0)[:10], uint32(0))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 1}, nil), uint32(0))
	f.Add([]byte{wire.Magic0, wire.Magic1}, uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, maxPayload uint32) {
		if len(b) > wire.HeaderSize {
			b = b[:wire.HeaderSize] // classify reads at most a header
		}
		re := checkHello(b, maxPayload)
		limit := maxPayload
		if limit == 0 || limit > wire.MaxPayload {
			limit = wire.MaxPayload
		}
		valid := len(b) == wire.HeaderSize && b[0] == wire.Magic0 && b[1] == wire.Magic1 &&
			wire.Type(b[2]) == wire.TypeHello && b[3] == 0 && binary.LittleEndian.Uint64(b[8:]) == 0
		length := uint32(0)
		if len(b) == wire.HeaderSize {
			length = binary.LittleEndian.Uint32(b[4:8])
		}
		valid = valid && length >= 8 && length <= wire.MaxHelloPayload && length <= limit
		if (re == nil) != valid {
			t.Fatalf("checkHello(% x, %d) = %v, want valid=%v", b, maxPayload, re, valid)
		}
		if re == nil {
			return
		}
		if re.Code != wire.CodeProtocol && re.Code != wire.CodeTooLarge || !strings.HasPrefix(re.Message, "hello expected: ") {
			t.Fatalf("checkHello(% x) refused with %d %q", b, re.Code, re.Message)
		}
	})
}
