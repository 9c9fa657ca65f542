package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/supervisor"
)

// `run --socket` (unless --handoff=false): framed clients are handed to
// the workers of the front program (the first), which serve them
// directly; see docs/PROTOCOL.md, "Handing clients to workers".

// registerHandoff registers run's --handoff flag.
func registerHandoff(fs *flag.FlagSet) *bool {
	return fs.Bool("handoff", true, "--socket: hand each framed client, at its first echo or message, to the front program's worker with the fewest clients, which serves it directly (workers that speak protocol version 3: this binary's, any Go worker of package worker, Python workers of workers/python; the supervisor forwards to the others); status, reload and pings stay with the supervisor, and so do raw clients and clients no worker takes; a worker being stopped hands its clients back, a worker that dies ends its clients' connections. --handoff=false: the supervisor forwards every echo and message")
}

// handOffTo is the front door's HandOff for run: it offers each client
// to the current run of program front.
func handOffTo(g *supervisor.Group, front string) frontdoor.HandOffFunc {
	return func(ctx context.Context, conn *os.File, state []byte) ([]byte, error) {
		sup := g.Supervisor(front)
		if sup == nil {
			return nil, fmt.Errorf("%w: program %s is not running", frontdoor.ErrNotTaken, front)
		}
		reply, err := sup.HandOff(ctx, conn, state)
		if errors.Is(err, supervisor.ErrNoTaker) {
			return nil, fmt.Errorf("%w: %w", frontdoor.ErrNotTaken, err)
		}
		return reply, err
	}
}
