//go:build linux

package ipc

// Test hooks into a Conn's cancellation bookkeeping (serve.go, cancel.go).

// ActiveRequests returns how many of the peer's requests c has
// registered for cancel frames (version 2): requests whose Handler has
// not returned yet.
func ActiveRequests(c *Conn) int {
	c.amu.Lock()
	defer c.amu.Unlock()
	return len(c.active)
}

// CancelsPending reports whether c has cancel frames queued or being
// written.
func CancelsPending(c *Conn) bool {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.cancelOn
}
