//go:build linux

package ipc

// Test hooks into a Conn's held-bytes accounting (budget.go).

// HeldBytes returns the bytes c holds on its peer's behalf now.
func HeldBytes(c *Conn) int64 { return c.held.Load() }

// PeakHeldBytes returns the most bytes c has held at once.
func PeakHeldBytes(c *Conn) int64 { return c.peak.Load() }

// LeftoverBytes returns what c still held when it had closed and every
// goroutine of it had ended (it should be nothing). Valid after Done.
func LeftoverBytes(c *Conn) int64 { return c.leftover }

// BudgetUsed returns the bytes taken from b now.
func BudgetUsed(b *Budget) int64 { return b.used.Load() }
