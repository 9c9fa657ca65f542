package worker

import (
	"context"
	"os"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// File descriptors on the channel (protocol version 3, which Serve
// offers: docs/PROTOCOL.md "File descriptors"). A worker can ask the
// supervisor for a file it may not open itself (CallFiles, answered by
// the supervisor's Config.Handler), and be handed open files with a
// message (supervisor.Supervisor.SendFiles, answered by
// Config.FilesHandler).

// CallFiles sends an application message with files to the supervisor
// and returns its reply and the files that came with it. The worker
// keeps files (it may close them once CallFiles has returned) and owns
// the reply's, which are close-on-exec. It fails with an error wrapping
// ipc.ErrNoFiles, sending nothing, if the supervisor does not speak
// version 3 and files is not empty; otherwise it is [Worker.Call].
func (w *Worker) CallFiles(ctx context.Context, msg []byte, files []*os.File) ([]byte, []*os.File, error) {
	c := w.conn.Load()
	if c == nil {
		return nil, nil, ErrNotServing
	}
	return c.CallFiles(ctx, wire.TypeMessage, msg, files)
}

// handleFiles answers a message with Config.FilesHandler: every message
// when it is set, and, when it is not, a message that came with files,
// which is refused (wire.CodeUnsupported) and its files closed.
func handleFiles(ctx context.Context, req ipc.Request, cfg *Config) ([]byte, error) {
	if cfg.FilesHandler == nil {
		for _, f := range req.Files {
			f.Close()
		}
		return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: "this worker takes no files with messages (it has no FilesHandler)"}
	}
	reply, files, err := cfg.FilesHandler(ctx, req.Payload, req.Files)
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	if len(files) > 0 {
		if err := req.AttachFiles(files...); err != nil { // closes them on error
			return nil, err
		}
	}
	return reply, nil
}
