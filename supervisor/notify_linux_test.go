//go:build linux

package supervisor

import (
	"os"
	"testing"
)

// TestTrustGone: a notify sender that has exited is taken on the
// strength of the socket's name only if it ran as us or root, never as
// another uid the workers run as.
func TestTrustGone(t *testing.T) {
	if !trustGone(0) || !trustGone(uint32(os.Geteuid())) {
		t.Error("a gone sender of root's or ours is refused")
	}
	if other := uint32(os.Geteuid()) + 1; other != 0 && trustGone(other) {
		t.Errorf("a gone sender of uid %d is trusted", other)
	}
}
