package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/pairvisor/pairvisor/internal/config"
	"github.com/pairvisor/pairvisor/supervisor"
)

// loadPrograms reads the config file at path and returns its programs
// as the supervisor runs them, without their listeners (see loadFile).
func loadPrograms(path string) ([]supervisor.Program, error) {
	programs, _, err := loadFile(path, true)
	return programs, err
}

// loadFile is loadPrograms that also returns each program's listeners
// (the listen key), which a run binds (listenerSet.attach). checkOnly
// is check-config's: a user key naming another account is looked up
// but needs no root (and gives no Credential).
func loadFile(path string, checkOnly bool) ([]supervisor.Program, [][]config.Listen, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	programs := make([]supervisor.Program, 0, len(f.Programs))
	listens := make([][]config.Listen, 0, len(f.Programs))
	for _, p := range f.Programs {
		sp, err := toProgram(p, checkOnly)
		if err == nil {
			err = checkListens(p.Listen, "listen")
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s:%d: programs.%s: %w", f.Path, p.Line, p.Name, err)
		}
		programs = append(programs, sp)
		listens = append(listens, p.Listen)
	}
	return programs, listens, nil
}

// toProgram maps a program of the file onto the supervisor's settings;
// zero values keep the supervisor's defaults.
func toProgram(p config.Program, checkOnly bool) (supervisor.Program, error) {
	exe, err := resolveCommand(p.Command)
	if err != nil {
		return supervisor.Program{}, err
	}
	ready, err := supervisor.ParseReadyMode(p.Ready)
	if err != nil {
		return supervisor.Program{}, err
	}
	policy, err := supervisor.ParseRestartPolicy(p.Restart)
	if err != nil {
		return supervisor.Program{}, err
	}
	sig, ok := parseStopSignal(p.StopSignal)
	if !ok {
		return supervisor.Program{}, fmt.Errorf("unknown stop signal %q", p.StopSignal)
	}
	cred, userEnv, err := workerAccount(p.User, checkOnly)
	if err != nil {
		return supervisor.Program{}, fmt.Errorf("user: %w", err)
	}
	if err := checkUserRuns(exe, cred, len(p.Listen) > 0); err != nil {
		return supervisor.Program{}, fmt.Errorf("user: %w", err)
	}
	return supervisor.Program{
		Name:  p.Name,
		After: p.After,
		Config: supervisor.Config{
			Name:           p.Name,
			Workers:        p.Workers,
			Executable:     exe,
			Args:           p.Args,
			Env:            append(userEnv, p.Env...),
			Credential:     cred,
			Dir:            p.Dir,
			Ready:          ready,
			ReadyAfter:     p.ReadyAfter,
			Watchdog:       p.Watchdog,
			HealthCmd:      p.HealthCmd,
			HealthInterval: p.HealthInterval,
			HealthTimeout:  p.HealthTimeout,
			HealthMisses:   p.HealthMisses,
			PingInterval:   p.PingInterval,
			PingTimeout:    p.PingTimeout,
			PingMisses:     p.PingMisses,
			StartTimeout:   p.StartTimeout,
			StopTimeout:    p.StopTimeout,
			StopSignal:     sig,
			Restart:        policy,
			BackoffMin:     p.BackoffMin,
			BackoffMax:     p.BackoffMax,
			HealthyAfter:   p.HealthyAfter,
			MaxRestarts:    p.MaxRestarts,
			RestartWindow:  p.RestartWindow,
		},
	}, nil
}

// checkConfigCmd validates a config file without starting anything:
// exit 0 if it would run, 2 with every problem listed if not.
func checkConfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check-config", "check-config FILE", stderr)
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "supervisor check-config: want exactly one FILE")
		return exitUsage
	}
	path := fs.Arg(0)
	programs, err := loadPrograms(path)
	if err == nil {
		_, err = supervisor.NewGroup(programs, nil)
	}
	if err != nil {
		fmt.Fprintln(stderr, "supervisor check-config:", strings.TrimSpace(err.Error()))
		return exitUsage
	}
	fmt.Fprintf(stdout, "%s: ok, %d program(s):", path, len(programs))
	for _, p := range programs {
		fmt.Fprintf(stdout, " %s (%d)", p.Name, max(p.Config.Workers, 1))
	}
	fmt.Fprintln(stdout)
	return exitOK
}
