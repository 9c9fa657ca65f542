package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
)

// benchResult is the JSON document of `supervisor bench --json`,
// documented in docs/BENCHMARKS.md.
type benchResult struct {
	Ping         latency      `json:"ping"`
	PingUDS      latency      `json:"ping_uds"`
	Echo         []echoResult `json:"echo"`
	SpawnReadyUS spawnResult  `json:"spawn_ready_us"`
	Env          benchEnv     `json:"env"`
}

type latency struct {
	N      int     `json:"n"`
	P50US  float64 `json:"p50_us"`
	P99US  float64 `json:"p99_us"`
	P999US float64 `json:"p999_us"`
	MeanUS float64 `json:"mean_us"`
}

type echoResult struct {
	Size           int     `json:"size"`
	RoundTrips     int     `json:"round_trips"`
	RoundTripsPerS float64 `json:"round_trips_per_s"`
	MBPerS         float64 `json:"mb_per_s"` // payload one way, MB = 10^6 B
}

type spawnResult struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

type benchEnv struct {
	GoVersion  string `json:"go_version"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	NumCPU     int    `json:"num_cpu"`
}

var benchSizes = []int{64, 4 << 10, 64 << 10, 1 << 20}

func benchCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("bench", "bench [--pings N] [--echo-seconds D] [--spawns N] [--json]\n       supervisor bench --socket PATH [--clients N] [--size B] [--duration D] [--json]", stderr)
	var (
		pings   int
		warmup  int
		echoFor time.Duration
		spawns  int
		asJSON  bool
	)
	fs.IntVar(&pings, "pings", 100000, "timed ping round trips, over the socketpair and over a path socket each")
	fs.IntVar(&warmup, "warmup", 5000, "untimed round trips before each measurement")
	fs.DurationVar(&echoFor, "echo-seconds", time.Second, "timed echo traffic per payload size (64 B, 4 KiB, 64 KiB, 1 MiB)")
	fs.IntVar(&spawns, "spawns", 100, "spawns measured from start to the first pong")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object (see docs/BENCHMARKS.md)")
	var (
		socket  string
		clients int
		size    int
		loadFor time.Duration
	)
	fs.StringVar(&socket, "socket", "", "load mode: instead of the above, echo through the server at this socket")
	fs.IntVar(&clients, "clients", 100, "load mode: concurrent clients, each on its own connection")
	fs.IntVar(&size, "size", 4096, "load mode: echo payload size in bytes")
	fs.DurationVar(&loadFor, "duration", 10*time.Second, "load mode: how long to run")
	if st, ok := parseFlags(fs, args, stdout); !ok {
		return st
	}
	var err error
	if socket != "" {
		limit := fdLimit()
		err = firstError(
			between("clients", clients, 1, max(limit-fdReserve, 1), fmt.Sprintf("RLIMIT_NOFILE is %d, one descriptor per client", limit)),
			between("size", size, 0, wire.MaxPayload, "the largest message is 16 MiB"),
			positive("duration", loadFor),
		)
	} else {
		err = firstError(
			atLeast("pings", pings, 1),
			atLeast("warmup", warmup, 0),
			positive("echo-seconds", echoFor),
			atLeast("spawns", spawns, 1),
		)
	}
	if err != nil {
		fmt.Fprintln(stderr, "supervisor bench:", err)
		return exitUsage
	}
	if socket != "" {
		return runLoad(stdout, stderr, socket, clients, size, loadFor, asJSON)
	}
	res, err := runBench(pings, warmup, echoFor, spawns)
	if err != nil {
		fmt.Fprintln(stderr, "supervisor bench:", err)
		return exitFail
	}
	if asJSON {
		writeJSON(stdout, res)
		return exitOK
	}
	printBench(stdout, res)
	return exitOK
}

func runBench(pings, warmup int, echoFor time.Duration, spawns int) (*benchResult, error) {
	res := &benchResult{Env: benchEnv{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU()}}

	// One worker, spawned the normal way; health pings out of the way.
	sup, err := supervisor.New(supervisor.Config{Workers: 1, PingInterval: time.Hour})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- sup.Run(ctx) }()
	defer func() { cancel(); <-runErr }()
	select {
	case <-sup.Ready():
	case err := <-runErr:
		runErr <- err
		return nil, fmt.Errorf("worker did not start: %v", err)
	case <-time.After(10 * time.Second):
		return nil, errors.New("worker did not start within 10s")
	}
	call := func() error { _, err := sup.Call(ctx, wire.TypePing, nil, nil); return err }
	if res.Ping, err = measurePings(call, pings, warmup); err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	if res.PingUDS, err = benchPathPing(pings, warmup); err != nil {
		return nil, fmt.Errorf("ping over a path socket: %w", err)
	}
	for _, size := range benchSizes {
		r, err := benchEcho(ctx, sup, size, echoFor)
		if err != nil {
			return nil, fmt.Errorf("echo %d B: %w", size, err)
		}
		res.Echo = append(res.Echo, r)
	}
	if res.SpawnReadyUS, err = benchSpawn(spawns); err != nil {
		return nil, fmt.Errorf("spawn: %w", err)
	}
	return res, nil
}

// measurePings times n round trips of call after warm untimed ones.
func measurePings(call func() error, n, warm int) (latency, error) {
	for range warm {
		if err := call(); err != nil {
			return latency{}, err
		}
	}
	rtts := make([]time.Duration, n)
	for i := range rtts {
		t0 := time.Now()
		if err := call(); err != nil {
			return latency{}, err
		}
		rtts[i] = time.Since(t0)
	}
	return summarise(rtts), nil
}

func summarise(d []time.Duration) latency {
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return latency{N: len(d), P50US: us(rank(d, 0.50)), P99US: us(rank(d, 0.99)), P999US: us(rank(d, 0.999)), MeanUS: us(sum / time.Duration(len(d)))}
}

// rank is the nearest-rank percentile of sorted d.
func rank(d []time.Duration, q float64) time.Duration {
	i := int(float64(len(d))*q+0.999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// benchPathPing starts `supervisor serve` as a child process on a
// temporary socket and pings it through a framed client.
func benchPathPing(n, warm int) (latency, error) {
	exe, err := os.Executable()
	if err != nil {
		return latency{}, err
	}
	dir, err := os.MkdirTemp("", "pvbench")
	if err != nil {
		return latency{}, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	cmd := exec.Command(exe, "serve", "--socket", path, "--log-level", "off")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return latency{}, err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	var c *ipc.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err = ipc.Dial(ctx, path, ipc.ConnConfig{Name: "bench"})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return latency{}, err
		}
		time.Sleep(5 * time.Millisecond) // waiting for a child to bind; nothing to synchronise on
	}
	defer c.Close()
	ctx := context.Background()
	return measurePings(func() error { _, err := c.Ping(ctx); return err }, n, warm)
}

// benchEcho sends echoes of size bytes for d (after a warm-up of d/5)
// and checks every one byte for byte.
func benchEcho(ctx context.Context, sup *supervisor.Supervisor, size int, d time.Duration) (echoResult, error) {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	dst := make([]byte, size)
	run := func(d time.Duration) (int, time.Duration, error) {
		start := time.Now()
		n := 0
		for {
			payload[0]++ // every echo differs
			got, err := sup.Echo(ctx, payload, dst)
			if err != nil {
				return n, 0, err
			}
			if !bytes.Equal(got, payload) {
				return n, 0, fmt.Errorf("echo %d came back different", n)
			}
			n++
			if n&7 == 0 || size >= 64<<10 {
				if el := time.Since(start); el >= d {
					return n, el, nil
				}
			}
		}
	}
	if _, _, err := run(d / 5); err != nil {
		return echoResult{}, err
	}
	n, el, err := run(d)
	if err != nil {
		return echoResult{}, err
	}
	rps := float64(n) / el.Seconds()
	return echoResult{Size: size, RoundTrips: n, RoundTripsPerS: rps, MBPerS: rps * float64(size) / 1e6}, nil
}

// benchSpawn measures, n times, a new supervisor from New to the first
// pong of its worker (the stop afterwards is not timed).
func benchSpawn(n int) (spawnResult, error) {
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		sup, err := supervisor.New(supervisor.Config{Workers: 1, PingInterval: time.Hour, StopTimeout: 2 * time.Second})
		if err != nil {
			return spawnResult{}, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sup.Run(ctx) }()
		_, err = sup.Call(ctx, wire.TypePing, nil, nil)
		d := time.Since(t0)
		cancel()
		<-done
		if err != nil {
			return spawnResult{}, err
		}
		ds = append(ds, d)
	}
	l := summarise(ds)
	return spawnResult{N: n, P50: l.P50US, P99: l.P99US}, nil
}

func printBench(w io.Writer, r *benchResult) {
	fmt.Fprintf(w, "pairvisor bench (%s, GOMAXPROCS=%d)\n\n", r.Env.GoVersion, r.Env.GOMAXPROCS)
	fmt.Fprintf(w, "%-26s %10s %10s %10s %10s\n", "ping round trip", "p50 µs", "p99 µs", "p999 µs", "mean µs")
	for _, row := range []struct {
		name string
		l    latency
	}{{"socketpair (worker)", r.Ping}, {"path socket (serve)", r.PingUDS}} {
		fmt.Fprintf(w, "%-26s %10.1f %10.1f %10.1f %10.1f\n", row.name, row.l.P50US, row.l.P99US, row.l.P999US, row.l.MeanUS)
	}
	fmt.Fprintf(w, "\n%-26s %14s %12s\n", "echo (verified)", "round trips/s", "MB/s")
	for _, e := range r.Echo {
		fmt.Fprintf(w, "%-26s %14.0f %12.1f\n", sizeName(e.Size), e.RoundTripsPerS, e.MBPerS)
	}
	fmt.Fprintf(w, "\nspawn to first pong: p50 %.0f µs, p99 %.0f µs over %d spawns\n", r.SpawnReadyUS.P50, r.SpawnReadyUS.P99, r.SpawnReadyUS.N)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
