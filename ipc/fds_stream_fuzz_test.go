//go:build linux

package ipc_test

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// FuzzConnFiles feeds arbitrary bytes, after a valid hello offering
// versions 1 to 3, to a Conn that takes descriptors, cut into sendmsg
// calls that each carry 0 to 3 descriptors as plan says: every pair of
// plan bytes (k, n) sends the next k+1 bytes with n%4 descriptors (the
// rest goes in one last call without). Whatever arrives, where the
// descriptors land, the Conn must not panic, must end once the stream
// ends, and must leave no descriptor open: those it hands to the
// Handler are the Handler's (it closes them), the rest it closes.
func FuzzConnFiles(f *testing.F) {
	msgF := wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, Flags: wire.FlagFiles, ID: 3}, []byte("hi"))
	echo := wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 2}, []byte("echo me"))
	pingF := wire.AppendFrame(nil, wire.Header{Type: wire.TypePing, Flags: wire.FlagFiles, ID: 1}, nil)
	replyF := wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, Flags: wire.FlagReply | wire.FlagFiles, ID: 9}, []byte("r"))
	f.Add(msgF, []byte{byte(len(msgF) - 1), 2})
	f.Add(append(append([]byte{}, echo...), msgF...), []byte{byte(len(echo) - 1), 0, byte(len(msgF) - 1), 3})
	f.Add(append(append([]byte{}, echo...), msgF...), []byte{byte(len(echo) - 1), 1, byte(len(msgF) - 1), 3})
	f.Add(append(append([]byte{}, pingF...), replyF...), []byte{byte(len(pingF) - 1), 1, byte(len(replyF) - 1), 1})
	f.Add(append(append([]byte{}, msgF...), msgF...), []byte{3, 1, byte(len(msgF) - 5), 0, byte(len(msgF) - 1), 2})
	f.Add(echo, []byte{5, 1})
	hello := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello},
		wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 3, Name: "fuzz"}))

	f.Fuzz(func(t *testing.T, stream, plan []byte) {
		if len(stream) > 32<<10 || len(plan) > 64 {
			return // must fit the socket buffer before the Conn reads
		}
		before := openFDs(t)
		func() {
			a, b, err := ipc.Socketpair()
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if _, err := b.Write(hello); err != nil {
				t.Fatal(err)
			}
			sendPlanned(t, b, stream, plan)
			unix.Shutdown(int(b.Fd()), unix.SHUT_WR)
			drained := make(chan struct{})
			go func() { io.Copy(io.Discard, b); close(drained) }()
			defer func() { b.Close(); <-drained }()

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := ipc.NewConn(ctx, a, ipc.ConnConfig{
				MaxPayload:   32 << 10,
				WriteTimeout: time.Second,
				MaxFiles:     2,
				Handler: func(ctx context.Context, r ipc.Request) ([]byte, error) {
					for _, f := range r.Files {
						f.Close()
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
			c.Close()
		}()
		if n := openFDs(t); n != before {
			t.Fatalf("%d descriptors open after the Conn ended, %d before", n, before)
		}
	})
}

// sendPlanned writes stream to f as plan says (see FuzzConnFiles).
func sendPlanned(tb testing.TB, f *os.File, stream, plan []byte) {
	tb.Helper()
	fd := int(f.Fd())
	for i := 0; i+1 < len(plan) && len(stream) > 0; i += 2 {
		k := min(int(plan[i])+1, len(stream))
		var fds []int
		for range plan[i+1] % 4 {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				tb.Fatal(err)
			}
			unix.Close(p[1])
			fds = append(fds, p[0])
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		err := unix.Sendmsg(fd, stream[:k], oob, nil, 0)
		closeFDsTest(fds)
		if err != nil {
			tb.Fatal(err)
		}
		stream = stream[k:]
	}
	if len(stream) > 0 {
		if _, err := f.Write(stream); err != nil {
			tb.Fatal(err)
		}
	}
}
