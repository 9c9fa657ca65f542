package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// statusDoc is the JSON document a status request returns; its fields
// are documented in the README ("status --json").
type statusDoc struct {
	supervisor.Status
	Mode        string          `json:"mode"` // "serve" or "run"
	Version     string          `json:"version"`
	Socket      string          `json:"socket"`
	Connections frontdoor.Stats `json:"connections"`
	// Programs groups the workers (all of which are also in Workers) by
	// program, in the order of the command line or config file.
	Programs []programDoc `json:"programs,omitempty"`
	// Listeners are the run's sockets (--listen, listen), with the
	// address each is bound to (listenflags.go).
	Listeners []listenerDoc `json:"listeners,omitempty"`
}

// programDoc is one program in a status document.
type programDoc struct {
	Name    string                    `json:"name"`
	State   supervisor.ProgramState   `json:"state"`
	After   []string                  `json:"after,omitempty"`
	Error   string                    `json:"error,omitempty"`
	Workers []supervisor.WorkerStatus `json:"workers"`
}

// processStart is when this process started, for status's uptime.
var processStart = time.Now()

// groupStatusDoc returns the status document of a run.
func groupStatusDoc(g *supervisor.Group, mode, socket string, conns frontdoor.Stats) statusDoc {
	doc := statusDoc{
		Status:      supervisor.Status{PID: os.Getpid(), StartedAt: processStart, UptimeSeconds: time.Since(processStart).Seconds(), Workers: []supervisor.WorkerStatus{}},
		Mode:        mode,
		Version:     version,
		Socket:      socket,
		Connections: conns,
		Listeners:   runListeners.docs(),
	}
	for _, ps := range g.Status() {
		ws := ps.Status.Workers
		if ws == nil {
			ws = []supervisor.WorkerStatus{}
		}
		doc.Workers = append(doc.Workers, ws...)
		doc.Programs = append(doc.Programs, programDoc{Name: ps.Name, State: ps.State, After: ps.After, Error: ps.Error, Workers: ws})
	}
	return doc
}

func serveCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", "serve --socket PATH [--mode 0600] [--group G] [--allow-uid U] [--allow-gid G] [flags]", stderr)
	var (
		lf  listenFlags
		lgf logFlags
	)
	lf.register(fs, true)
	lgf.register(fs)
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if lf.socket == "" {
		fmt.Fprintln(stderr, "supervisor serve: --socket is required")
		return exitUsage
	}
	if err := lf.check(fs, fdReserve); err != nil {
		fmt.Fprintln(stderr, "supervisor serve:", err)
		return exitUsage
	}
	log, err := lgf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor serve:", err)
		return exitUsage
	}
	passed := newPassedSockets(log) // activation.go
	pl, err := passed.forSocket(lf.socket)
	if ferr := passed.finish(lf.socket, pl != nil); err == nil {
		err = ferr
	}
	var l *listen.Listener
	var scfg frontdoor.Config
	if err == nil {
		l, scfg, err = lf.listen(pl, log)
	}
	if err != nil {
		fmt.Fprintln(stderr, "supervisor serve:", err)
		return exitFail
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	defer reapAsInit()()

	started := time.Now()
	var srv *frontdoor.Server
	scfg.Name = "supervisor-serve"
	scfg.Handler = func(ctx context.Context, req ipc.Request) ([]byte, error) {
		if req.Type != wire.TypeStatus {
			return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: req.Type.String() + " is not served by 'supervisor serve'"}
		}
		return json.Marshal(statusDoc{
			Status:      supervisor.Status{PID: os.Getpid(), StartedAt: started, UptimeSeconds: time.Since(started).Seconds(), Workers: []supervisor.WorkerStatus{}},
			Mode:        "serve",
			Version:     version,
			Socket:      l.Addr(),
			Connections: srv.Stats(),
		})
	}
	srv = frontdoor.New(l, scfg)
	log.Info("serving", "socket", l.Addr(), "pid", os.Getpid())
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintln(stderr, "supervisor serve:", err)
		return exitFail
	}
	log.Info("stopped")
	return exitOK
}
