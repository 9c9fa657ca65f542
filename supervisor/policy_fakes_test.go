//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// The fakes behind the policy tests: a clock that moves only when the
// test moves it, and a spawner whose processes and channels do what the
// test tells them. The loop runs unchanged on top of them.

// policyWait bounds each wait of a policy test. Nothing in them waits
// for the clock: it is fake. They wait only for goroutines to run.
const policyWait = 10 * time.Second

// fakeClock is a Config clock (now, at) that moves only on set.
type fakeClock struct {
	mu      sync.Mutex
	t       time.Time
	timers  []fakeTimer
	changed chan struct{} // closed and replaced whenever a timer is armed
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), changed: make(chan struct{})}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) at(t time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !t.After(c.t) {
		ch <- c.t
		return ch
	}
	c.timers = append(c.timers, fakeTimer{t, ch})
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// set moves the clock to t and fires the timers due by then.
func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Before(c.t) {
		panic("fake clock moved back")
	}
	c.t = t
	c.timers = slices.DeleteFunc(c.timers, func(ft fakeTimer) bool {
		if ft.at.After(t) {
			return false
		}
		ft.ch <- t
		return true
	})
}

func (c *fakeClock) advance(d time.Duration) { c.set(c.now().Add(d)) }

// waitArmed waits until a timer for exactly t is pending: the loop
// scheduled its next step for t.
func (c *fakeClock) waitArmed(tb testing.TB, t time.Time) {
	tb.Helper()
	deadline := time.After(policyWait)
	for {
		c.mu.Lock()
		armed := slices.ContainsFunc(c.timers, func(ft fakeTimer) bool { return ft.at.Equal(t) })
		changed, pending := c.changed, c.timers
		c.mu.Unlock()
		if armed {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			var at []time.Time
			for _, ft := range pending {
				at = append(at, ft.at)
			}
			tb.Fatalf("no timer armed for %v within %v; pending: %v", t, policyWait, at)
		}
	}
}

// fakeSpawner starts fakeProcs. Each start is announced on started;
// fail, if set, decides whether an attempt fails.
type fakeSpawner struct {
	clk     *fakeClock
	started chan *fakeProc
	fail    func(id, attempt int) error
	nextPID atomic.Int64
	exits   sync.WaitGroup // goroutines calling the loop's exited callbacks

	mu       sync.Mutex
	attempts map[int]int // per worker id
	procs    []*fakeProc
	opened   int
	closed   int
}

func newFakeSpawner(clk *fakeClock) *fakeSpawner {
	sp := &fakeSpawner{clk: clk, started: make(chan *fakeProc, 100), attempts: make(map[int]int)}
	sp.nextPID.Store(1000)
	return sp
}

func (sp *fakeSpawner) open() {
	sp.mu.Lock()
	sp.opened++
	sp.mu.Unlock()
}

func (sp *fakeSpawner) close() {
	sp.exits.Wait()
	sp.mu.Lock()
	sp.closed++
	sp.mu.Unlock()
}

func (sp *fakeSpawner) start(id int, exited func()) (handle, error) {
	sp.mu.Lock()
	sp.attempts[id]++
	attempt := sp.attempts[id]
	sp.mu.Unlock()
	if sp.fail != nil {
		if err := sp.fail(id, attempt); err != nil {
			return nil, err
		}
	}
	fp := &fakeProc{
		sp:       sp,
		id:       id,
		pd:       int(sp.nextPID.Add(1)),
		onExit:   exited,
		helloed:  make(chan struct{}),
		gone:     make(chan struct{}),
		signals:  make(chan sigRec, 10),
		startAt:  sp.clk.now(),
		shutdown: exitOnShutdown,
		notices:  make(chan notice, 16),
	}
	fp.conn = &fakeConn{p: fp, done: make(chan struct{}), shutdowns: make(chan time.Time, 4)}
	fp.conn.autoPong.Store(true)
	fp.conn.answerPing.Store(true)
	sp.mu.Lock()
	for _, o := range sp.procs {
		if !o.isEnded() {
			fp.alive = append(fp.alive, o.pd)
		}
	}
	sp.procs = append(sp.procs, fp)
	sp.mu.Unlock()
	sp.started <- fp
	return fp, nil
}

// next waits for the loop to start a process.
func (sp *fakeSpawner) next(tb testing.TB) *fakeProc {
	tb.Helper()
	select {
	case fp := <-sp.started:
		return fp
	case <-time.After(policyWait):
		tb.Fatalf("no process started within %v", policyWait)
		return nil
	}
}

// none fails if a process was started and not taken with next.
func (sp *fakeSpawner) none(tb testing.TB) {
	tb.Helper()
	select {
	case fp := <-sp.started:
		tb.Fatalf("unexpected start of worker %d (pid %d)", fp.id, fp.pd)
	default:
	}
}

// How a fakeProc answers the shutdown request.
const (
	exitOnShutdown  = iota // exits with status 0
	ignoreShutdown         // does not answer; lives on
	answerAndLinger        // answers, closes nothing, lives on
)

// sigRec is a signal a fakeProc received, and the fake time it came.
type sigRec struct {
	sig syscall.Signal
	at  time.Time
}

// fakeProc is a worker process that does what the test says.
type fakeProc struct {
	sp      *fakeSpawner
	id, pd  int
	onExit  func()
	helloed chan struct{} // closed by hello()
	gone    chan struct{} // closed once it ended
	signals chan sigRec
	startAt time.Time
	conn    *fakeConn
	alive   []int // the pids of the processes running when it started

	shutdown   int           // exitOnShutdown, ignoreShutdown or answerAndLinger; set before the hello
	ignoreTerm atomic.Bool   // SIGTERM does not end it
	helloErr   error         // the hello fails with this; set before sayHello
	notices    chan notice   // what notice returns (ReadyNotify)
	block      chan struct{} // if set before the test signals it, signal waits for it to close
	blocked    chan struct{} // closed when signal begins to wait for block; set with block

	mu    sync.Mutex
	ended bool
	st    ExitReason
}

func (fp *fakeProc) pid() int { return fp.pd }

// notice returns what the test sends with notify, until the process
// ends.
func (fp *fakeProc) notice() (notice, error) {
	select {
	case n := <-fp.notices:
		return n, nil
	case <-fp.gone:
		return notice{}, errNoNotices
	}
}

// notify makes the worker send n to its notify socket.
func (fp *fakeProc) notify(n notice) { fp.notices <- n }

// sayHello makes the worker say hello (or fail it with helloErr).
func (fp *fakeProc) sayHello() { close(fp.helloed) }

// hello waits for the test's sayHello.
func (fp *fakeProc) hello(ctx context.Context) (channel, error) {
	select {
	case <-fp.helloed:
		if fp.helloErr != nil {
			return nil, fp.helloErr
		}
		return fp.conn, nil
	case <-fp.gone:
		return nil, ipc.ErrPeerClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (fp *fakeProc) signal(sig syscall.Signal) bool {
	if fp.block != nil {
		close(fp.blocked)
		<-fp.block // a signal that takes the loop's goroutine hostage
	}
	fp.mu.Lock()
	ended := fp.ended
	fp.mu.Unlock()
	if ended {
		return false
	}
	fp.signals <- sigRec{sig, fp.sp.clk.now()}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM && !fp.ignoreTerm.Load() {
		fp.exit(ExitReason{Kind: ExitSignal, Signal: sig})
	}
	return true
}

func (fp *fakeProc) status() ExitReason {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	return fp.st
}

// exit ends the process with st: its channel closes (EOF), then the
// loop hears it was reaped.
func (fp *fakeProc) exit(st ExitReason) {
	fp.mu.Lock()
	if fp.ended {
		fp.mu.Unlock()
		return
	}
	fp.ended, fp.st = true, st
	fp.mu.Unlock()
	fp.conn.closeWith(ipc.ErrPeerClosed)
	close(fp.gone)
	fp.sp.exits.Add(1)
	go func() { defer fp.sp.exits.Done(); fp.onExit() }() // never on the loop's goroutine, which may have signalled
}

func (fp *fakeProc) isEnded() bool {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	return fp.ended
}

// signalled waits for the next signal the process receives.
func (fp *fakeProc) signalled(tb testing.TB) sigRec {
	tb.Helper()
	select {
	case r := <-fp.signals:
		return r
	case <-time.After(policyWait):
		tb.Fatalf("worker %d (pid %d) got no signal within %v", fp.id, fp.pd, policyWait)
		return sigRec{}
	}
}

// wantSignal waits for the next signal and checks it is sig, sent at
// at on the fake clock (at any time if at is zero).
func (fp *fakeProc) wantSignal(tb testing.TB, sig syscall.Signal, at time.Time) {
	tb.Helper()
	got := fp.signalled(tb)
	if got.sig != sig || !at.IsZero() && !got.at.Equal(at) {
		tb.Errorf("worker %d (pid %d) got %v at %v, want %v at %v", fp.id, fp.pd, got.sig, got.at, sig, at)
	}
}

// noSignal fails if the process received a signal not yet taken.
func (fp *fakeProc) noSignal(tb testing.TB) {
	tb.Helper()
	select {
	case r := <-fp.signals:
		tb.Fatalf("worker %d (pid %d) got %v at %v", fp.id, fp.pd, r.sig, r.at)
	default:
	}
}

// fakeConn is a fakeProc's channel.
type fakeConn struct {
	p          *fakeProc
	done       chan struct{}
	once       sync.Once
	err        error // why it closed; set before done is closed
	received   atomic.Uint64
	autoPong   atomic.Bool // probes are answered at once
	answerPing atomic.Bool // the rolling restart's verification ping is answered
	shutdowns  chan time.Time
	onShutdown func() // runs when the shutdown request arrives; set before the hello

	mu     sync.Mutex
	nextID uint64
	probes map[uint64]func(uint64, error)
	closes int // Close calls
}

func (c *fakeConn) closeWith(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.done)
	})
}

func (c *fakeConn) Call(ctx context.Context, t wire.Type, payload, dst []byte) ([]byte, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	if t != wire.TypeShutdown {
		return append(dst[:0], payload...), nil
	}
	if c.onShutdown != nil {
		c.onShutdown()
	}
	c.shutdowns <- c.p.sp.clk.now()
	switch c.p.shutdown {
	case exitOnShutdown:
		c.p.exit(ExitReason{Kind: ExitCode, Code: 0})
		return nil, nil
	case answerAndLinger:
		return nil, nil
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, c.err
	}
}

func (c *fakeConn) Ping(ctx context.Context) (time.Duration, error) {
	if c.answerPing.Load() {
		return time.Microsecond, nil
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.done:
		return 0, c.err
	}
}

func (c *fakeConn) Probe(ctx context.Context, done func(uint64, error)) (uint64, error) {
	if err := c.Err(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	if c.probes == nil {
		c.probes = make(map[uint64]func(uint64, error))
	}
	c.probes[id] = done
	c.mu.Unlock()
	if c.autoPong.Load() {
		c.pong(id)
	}
	return id, nil
}

// pong answers probe id, if it is still awaited.
func (c *fakeConn) pong(id uint64) {
	c.mu.Lock()
	fn := c.probes[id]
	delete(c.probes, id)
	c.mu.Unlock()
	if fn != nil {
		fn(id, nil)
	}
}

func (c *fakeConn) Forget(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.probes[id]
	delete(c.probes, id)
	return ok
}

func (c *fakeConn) Received() uint64      { return c.received.Load() }
func (c *fakeConn) Done() <-chan struct{} { return c.done }

func (c *fakeConn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	c.closes++
	c.mu.Unlock()
	c.closeWith(ipc.ErrClosed)
	return nil
}

var (
	_ spawner = (*fakeSpawner)(nil)
	_ handle  = (*fakeProc)(nil)
	_ channel = (*fakeConn)(nil)
)

// policyRun is a supervisor running on the fakes.
type policyRun struct {
	t      *testing.T
	s      *Supervisor
	clk    *fakeClock
	sp     *fakeSpawner
	logs   *syncBuffer
	t0     time.Time // the clock when Run began
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

// startPolicy runs a supervisor for cfg on a fake spawner and clock,
// after setup (if any) has configured the two. Intervals left zero are
// an hour, so that nothing happens that the test did not ask for.
func startPolicy(t *testing.T, cfg Config, setup ...func(*Supervisor, *fakeSpawner)) *policyRun {
	t.Helper()
	clk := newFakeClock()
	logs := &syncBuffer{}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Debug})
	cfg.now, cfg.at = clk.now, clk.at
	hour := func(d *time.Duration) {
		if *d == 0 {
			*d = time.Hour
		}
	}
	hour(&cfg.PingInterval)
	hour(&cfg.StartTimeout)
	hour(&cfg.stopGrace)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sp := newFakeSpawner(clk)
	for _, f := range setup {
		f(s, sp)
	}
	s.sp = sp
	ctx, cancel := context.WithCancel(context.Background())
	r := &policyRun{t: t, s: s, clk: clk, sp: sp, logs: logs, t0: clk.now(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		if !r.ended {
			cancel()
			s.Kill()
			select {
			case <-r.done:
			case <-time.After(policyWait):
				t.Errorf("Run did not return within %v of the end of the test", policyWait)
			}
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logTail(logs.String(), 100))
		}
	})
	return r
}

// await waits until the published status satisfies cond.
func (r *policyRun) await(what string, cond func(Status) bool) Status {
	r.t.Helper()
	deadline := time.After(policyWait)
	for {
		sn := r.s.snap.Load()
		st := r.s.Status()
		if cond(st) {
			return st
		}
		select {
		case <-sn.changed:
		case <-deadline:
			r.t.Fatalf("no %s within %v; status %+v", what, policyWait, st)
		}
	}
}

// awaitSnap waits until the loop's published snapshot satisfies cond.
func (r *policyRun) awaitSnap(what string, cond func(*snapshot) bool) {
	r.t.Helper()
	deadline := time.After(policyWait)
	for {
		sn := r.s.snap.Load()
		if cond(sn) {
			return
		}
		select {
		case <-sn.changed:
		case <-deadline:
			r.t.Fatalf("no %s within %v; counts %+v, status %+v", what, policyWait, sn.counts, sn.workers)
		}
	}
}

// awaitRestarts waits until the loop has published n restarts: a
// start can reach the spawner before the loop publishes the restart it
// counted.
func (r *policyRun) awaitRestarts(n uint64) {
	r.t.Helper()
	r.awaitSnap(fmt.Sprintf("%d restarts counted", n), func(sn *snapshot) bool { return sn.counts.restarts == n })
}

// awaitUnrouted waits until worker id gets no more requests.
func (r *policyRun) awaitUnrouted(id int) {
	r.t.Helper()
	deadline := time.After(policyWait)
	for {
		rt := r.s.routes.Load()
		if rt.conns[id-1] == nil {
			return
		}
		select {
		case <-rt.changed:
		case <-deadline:
			r.t.Fatalf("worker %d still routed after %v", id, policyWait)
		}
	}
}

// ready starts n workers and makes each say hello.
func (r *policyRun) ready(n int) []*fakeProc {
	r.t.Helper()
	fps := make([]*fakeProc, n)
	for i := range fps {
		fps[i] = r.sp.next(r.t)
	}
	for _, fp := range fps {
		fp.sayHello()
	}
	r.await("every worker ready", func(st Status) bool {
		for _, ws := range st.Workers {
			if ws.State != StateReady {
				return false
			}
		}
		return true
	})
	return fps
}

// backoff waits until worker 1 backs off and returns its status.
func (r *policyRun) backoff() WorkerStatus {
	r.t.Helper()
	return slotOf(r.await("worker 1 backing off", func(st Status) bool { return slotOf(st, 1).State == StateBackoff }), 1)
}

// awaitReady waits until worker 1 is ready.
func (r *policyRun) awaitReady() {
	r.t.Helper()
	r.await("worker 1 ready", func(st Status) bool { return slotOf(st, 1).State == StateReady })
}

// finishWith checks that the worker ends counted as failures are
// failures, then finishes.
func (r *policyRun) finishWith(failures uint64) {
	r.t.Helper()
	if s := r.s.Stats(); s.Failures != failures {
		r.t.Errorf("%d failures, want %d; stats %+v", s.Failures, failures, s)
	}
	r.finish()
}

// finish stops Run and fails the test unless it returns nil.
func (r *policyRun) finish() {
	r.t.Helper()
	if err := r.stop(); err != nil {
		r.t.Fatalf("Run: %v", err)
	}
}

// wait waits for Run to return and returns its result.
func (r *policyRun) wait() error {
	r.t.Helper()
	if r.ended {
		return r.err
	}
	select {
	case r.err = <-r.done:
		r.ended = true
		return r.err
	case <-time.After(policyWait):
		r.t.Fatalf("Run did not return within %v; status %+v", policyWait, r.s.Status())
		return nil
	}
}

// stop cancels Run's context and waits for Run to return.
func (r *policyRun) stop() error {
	r.t.Helper()
	r.cancel()
	return r.wait()
}

// slotOf returns worker id's status (ids count from 1).
func slotOf(st Status, id int) WorkerStatus { return st.Workers[id-1] }
