// Package conformance checks a worker program against the protocol and
// process contract of docs/PROTOCOL.md, from the outside, the way a
// supervisor sees it: it starts the program as a worker (the channel on
// fd 3, the PAIRVISOR_ variables), talks to it, breaks the rules on
// purpose, and reports one Result per check. `supervisor check-worker`
// prints them; a worker in any language can be checked this way.
//
// Each check that makes the worker close its channel runs on a worker
// process of its own, so that it does not spoil the next check; checks
// that keep the connection open share one. Checks of version 2 rules
// (CANCEL) are skipped, saying why, for a worker whose hello offers
// version 1 only. Only what the specification says a worker MUST do is
// checked. Every process is reaped before Run returns.
package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Config says what to check and how long each step may take.
type Config struct {
	// Command is the worker program and its arguments.
	Command []string
	// Timeout bounds each step: the hello, each reply, each exit
	// (default 10s).
	Timeout time.Duration
	// Stderr, if set, receives each line the workers write to stderr or
	// stdout, with the check that was running.
	Stderr func(check, line string)
	// Progress, if set, receives each Result as soon as its check is
	// over, in order, from the goroutine that called Run (Run returns
	// them all too). A run is a sequence of checks, each of whose steps
	// Timeout bounds, so a report can show the run going on, and a
	// caller can bound its wait per check rather than for the whole run.
	Progress func(Result)
}

// Result is the outcome of one check.
type Result struct {
	Check  string `json:"check"`
	Pass   bool   `json:"pass"`
	Skip   bool   `json:"skipped,omitempty"` // not checkable here; neither pass nor fail
	Detail string `json:"detail,omitempty"`
}

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 10 * time.Second

// Run runs every check and returns the results in order.
func Run(ctx context.Context, cfg Config) []Result {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	c := &checker{cfg: cfg}
	if !c.helloAndContract(ctx) {
		// Every other check starts with a hello: they would all fail
		// the same way, one timeout each.
		c.fail("other checks", "not run: the worker gave no valid hello")
		return c.results
	}
	c.requests(ctx)
	c.session()
	for _, v := range violations {
		c.violation(v)
	}
	c.shutdown(ctx)
	c.eof()
	c.connError()
	c.add(Result{Check: "stderr relayed", Pass: true, Detail: fmt.Sprintf("%d lines relayed", c.lines)})
	return c.results
}

type checker struct {
	cfg     Config
	results []Result
	// The versions the worker's hello offers (0 until the hello check).
	minVersion, maxVersion uint16
	mu                     sync.Mutex // guards lines
	lines                  int
}

// skipV2 adds a skipped result for check name, a rule of version 2
// (CANCEL), if the worker does not speak version 2, and says whether it
// did.
func (c *checker) skipV2(name string) bool {
	if c.maxVersion >= 2 {
		return false
	}
	c.add(Result{Check: name, Skip: true, Detail: fmt.Sprintf("the worker speaks versions %d–%d: this is a version 2 rule (CANCEL)", c.minVersion, c.maxVersion)})
	return true
}

// skipV1 adds a skipped result for check name, which needs a version 1
// connection, if the worker does not speak version 1, and says whether
// it did.
func (c *checker) skipV1(name string) bool {
	if c.minVersion <= 1 {
		return false
	}
	c.add(Result{Check: name, Skip: true, Detail: fmt.Sprintf("the worker speaks versions %d–%d, not version 1", c.minVersion, c.maxVersion)})
	return true
}

func (c *checker) add(r Result) {
	c.results = append(c.results, r)
	if c.cfg.Progress != nil {
		c.cfg.Progress(r)
	}
}

func (c *checker) pass(name, detail string) { c.add(Result{Check: name, Pass: true, Detail: detail}) }

func (c *checker) fail(name string, format string, args ...any) {
	c.add(Result{Check: name, Detail: fmt.Sprintf(format, args...)})
}

// worker is one worker process under check, with the supervisor's end
// of its channel.
type worker struct {
	cmd   *exec.Cmd
	end   *os.File // the parent's end, until taken
	out   sync.WaitGroup
	exit  chan struct{} // closed when reaped
	state *os.ProcessState
}

// start starts the worker for check name. On error nothing is left.
func (c *checker) start(name string) (*worker, error) {
	parent, child, err := ipc.Socketpair()
	if err != nil {
		return nil, err
	}
	defer child.Close()
	cmd := exec.Command(c.cfg.Command[0], c.cfg.Command[1:]...)
	cmd.Env = append(cleanEnv(),
		contract.EnvWorker+"=1",
		contract.EnvParentPID+"="+strconv.Itoa(os.Getpid()),
		contract.EnvFD+"="+strconv.Itoa(contract.ChannelFD),
		contract.EnvLogLevel+"=debug")
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	outR, outW, err := os.Pipe()
	if err != nil {
		parent.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, outW
	if err := cmd.Start(); err != nil {
		parent.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	outW.Close()
	w := &worker{cmd: cmd, end: parent, exit: make(chan struct{})}
	w.out.Add(1)
	go func() {
		defer w.out.Done()
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			c.mu.Lock()
			c.lines++
			c.mu.Unlock()
			if c.cfg.Stderr != nil {
				c.cfg.Stderr(name, sc.Text())
			}
		}
		io.Copy(io.Discard, outR) // a line over 64 KiB: drain the rest
	}()
	go func() {
		w.cmd.Wait()
		w.state = w.cmd.ProcessState
		close(w.exit)
	}()
	return w, nil
}

// cleanEnv is our environment without the contract's and systemd's
// variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PAIRVISOR_") || name == "NOTIFY_SOCKET" || strings.HasPrefix(name, "LISTEN_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// raw takes the parent's end as a file with deadlines: a close-on-exec,
// non-blocking duplicate in the runtime's poller (os.NewFile registers
// a non-blocking descriptor), whose Set*Deadline methods work and whose
// timeouts wrap os.ErrDeadlineExceeded. The worker's end of the
// socketpair is a file description of its own and stays as it was.
func (w *worker) raw() (*os.File, error) {
	f := w.end
	w.end = nil
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(nfd), "check-worker-raw"), nil
}

// waitExit waits up to d for the worker to exit and says how it did.
func (w *worker) waitExit(d time.Duration) (code int, signaled bool, ok bool) {
	select {
	case <-w.exit:
	case <-time.After(d):
		return 0, false, false
	}
	ws := w.state.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return int(ws.Signal()), true, true
	}
	return ws.ExitStatus(), false, true
}

// kill ends the worker (its whole session) and reaps it.
func (w *worker) kill() {
	if w.end != nil {
		w.end.Close()
	}
	syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	<-w.exit
	w.out.Wait()
}

// checkedVersion is the highest protocol version the checker offers: it
// checks what versions 1 and 2 define, and reads with read(2), which
// would discard the file descriptors version 3 may pass.
const checkedVersion = 2

// hello exchanges hellos over a raw connection: ours first (offering
// versions up to maxVersion, or checkedVersion if 0), then theirs,
// within d.
func hello(conn *os.File, d time.Duration, maxVersion uint16) (wire.Header, wire.Hello, error) {
	conn.SetDeadline(time.Now().Add(d))
	defer conn.SetDeadline(time.Time{})
	if maxVersion == 0 {
		maxVersion = checkedVersion
	}
	ours := wire.AppendHello(nil, wire.Hello{MinVersion: wire.MinProtocolVersion, MaxVersion: maxVersion, PID: uint32(os.Getpid()), Name: "check-worker"})
	if _, err := conn.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, ours)); err != nil {
		return wire.Header{}, wire.Hello{}, err
	}
	h, p, err := wire.ReadFrame(conn, wire.MaxPayload)
	if err != nil {
		return h, wire.Hello{}, err
	}
	if h.Type != wire.TypeHello {
		return h, wire.Hello{}, fmt.Errorf("first frame is %v, not HELLO", h.Type)
	}
	hl, err := wire.ParseHello(p)
	return h, hl, err
}

// helloAndContract checks the hello and the descriptor contract, and
// reports whether the worker said hello at all.
func (c *checker) helloAndContract(ctx context.Context) bool {
	w, err := c.start("hello")
	if err != nil {
		c.fail("worker starts", "%v", err)
		return false
	}
	defer w.kill()
	c.pass("worker starts", fmt.Sprintf("pid %d", w.cmd.Process.Pid))
	conn, err := w.raw()
	if err != nil {
		c.fail("hello", "%v", err)
		return false
	}
	defer conn.Close()
	start := time.Now()
	h, hl, err := hello(conn, c.cfg.Timeout, 0)
	if err == nil {
		c.minVersion, c.maxVersion = hl.MinVersion, hl.MaxVersion
	}
	switch {
	case err != nil:
		c.fail("hello", "no valid hello within %v: %v", c.cfg.Timeout, err)
		return false
	case h.Flags != 0 || h.ID != 0:
		c.fail("hello", "hello header has flags %#x and id %d, want 0 and 0", h.Flags, h.ID)
	case hl.MinVersion > checkedVersion || hl.MaxVersion < wire.MinProtocolVersion || hl.MinVersion > hl.MaxVersion:
		c.fail("hello", "versions %d–%d do not include one we speak (%d–%d)", hl.MinVersion, hl.MaxVersion, wire.MinProtocolVersion, checkedVersion)
	case !utf8.ValidString(hl.Name):
		c.fail("hello", "name %q is not UTF-8", hl.Name)
	case hl.PID != 0 && int(hl.PID) != w.cmd.Process.Pid:
		c.fail("hello", "pid field %d, but the worker is pid %d", hl.PID, w.cmd.Process.Pid)
	default:
		c.pass("hello", fmt.Sprintf("%q, versions %d–%d, after %v", hl.Name, hl.MinVersion, hl.MaxVersion, time.Since(start).Round(time.Millisecond)))
	}
	c.channelCloexec(w.cmd.Process.Pid)
	c.add(Result{Check: "PAIRVISOR_ variables cleared", Skip: true,
		Detail: "not observable from outside the process (its environment block is the one it was started with)"})
	return true
}

// channelCloexec checks that the worker's own children cannot inherit
// the channel: every socket descriptor above 2 the worker holds (the
// channel, on fd 3 or wherever the worker moved it) is close-on-exec.
func (c *checker) channelCloexec(pid int) {
	const name = "channel close-on-exec"
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		c.add(Result{Check: name, Skip: true, Detail: err.Error()})
		return
	}
	var sockets, open []string
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		sockets = append(sockets, e.Name())
		if info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + e.Name()); err == nil && !cloexec(info) {
			open = append(open, e.Name())
		}
	}
	switch {
	case len(sockets) == 0:
		c.fail(name, "the worker holds no socket above fd 2: it closed its channel")
	case len(open) > 0:
		c.fail(name, "socket fd %s is inheritable: the worker's children would hold the channel open", strings.Join(open, ", "))
	default:
		c.pass(name, "socket fd "+strings.Join(sockets, ", "))
	}
}

// cloexec reports whether an fdinfo file shows O_CLOEXEC in its flags.
func cloexec(info []byte) bool {
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			f, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && f&syscall.O_CLOEXEC != 0
		}
	}
	return false
}

// channel takes w's channel as a Conn, which exchanges the hellos
// within the check timeout. The Conn owns the channel's end from then
// on, even if this fails.
func (c *checker) channel(ctx context.Context, w *worker) (*ipc.Conn, error) {
	hctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	end := w.end
	w.end = nil
	return ipc.NewConn(hctx, end, ipc.ConnConfig{Name: "check-worker"})
}

// requests checks pings, echoes and concurrency through a Conn.
func (c *checker) requests(ctx context.Context) {
	w, err := c.start("requests")
	if err != nil {
		c.fail("requests", "%v", err)
		return
	}
	defer w.kill()
	conn, err := c.channel(ctx, w)
	if err != nil {
		c.fail("ping", "no connection: %v", err)
		return
	}
	defer conn.Close()
	call := func(t wire.Type, p []byte) ([]byte, error) {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
		return conn.Call(cctx, t, p, nil)
	}
	for _, n := range []int{0, wire.MaxPingPayload} {
		p := random(n)
		got, err := call(wire.TypePing, p)
		name := fmt.Sprintf("ping %d B", n)
		switch {
		case err != nil:
			c.fail(name, "%v", err)
		case !bytes.Equal(got, p):
			c.fail(name, "pong carries %d bytes, not the ping's %d", len(got), n)
		default:
			c.pass(name, "")
		}
	}
	for _, n := range []int{0, 1, 64 << 10, 1 << 20, wire.MaxPayload} {
		p := random(n)
		start := time.Now()
		got, err := call(wire.TypeEcho, p)
		name := "echo " + size(n)
		switch {
		case err != nil:
			c.fail(name, "%v", err)
		case !bytes.Equal(got, p):
			c.fail(name, "reply differs (%d bytes back)", len(got))
		default:
			c.pass(name, time.Since(start).Round(time.Microsecond).String())
		}
	}
	c.concurrent(ctx, conn)
	c.pingDuringLarge(ctx, conn)
}

// concurrent sends many requests at once and checks every reply.
func (c *checker) concurrent(ctx context.Context, conn *ipc.Conn) {
	const n = 200
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		bad  []string
		done []int
	)
	for i := range n {
		wg.Go(func() {
			p := random(1 + i*97%8192)
			cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			defer cancel()
			got, err := conn.Call(cctx, wire.TypeEcho, p, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				bad = append(bad, err.Error())
			case !bytes.Equal(got, p):
				bad = append(bad, fmt.Sprintf("request %d: reply differs", i))
			default:
				done = append(done, i)
			}
		})
	}
	wg.Wait()
	if len(bad) > 0 {
		c.fail("200 concurrent requests", "%d failed, first: %s", len(bad), bad[0])
		return
	}
	c.pass("200 concurrent requests", "all answered, matched by id")
}

// pingDuringLarge checks that a ping is answered while a large request
// is in progress (not necessarily before its reply: see PROTOCOL.md on
// ordering).
func (c *checker) pingDuringLarge(ctx context.Context, conn *ipc.Conn) {
	big := random(wire.MaxPayload)
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	bigDone := make(chan error, 1)
	go func() {
		got, err := conn.Call(cctx, wire.TypeEcho, big, nil)
		if err == nil && !bytes.Equal(got, big) {
			err = errors.New("large echo came back different")
		}
		bigDone <- err
	}()
	rtt, err := conn.Ping(cctx)
	if err != nil {
		c.fail("ping during a large request", "%v", err)
		<-bigDone
		return
	}
	order := "before"
	select {
	case err := <-bigDone:
		order = "after"
		if err != nil {
			c.fail("ping during a large request", "the large echo: %v", err)
			return
		}
	default:
		if err := <-bigDone; err != nil {
			c.fail("ping during a large request", "the large echo: %v", err)
			return
		}
	}
	c.pass("ping during a large request", fmt.Sprintf("pong in %v, %s the 16 MiB echo's reply", rtt.Round(time.Microsecond), order))
}

// shutdown checks that SHUTDOWN is answered only after the requests
// before it, and that the worker then exits 0 at EOF.
func (c *checker) shutdown(ctx context.Context) {
	const name = "SHUTDOWN drains, then exit 0"
	w, err := c.start(name)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	defer w.kill()
	conn, err := c.channel(ctx, w)
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	const n = 8
	echoes := make(chan error, n)
	var order sync.Mutex
	var finished int
	for i := range n {
		p := random(256 << 10 * (i + 1) % (2 << 20))
		go func() {
			got, err := conn.Call(cctx, wire.TypeEcho, p, nil)
			if err == nil && !bytes.Equal(got, p) {
				err = errors.New("echo came back different")
			}
			order.Lock()
			finished++
			order.Unlock()
			echoes <- err
		}()
	}
	_, err = conn.Call(cctx, wire.TypeShutdown, nil, nil)
	order.Lock()
	drained := finished
	order.Unlock()
	for range n {
		if e := <-echoes; e != nil && err == nil {
			err = fmt.Errorf("an echo sent before the SHUTDOWN failed: %w", e)
		}
	}
	conn.Close()
	if err != nil {
		c.fail(name, "%v", err)
		return
	}
	code, sig, ok := w.waitExit(c.cfg.Timeout)
	switch {
	case !ok:
		c.fail(name, "the worker did not exit within %v of the SHUTDOWN reply and EOF", c.cfg.Timeout)
	case sig:
		c.fail(name, "the worker was killed by signal %d", code)
	case code != 0:
		c.fail(name, "the worker exited %d, want 0", code)
	default:
		c.pass(name, fmt.Sprintf("%d of %d earlier echoes answered before the SHUTDOWN reply was read; exit 0", drained, n))
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rand.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func size(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
