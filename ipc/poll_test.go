//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// TestPollMode runs the Conn's core behaviours with ConnConfig.Poll on
// one side or both: echoes of every size, concurrent calls, large
// echoes both ways, a call cancelled mid-frame, the idle timeout, and
// the peer going away.
//
// Each step has its own generous deadline (stepWait): one deadline for
// the whole test made a step fail for the time the steps before it had
// taken on a loaded machine.
func TestPollMode(t *testing.T) {
	const stepWait = 2 * waitTimeout
	for _, tc := range []struct {
		name string
		a, b bool
	}{{"client", true, false}, {"server", false, true}, {"both", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := pair(t, ipc.ConnConfig{Poll: tc.a}, ipc.ConnConfig{Poll: tc.b})
			for _, n := range []int{0, 1, 64 << 10, 1 << 20, 4 << 20} {
				p := randBytes(uint64(n), n)
				got, err := a.Echo(ctxTimeout(t, stepWait), p, nil)
				if err != nil || !bytes.Equal(got, p) {
					t.Fatalf("echo of %d bytes: %d back, %v", n, len(got), err)
				}
			}
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for i := range 8 {
				c := a
				if i%2 == 1 {
					c = b
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := randBytes(uint64(i), 1<<20)
					for range 3 {
						ctx, cancel := context.WithTimeout(context.Background(), stepWait)
						got, err := c.Echo(ctx, p, nil)
						cancel()
						if err == nil && !bytes.Equal(got, p) {
							err = errors.New("echo came back different")
						}
						if err == nil {
							ctx, cancel = context.WithTimeout(context.Background(), stepWait)
							_, err = c.Ping(ctx)
							cancel()
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}

			cctx, cancel := context.WithTimeout(context.Background(), time.Microsecond)
			a.Echo(cctx, randBytes(9, 8<<20), nil)
			cancel()
			// The ping waits for the rest of the 8 MiB frame to go out.
			if _, err := a.Ping(ctxTimeout(t, stepWait)); err != nil {
				t.Fatalf("ping after a cancelled large call: %v (peer: %v)", err, b.Err())
			}

			b.Close()
			select {
			case <-a.Done():
			case <-time.After(stepWait):
				t.Fatal("the Conn did not notice its peer closing")
			}
			if !errors.Is(a.Err(), ipc.ErrClosed) {
				t.Fatalf("Err after the peer closed: %v", a.Err())
			}
		})
	}
}

func TestPollModeIdleTimeout(t *testing.T) {
	t.Parallel()
	a, _ := pair(t, ipc.ConnConfig{Poll: true, IdleTimeout: 100 * time.Millisecond}, ipc.ConnConfig{})
	select {
	case <-a.Done():
	case <-time.After(waitTimeout):
		t.Fatal("an idle polled Conn stayed open")
	}
	if !errors.Is(a.Err(), ipc.ErrIdle) {
		t.Fatalf("Err: %v, want ErrIdle", a.Err())
	}
}
