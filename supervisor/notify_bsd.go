//go:build darwin || freebsd

package supervisor

import (
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

// Config.Ready == ReadyNotify is Linux's (notify_linux.go): New refuses
// it here with ErrUnsupported (sdnotify.Supported), so no process has a
// notify socket.

// notifyEnv is never called.
func notifyEnv(*sdnotify.Socket, time.Duration) []string { return nil }

// notice reports that the worker has no notify socket.
func (p *process) notice() (notice, error) { return notice{}, errNoNotices }
