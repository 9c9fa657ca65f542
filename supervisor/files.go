package supervisor

import (
	"context"
	"fmt"
	"os"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// File descriptors between the supervisor and its workers (protocol
// version 3, docs/PROTOCOL.md "File descriptors"). Every worker channel
// takes descriptors (ipc.ConnConfig.MaxFiles), so a worker that offers
// version 3 — a Go worker of package worker, on Linux — can be handed
// open files and hand some back:
//
//   - to a worker: [Supervisor.SendFiles], an application message with
//     files, answered by the worker's handler (worker.Config.FilesHandler);
//   - from a worker: worker.Worker.CallFiles, answered by Config.Handler,
//     which finds them in ipc.Request.Files and attaches the reply's
//     with ipc.Request.AttachFiles.
//
// Workers that speak an older version (the Python library, say) are
// passed over by SendFiles and never sent a descriptor.

// channelMaxFiles is the descriptors a worker channel takes with one
// frame: as many as the protocol allows.
const channelMaxFiles = wire.MaxFiles

// channelFiles is what a worker channel needs to pass descriptors; the
// real channel, *ipc.Conn, has it (the fakes of the policy tests need
// not).
type channelFiles interface {
	Version() uint16
	CallFiles(ctx context.Context, t wire.Type, payload []byte, files []*os.File) ([]byte, []*os.File, error)
}

var _ channelFiles = (*ipc.Conn)(nil)

// filesOf returns c as a channel that passes descriptors, or nil.
func filesOf(c channel) channelFiles {
	if fc, ok := c.(channelFiles); ok && fc.Version() >= 3 {
		return fc
	}
	return nil
}

// pickFiles returns a ready worker's channel that passes descriptors,
// round robin, or nil, and whether any worker is ready at all.
func (rt *routes) pickFiles(rr interface{ Add(uint64) uint64 }) (fc channelFiles, anyReady bool) {
	n := uint64(len(rt.conns))
	start := rr.Add(1)
	for i := range n {
		c := rt.conns[(start+i)%n]
		if c == nil || c.Err() != nil {
			continue
		}
		anyReady = true
		if fc := filesOf(c); fc != nil {
			return fc, true
		}
	}
	return nil, anyReady
}

// SendFiles sends payload as an application message with files to one
// ready worker that passes descriptors, round robin, and returns its
// reply and the files that came with it (see ipc.Conn.CallFiles: the
// caller keeps files, and owns the reply's, which are close-on-exec).
// When no worker is ready, SendFiles waits for one until ctx ends
// ([ErrNoWorker]) or Run stops ([ErrNotRunning]); when workers are
// ready but none speaks version 3, it fails at once with an error
// wrapping ipc.ErrNoFiles. Like every application message it is not
// retried on another worker.
func (s *Supervisor) SendFiles(ctx context.Context, payload []byte, files []*os.File) ([]byte, []*os.File, error) {
	for {
		rt := s.routes.Load()
		if rt.stopped {
			return nil, nil, ErrNotRunning
		}
		fc, anyReady := rt.pickFiles(&s.rr)
		switch {
		case fc != nil:
			return fc.CallFiles(ctx, wire.TypeMessage, payload, files)
		case anyReady:
			return nil, nil, fmt.Errorf("supervisor: %w: no ready worker speaks protocol version 3", ipc.ErrNoFiles)
		case rt.stopping:
			return nil, nil, ErrNotRunning
		}
		select {
		case <-rt.changed:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w: %w", ErrNoWorker, ctx.Err())
		}
	}
}
