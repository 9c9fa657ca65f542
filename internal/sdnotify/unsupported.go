//go:build !linux

package sdnotify

import (
	"fmt"
	"runtime"
)

// This file gives other systems the package's API without its socket:
// a notify socket needs SO_PASSCRED (every datagram carries its
// sender's credentials) and the abstract socket namespace, which are
// Linux's alone. Listen fails there with an error wrapping
// ErrUnsupported; Parse, in parse.go, works everywhere.

// MaxFDs is how many descriptors a datagram may carry on Linux.
const MaxFDs = 8

// Supported returns nil where Listen can work, else an error wrapping
// ErrUnsupported that names the system.
func Supported() error {
	return fmt.Errorf("%w (SO_PASSCRED, abstract socket names), not %s", ErrUnsupported, runtime.GOOS)
}

// Socket receives sd_notify datagrams for one worker process. On this
// system none can be created.
type Socket struct{}

// Listen fails with an error wrapping ErrUnsupported.
func Listen(worker uint32) (*Socket, error) { return nil, Supported() }

// Addr returns "".
func (s *Socket) Addr() string { return "" }

// Refused returns 0.
func (s *Socket) Refused() uint64 { return 0 }

// Close does nothing.
func (s *Socket) Close() error { return nil }

// Read returns ErrClosed.
func (s *Socket) Read() (Message, error) { return Message{}, ErrClosed }

// FromTree reports false: the process tree is read from Linux's /proc.
func FromTree(pid int32, root int) bool { return false }
