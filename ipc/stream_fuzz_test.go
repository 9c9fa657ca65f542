//go:build linux

package ipc_test

import (
	"context"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// FuzzConnStream feeds arbitrary bytes, after a valid hello offering
// versions 1 and 2, to a real Conn's reader over a socketpair. Whatever
// arrives, the Conn must not panic (its Handler may: "panic" makes it),
// must answer or refuse, must end once the stream ends, and must leave
// no request registered for cancels.
func FuzzConnStream(f *testing.F) {
	ping := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, ID: 1}, nil)
	echo := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 2}, []byte("echo me"))
	msg := wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 3}, []byte("hi"))
	shut := wire.AppendFrame(nil, wire.Header{Type: wire.TypeShutdown, ID: 4}, nil)
	reply := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, Flags: wire.FlagReply, ID: 9}, nil)
	f.Add(ping)
	f.Add(append(append(append([]byte{}, echo...), msg...), shut...))
	f.Add(append(append([]byte{}, reply...), ping[:7]...))
	f.Add([]byte{0xC1, 'P', 0xFF, 0, 0, 0, 0, 0})
	f.Add([]byte{0xC1, 'P', 3, 0, 0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	cancel3 := wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 3}, nil)
	f.Add(append(append([]byte{}, msg...), cancel3...))
	f.Add(append(append(append([]byte{}, cancel3...), msg...), msg...)) // cancel first; then id 3 twice
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, ID: 3}, []byte("payload")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel, Flags: wire.FlagReply, ID: 3}, nil))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCancel}, nil))
	f.Add(append(wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 5}, []byte("panic")), cancel3...))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypeShutdown, ID: 6}, []byte("panic")))
	f.Add(wire.AppendFrame(nil, wire.Header{Type: wire.TypePing}, nil))
	hello := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello},
		wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, Name: "fuzz"}))

	f.Fuzz(func(t *testing.T, stream []byte) {
		if len(stream) > 64<<10 {
			return // must fit the socket buffer before the Conn reads
		}
		a, b, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if _, err := b.Write(append(append([]byte{}, hello...), stream...)); err != nil {
			t.Fatal(err)
		}
		unix.Shutdown(int(b.Fd()), unix.SHUT_WR)
		drained := make(chan struct{})
		go func() { io.Copy(io.Discard, b); close(drained) }()

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := ipc.NewConn(ctx, a, ipc.ConnConfig{
			MaxPayload:   32 << 10,
			WriteTimeout: time.Second,
			Handler: func(ctx context.Context, r ipc.Request) ([]byte, error) {
				if string(r.Payload) == "panic" {
					panic("fuzz")
				}
				return r.Payload, nil
			},
		})
		if err != nil {
			return // a stream that breaks the handshake is refused: fine
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("the Conn did not end after the stream ended (Err %v)", c.Err())
		}
		if c.Err() == nil {
			t.Fatal("a closed Conn reports no error")
		}
		if n := ipc.ActiveRequests(c); n != 0 {
			t.Fatalf("%d requests left registered for cancels", n)
		}
		c.Close()
		b.Close()
		<-drained
	})
}
