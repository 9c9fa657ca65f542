//go:build linux

package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// supervisorFlags are the flags that configure a supervisor.Config.
type supervisorFlags struct {
	workers       int
	pingInterval  time.Duration
	pingTimeout   time.Duration
	pingMisses    int
	startTimeout  time.Duration
	stopTimeout   time.Duration
	restart       string
	healthyAfter  time.Duration
	maxRestarts   int
	restartWindow time.Duration
}

func (f *supervisorFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.workers, "workers", 2, "number of workers to run, at most what RLIMIT_NOFILE allows")
	fs.DurationVar(&f.pingInterval, "ping-interval", supervisor.DefaultPingInterval, "time between health pings to each worker (positive)")
	fs.DurationVar(&f.pingTimeout, "ping-timeout", supervisor.DefaultPingTimeout, "time a worker has to answer a ping (positive)")
	fs.IntVar(&f.pingMisses, "ping-misses", supervisor.DefaultPingMisses, "consecutive unanswered pings that declare a worker hung (it is then killed and restarted; at least 1)")
	fs.DurationVar(&f.startTimeout, "start-timeout", supervisor.DefaultStartTimeout, "time a new worker has to say hello before it is killed (positive)")
	fs.DurationVar(&f.stopTimeout, "stop-timeout", supervisor.DefaultStopTimeout, "graceful stop: shutdown message, SIGTERM at half this, SIGKILL at the end (positive)")
	fs.StringVar(&f.restart, "restart", "on-failure", "restart policy: always, on-failure or never")
	fs.DurationVar(&f.healthyAfter, "healthy-after", supervisor.DefaultHealthyAfter, "time a worker must stay ready for its restart backoff to reset (positive)")
	fs.IntVar(&f.maxRestarts, "max-restarts", 0, "give up and exit 1 after more than this many restarts within --restart-window (0: no limit)")
	fs.DurationVar(&f.restartWindow, "restart-window", supervisor.DefaultRestartWindow, "window for --max-restarts (positive)")
}

// check validates the flags; its errors are usage errors.
func (f *supervisorFlags) check() error {
	if _, err := supervisor.ParseRestartPolicy(f.restart); err != nil {
		return fmt.Errorf("--restart must be always, on-failure or never, got %q", f.restart)
	}
	limit := fdLimit()
	maxWorkers := max((limit-fdReserve)/fdsPerWorker, 1)
	if err := between("workers", f.workers, 1, maxWorkers,
		fmt.Sprintf("RLIMIT_NOFILE is %d, and each worker holds up to %d descriptors", limit, fdsPerWorker)); err != nil {
		return err
	}
	if f.maxRestarts < 0 {
		return fmt.Errorf("--max-restarts must be 0 (no limit) or positive, got %d", f.maxRestarts)
	}
	return firstError(
		positive("ping-interval", f.pingInterval),
		positive("ping-timeout", f.pingTimeout),
		atLeast("ping-misses", f.pingMisses, 1),
		positive("start-timeout", f.startTimeout),
		positive("stop-timeout", f.stopTimeout),
		positive("healthy-after", f.healthyAfter),
		positive("restart-window", f.restartWindow),
	)
}

// config returns the supervisor.Config of flags that passed check.
func (f *supervisorFlags) config(log hclog.Logger) supervisor.Config {
	policy, _ := supervisor.ParseRestartPolicy(f.restart)
	return supervisor.Config{
		Workers:       f.workers,
		PingInterval:  f.pingInterval,
		PingTimeout:   f.pingTimeout,
		PingMisses:    f.pingMisses,
		StartTimeout:  f.startTimeout,
		StopTimeout:   f.stopTimeout,
		Restart:       policy,
		HealthyAfter:  f.healthyAfter,
		MaxRestarts:   f.maxRestarts,
		RestartWindow: f.restartWindow,
		Logger:        log,
	}
}

// killAfterStop bounds how long a stop may take beyond --stop-timeout
// before the CLI kills whatever is left.
const killAfterStop = 5 * time.Second

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", "run [--workers N] [--duration D] [--socket PATH] [flags]", stderr)
	var (
		sf           supervisorFlags
		lf           logFlags
		lsf          listenFlags
		duration     time.Duration
		echoInterval time.Duration
		echoMax      int
	)
	sf.register(fs)
	lf.register(fs)
	lsf.register(fs, false)
	fs.DurationVar(&duration, "duration", 0, "stop by itself after this long and print a summary; exit 1 if any echo or worker failed (0: run until SIGINT/SIGTERM)")
	fs.DurationVar(&echoInterval, "echo-interval", 50*time.Millisecond, "time between echo requests sent to the workers (0: no echo traffic)")
	fs.IntVar(&echoMax, "echo-max", 64<<10, "largest echo payload in bytes, 0 to 16 MiB; sizes are drawn between 0 and this")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	err := firstError(
		sf.check(),
		zeroOrPositive("duration", duration, "none: run until SIGINT or SIGTERM"),
		zeroOrPositive("echo-interval", echoInterval, "no echo traffic"),
		between("echo-max", echoMax, 0, wire.MaxPayload, "the largest message is 16 MiB"),
	)
	if err == nil {
		err = lsf.check(fs, fdReserve+sf.workers*fdsPerWorker)
	}
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	cfg := sf.config(log)
	sup, err := supervisor.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitFail
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopSignals := handleSignals(ctx, cancel, sup, log)
	defer stopSignals()
	if duration > 0 {
		t := time.AfterFunc(duration, cancel)
		defer t.Stop()
	}

	var srv *frontdoor.Server
	if lsf.socket != "" {
		l, scfg, err := lsf.listen(log)
		if err != nil {
			fmt.Fprintln(stderr, "supervisor run:", err)
			return exitFail
		}
		scfg.Handler = frontDoor(sup, &srv, l.Addr())
		scfg.ForwardEcho = true
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
		tr.run(ctx, sup, echoInterval, echoMax, log)
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
		select {
		case <-runDone:
		case <-time.After(cfg.StopTimeout + killAfterStop):
			log.Warn("the stop is taking too long; killing the workers", "stop_timeout", cfg.StopTimeout)
			sup.Kill()
		}
	}()
	runErr := sup.Run(ctx)
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
	// different.
	st := sup.Stats()
	ok := runErr == nil && serveErr == nil && tr.mismatches.Load() == 0
	if duration > 0 {
		ok = ok && st.Failures == 0 && tr.errors.Load() == 0
	}
	printSummary(stdout, time.Since(start), cfg.Workers, st, &tr, ok)
	if runErr != nil {
		fmt.Fprintln(stderr, "supervisor run:", runErr)
	}
	if !ok {
		return exitFail
	}
	return exitOK
}

// handleSignals turns the first SIGINT or SIGTERM into a graceful stop
// and the second into an immediate kill; SIGHUP asks for a rolling
// restart. The returned function stops listening.
func handleSignals(ctx context.Context, stop context.CancelFunc, sup *supervisor.Supervisor, log hclog.Logger) func() {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
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
				case sig == syscall.SIGHUP:
					log.Info("SIGHUP: rolling restart")
					reloads.Add(1)
					go func() {
						defer reloads.Done()
						if err := sup.Reload(ctx); err != nil && ctx.Err() == nil {
							log.Error("rolling restart failed", "error", err)
						}
					}()
				case !stopping:
					stopping = true
					log.Info("stopping; signal again to kill at once", "signal", sig.String())
					stop()
				default:
					log.Warn("killing workers at once", "signal", sig.String())
					sup.Kill()
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

// traffic sends echo requests to the workers and checks every reply
// byte for byte.
type traffic struct {
	sent, verified, bytes, mismatches, errors atomic.Uint64
}

func (t *traffic) run(ctx context.Context, sup *supervisor.Supervisor, every time.Duration, maxSize int, log hclog.Logger) {
	if every <= 0 {
		return
	}
	select {
	case <-sup.Ready():
	case <-ctx.Done():
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
