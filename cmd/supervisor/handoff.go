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

// `run --socket --handoff`: framed clients are handed to the workers of
// the front program (the first), which serve them directly; see
// docs/PROTOCOL.md, "Handing clients to workers".

// registerHandoff registers run's --handoff flag.
func registerHandoff(fs *flag.FlagSet) *bool {
	return fs.Bool("handoff", false, "--socket: (experimental) hand framed clients to the front program's workers, least loaded first, which serve them directly (workers that speak protocol version 3: this binary's, any Go worker of package worker); status and reload stay with the supervisor, raw clients and clients no worker takes too")
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
