package ipc_test

import (
	"errors"
	"testing"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// TestErrorTypes checks how an OpError reads and that it unwraps to the
// codec's FrameError and sentinel.
func TestErrorTypes(t *testing.T) {
	t.Parallel()
	if !errors.Is(ipc.ErrPeerClosed, ipc.ErrClosed) {
		t.Error("ErrPeerClosed does not wrap ErrClosed")
	}
	fe := &wire.FrameError{Err: wire.ErrBadMagic, Detail: "got 0x00 0x00"}
	oe := &ipc.OpError{Op: "dial", Addr: "/run/x.sock", Err: fe}
	if got, want := oe.Error(), "dial /run/x.sock: wire: bad frame magic: got 0x00 0x00"; got != want {
		t.Errorf("OpError text %q, want %q", got, want)
	}
	if got, want := (&ipc.OpError{Op: "read", Err: ipc.ErrClosed}).Error(), "read: ipc: connection closed"; got != want {
		t.Errorf("OpError without Addr: %q, want %q", got, want)
	}
	var got *wire.FrameError
	if !errors.As(oe, &got) || got != fe || !errors.Is(oe, wire.ErrBadMagic) {
		t.Error("OpError does not unwrap to its FrameError and sentinel")
	}
}
