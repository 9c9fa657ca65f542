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

	"github.com/pairvisor/pairvisor/ipc"
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
	fs.IntVar(&f.workers, "workers", 2, "number of workers to run")
	fs.DurationVar(&f.pingInterval, "ping-interval", supervisor.DefaultPingInterval, "time between health pings to each worker")
	fs.DurationVar(&f.pingTimeout, "ping-timeout", supervisor.DefaultPingTimeout, "time a worker has to answer a ping")
	fs.IntVar(&f.pingMisses, "ping-misses", supervisor.DefaultPingMisses, "consecutive unanswered pings that declare a worker hung (it is then killed and restarted)")
	fs.DurationVar(&f.startTimeout, "start-timeout", supervisor.DefaultStartTimeout, "time a new worker has to say hello before it is killed")
	fs.DurationVar(&f.stopTimeout, "stop-timeout", supervisor.DefaultStopTimeout, "graceful stop: shutdown message, SIGTERM at half this, SIGKILL at the end")
	fs.StringVar(&f.restart, "restart", "on-failure", "restart policy: always, on-failure or never")
	fs.DurationVar(&f.healthyAfter, "healthy-after", supervisor.DefaultHealthyAfter, "time a worker must stay ready for its restart backoff to reset")
	fs.IntVar(&f.maxRestarts, "max-restarts", 0, "give up and exit 1 after more than this many restarts within --restart-window (0: no limit)")
	fs.DurationVar(&f.restartWindow, "restart-window", supervisor.DefaultRestartWindow, "window for --max-restarts")
}

func (f *supervisorFlags) config(log hclog.Logger) (supervisor.Config, error) {
	policy, err := supervisor.ParseRestartPolicy(f.restart)
	if err != nil {
		return supervisor.Config{}, err
	}
	if f.workers < 1 {
		return supervisor.Config{}, fmt.Errorf("--workers must be at least 1, got %d", f.workers)
	}
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
	}, nil
}

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
	fs.DurationVar(&duration, "duration", 0, "stop by itself after this long and print a summary (0: run until SIGINT/SIGTERM)")
	fs.DurationVar(&echoInterval, "echo-interval", 50*time.Millisecond, "time between echo requests sent to the workers (0: no echo traffic)")
	fs.IntVar(&echoMax, "echo-max", 64<<10, "largest echo payload in bytes; sizes are drawn between 0 and this")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	cfg, err := sf.config(log)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor run:", err)
		return exitUsage
	}
	if echoMax < 0 {
		fmt.Fprintln(stderr, "supervisor run: --echo-max must not be negative")
		return exitUsage
	}
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

	var srv *ipc.Server
	if lsf.socket != "" {
		l, scfg, err := lsf.listen(log)
		if err != nil {
			fmt.Fprintln(stderr, "supervisor run:", err)
			return exitFail
		}
		scfg.Handler = frontDoor(sup, &srv, l.Addr())
		scfg.ForwardEcho = true
		srv = ipc.NewServer(l, scfg)
	}

	start := time.Now()
	var tr traffic
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		tr.run(ctx, sup, echoInterval, echoMax, log)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if srv != nil {
			log.Info("serving", "socket", lsf.socket)
			if err := srv.Serve(ctx); err != nil {
				log.Error("socket server failed", "error", err)
			}
		}
	}()
	runErr := sup.Run(ctx)
	cancel()
	<-done
	<-done

	st := sup.Stats()
	ok := runErr == nil && st.Failures == 0 && tr.mismatches.Load() == 0 && tr.errors.Load() == 0
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
