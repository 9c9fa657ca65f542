// Command supervisor runs pairvisor: a supervisor that spawns worker
// processes over socketpairs and health-checks them, and the clients
// that talk to it. Run "supervisor --help" for the commands.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/worker"
)

// takesArgs are the commands with positional arguments (checked by
// each); the others refuse any.
var takesArgs = map[string]bool{"echo": true, "run": true, "reload": true, "restart": true, "stop": true, "start": true, "check-config": true, "check-worker": true}

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands []command

func init() {
	commands = []command{
		{"run", "start and supervise workers (the main job)", runCmd},
		{"serve", "serve ping, echo and status on a socket path, without workers", serveCmd},
		{"ping", "ping a server's socket; exit 0 only if every ping is answered in time", pingCmd},
		{"echo", "send MESSAGE (or stdin) through a server's socket and print the echo", echoCmd},
		{"status", "show a server's pid, uptime and workers", statusCmd},
		{"reload", "roll a running supervisor's workers: every program's, or NAME's (re-reads --config)", reloadCmd},
		{"restart", "stop a program of a running supervisor and start it again", controlCmd("restart")},
		{"stop", "stop a program of a running supervisor; it stays stopped until start", controlCmd("stop")},
		{"start", "start a stopped program of a running supervisor", controlCmd("start")},
		{"check-config", "check a config file for run --config, starting nothing", checkConfigCmd},
		{"check-worker", "check a worker program (any language) against docs/PROTOCOL.md", checkWorkerCmd},
		{"ready", "readiness probe: exit 0 only if the programs have at least --min ready workers", readyCmd},
		{"bench", "measure ping latency, echo throughput and spawn time", benchCmd},
		{"version", "print the version", versionCmd},
	}
}

func main() {
	// Descriptors we inherited without close-on-exec would leak into
	// every worker and its children; mark them (fd 3 of a worker too,
	// which FromEnv would do anyway).
	markInheritedCloexec()

	// A re-executed worker takes this branch before anything else runs.
	w, err := worker.FromEnv()
	if err != nil {
		if !errors.Is(err, worker.ErrNotWorker) {
			fmt.Fprintln(os.Stderr, "supervisor:", err)
			os.Exit(exitFail)
		}
		// Variables inherited by mistake (our parent is not the
		// supervisor they name, or fd 3 is not its channel): we are the
		// command line, not a worker. FromEnv has removed them.
		fmt.Fprintln(os.Stderr, "supervisor: warning: not a worker, ignoring the PAIRVISOR_ environment:", err)
	}
	if w != nil {
		os.Exit(workerMain(w))
	}
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	case "-version", "--version":
		return versionCmd(nil, stdout, stderr)
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "supervisor: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "supervisor %s: supervise worker processes over Unix sockets\n\nUsage:\n  supervisor <command> [flags]\n\nCommands:\n", version)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"supervisor <command> --help\" for a command's flags.\n"+
		"Exit status: 0 success, 1 failure, 2 usage error.\n")
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "version", stderr)
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	fmt.Fprintf(stdout, "supervisor %s (protocol %d)\n", version, protocolVersion)
	return exitOK
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: supervisor %s\n", synopsis)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintf(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args; ok is false with the exit status when the
// command should stop (help or a usage error).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (status int, ok bool) {
	// Parse would print the usage to stderr for --help too; print it
	// ourselves, once, to stdout for help and to stderr for errors.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fs.Usage()
		return exitOK, false
	}
	if err != nil {
		fs.Usage()
		return exitUsage, false
	}
	if fs.NArg() > 0 && !takesArgs[fs.Name()] {
		fmt.Fprintf(fs.Output(), "supervisor %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return exitOK, true
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: trace, debug, info, warn, error or off")
	fs.BoolVar(&l.json, "log-json", false, "log JSON lines instead of text")
}

func (l *logFlags) logger(stderr io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.level)
	if level == hclog.NoLevel && !strings.EqualFold(l.level, "off") {
		return nil, fmt.Errorf("unknown log level %q", l.level)
	}
	if strings.EqualFold(l.level, "off") {
		level = hclog.Off
	}
	opts := &hclog.LoggerOptions{
		Name:       "supervisor",
		Level:      level,
		Output:     stderr,
		JSONFormat: l.json,
	}
	if !l.json && toJournal(stderr) {
		// journald stamps each line itself and reads a "<N>" priority
		// prefix (sd-daemon(3)), so that journalctl -p err works.
		opts.DisableTime = true
		opts.Output = &journalWriter{w: stderr}
	}
	return hclog.New(opts), nil
}

// writeJSON prints v as indented JSON, for the --json outputs.
func writeJSON(w io.Writer, v any) {
	out, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintf(w, "%s\n", out)
}
