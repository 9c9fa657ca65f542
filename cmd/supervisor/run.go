package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/config"
	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// supervisorFlags are the flags that configure one program (a
// supervisor.Config). With --config they may not be given: the file
// says it all.
type supervisorFlags struct {
	name           string
	workers        int
	ready          string
	readyAfter     time.Duration
	watchdog       time.Duration
	healthCmd      string
	healthInterval time.Duration
	healthTimeout  time.Duration
	healthMisses   int
	pingInterval   time.Duration
	pingTimeout    time.Duration
	pingMisses     int
	startTimeout   time.Duration
	stopTimeout    time.Duration
	stopSignal     string
	restart        string
	backoffMin     time.Duration
	backoffMax     time.Duration
	healthyAfter   time.Duration
	maxRestarts    int
	restartWindow  time.Duration
	user           string

	// Set by check from user (user.go).
	cred    *syscall.Credential
	userEnv []string
}

// programFlagNames are the flags of supervisorFlags: per program, so
// not allowed with --config.
var programFlagNames = []string{"name", "workers", "ready", "start-secs", "watchdog", "health-cmd", "health-interval",
	"health-timeout", "health-misses", "ping-interval", "ping-timeout", "ping-misses", "start-timeout", "stop-timeout",
	"stop-signal", "restart", "backoff-min", "backoff-max", "healthy-after", "max-restarts", "restart-window", "listen", "user"}

func (f *supervisorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.name, "name", "worker", "the program's name: workers log as NAME.N")
	fs.IntVar(&f.workers, "workers", 2, "number of workers to run, at most what RLIMIT_NOFILE allows")
	fs.StringVar(&f.ready, "ready", "hello", "when a worker is ready: hello (it speaks the protocol), notify (it sends READY=1 to $NOTIFY_SOCKET) or started (it stayed up --start-secs)")
	fs.DurationVar(&f.readyAfter, "start-secs", supervisor.DefaultReadyAfter, "--ready started: time a worker must stay up to be ready (positive)")
	fs.DurationVar(&f.watchdog, "watchdog", 0, "--ready notify: WATCHDOG_USEC for the workers; one that sends no WATCHDOG=1 for this long is killed as hung (0: none)")
	fs.StringVar(&f.healthCmd, "health-cmd", "", "shell command run for each ready worker every --health-interval (%i: its number); a nonzero exit or timeout is a miss")
	fs.DurationVar(&f.healthInterval, "health-interval", supervisor.DefaultHealthInterval, "time between runs of --health-cmd (positive)")
	fs.DurationVar(&f.healthTimeout, "health-timeout", supervisor.DefaultHealthTimeout, "time --health-cmd has to exit (positive)")
	fs.IntVar(&f.healthMisses, "health-misses", supervisor.DefaultHealthMisses, "consecutive --health-cmd misses that declare a worker hung (at least 1)")
	fs.DurationVar(&f.pingInterval, "ping-interval", supervisor.DefaultPingInterval, "time between health pings to each worker (positive)")
	fs.DurationVar(&f.pingTimeout, "ping-timeout", supervisor.DefaultPingTimeout, "time a worker has to answer a ping (positive)")
	fs.IntVar(&f.pingMisses, "ping-misses", supervisor.DefaultPingMisses, "consecutive unanswered pings that declare a worker hung (it is then killed and restarted; at least 1)")
	fs.DurationVar(&f.startTimeout, "start-timeout", supervisor.DefaultStartTimeout, "time a new worker has to become ready before it is killed (positive)")
	fs.DurationVar(&f.stopTimeout, "stop-timeout", supervisor.DefaultStopTimeout, "graceful stop: shutdown message, --stop-signal at half this (at once without a channel), SIGKILL at the end (positive)")
	fs.StringVar(&f.stopSignal, "stop-signal", "TERM", "signal that asks a worker to stop: TERM, INT, HUP, QUIT, USR1 or USR2")
	fs.StringVar(&f.restart, "restart", "on-failure", "restart policy: always, on-failure or never")
	fs.DurationVar(&f.backoffMin, "backoff-min", supervisor.DefaultBackoffMin, "first delay before a restart; it doubles up to --backoff-max (positive)")
	fs.DurationVar(&f.backoffMax, "backoff-max", supervisor.DefaultBackoffMax, "longest delay before a restart (positive, at least --backoff-min)")
	fs.DurationVar(&f.healthyAfter, "healthy-after", supervisor.DefaultHealthyAfter, "time a worker must stay ready for its restart backoff to reset (positive)")
	fs.IntVar(&f.maxRestarts, "max-restarts", 0, "give up and exit 1 after more than this many restarts within --restart-window (0: no limit)")
	fs.DurationVar(&f.restartWindow, "restart-window", supervisor.DefaultRestartWindow, "window for --max-restarts (positive)")
	fs.StringVar(&f.user, "user", "", "run the workers (and --health-cmd) as USER or USER:GROUP, names or numbers; HOME, USER, LOGNAME and SHELL are set as the account has them (takes root; default: as this process)")
}

// stopSignals are the signals --stop-signal and stop_signal accept.
var stopSignals = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "KILL": syscall.SIGKILL}

// parseStopSignal parses "TERM" or "SIGTERM" (any case).
func parseStopSignal(s string) (syscall.Signal, bool) {
	sig, ok := stopSignals[strings.TrimPrefix(strings.ToUpper(s), "SIG")]
	return sig, ok
}

// check validates the flags; its errors are usage errors.
func (f *supervisorFlags) check() error {
	if _, err := supervisor.ParseRestartPolicy(f.restart); err != nil {
		return fmt.Errorf("--restart must be always, on-failure or never, got %q", f.restart)
	}
	if _, err := supervisor.ParseReadyMode(f.ready); err != nil {
		return fmt.Errorf("--ready must be hello, notify or started, got %q", f.ready)
	}
	if _, ok := parseStopSignal(f.stopSignal); !ok {
		return fmt.Errorf("--stop-signal must be TERM, INT, HUP, QUIT, USR1, USR2 or KILL, got %q", f.stopSignal)
	}
	if !validName(f.name) {
		return fmt.Errorf("--name must be 1 to 63 of a-z, 0-9, '_' and '-', starting with a letter or digit, got %q", f.name)
	}
	limit := fdLimit()
	maxWorkers := max((limit-fdReserve)/fdsPerWorker, 1)
	if err := between("workers", f.workers, 1, maxWorkers,
		fmt.Sprintf("RLIMIT_NOFILE is %d, and each worker holds up to %d descriptors", limit, fdsPerWorker)); err != nil {
		return err
	}
	var err error
	if f.cred, f.userEnv, err = workerAccount(f.user, false); err != nil {
		return fmt.Errorf("--user: %w", err)
	}
	if f.maxRestarts < 0 {
		return fmt.Errorf("--max-restarts must be 0 (no limit) or positive, got %d", f.maxRestarts)
	}
	if f.watchdog != 0 && f.ready != "notify" {
		return fmt.Errorf("--watchdog needs --ready notify (the worker feeds it with WATCHDOG=1), got --ready %s", f.ready)
	}
	err = firstError(
		positive("start-secs", f.readyAfter),
		zeroOrPositive("watchdog", f.watchdog, "no watchdog"),
		positive("health-interval", f.healthInterval),
		positive("health-timeout", f.healthTimeout),
		atLeast("health-misses", f.healthMisses, 1),
		positive("ping-interval", f.pingInterval),
		positive("ping-timeout", f.pingTimeout),
		atLeast("ping-misses", f.pingMisses, 1),
		positive("start-timeout", f.startTimeout),
		positive("stop-timeout", f.stopTimeout),
		positive("backoff-min", f.backoffMin),
		positive("backoff-max", f.backoffMax),
		positive("healthy-after", f.healthyAfter),
		positive("restart-window", f.restartWindow),
	)
	if err == nil && f.backoffMax < f.backoffMin {
		err = fmt.Errorf("--backoff-max must be at least --backoff-min (%v), got %v", f.backoffMin, f.backoffMax)
	}
	return err
}

// validName reports whether s may name a program.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case (r == '_' || r == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// config returns the supervisor.Config of flags that passed check.
func (f *supervisorFlags) config() supervisor.Config {
	policy, _ := supervisor.ParseRestartPolicy(f.restart)
	ready, _ := supervisor.ParseReadyMode(f.ready)
	sig, _ := parseStopSignal(f.stopSignal)
	cfg := supervisor.Config{
		Name:           f.name,
		Workers:        f.workers,
		Ready:          ready,
		ReadyAfter:     f.readyAfter,
		Watchdog:       f.watchdog,
		HealthInterval: f.healthInterval,
		HealthTimeout:  f.healthTimeout,
		HealthMisses:   f.healthMisses,
		PingInterval:   f.pingInterval,
		PingTimeout:    f.pingTimeout,
		PingMisses:     f.pingMisses,
		StartTimeout:   f.startTimeout,
		StopTimeout:    f.stopTimeout,
		StopSignal:     sig,
		Restart:        policy,
		BackoffMin:     f.backoffMin,
		BackoffMax:     f.backoffMax,
		HealthyAfter:   f.healthyAfter,
		MaxRestarts:    f.maxRestarts,
		RestartWindow:  f.restartWindow,
		Credential:     f.cred,
		Env:            f.userEnv,
	}
	if f.healthCmd != "" {
		cfg.HealthCmd = []string{"/bin/sh", "-c", f.healthCmd}
	}
	return cfg
}

// killAfterStop bounds how long a stop may take beyond --stop-timeout
// before the CLI kills whatever is left.
const killAfterStop = 5 * time.Second

// resolveCommand finds CMD as a shell would (PATH for a bare name) and
// checks that it can be executed; its error is a usage error.
func resolveCommand(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		var ee *exec.Error
		// A name with a slash is not searched for: its error is the
		// stat's (ENOENT), not exec.ErrNotFound.
		if errors.As(err, &ee) && (errors.Is(ee.Err, exec.ErrNotFound) || errors.Is(ee.Err, fs.ErrNotExist)) {
			if strings.Contains(name, "/") {
				return "", fmt.Errorf("command %s: no such file", name)
			}
			return "", fmt.Errorf("command %s: not found in PATH", name)
		}
		return "", fmt.Errorf("command %s: %v", name, errors.Unwrap(err))
	}
	return path, nil
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", "run [flags] [-- CMD [ARGS...]]  |  run --config FILE [flags]", stderr)
	var (
		sf           supervisorFlags
		lf           logFlags
		lsf          listenFlags
		duration     time.Duration
		echoInterval time.Duration
		echoMax      int
		configPath   string
		listens      listenList // --listen (listenflags.go)
	)
	fs.Var(&listens, "listen", "[NAME=]tcp://HOST:PORT or [NAME=]unix:PATH: bind it once and pass it to every worker as systemd socket activation does (LISTEN_FDS; repeatable; see docs/LISTENERS.md)")
	sf.register(fs)
	lf.register(fs)
	lsf.register(fs, false)
	fs.StringVar(&configPath, "config", "", "run the programs of this TOML file (see docs/CONFIG.md); SIGHUP re-reads it")
	fs.DurationVar(&duration, "duration", 0, "stop by itself after this long and print a summary; exit 1 if any echo or worker failed (0: run until SIGINT/SIGTERM)")
	fs.DurationVar(&echoInterval, "echo-interval", 50*time.Millisecond, "time between echo requests sent to the built-in workers (0: no echo traffic; never with a command)")
	fs.IntVar(&echoMax, "echo-max", 64<<10, "largest echo payload in bytes, 0 to 16 MiB; sizes are drawn between 0 and this")
	handoff := registerHandoff(fs) // handoff.go
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	usage := func(err error) int {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	command := fs.Args()
	var err error
	if configPath != "" {
		for _, n := range programFlagNames {
			if isSet(fs, n) {
				return usage(fmt.Errorf("--%s is a program setting: with --config, set it in the file", n))
			}
		}
		if len(command) > 0 {
			return usage(errors.New("a command and --config do not go together: name the command in the file"))
		}
	} else {
		err = sf.check()
		if err == nil {
			err = checkListens(listens, "--listen")
		}
	}
	if err == nil {
		err = firstError(
			zeroOrPositive("duration", duration, "none: run until SIGINT or SIGTERM"),
			zeroOrPositive("echo-interval", echoInterval, "no echo traffic"),
			between("echo-max", echoMax, 0, wire.MaxPayload, "the largest message is 16 MiB"),
		)
	}
	var (
		programs []supervisor.Program
		specs    [][]config.Listen // each program's listeners
	)
	switch {
	case err != nil:
	case configPath != "":
		echoInterval = 0 // the programs are the user's: no built-in echo traffic
		programs, specs, err = loadFile(configPath, false)
	default:
		cfg := sf.config()
		if len(command) > 0 {
			// A command of the user's: no built-in echo traffic.
			echoInterval = 0
			cfg.Executable, err = resolveCommand(command[0])
			cfg.Args = command[1:]
		} else if cfg.Credential != nil {
			cfg.Executable, err = os.Executable() // the built-in worker: this binary
		}
		if err == nil {
			if err = checkUserRuns(cfg.Executable, cfg.Credential, len(listens) > 0); err != nil {
				err = fmt.Errorf("--user: %w", err)
			}
		}
		programs = []supervisor.Program{{Name: cfg.Name, Config: cfg}}
		specs = [][]config.Listen{listens}
	}
	if err == nil {
		err = lsf.check(fs, fdReserve+totalWorkers(programs)*fdsPerWorker+listenerFDs(specs))
	}
	if err != nil {
		return usage(err)
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return usage(err)
	}
	// Every listener is bound, or taken from what systemd passed,
	// before any program starts; the set is closed when the run has
	// ended (listenflags.go, activation.go).
	passed := newPassedSockets(log)
	var sockPassed *listen.Listener
	if lsf.socket != "" {
		if sockPassed, err = passed.forSocket(lsf.socket); err != nil {
			passed.finish("", false)
			fmt.Fprintln(stderr, "supervisor run:", err)
			return exitFail
		}
	}
	runListeners = newListenerSet(log, passed)
	defer runListeners.close()
	err = runListeners.attach(programs, specs)
	if err != nil {
		err = fmt.Errorf("listener %w", err)
	}
	if ferr := passed.finish(lsf.socket, sockPassed != nil); err == nil {
		err = ferr
	}
	if err != nil {
		if sockPassed != nil {
			sockPassed.Close()
		}
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitFail
	}
	runListeners.settle(programs)
	g, err := supervisor.NewGroup(programs, log)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	front := programs[0].Name // echoes and messages from the front door go to the first program

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sd := newNotifier(g, log)
	if sd != nil {
		go sd.run(ctx)
		// cancel first: the notifier returns only once ctx ends, and an
		// early return below must not wait for it forever.
		defer func() { cancel(); <-sd.done }()
	}
	stopSignals := handleSignals(ctx, cancel, g, sd, configPath, log)
	defer stopSignals()
	if duration > 0 {
		t := time.AfterFunc(duration, cancel)
		defer t.Stop()
	}

	var srv *frontdoor.Server
	if lsf.socket != "" {
		l, scfg, err := lsf.listen(sockPassed, log)
		if err != nil {
			fmt.Fprintln(stderr, "supervisor run:", err)
			return exitFail
		}
		scfg.Name = "supervisor"
		scfg.Handler = frontDoor(g, front, &srv, l.Addr(), configPath, sd, log)
		scfg.ForwardEcho = true
		if *handoff {
			scfg.HandOff = handOffTo(g, front) // handoff.go
		}
		srv = frontdoor.New(l, scfg)
	}

	start := time.Now()
	var (
		tr       traffic
		serveErr error
	)
	done := make(chan struct{}, 3)
	runDone := make(chan struct{})
	go func() {
		defer func() { done <- struct{}{} }()
		tr.run(ctx, g, front, echoInterval, echoMax, log)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if srv != nil {
			log.Info("serving", "socket", lsf.socket)
			if serveErr = srv.Serve(ctx); serveErr != nil {
				// Without its socket the supervisor cannot be reached:
				// stop rather than run on unseen (exit 1).
				log.Error("socket server failed; stopping", "error", serveErr)
				cancel()
			}
		}
	}()
	go func() {
		// However the stop goes, the run ends: what is still running
		// killAfterStop past the stop timeout is killed.
		defer func() { done <- struct{}{} }()
		select {
		case <-runDone:
			return
		case <-ctx.Done():
		}
		// The programs as they are now: a reload may have changed
		// their stop timeouts.
		stopTimeout := g.StopTimeout()
		select {
		case <-runDone:
		case <-time.After(stopTimeout + killAfterStop):
			log.Warn("the stop is taking too long; killing the workers", "stop_timeout", stopTimeout)
			g.Kill()
		}
	}()
	runErr := g.Run(ctx)
	close(runDone)
	cancel()
	<-done
	<-done
	<-done

	// The exit status. A run with --duration is a test: it fails if
	// anything failed. A run without is a service, and a clean stop by
	// SIGINT or SIGTERM is a success whatever workers did during its
	// life (their failures are in the log and in status). Both fail on
	// a crash loop, a failed socket server, or an echo that came back
	// different. A run whose workers all ended for good ends by itself:
	// 0 if every one exited 0, else 1.
	st := g.Stats()
	ok := runErr == nil && serveErr == nil && tr.mismatches.Load() == 0
	if duration > 0 {
		ok = ok && st.Failures == 0 && tr.errors.Load() == 0
	}
	printSummary(stdout, time.Since(start), totalWorkers(programs), st, &tr, ok)
	if runErr != nil {
		fmt.Fprintln(stderr, "supervisor run:", runErr)
	}
	if !ok {
		return exitFail
	}
	return exitOK
}

// listenerFDs is how many descriptors the listeners of specs hold in
// this process: the CLI's socket (two for a unix one: its path's
// listener and the duplicate) and one duplicate per program run,
// doubled for a blue/green roll.
func listenerFDs(specs [][]config.Listen) int {
	n := 0
	for _, ls := range specs {
		n += 4 * len(ls)
	}
	return n
}

// totalWorkers counts the workers of programs.
func totalWorkers(programs []supervisor.Program) int {
	n := 0
	for _, p := range programs {
		n += max(p.Config.Workers, 1)
	}
	return n
}

// handleSignals turns the first SIGINT or SIGTERM into a graceful stop
// and the second into an immediate kill; SIGHUP re-reads the config
// file (with --config) or asks for a rolling restart of every program.
// The returned function stops listening.
func handleSignals(ctx context.Context, stop context.CancelFunc, g *supervisor.Group, sd *notifier, configPath string, log hclog.Logger) func() {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	quit := make(chan struct{})
	done := make(chan struct{})
	var reloads sync.WaitGroup // rolling restarts end when ctx does
	go func() {
		defer close(done)
		defer reloads.Wait()
		stopping := false
		for {
			select {
			case <-quit:
				return
			case sig := <-ch:
				switch {
				case sig == syscall.SIGUSR1 || sig == syscall.SIGUSR2:
					// Forwarded to every worker, as tini does.
					n, err := g.Signal(ctx, sig.(syscall.Signal))
					log.Info("forwarded signal to the workers", "signal", sig.String(), "workers", n, "error", err)
				case sig == syscall.SIGHUP:
					reloads.Add(1)
					go func() {
						defer reloads.Done()
						if _, err := reload(ctx, g, configPath, "", sd, log); err != nil && ctx.Err() == nil {
							log.Error("reload failed", "error", err)
						}
					}()
				case !stopping:
					stopping = true
					log.Info("stopping; signal again to kill at once", "signal", sig.String())
					stop()
				default:
					log.Warn("killing workers at once", "signal", sig.String())
					g.Kill()
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(quit)
		<-done
	}
}

// reload re-reads the config file and applies it (with --config and no
// program named), or rolls the program name (every program if "").
// A file that fails to load changes nothing.
// It returns a line saying what was done.
func reload(ctx context.Context, g *supervisor.Group, configPath, name string, sd *notifier, log hclog.Logger) (done string, err error) {
	sd.reloadBegins()
	defer func() { sd.reloadEnds(err) }()
	if configPath == "" || name != "" {
		log.Info("rolling restart", "program", name)
		if err := g.Reload(ctx, name); err != nil {
			return "", err
		}
		if name != "" {
			return "rolling restart of " + name + " done", nil
		}
		return "rolling restart done", nil
	}
	log.Info("re-reading the config file", "file", configPath)
	programs, specs, err := loadFile(configPath, false)
	if err != nil {
		return "", fmt.Errorf("config file not applied, nothing changed: %w", err)
	}
	// Listeners (listenflags.go): sockets of addresses still listed are
	// kept, new ones bound, and the rest closed once the file is
	// applied. One reload at a time.
	runListeners.reloadMu.Lock()
	defer runListeners.reloadMu.Unlock()
	if err := runListeners.attach(programs, specs); err != nil {
		runListeners.settle(nil)
		return "", fmt.Errorf("config file not applied, nothing changed: listener %w", err)
	}
	d, err := g.Replace(ctx, programs)
	if err != nil {
		runListeners.settle(nil)
		return "", err
	}
	runListeners.settle(programs)
	log.Info("config file applied", "added", d.Added, "removed", d.Removed, "changed", d.Changed, "unchanged", d.Unchanged)
	list := func(names []string) string {
		if len(names) == 0 {
			return "none"
		}
		return strings.Join(names, " ")
	}
	return fmt.Sprintf("config file applied: added %s; removed %s; changed %s; unchanged %s",
		list(d.Added), list(d.Removed), list(d.Changed), list(d.Unchanged)), nil
}

// traffic sends echo requests to the workers and checks every reply
// byte for byte.
type traffic struct {
	sent, verified, bytes, mismatches, errors atomic.Uint64
}

func (t *traffic) run(ctx context.Context, g *supervisor.Group, name string, every time.Duration, maxSize int, log hclog.Logger) {
	if every <= 0 {
		return
	}
	// await returns the program's current run once it is ready: after
	// `restart NAME` or a config change it is a new one.
	await := func() *supervisor.Supervisor {
		sup, err := g.Await(ctx, name)
		if err != nil {
			return nil
		}
		select {
		case <-sup.Ready():
			return sup
		case <-ctx.Done():
			return nil
		}
	}
	sup := await()
	if sup == nil {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	buf := make([]byte, maxSize)
	var reply []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n := 0
		if maxSize > 0 {
			n = rng.IntN(maxSize + 1)
		}
		p := buf[:n]
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := sup.Echo(rctx, p, reply[:0])
		cancel()
		t.sent.Add(1)
		switch {
		case err != nil && ctx.Err() != nil:
			// Cut short by the stop: cancelled, or refused by a
			// supervisor or worker already stopping (ErrNotRunning,
			// a closed channel). Not a failure.
			t.sent.Add(^uint64(0))
			return
		case errors.Is(err, supervisor.ErrNotRunning):
			// The program's run ended (restart, stop, a changed
			// config): follow it to its next one. Not a failure.
			t.sent.Add(^uint64(0))
			if sup = await(); sup == nil {
				return
			}
		case err != nil:
			t.errors.Add(1)
			log.Error("echo failed", "size", n, "error", err)
		case !bytes.Equal(got, p):
			t.mismatches.Add(1)
			log.Error("echo came back different", "size", n, "got", len(got))
		default:
			t.verified.Add(1)
			t.bytes.Add(uint64(n))
			reply = got
		}
	}
}

func printSummary(w io.Writer, elapsed time.Duration, workers int, st supervisor.Stats, t *traffic, ok bool) {
	fmt.Fprintf(w, "pairvisor run summary\n")
	fmt.Fprintf(w, "  duration   %v\n", elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  workers    %d (restarts %d, failures %d)\n", workers, st.Restarts, st.Failures)
	fmt.Fprintf(w, "  pings      %d sent, %d answered, rtt p50 %v p99 %v\n", st.PingsSent, st.PingsAnswered, st.RTTP50.Round(time.Microsecond), st.RTTP99.Round(time.Microsecond))
	fmt.Fprintf(w, "  echoes     %d sent, %d verified (%d bytes), %d mismatched, %d failed\n", t.sent.Load(), t.verified.Load(), t.bytes.Load(), t.mismatches.Load(), t.errors.Load())
	result := "ok"
	if !ok {
		result = "FAILED"
	}
	fmt.Fprintf(w, "  result     %s\n", result)
}
