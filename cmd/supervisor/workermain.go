package main

import (
	"context"
	"fmt"
	"os"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/worker"
)

const protocolVersion = wire.ProtocolVersion

// workerMain is the worker role of this binary: an echo worker. Pings
// and echoes are answered by the channel; application messages are
// echoed back too.
func workerMain(w *worker.Worker) int {
	log := w.Logger().Named("echo")
	err := w.Serve(context.Background(), worker.Config{
		Logger: log,
		Handler: func(ctx context.Context, msg []byte) ([]byte, error) {
			return msg, nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "supervisor worker:", err)
		return exitFail
	}
	return exitOK
}
