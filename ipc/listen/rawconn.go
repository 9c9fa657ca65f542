package listen

import (
	"os"
	"syscall"
)

// SyscallConn returns the raw listening socket, for a caller that hands
// the socket itself to other processes (package supervisor's
// NewListener duplicates it for workers that accept on it). Make such a
// Listener with a negative WatchPeriod: a rebind replaces the socket,
// and processes holding the old one would not see the new. It fails
// with an error wrapping ErrClosed once the Listener is closed.
func (l *Listener) SyscallConn() (syscall.RawConn, error) {
	l.mu.Lock()
	lf := l.lf
	l.mu.Unlock()
	if lf == nil {
		return nil, &os.PathError{Op: "listen", Path: l.path, Err: ErrClosed}
	}
	return lf.SyscallConn()
}
