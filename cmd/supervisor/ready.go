package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// readyCmd is the readiness probe: exit 0 only if every program named
// (every program, if none is) has at least --min ready workers. `ping`
// stays the liveness probe of the supervisor itself.
func readyCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("ready", "ready --socket PATH [--program NAME]... [--min N] [--timeout 5s]", stderr)
	var (
		cf       clientFlags
		programs idList
		minReady int
	)
	cf.register(fs, 5*time.Second)
	fs.Var(&programs, "program", "check this program (repeatable; default: every program)")
	fs.IntVar(&minReady, "min", 1, "ready workers each program needs (at least 1)")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if err := firstError(cf.check(), atLeast("min", minReady, 1)); err != nil {
		fmt.Fprintln(stderr, "supervisor ready:", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()
	c, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor ready: not ready:", reason(cf.socket, err))
		return exitFail
	}
	defer c.Close()
	raw, err := c.Call(ctx, wire.TypeStatus, nil, nil)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor ready: not ready:", reason(cf.socket, err))
		return exitFail
	}
	var doc statusDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		fmt.Fprintln(stderr, "supervisor ready: malformed status document:", err)
		return exitFail
	}
	line, ok := judgeReady(doc, programs, minReady)
	if !ok {
		fmt.Fprintln(stderr, "supervisor ready: not ready:", line)
		return exitFail
	}
	fmt.Fprintln(stdout, "ready:", line)
	return exitOK
}

// judgeReady judges doc: one line per the programs checked, and whether
// each has at least min ready workers (a program that has exited by
// itself, all its workers with status 0, counts as ready).
func judgeReady(doc statusDoc, names []string, min int) (string, bool) {
	if doc.Mode == "serve" {
		return "a serve process has no workers", len(names) == 0
	}
	progs := doc.Programs
	for _, n := range names {
		if !slices.ContainsFunc(progs, func(p programDoc) bool { return p.Name == n }) {
			return fmt.Sprintf("no program named %q", n), false
		}
	}
	var parts, missing []string
	for _, p := range progs {
		if len(names) > 0 && !slices.Contains(names, p.Name) {
			continue
		}
		ready, states := 0, map[supervisor.State]int{}
		for _, w := range p.Workers {
			if w.State == supervisor.StateReady {
				ready++
			} else {
				states[w.State]++
			}
		}
		part := fmt.Sprintf("%s %d/%d", p.Name, ready, len(p.Workers))
		if p.State == supervisor.ProgramExited {
			// Ended by itself, every worker with status 0 (a one-shot
			// step): done, not missing — as the systemd notifier counts it.
			part = p.Name + " exited"
		} else if ready < min {
			why := "program " + string(p.State)
			for _, st := range slices.Sorted(maps.Keys(states)) {
				why += fmt.Sprintf(", %d %s", states[st], st)
			}
			missing = append(missing, fmt.Sprintf("%s has %d ready of %d, needs %d (%s)", p.Name, ready, len(p.Workers), min, why))
		}
		parts = append(parts, part)
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return strings.Join(missing, "; "), false
	}
	return strings.Join(parts, ", "), true
}
