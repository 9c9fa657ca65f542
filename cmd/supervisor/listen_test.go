//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/supervisor"
)

// Listeners under the real CLI: `run --listen` and the listen key,
// programs written for systemd socket activation, and rolling restarts
// of HTTP servers under load that lose nothing.

func TestListenUsage(t *testing.T) {
	t.Parallel()
	long := "unix:/" + strings.Repeat("d", 120)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"bad scheme", []string{"--listen", "udp://:53"}, `invalid value "udp://:53" for flag -listen: address "udp://:53": unknown scheme "udp"`},
		{"no port", []string{"--listen", "tcp://127.0.0.1"}, `flag -listen: address "tcp://127.0.0.1": want tcp://HOST:PORT`},
		{"bad name", []string{"--listen", "my:web=tcp://:1"}, `invalid value "my:web=tcp://:1" for flag -listen`},
		{"bad name 2", []string{"--listen", "my web=tcp://:1"}, `listener name "my web"`},
		{"duplicate name", []string{"--listen", "web=tcp://127.0.0.1:0", "--listen", "web=tcp://127.0.0.2:0"}, `--listen web=tcp://127.0.0.2:0: name "web" is used twice`},
		{"duplicate derived name", []string{"--listen", "tcp://127.0.0.1:80", "--listen", "tcp://[::1]:80"}, `name "tcp-80" is used twice (also by tcp://127.0.0.1:80); name them: NAME=ADDRESS`},
		{"duplicate address", []string{"--listen", "a=tcp://:0", "--listen", "b=tcp://:0"}, "address tcp://:0 is given twice"},
		{"path too long", []string{"--listen", long}, "the path must be at most 107 bytes"},
		{"host name", []string{"--listen", "tcp://example.com:80"}, `invalid value "tcp://example.com:80" for flag -listen: address "tcp://example.com:80": host "example.com": want an IP address`},
	}
	for _, c := range cases {
		r := cliWant(t, exitUsage, cliOpts{}, append(append([]string{"run"}, c.args...), "--", "true")...)
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: stderr does not say %q:\n%s", c.name, c.want, r.stderr)
		}
	}
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte("[programs.web]\ncommand = \"true\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := cliWant(t, exitUsage, cliOpts{}, "run", "--config", cfg, "--listen", "tcp://:1")
	if !strings.Contains(r.stderr, "--listen is a program setting: with --config, set it in the file") {
		t.Errorf("--listen with --config:\n%s", r.stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[programs.web]\ncommand = \"true\"\nlisten = [\"tcp://:1\", \"x=smtp://:25\", \"tcp://db.internal:5432\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cliWant(t, exitUsage, cliOpts{}, "check-config", bad)
	if !strings.Contains(r.stderr, `bad.toml:3: programs.web.listen[1]: address "smtp://:25": unknown scheme "smtp"`) {
		t.Errorf("check-config of a bad listen key:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, `bad.toml:3: programs.web.listen[2]: address "tcp://db.internal:5432": host "db.internal": want an IP address`) || !strings.Contains(r.stderr, "host names are not resolved") {
		t.Errorf("check-config of a listen key with a host name:\n%s", r.stderr)
	}
}

// TestListenBindErrors: an address that cannot be bound fails the run
// (exit 1) before any program starts, naming the address and, for one
// in use, saying so.
func TestListenBindErrors(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := "tcp://" + busy.Addr().String()
	marker := filepath.Join(t.TempDir(), "started")
	r := cliWant(t, exitFail, cliOpts{}, "run", "--listen", "web="+addr, "--", "/bin/sh", "-c", "touch "+marker)
	if !strings.Contains(r.stderr, addr+": address already in use") {
		t.Errorf("an address in use:\n%s", r)
	}
	if !gone(marker) {
		t.Error("a program started although its listener could not be bound")
	}
	missing := "unix:" + filepath.Join(t.TempDir(), "no", "such", "dir", "s")
	r = cliWant(t, exitFail, cliOpts{}, "run", "--listen", missing, "--", "true")
	if !strings.Contains(r.stderr, missing+": ") {
		t.Errorf("a unix path in a missing directory:\n%s", r)
	}
}

// buildHTTPWorker builds examples/httpworker into a fresh directory.
func buildHTTPWorker(t *testing.T) string {
	t.Helper()
	goTool := testutil.RequireTool(t, "go")
	out := filepath.Join(t.TempDir(), "httpworker")
	cmd := exec.Command(goTool, "build", "-o", out, "./examples/httpworker")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = pythonEnv() // no contract variables; GOFLAGS and the caches as they are
	p := testutil.StartProcess(t, cmd)
	if err := p.Wait(t, 3*time.Minute); err != nil {
		t.Fatalf("go build ./examples/httpworker: %v\n%s", err, p.Output())
	}
	return out
}

// sdHTTP returns the path of testdata/sdhttp.py, the Python server
// written for systemd socket activation.
func sdHTTP(t *testing.T) (python, script string) {
	t.Helper()
	python = testutil.RequireTool(t, "python3")
	script, err := filepath.Abs(filepath.Join("testdata", "sdhttp.py"))
	if err != nil {
		t.Fatal(err)
	}
	return python, script
}

// TestListenSystemdSocketActivate: the Python test server is a genuine
// socket-activated program: systemd's own systemd-socket-activate runs
// it. The same program runs under `supervisor run --listen` below.
func TestListenSystemdSocketActivate(t *testing.T) {
	t.Parallel()
	activate := testutil.RequireTool(t, "systemd-socket-activate")
	python, script := sdHTTP(t)
	sock := filepath.Join(tempDir(t), "h.sock")
	cmd := exec.Command(activate, "-l", sock, "--fdname=http", python, script)
	cmd.Env = pythonEnv()
	p := testutil.StartProcess(t, cmd)
	client := unixHTTPClient(sock)
	var body string
	poll(t, "an answer through systemd-socket-activate", func() bool {
		if p.Exited() {
			t.Fatalf("systemd-socket-activate exited: %v\n%s", p.Err(), p.Output())
		}
		resp, err := client.Get("http://x/")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return true
	}, p.Output)
	if !strings.HasPrefix(body, "pid ") || !strings.HasSuffix(body, " http\n") {
		t.Errorf("answer %q, want \"pid N http\"", body)
	}
	if code := p.Stop(t, syscall.SIGTERM, cliWait); code != 0 {
		t.Errorf("the server exited %d after SIGTERM\n%s", code, p.Output())
	}
}

func unixHTTPClient(path string) *http.Client {
	return &http.Client{Timeout: cliPoll, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

// TestListenZeroDowntimeGo: examples/httpworker, three workers on one
// shared listener (port 0, read back from status --json), under keep-
// alive load through repeated rolling restarts (SIGHUP and the reload
// command, alternately): no request fails and no connection is reset.
func TestListenZeroDowntimeGo(t *testing.T) {
	t.Parallel()
	exe := buildHTTPWorker(t)
	zeroDowntime(t, "go", 3, []string{"--listen", "http=tcp://127.0.0.1:0", "--", exe})
}

// TestListenZeroDowntimePython: the same with the Python server written
// for systemd socket activation (ThreadingHTTPServer, sd_notify's
// READY=1), run unchanged.
func TestListenZeroDowntimePython(t *testing.T) {
	t.Parallel()
	python, script := sdHTTP(t)
	zeroDowntime(t, "python", 3, []string{"--ready", "notify", "--listen", "http=tcp://127.0.0.1:0", "--", python, script})
}

// Load and its figures.
const (
	loadClients = 8
	loadReloads = 5
	// loadBetween is how many requests succeed between two reloads.
	loadBetween = 200
)

// zeroDowntime runs `run --workers n ARGS` with a control socket,
// hammers its listener and rolls its workers loadReloads times.
func zeroDowntime(t *testing.T, lang string, n int, args []string) {
	sock := filepath.Join(tempDir(t), "s")
	run := cliStart(t, append([]string{"run", "--workers", fmt.Sprint(n), "--socket", sock, "--log-level", "warn"}, args...)...)
	run.waitSocket(t, sock)
	pids := readyWorkers(t, sock, n)
	url := "http://" + boundAddr(t, sock, "http") + "/"
	baseFDs := fdCount(t, run.PID())

	ld := startLoad(t, url, loadClients)
	ld.waitFor(t, loadBetween, run.Output)
	seen := slices.Clone(pids)
	for k := range loadReloads {
		ld.reloading.Store(true)
		if k%2 == 0 {
			run.Process.Cmd.Process.Signal(syscall.SIGHUP)
		} else {
			r := cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
			if !strings.Contains(r.stdout, "rolling restart done") {
				t.Errorf("reload: %s", r)
			}
		}
		pids = rolled(t, sock, n, pids, run.Output)
		ld.reloading.Store(false)
		seen = append(seen, pids...)
		ld.waitFor(t, ld.ok.Load()+loadBetween, run.Output)
	}
	res := ld.stop()
	// The run holds what it held before the restarts: every retired
	// worker's descriptors, and every duplicate of the listener, closed.
	// (At most: the count before may include the front door's end of the
	// status call just made, which the CLI closed first and the server
	// closes when it sees the EOF. A leak grows with each of the
	// restarts, more than that one.)
	var fds int
	poll(t, "the run's descriptors back to their count before the restarts", func() bool {
		fds = fdCount(t, run.PID())
		return fds <= baseFDs
	}, func() string { return fmt.Sprintf("%d descriptors, %d before", fds, baseFDs) })
	run.stopOK(t, syscall.SIGTERM, sock)
	t.Logf("%s: %s; %d workers over %d rolling restarts", lang, res, len(seen), loadReloads)
	if res.failed > 0 || res.resets > 0 || res.duringReloads == 0 {
		t.Errorf("%s: %s; want no failure, no reset, and requests served during the restarts\nfirst errors: %q\n%s", lang, res, res.errs, run.Output())
	}
	ld.checkWorkers(t, seen)
}

// fdCount counts the open descriptors of process pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// boundAddr returns the address the run's listener name is bound to,
// from status --json.
func boundAddr(t *testing.T, sock, name string) string {
	t.Helper()
	loose, doc := statusJSON(t, sock)
	if _, ok := loose["listeners"]; !ok {
		t.Fatalf("status --json has no listeners field: %v", loose)
	}
	for _, l := range doc.Listeners {
		if l.Name == name {
			return l.Bound
		}
	}
	t.Fatalf("no listener %q in status: %+v", name, doc.Listeners)
	return ""
}

// rolled waits until n ready workers, none of them in old, have
// replaced old, and old are gone, and returns the new pids.
func rolled(t *testing.T, sock string, n int, old []int, out func() string) []int {
	t.Helper()
	var now []int
	poll(t, "a rolling restart to replace every worker", func() bool {
		_, doc := statusJSON(t, sock)
		now = now[:0]
		for _, w := range doc.Workers {
			if w.State != supervisor.StateReady || slices.Contains(old, w.PID) {
				return false
			}
			now = append(now, w.PID)
		}
		if len(now) != n {
			return false
		}
		for _, p := range old {
			if !processGone(p) {
				return false
			}
		}
		return true
	}, out)
	return slices.Clone(now)
}

// load is loadClients keep-alive HTTP clients sending GETs back to back.
type load struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	reloading atomic.Bool // set while a rolling restart is under way

	ok, failed, resets, dials atomic.Int64

	mu            sync.Mutex
	lat, reload   []time.Duration // latencies: all, and of requests begun during a restart
	pids          map[string]int  // answers per worker pid
	errs          []string        // the first few errors
	duringReloads int64
}

// loadFigures is a load's figures.
type loadFigures struct {
	ok, failed, resets, dials, duringReloads int64
	p50, p99, max, reloadP99                 time.Duration
	errs                                     []string
}

func (r loadFigures) String() string {
	return fmt.Sprintf("%d requests ok, %d failed, %d connections reset, %d dialed; latency p50 %v p99 %v max %v; %d requests begun during restarts, p99 %v",
		r.ok, r.failed, r.resets, r.dials, r.p50, r.p99, r.max, r.duringReloads, r.reloadP99)
}

func startLoad(t *testing.T, url string, clients int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel, pids: map[string]int{}}
	t.Cleanup(func() { ld.stop() })
	for c := range clients {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			ld.client(ctx, url, c)
		}()
	}
	return ld
}

// countingConn counts resets seen on a client connection.
type countingConn struct {
	net.Conn
	ld *load
}

func (c countingConn) note(err error) {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		c.ld.resets.Add(1)
		c.ld.noteErr(err)
	}
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.note(err)
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.note(err)
	return n, err
}

func (ld *load) noteErr(err error) {
	ld.mu.Lock()
	if len(ld.errs) < 5 {
		ld.errs = append(ld.errs, err.Error())
	}
	ld.mu.Unlock()
}

// client sends GETs until ctx ends (never cancelling one under way);
// every fourth asks the server to take 20ms, so that restarts find
// requests in flight.
func (ld *load) client(ctx context.Context, url string, c int) {
	dialer := &net.Dialer{}
	tr := &http.Transport{
		MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ld.dials.Add(1)
			conn, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{conn, ld}, nil
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cliWait}
	var local, localReload []time.Duration
	pids := map[string]int{}
	defer func() {
		ld.mu.Lock()
		ld.lat = append(ld.lat, local...)
		ld.reload = append(ld.reload, localReload...)
		for p, n := range pids {
			ld.pids[p] += n
		}
		ld.duringReloads += int64(len(localReload))
		ld.mu.Unlock()
	}()
	for i := c; ctx.Err() == nil; i++ {
		u := url
		if i%4 == 0 {
			u += "?sleep=0.02"
		}
		during := ld.reloading.Load()
		t0 := time.Now()
		resp, err := client.Get(u)
		if err != nil {
			ld.failed.Add(1)
			ld.noteErr(err)
			continue
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK {
			ld.failed.Add(1)
			ld.noteErr(fmt.Errorf("status %d, body: %v", resp.StatusCode, err))
			continue
		}
		ld.ok.Add(1)
		pids[resp.Header.Get("X-Pid")]++
		local = append(local, d)
		if during || ld.reloading.Load() {
			localReload = append(localReload, d)
		}
	}
}

// waitFor waits until n requests have succeeded.
func (ld *load) waitFor(t *testing.T, n int64, out func() string) {
	t.Helper()
	poll(t, fmt.Sprintf("%d requests answered", n), func() bool {
		if ld.failed.Load() > 20 {
			t.Fatalf("requests failing: %q\n%s", ld.errs, out())
		}
		return ld.ok.Load() >= n
	}, out)
}

// stop ends the load, waiting for the requests under way, and returns
// the figures.
func (ld *load) stop() loadFigures {
	ld.cancel()
	ld.wg.Wait()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	pct := func(ds []time.Duration, p float64) time.Duration {
		if len(ds) == 0 {
			return 0
		}
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[min(int(float64(len(s))*p), len(s)-1)].Round(10 * time.Microsecond)
	}
	return loadFigures{ok: ld.ok.Load(), failed: ld.failed.Load(), resets: ld.resets.Load(), dials: ld.dials.Load(),
		duringReloads: ld.duringReloads, p50: pct(ld.lat, 0.5), p99: pct(ld.lat, 0.99), max: pct(ld.lat, 1),
		reloadP99: pct(ld.reload, 0.99), errs: slices.Clone(ld.errs)}
}

// checkWorkers checks that every answer came from a worker of the run.
func (ld *load) checkWorkers(t *testing.T, pids []int) {
	t.Helper()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for p := range ld.pids {
		if !slices.ContainsFunc(pids, func(q int) bool { return fmt.Sprint(q) == p }) {
			t.Errorf("an answer from pid %q, not a worker of the run (%v)", p, pids)
		}
	}
	if len(ld.pids) < 2 {
		t.Errorf("answers from %d workers only: %v", len(ld.pids), ld.pids)
	}
}

// TestListenBlueGreen: a program with a listener changed in the config
// file (workers 2 → 3, and a second listener added) rolls over blue/
// green on the same socket under load with no failed request; the
// added address is bound, and removing it again closes it once the
// change is applied.
func TestListenBlueGreen(t *testing.T) {
	t.Parallel()
	python, script := sdHTTP(t)
	dir := tempDir(t)
	sock, cfg := filepath.Join(dir, "s"), filepath.Join(dir, "p.toml")
	write := func(workers int, listen string) {
		t.Helper()
		data := fmt.Sprintf("[programs.web]\ncommand = %q\nargs = [%q]\nworkers = %d\nready = \"notify\"\nlisten = [%s]\n", python, script, workers, listen)
		if err := os.WriteFile(cfg, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(2, `"http=tcp://127.0.0.1:0"`)
	run := cliStart(t, "run", "--config", cfg, "--socket", sock, "--log-level", "warn")
	run.waitSocket(t, sock)
	pids := readyWorkers(t, sock, 2)
	addr := boundAddr(t, sock, "http")
	ld := startLoad(t, "http://"+addr+"/", loadClients)
	ld.waitFor(t, loadBetween, run.Output)

	adminSock := filepath.Join(dir, "admin.sock")
	write(3, `"http=tcp://127.0.0.1:0", "admin=unix:`+adminSock+`"`)
	ld.reloading.Store(true)
	r := cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
	if !strings.Contains(r.stdout, "changed web") {
		t.Errorf("reload: %s", r)
	}
	pids = rolled(t, sock, 3, pids, run.Output)
	ld.reloading.Store(false)
	if got := boundAddr(t, sock, "http"); got != addr {
		t.Errorf("after the change the listener is bound to %s, want the same socket, %s", got, addr)
	}
	if got := boundAddr(t, sock, "admin"); got != adminSock {
		t.Errorf("the added listener is bound to %s, want %s", got, adminSock)
	}
	// sdhttp serves "http" only; the kernel accepts on "admin" for it.
	c, err := net.Dial("unix", adminSock)
	if err != nil {
		t.Fatalf("the added listener: %v", err)
	}
	c.Close()
	ld.waitFor(t, ld.ok.Load()+loadBetween, run.Output)

	write(3, `"http=tcp://127.0.0.1:0"`)
	r = cliWant(t, exitOK, cliOpts{}, "reload", "--socket", sock)
	if !strings.Contains(r.stdout, "changed web") {
		t.Errorf("reload: %s", r)
	}
	pids = rolled(t, sock, 3, pids, run.Output)
	poll(t, "the removed listener to be closed, its socket file removed", func() bool { return gone(adminSock) }, run.Output)
	if _, doc := statusJSON(t, sock); len(doc.Listeners) != 1 {
		t.Errorf("status lists %+v, want the http listener only", doc.Listeners)
	}

	// A reload whose new address cannot be bound changes nothing, and
	// leaves nothing of what it bound.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	extra := filepath.Join(dir, "extra.sock")
	write(3, `"http=tcp://127.0.0.1:0", "extra=unix:`+extra+`", "busy=tcp://`+busy.Addr().String()+`"`)
	r = cliWant(t, exitFail, cliOpts{}, "reload", "--socket", sock)
	if !strings.Contains(r.stderr, "config file not applied, nothing changed: listener tcp://"+busy.Addr().String()+": address already in use") {
		t.Errorf("reload with an address in use: %s", r)
	}
	if !gone(extra) {
		t.Error("a reload that failed left a socket it bound")
	}
	if _, doc := statusJSON(t, sock); len(doc.Listeners) != 1 || doc.Listeners[0].Bound != addr {
		t.Errorf("after a failed reload, status lists %+v, want the http listener only, on %s", doc.Listeners, addr)
	}
	if now := readyWorkers(t, sock, 3); !slices.Equal(now, pids) {
		t.Errorf("after a failed reload the workers are %v, want %v still", now, pids)
	}
	ld.waitFor(t, ld.ok.Load()+loadBetween, run.Output)
	res := ld.stop()
	run.stopOK(t, syscall.SIGTERM, sock)
	t.Logf("blue/green: %s", res)
	if res.failed > 0 || res.resets > 0 || res.duringReloads == 0 {
		t.Errorf("blue/green: %s; want no failure, no reset\nfirst errors: %q\n%s", res, res.errs, run.Output())
	}
}
