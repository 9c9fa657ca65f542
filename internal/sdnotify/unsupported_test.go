//go:build !linux

package sdnotify_test

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

// TestListenUnsupported: off Linux, Listen and Supported fail with
// ErrUnsupported naming the system. CI builds and vets this on darwin
// and FreeBSD; nothing runs it there yet.
func TestListenUnsupported(t *testing.T) {
	if s, err := sdnotify.Listen(uint32(os.Geteuid())); s != nil || !errors.Is(err, sdnotify.ErrUnsupported) || !strings.Contains(err.Error(), runtime.GOOS) {
		t.Fatalf("Listen: %v, %v; want nil and ErrUnsupported naming %s", s, err, runtime.GOOS)
	}
	if err := sdnotify.Supported(); !errors.Is(err, sdnotify.ErrUnsupported) {
		t.Fatalf("Supported: %v, want ErrUnsupported", err)
	}
}
