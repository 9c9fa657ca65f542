package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/userdb"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// reason turns a client error into the one-line reason scripts see.
func reason(path string, err error) string {
	var remote *wire.RemoteError
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "no such socket: " + path
	case errors.Is(err, os.ErrPermission):
		return "permission denied: " + path
	case errors.Is(err, unix.ECONNREFUSED):
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return "not a socket: " + path
		}
		return "connection refused: " + path + " (no server is listening)"
	case errors.Is(err, unix.ENOTSOCK), errors.Is(err, unix.ENOTDIR):
		return "not a socket: " + path
	case errors.Is(err, ipc.ErrUntrustedPeer):
		// The error names the server's uid and pid: somebody else may
		// have bound the name first.
		return "untrusted server: " + path + ": " + err.Error() + " (pass --trust-uid if it is expected)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout: " + path + " did not answer in time"
	case errors.As(err, &remote):
		return path + ": " + remote.Message // the server said why
	case errors.Is(err, ipc.ErrClosed), errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.EPIPE):
		// A server that refuses a peer closes the connection at once,
		// usually before reading its hello: the client then sees EOF,
		// a reset or a broken pipe, depending on the timing.
		return "refused: " + path + " closed the connection (peer credentials not allowed, or too many clients?)"
	}
	return err.Error()
}

// clientFlags are the flags of the commands that talk to a socket.
type clientFlags struct {
	socket   string
	timeout  time.Duration
	trust    idList
	trustIDs []uint32 // set by check
}

func (f *clientFlags) register(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&f.socket, "socket", "", "socket path of the server, or @name (required)")
	fs.DurationVar(&f.timeout, "timeout", timeout, "give up after this long (positive)")
	fs.Var(&f.trust, "trust-uid", "also trust a server running as this user (name or uid; repeatable; root and your own uid always are)")
}

// check validates the flags; its errors are usage errors.
func (f *clientFlags) check() error {
	if f.socket == "" {
		return errors.New("--socket is required")
	}
	var err error
	if f.trustIDs, err = f.trust.resolve(userdb.System.UID); err != nil {
		return fmt.Errorf("--trust-uid must be a user name or uid: %w", err)
	}
	return positive("timeout", f.timeout)
}

// dial connects to the server, checking that it runs as root, as us, or
// as a --trust-uid.
func (f *clientFlags) dial(ctx context.Context) (*ipc.Conn, error) {
	return ipc.Dial(ctx, f.socket, ipc.ConnConfig{Name: "supervisor-cli", TrustUIDs: f.trustIDs})
}

func pingCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("ping", "ping --socket PATH [--timeout 1s] [--count N] [--interval 1s]", stderr)
	var (
		cf       clientFlags
		count    int
		interval time.Duration
	)
	cf.register(fs, time.Second)
	fs.IntVar(&count, "count", 1, "number of pings (at least 1)")
	fs.DurationVar(&interval, "interval", time.Second, "time between pings (0: none)")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if err := firstError(cf.check(), atLeast("count", count, 1), zeroOrPositive("interval", interval, "no pause")); err != nil {
		fmt.Fprintln(stderr, "supervisor ping:", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	c, err := cf.dial(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "supervisor ping:", reason(cf.socket, err))
		return exitFail
	}
	defer c.Close()
	peer := c.Peer()
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			time.Sleep(interval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
		rtt, err := c.Ping(ctx)
		cancel()
		if err != nil {
			fmt.Fprintln(stderr, "supervisor ping:", reason(cf.socket, err))
			return exitFail
		}
		fmt.Fprintf(stdout, "pong from %s (pid %d): seq=%d time=%.3f ms\n", cf.socket, peer.PID, seq, float64(rtt.Nanoseconds())/1e6)
	}
	return exitOK
}

func echoCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("echo", "echo --socket PATH [--timeout 10s] [MESSAGE...]   (stdin when no MESSAGE)", stderr)
	var cf clientFlags
	cf.register(fs, 10*time.Second)
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if err := cf.check(); err != nil {
		fmt.Fprintln(stderr, "supervisor echo:", err)
		return exitUsage
	}
	var msg []byte
	if fs.NArg() > 0 {
		msg = []byte(strings.Join(fs.Args(), " ") + "\n")
	} else {
		// Read one byte more than a message can hold, to tell a full
		// message from a larger one without reading the rest.
		var err error
		if msg, err = io.ReadAll(io.LimitReader(os.Stdin, wire.MaxPayload+1)); err != nil {
			fmt.Fprintln(stderr, "supervisor echo: reading stdin:", err)
			return exitFail
		}
	}
	if len(msg) > wire.MaxPayload {
		fmt.Fprintf(stderr, "supervisor echo: the message is larger than %d MiB (%d bytes), the most one echo carries\n", wire.MaxPayload>>20, wire.MaxPayload)
		return exitFail
	}
	ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()
	c, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor echo:", reason(cf.socket, err))
		return exitFail
	}
	defer c.Close()
	got, err := c.Echo(ctx, msg, nil)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor echo:", reason(cf.socket, err))
		return exitFail
	}
	stdout.Write(got)
	if !bytes.Equal(got, msg) {
		fmt.Fprintf(stderr, "supervisor echo: the echo differs from what was sent (%d bytes sent, %d received)\n", len(msg), len(got))
		return exitFail
	}
	return exitOK
}

func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "status --socket PATH [--json] [--timeout 5s]", stderr)
	var (
		cf     clientFlags
		asJSON bool
	)
	cf.register(fs, 5*time.Second)
	fs.BoolVar(&asJSON, "json", false, "print the status document as JSON (stable; see README)")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if err := cf.check(); err != nil {
		fmt.Fprintln(stderr, "supervisor status:", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()
	c, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor status:", reason(cf.socket, err))
		return exitFail
	}
	defer c.Close()
	raw, err := c.Call(ctx, wire.TypeStatus, nil, nil)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor status:", reason(cf.socket, err))
		return exitFail
	}
	var doc statusDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		fmt.Fprintln(stderr, "supervisor status: malformed status document:", err)
		return exitFail
	}
	if asJSON {
		writeJSON(stdout, doc)
		return exitOK
	}
	printStatus(stdout, doc)
	return exitOK
}

func printStatus(w io.Writer, doc statusDoc) {
	fmt.Fprintf(w, "%s pid %d, up %v, socket %s, %d client(s) connected\n", doc.Mode, doc.PID,
		(time.Duration(doc.UptimeSeconds * float64(time.Second))).Round(time.Second), doc.Socket, doc.Connections.Active)
	for _, l := range doc.Listeners {
		fmt.Fprintf(w, "listener %s of %s: %s (bound %s)\n", l.Name, l.Program, l.Address, l.Bound)
	}
	if len(doc.Workers) == 0 && len(doc.Programs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROGRAM\tWORKER\tPID\tSTATE\tRESTARTS\tLAST PING\tLAST EXIT\tSTATUS")
	row := func(ws supervisor.WorkerStatus) {
		rtt := "-"
		if ws.LastPingRTTUS > 0 {
			rtt = fmt.Sprintf("%.0fµs", ws.LastPingRTTUS)
		}
		state := string(ws.State)
		if ws.NextStart != nil {
			state += fmt.Sprintf(" (restart in %v)", time.Until(*ws.NextStart).Round(time.Millisecond))
		}
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\n", dash(ws.Program), ws.ID, ws.PID, state, ws.Restarts, rtt, dash(ws.LastExit), dash(quoteText(ws.StatusText)))
	}
	if len(doc.Programs) == 0 {
		for _, ws := range doc.Workers {
			row(ws)
		}
	}
	for _, p := range doc.Programs {
		if len(p.Workers) == 0 || p.State != supervisor.ProgramReady && p.State != supervisor.ProgramStarting {
			why := string(p.State)
			if p.Error != "" {
				why += ": " + p.Error
			}
			fmt.Fprintf(tw, "%s\t-\t-\t%s\t-\t-\t-\t-\n", p.Name, why)
		}
		for _, ws := range p.Workers {
			row(ws)
		}
	}
	tw.Flush()
}

// quoteText returns s with control characters escaped, as Go quotes
// them, so that a worker's STATUS= cannot break the table.
func quoteText(s string) string {
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func reloadCmd(args []string, stdout, stderr io.Writer) int {
	return controlCmd("reload")(args, stdout, stderr)
}

// controlCmd returns the command that sends a control request op
// (reload, restart, stop, start) for the program named by its argument
// (reload: optional; none means every program, and re-reading the
// config file).
func controlCmd(op string) func(args []string, stdout, stderr io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		usage := op + " --socket PATH NAME [--timeout 2m]"
		if op == "reload" {
			usage = "reload --socket PATH [NAME] [--timeout 2m]"
		}
		fs := newFlagSet(op, usage, stderr)
		var cf clientFlags
		cf.register(fs, 2*time.Minute)
		if st, ok := parseFlags(fs, args, stdout); !ok {
			return st
		}
		err := cf.check()
		name := fs.Arg(0)
		switch {
		case err != nil:
		case fs.NArg() > 1:
			err = fmt.Errorf("want at most one program NAME, got %q", fs.Args())
		case op != "reload" && name == "":
			err = errors.New("name the program (see supervisor status)")
		}
		if err != nil {
			fmt.Fprintf(stderr, "supervisor %s: %v\n", op, err)
			return exitUsage
		}
		ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
		defer cancel()
		c, err := cf.dial(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "supervisor %s: %s\n", op, reason(cf.socket, err))
			return exitFail
		}
		defer c.Close()
		var payload []byte
		if op != "reload" || name != "" {
			payload, _ = json.Marshal(controlRequest{Op: op, Program: name})
		}
		reply, err := c.Call(ctx, wire.TypeReload, payload, nil)
		if err != nil {
			fmt.Fprintf(stderr, "supervisor %s: %s\n", op, reason(cf.socket, err))
			return exitFail
		}
		// The server says what it did in one line; an older one says
		// nothing.
		if len(reply) == 0 {
			reply = []byte("rolling restart done")
		}
		fmt.Fprintln(stdout, quoteText(string(reply)))
		return exitOK
	}
}

// frontDoor answers framed clients of `run --socket`: echoes and
// messages go to the workers of the front program (the first), status
// and control requests (reload, and restart, stop or start of a
// program: see controlRequest) to the group. With no worker ready,
// echoes and messages are refused at once (an unavailable error that
// says so) rather than left to wait for one until the client gives up.
func frontDoor(g *supervisor.Group, front string, srv **frontdoor.Server, socket, configPath string, sd *notifier, log hclog.Logger) ipc.Handler {
	rd := &readiness{g: g, name: front}
	return func(ctx context.Context, req ipc.Request) ([]byte, error) {
		var (
			out []byte
			err error
		)
		switch req.Type {
		case wire.TypeEcho, wire.TypeMessage:
			sup, why := rd.ready()
			if sup == nil {
				return nil, &wire.RemoteError{Code: wire.CodeUnavailable, Message: why}
			}
			if req.Type == wire.TypeEcho {
				out, err = sup.Echo(ctx, req.Payload, nil)
			} else {
				out, err = sup.Call(ctx, wire.TypeMessage, req.Payload, nil)
			}
		case wire.TypeReload:
			var cr controlRequest
			if len(req.Payload) > 0 {
				if jerr := json.Unmarshal(req.Payload, &cr); jerr != nil {
					return nil, &wire.RemoteError{Code: wire.CodeBadRequest, Message: "malformed control request: " + jerr.Error()}
				}
			}
			var done string
			done, err = control(ctx, g, configPath, cr, sd, log)
			out = []byte(done)
		case wire.TypeStatus:
			return json.Marshal(groupStatusDoc(g, "run", socket, (*srv).Stats()))
		default:
			return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: req.Type.String() + " is not served here"}
		}
		switch {
		case errors.Is(err, supervisor.ErrNoWorker) || errors.Is(err, supervisor.ErrNotRunning):
			err = &wire.RemoteError{Code: wire.CodeUnavailable, Message: err.Error()}
		case errors.Is(err, supervisor.ErrNoProgram), errors.Is(err, errBadControl):
			err = &wire.RemoteError{Code: wire.CodeBadRequest, Message: err.Error()}
		}
		return out, err
	}
}

// controlRequest is the optional JSON payload of a RELOAD request: an
// empty payload reloads every program (and re-reads the config file).
type controlRequest struct {
	Op      string `json:"op"`      // "reload" (default), "restart", "stop" or "start"
	Program string `json:"program"` // required but for reload
}

var errBadControl = errors.New("bad control request")

// control carries out cr.
// control carries out cr and returns a line saying what was done.
func control(ctx context.Context, g *supervisor.Group, configPath string, cr controlRequest, sd *notifier, log hclog.Logger) (string, error) {
	if cr.Op != "" && cr.Op != "reload" && cr.Program == "" {
		return "", fmt.Errorf("%w: %s needs a program name", errBadControl, cr.Op)
	}
	var err error
	switch cr.Op {
	case "", "reload":
		return reload(ctx, g, configPath, cr.Program, sd, log)
	case "restart":
		log.Info("restarting program", "program", cr.Program)
		err = g.Restart(ctx, cr.Program)
	case "stop":
		log.Info("stopping program on request", "program", cr.Program)
		err = g.Stop(ctx, cr.Program)
	case "start":
		log.Info("starting program on request", "program", cr.Program)
		err = g.Start(ctx, cr.Program)
	default:
		return "", fmt.Errorf("%w: unknown op %q (want reload, restart, stop or start)", errBadControl, cr.Op)
	}
	if err != nil {
		return "", err
	}
	return cr.Op + " " + cr.Program + " done", nil
}

// readinessTTL is how long the front door trusts that some worker is
// ready before it looks again.
const readinessTTL = 50 * time.Millisecond

// readiness tells the front door whether any worker is ready. A
// positive answer is kept for readinessTTL, so the request path costs
// an atomic load and a clock read, not a Status (which allocates and
// takes every slot's lock); a negative one is always checked afresh.
type readiness struct {
	g       *supervisor.Group
	name    string
	checked atomic.Int64 // time.Now().UnixNano() when some worker was last seen ready
}

// ready returns the front program's supervisor if some worker of it is
// ready, else nil and why not.
func (r *readiness) ready() (*supervisor.Supervisor, string) {
	sup := r.g.Supervisor(r.name)
	if sup == nil {
		return nil, fmt.Sprintf("no ready worker (program %s is not running)", r.name)
	}
	if time.Now().UnixNano()-r.checked.Load() < int64(readinessTTL) {
		return sup, ""
	}
	st := sup.Status()
	counts := map[supervisor.State]int{}
	for _, w := range st.Workers {
		if w.State == supervisor.StateReady {
			r.checked.Store(time.Now().UnixNano())
			return sup, ""
		}
		counts[w.State]++
	}
	var parts []string
	for _, s := range []supervisor.State{supervisor.StateStarting, supervisor.StateBackoff, supervisor.StateHung,
		supervisor.StateStopping, supervisor.StateReloading, supervisor.StateExited, supervisor.StateFailed, supervisor.StateStopped} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	return nil, fmt.Sprintf("no ready worker (of %d: %s)", len(st.Workers), strings.Join(parts, ", "))
}
