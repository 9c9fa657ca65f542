//go:build linux

package worker

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// A message that reaches the worker before the shutdown request is
// answered, not refused with CodeShutdown.
func TestShutdownAnswersEarlierMessages(t *testing.T) {
	refused := 0
	for iter := 0; iter < 30; iter++ {
		parent, childEnd, _ := ipc.Socketpair()
		c := startChild(t, "serve", childEnd, append(contractEnv("1"), contract.EnvLogLevel+"=debug")...)
		childEnd.Close()
		hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: uint32(os.Getpid()), Name: "raw"})
		parent.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, hello))
		if _, _, err := wire.ReadFrame(parent, 1<<20); err != nil {
			t.Fatal(err)
		}
		// One write: the message is on the wire before the shutdown.
		buf := wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 1}, []byte("x"))
		buf = wire.AppendFrame(buf, wire.Header{Type: wire.TypeShutdown, ID: 2}, nil)
		parent.Write(buf)
		for i := 0; i < 2; i++ {
			h, p, err := wire.ReadFrame(parent, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if h.ID == 1 && h.Type == wire.TypeError {
				refused++
				_ = p
			}
		}
		parent.Close()
		c.Wait(t, childWait)
	}
	if refused > 0 {
		t.Fatalf("a message sent before the shutdown was refused in %d of 30 runs", refused)
	}
}

// The shutdown reply comes after the replies to messages in progress,
// so a supervisor that closes on it (as supervisor.stop does) loses
// none.
func TestShutdownReplyComesLast(t *testing.T) {
	lost := 0
	for iter := 0; iter < 10; iter++ {
		c, conn := startWorker(t, "serve", "1")
		ctx, cancel := context.WithTimeout(context.Background(), childWait)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); _, err := conn.Call(ctx, wire.TypeMessage, []byte("slow"), nil); errs <- err }()
		}
		for i := 0; i < 20; i++ {
			c.Line(t, childWait)
		}
		conn.Call(ctx, wire.TypeShutdown, nil, nil)
		conn.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				lost++
			}
		}
		cancel()
		c.Wait(t, childWait)
	}
	if lost > 0 {
		t.Fatalf("%d of 200 replies to messages in progress were lost to the shutdown", lost)
	}
}
