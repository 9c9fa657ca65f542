//go:build linux

package frontdoor_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// One server-wide bound on what clients hold: while one client's large
// request is being answered, another's that would go over the total is
// refused with CodeUnavailable instead of being buffered, and the first
// is answered in full.
func TestServerBufferedTotal(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var calls atomic.Int32
	handler := func(ctx context.Context, req ipc.Request) ([]byte, error) {
		if calls.Add(1) == 1 {
			select { // the first request holds its bytes until released
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return req.Payload, nil
	}
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{Handler: handler, ForwardEcho: true}, TotalBuffered: 3 << 20})
	first, second := udsDial(t, s.path), udsDial(t, s.path)
	payload := bytes.Repeat([]byte("x"), 1<<20) // 2 MiB held with its reply

	got := make(chan error, 1)
	go func() {
		reply, err := first.Echo(udsCtx(t, testutil.UDSWait), payload, nil)
		if err == nil && !bytes.Equal(reply, payload) {
			err = errors.New("the echo came back different")
		}
		got <- err
	}()
	testutil.Poll(t, testutil.UDSWait, time.Millisecond, "the first request to reach the handler", func() bool { return calls.Load() == 1 }, nil)

	_, err := second.Echo(udsCtx(t, testutil.UDSWait), payload, nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnavailable {
		t.Fatalf("a request over the server's total: want CodeUnavailable, got %v", err)
	}
	if _, err := second.Ping(udsCtx(t, testutil.UDSWait)); err != nil {
		t.Errorf("the refused client's connection should stay usable: %v", err)
	}
	close(gate)
	if err := <-got; err != nil {
		t.Fatalf("the first request: %v", err)
	}
	// With the first answered, the second fits.
	if reply, err := second.Echo(udsCtx(t, testutil.UDSWait), payload, nil); err != nil || !bytes.Equal(reply, payload) {
		t.Fatalf("the second request once there is room: %v", err)
	}
}
