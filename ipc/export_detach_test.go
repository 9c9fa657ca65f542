//go:build linux

package ipc

// Test hooks into detaching (detach.go).

// DetachTick is how long one read(2) of a detachable Conn's background
// reader waits at most in blocking mode.
const DetachTick = detachTick

// WriteSlice is the send timeout (SO_SNDTIMEO) of a Conn in blocking
// mode.
const WriteSlice = writeSlice

// SetDetachDupHook makes c's detach run f between duplicating its socket
// for the new owner and closing its own descriptor, with the sock's
// lock held. Call it before the Conn detaches; c must be Detachable.
func SetDetachDupHook(c *Conn, f func()) { c.sock.wk.dupHook = f }

// Killed reports whether c has started closing.
func Killed(c *Conn) bool { return c.killed() }
