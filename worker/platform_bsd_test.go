//go:build darwin || freebsd

package worker

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// CI builds and vets these tests on darwin and FreeBSD; nothing runs
// them there yet.

// TestCheckPeer: a socketpair this process made passes for our pid and,
// where the system records the peer's pid, fails for another.
func TestCheckPeer(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := checkPeer(fds[0], os.Getpid()); err != nil {
		t.Fatalf("our own socketpair: %v", err)
	}
	if err := checkPeer(fds[0], os.Getpid()+1); peerPIDKnown && !errors.Is(err, ErrNotWorker) {
		t.Fatalf("another pid: %v, want ErrNotWorker", err)
	}
}

// TestWatchParentStops: the watch on a live parent ends when told to,
// and its goroutine with it (the stop function waits for it).
func TestWatchParentStops(t *testing.T) {
	stop := watchParent(os.Getppid())
	done := make(chan struct{})
	go func() { stop(); stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the parent watch did not stop within 30s")
	}
}
