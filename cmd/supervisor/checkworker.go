package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/pairvisor/pairvisor/internal/conformance"
)

// checkWorkerCmd starts CMD as a worker and checks it against
// docs/PROTOCOL.md: one line per check, exit 0 only if none failed.
func checkWorkerCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check-worker", "check-worker [--timeout 10s] [--json] [--quiet] -- CMD [ARGS...]", stderr)
	var (
		timeout time.Duration
		asJSON  bool
		quiet   bool
	)
	fs.DurationVar(&timeout, "timeout", conformance.DefaultTimeout, "time each step may take: the hello, each reply, each exit (positive)")
	fs.BoolVar(&asJSON, "json", false, "print the results as one JSON array")
	fs.BoolVar(&quiet, "quiet", false, "do not relay the worker's stdout and stderr")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	err := positive("timeout", timeout)
	if err == nil && fs.NArg() == 0 {
		err = fmt.Errorf("name the worker program: check-worker [flags] -- CMD [ARGS...]")
	}
	var path string
	if err == nil {
		path, err = resolveCommand(fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintln(stderr, "supervisor check-worker:", err)
		return exitUsage
	}
	cfg := conformance.Config{Command: append([]string{path}, fs.Args()[1:]...), Timeout: timeout}
	if !quiet {
		cfg.Stderr = func(check, line string) { fmt.Fprintf(stderr, "  worker (%s) | %s\n", check, printable(line)) }
	}
	// Each result is printed as soon as its check is over: a run takes
	// one Timeout-bounded step after another, and whoever watches it
	// (a user, a test) sees it go on. The JSON output is still one
	// array, one result per line.
	n, failed := 0, 0
	cfg.Progress = func(r conformance.Result) {
		if !r.Pass && !r.Skip {
			failed++
		}
		if asJSON {
			sep := ","
			if n == 0 {
				sep = "["
			}
			b, _ := json.Marshal(r)
			fmt.Fprintf(stdout, "%s\n%s", sep, b)
		} else {
			fmt.Fprintln(stdout, resultLine(r))
		}
		n++
	}
	conformance.Run(context.Background(), cfg)
	if asJSON {
		if n == 0 {
			fmt.Fprint(stdout, "[")
		}
		fmt.Fprint(stdout, "\n]\n")
	} else {
		fmt.Fprintf(stdout, "%d checks, %d failed\n", n, failed)
	}
	if failed > 0 {
		return exitFail
	}
	return exitOK
}

// resultLine is the line check-worker prints for r.
func resultLine(r conformance.Result) string {
	mark := "PASS"
	switch {
	case r.Skip:
		mark = "SKIP"
	case !r.Pass:
		mark = "FAIL"
	}
	line := mark + "  " + r.Check
	if r.Detail != "" {
		line += ": " + printable(r.Detail)
	}
	return line
}

// printable returns s as is if it holds no control character, else
// Go-quoted, so that a worker's text cannot disturb the report.
func printable(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}
