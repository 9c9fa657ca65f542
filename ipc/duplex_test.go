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

// TestLargeEchoesBothWays: both peers send 1 MiB echoes to each other at
// once, with pings in between. Each reader answers its peer's echoes
// itself; if a reader waited to write while the other did the same,
// neither would read again and every call would hang until WriteTimeout.
func TestLargeEchoesBothWays(t *testing.T) {
	t.Parallel()
	a, b := pair(t, ipc.ConnConfig{WriteTimeout: time.Minute}, ipc.ConnConfig{WriteTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i, c := range []*ipc.Conn{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := randBytes(uint64(i), 1<<20)
			for range 5 {
				got, err := c.Echo(ctx, p, nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, p) {
					errs <- errors.New("echo came back different")
					return
				}
				if _, err := c.Ping(ctx); err != nil {
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
}

// TestCancelMidFrameKeepsConn: a caller that gives up while its large
// request is still being written gets its error at once, and the Conn
// stays usable: the frame is finished in the background.
func TestCancelMidFrameKeepsConn(t *testing.T) {
	t.Parallel()
	a, _ := pair(t, ipc.ConnConfig{}, ipc.ConnConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Microsecond)
	defer cancel()
	p := randBytes(7, 8<<20)
	if _, err := a.Echo(ctx, p, nil); err == nil {
		t.Log("the 8 MiB echo beat a 1 µs deadline; nothing to check")
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if _, err := a.Ping(ctx2); err != nil {
		t.Fatalf("ping after a cancelled large call: %v (Conn error %v)", err, a.Err())
	}
	got, err := a.Echo(ctx2, []byte("still here"), nil)
	if err != nil || string(got) != "still here" {
		t.Fatalf("echo after a cancelled large call: %q, %v", got, err)
	}
}
