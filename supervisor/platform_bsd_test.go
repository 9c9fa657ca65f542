//go:build darwin || freebsd

package supervisor

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

// CI builds and vets these tests on darwin and FreeBSD; nothing runs
// them there yet.

// TestReadyNotifyUnsupported: New refuses ReadyNotify here, with
// ErrUnsupported and the system's name.
func TestReadyNotifyUnsupported(t *testing.T) {
	_, err := New(Config{Executable: "/bin/sh", Ready: ReadyNotify})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), runtime.GOOS) {
		t.Fatalf("New with ReadyNotify: %v, want ErrUnsupported naming %s", err, runtime.GOOS)
	}
	if _, err := New(Config{Executable: "/bin/sh", Ready: ReadyStarted}); err != nil {
		t.Fatalf("New with ReadyStarted: %v", err)
	}
}
