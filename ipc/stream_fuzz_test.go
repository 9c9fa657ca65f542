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

// FuzzConnStream feeds arbitrary bytes, after a valid hello, to a real
// Conn's reader over a socketpair. Whatever arrives, the Conn must not
// panic, must answer or refuse, and must end once the stream ends.
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
	hello := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello},
		wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, Name: "fuzz"}))

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
		c.Close()
		b.Close()
		<-drained
	})
}
