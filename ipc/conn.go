//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults for the zero fields of [ConnConfig].
const (
	DefaultMaxConcurrent = 64
	DefaultWriteTimeout  = 10 * time.Second

	// DefaultMaxBuffered is room for one request of [MaxPayload] bytes
	// handed to a Handler together with its reply of the same size
	// (2 × 16 MiB, the most one forwarded echo can need), plus 64 KiB
	// for the pongs and error replies that may wait beside them. Less
	// would refuse a valid request forever; more only lets one peer
	// queue more unread replies, which is what the bound is there to
	// stop. See [ConnConfig.MaxBuffered].
	DefaultMaxBuffered = 2*MaxPayload + 64<<10
)

const (
	readBufSize    = 16 << 10
	yieldEvery     = 5 * time.Millisecond // see read, and the yielding row in docs/BASELINES.md
	alignThreshold = 32 << 10

	// spinFor bounds how long a caller polls for its reply before it
	// parks; see spinWait.
	spinFor = 50 * time.Microsecond

	// writeSlice bounds one blocking sendmsg(2) (SO_SNDTIMEO), so that
	// a writer waiting for a slow peer checks its context this often.
	writeSlice = 20 * time.Millisecond
)

// Request is a request passed to a [Handler]. The handler owns Payload.
type Request struct {
	Type    Type
	Payload []byte
}

// Handler answers requests that a Conn does not answer itself: message,
// status, shutdown, reload and, with [ConnConfig.ForwardEcho], echo. A
// shutdown request reaches the Handler only after every request that
// arrived before it has been answered, and later ones are refused.
// Each call runs in its own goroutine; ctx is cancelled when the Conn
// closes, and a handler must return soon after. A returned
// *[RemoteError] is sent as is; any other error is sent as
// [CodeInternal] with the error's text. A Handler must not call Close
// on its own Conn (Close waits for handlers to return).
type Handler func(ctx context.Context, req Request) ([]byte, error)

// ConnConfig configures a [Conn]. The zero value is ready to use.
type ConnConfig struct {
	// Name is sent in our hello ("supervisor", "worker.3", "client").
	Name string

	// Handler answers message, status, shutdown and reload requests.
	// Nil refuses them with [CodeUnsupported].
	Handler Handler

	// ForwardEcho hands echo requests to Handler instead of answering
	// them in the reader. The front door sets it to route echoes to
	// workers.
	ForwardEcho bool

	// MaxPayload bounds the payload of frames we accept and send. Zero
	// means [MaxPayload]; larger values are lowered to it.
	MaxPayload uint32

	// MaxConcurrent bounds the requests handed to the Handler and not
	// yet answered (a request keeps its slot until its reply's turn to
	// be written comes); requests over the bound get [CodeUnavailable].
	// Zero means [DefaultMaxConcurrent].
	MaxConcurrent int

	// WriteTimeout bounds replies written by the Conn itself (pongs,
	// echoes, handler results) when the peer does not read: a reply not
	// written within WriteTimeout of being ready, waiting for other
	// frames included, closes the Conn with an error wrapping
	// [ErrStalled]. Zero means [DefaultWriteTimeout].
	WriteTimeout time.Duration

	// MaxBuffered bounds the bytes the Conn holds on its peer's behalf:
	// request payloads handed to the Handler until their reply is
	// written, replies waiting to be written (from the Handler, echoes,
	// pongs, error replies) and the copies made of them. Frames count
	// with their header. When the bound is reached the Conn stops
	// reading, so the peer's sends block (back-pressure) until replies
	// go out; if none does for WriteTimeout, the peer is not reading
	// its replies and the Conn closes with an error wrapping
	// [ErrStalled]. A request larger than the bound is taken in only
	// when nothing else is held. A Handler's reply is counted when the
	// Handler returns, without waiting: until then the request's echo
	// counts as its reply's size, another request's as a header. Zero
	// means [DefaultMaxBuffered].
	MaxBuffered int64

	// Budget, if not nil, is a bound on the bytes held (as for
	// MaxBuffered) by all the Conns sharing it, on top of each Conn's
	// own. A request that finds no room in it within a short wait is
	// skipped unread and answered with [CodeUnavailable], so that one
	// Conn never waits long for others' peers. Nil means no shared
	// bound.
	Budget *Budget

	// IdleTimeout closes the Conn when nothing at all arrives for this
	// long. Zero means no limit.
	IdleTimeout time.Duration

	// Poll waits for the socket through the Go runtime's poller instead
	// of a thread blocked in read(2). It costs some microseconds per
	// round trip but no OS thread per idle connection: servers use it
	// for their many clients (ServerConfig.PollAbove).
	Poll bool

	// Addr names the socket in errors and logs; empty for socketpairs.
	Addr string

	// Logger receives protocol errors at debug level. Nil discards.
	Logger hclog.Logger

	// TrustUIDs are the uids, besides root and the caller's effective
	// uid, that [Dial] accepts as the server's (SO_PEERCRED). Dial to a
	// server of any other uid fails with [ErrUntrustedPeer].
	TrustUIDs []uint32
}

// Conn is one end of a framed pairvisor connection. It multiplexes any
// number of concurrent requests in both directions: a dedicated reader
// goroutine answers pings and echoes itself, hands other requests to
// the Handler, and routes replies to waiting callers by request id, so a
// ping never waits for another request's reply.
//
// A Conn owns its file descriptor from [NewConn] on. It closes it once,
// after the reader goroutine has ended and no write is in progress, so
// the number can never be reused under a late write. All methods are
// safe for concurrent use.
type Conn struct {
	fd   int
	cfg  ConnConfig
	log  hclog.Logger
	peer Hello
	ver  uint16

	// Write side: one frame at a time, from preallocated iovecs. wlock
	// (capacity 1) is the write lock: holding it means having sent into
	// it. Unlike a sync.Mutex it queues waiters in order and lets them
	// give up at a deadline (lockW).
	wlock   chan struct{}
	wclosed bool
	whdr    [HeaderSize]byte
	iov     [2]unix.Iovec
	msg     unix.Msghdr

	// fdmu guards fd against close while Close shuts it down.
	fdmu    sync.Mutex
	closing bool

	// Pending calls by request id.
	pmu     sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	closed  bool
	err     error // why the Conn closed; set before done is closed

	// Reader state, touched only by the reader goroutine.
	rbuf      []byte
	r, w      int
	big       []byte      // large payloads; lent to a background write at times
	spare     chan []byte // big, given back by the background write
	lastYield time.Time

	spin atomic.Bool // the last reply came quickly: poll for the next (spinWait)

	received atomic.Uint64 // bytes read from the peer (Received)

	// Bytes held on the peer's behalf (ConnConfig.MaxBuffered; see
	// budget.go). Only the reader waits for room.
	held     atomic.Int64
	peak     atomic.Int64  // the most held at once
	leftover int64         // held at teardown, given back then (tests)
	roomWait atomic.Bool   // the reader waits in waitRoom
	room     chan struct{} // capacity 1: bytes were released meanwhile
	kill     chan struct{} // closed when the Conn starts closing
	killOnce sync.Once

	// Poll mode (ConnConfig.Poll): file owns fd and is registered with
	// the runtime poller; the reader and writers wait through rc.
	file    *os.File
	rc      syscall.RawConn
	pollFn  func(uintptr) bool // pollRead, bound once
	rp      []byte             // pollRead's buffer and results
	rn      int
	rerr    error
	writeFn func(uintptr) bool // pollWritable, bound once
	wwait   bool

	draining bool           // a shutdown request arrived (reader-owned)
	inflight sync.WaitGroup // handler requests not yet answered

	writers sync.WaitGroup // background writes finishing a frame (see finishLater)
	wsem    chan struct{}  // bounds background writes

	ctx       context.Context // cancelled when the Conn closes
	cancel    context.CancelFunc
	sem       chan struct{}
	handlers  sync.WaitGroup
	helloDone chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ io.Closer = (*Conn)(nil)

type call struct {
	typ   Type
	dst   []byte
	reply []byte
	err   error
	ready atomic.Bool         // set just before done fires, for spinWait
	done  chan struct{}       // one send per call, by the reader or teardown
	probe func(uint64, error) // instead of done, for Probe
	id    uint64              // for probe
}

// spinning is set while a caller polls for its reply (see spinWait).
var spinning atomic.Bool

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// NewConn takes ownership of f, a connected stream socket (one end of
// [Socketpair], an inherited fd, an accepted or dialled socket),
// exchanges hellos and returns the established Conn. f is closed in
// every case: NewConn moves the descriptor into the Conn, which closes
// it on [Conn.Close]; on error nothing is left open. NewConn blocks
// until the peer's hello arrives or ctx ends.
func NewConn(ctx context.Context, f *os.File, cfg ConnConfig) (*Conn, error) {
	fd, err := takeFile(f)
	if err != nil {
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: err}
	}
	if !isSocket(fd) {
		unix.Close(fd)
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: ErrNotSocket}
	}
	return newConn(ctx, fd, cfg, nil)
}

// newConn takes ownership of fd (closed on error too). prefix holds
// bytes already read from fd that belong to the stream.
func newConn(ctx context.Context, fd int, cfg ConnConfig, prefix []byte) (*Conn, error) {
	if cfg.MaxPayload == 0 || cfg.MaxPayload > MaxPayload {
		cfg.MaxPayload = MaxPayload
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = DefaultMaxBuffered
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &Conn{
		fd:        fd,
		cfg:       cfg,
		log:       log,
		pending:   make(map[uint64]*call),
		rbuf:      make([]byte, readBufSize),
		sem:       make(chan struct{}, cfg.MaxConcurrent),
		wsem:      make(chan struct{}, cfg.MaxConcurrent),
		spare:     make(chan []byte, 1),
		wlock:     make(chan struct{}, 1),
		room:      make(chan struct{}, 1),
		kill:      make(chan struct{}),
		helloDone: make(chan struct{}),
		done:      make(chan struct{}),
	}
	c.w = copy(c.rbuf, prefix)
	c.received.Store(uint64(c.w))
	c.spin.Store(true)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.msg.Iov = &c.iov[0]
	c.iov[0].Base = &c.whdr[0]
	c.iov[0].SetLen(HeaderSize)
	if err := c.setup(); err != nil {
		c.closeFD()
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: err}
	}
	hello := AppendHello(make([]byte, 0, 64), Hello{MinVersion: MinProtocolVersion, MaxVersion: ProtocolVersion, PID: uint32(os.Getpid()), Name: cfg.Name})
	if err := c.writeFrame(ctx, 0, Header{Type: TypeHello}, hello); err != nil {
		c.closeFD()
		return nil, err
	}
	go c.readLoop()
	select {
	case <-c.helloDone:
		return c, nil
	case <-c.done:
		var oe *OpError
		if errors.As(c.err, &oe) {
			return nil, c.err
		}
		return nil, &OpError{Op: "hello", Addr: cfg.Addr, Err: c.err}
	case <-ctx.Done():
		c.Close()
		return nil, &OpError{Op: "hello", Addr: cfg.Addr, Err: fmt.Errorf("no hello from peer: %w", ctx.Err())}
	}
}

// setup prepares the fd for its mode: timeouts on the socket for a
// blocking fd; non-blocking and registered with the poller otherwise.
func (c *Conn) setup() error {
	if !c.cfg.Poll {
		if err := setSendTimeout(c.fd, writeSlice); err != nil {
			return err
		}
		if c.cfg.IdleTimeout > 0 {
			return setRecvTimeout(c.fd, c.cfg.IdleTimeout)
		}
		return nil
	}
	if err := unix.SetNonblock(c.fd, true); err != nil {
		return os.NewSyscallError("fcntl", err)
	}
	c.file = os.NewFile(uintptr(c.fd), "pairvisor-conn")
	rc, err := c.file.SyscallConn()
	if err != nil {
		return err
	}
	c.rc = rc
	c.pollFn, c.writeFn = c.pollRead, c.pollWritable
	return nil
}

// closeFD closes the fd, through the poller's file in poll mode.
func (c *Conn) closeFD() {
	if c.file != nil {
		c.file.Close()
		return
	}
	unix.Close(c.fd)
}

// pollRead is the RawConn.Read callback: one read(2) into c.rp.
func (c *Conn) pollRead(fd uintptr) bool {
	c.rn, c.rerr = readfd(int(fd), c.rp)
	return c.rerr != unix.EAGAIN
}

// pollWritable is a RawConn.Write callback that waits once for the fd
// to become writable.
func (c *Conn) pollWritable(uintptr) bool {
	c.wwait = !c.wwait
	return !c.wwait
}

// waitWrite waits for room in the socket buffer after a send that
// returned early. A blocking fd has already waited a writeSlice in the
// kernel (SO_SNDTIMEO); a polled one waits here, for at most a
// writeSlice, through the poller. Called with the write lock held.
func (c *Conn) waitWrite() {
	if c.file == nil {
		return
	}
	c.file.SetWriteDeadline(time.Now().Add(writeSlice))
	c.wwait = false
	c.rc.Write(c.writeFn)
}

// Peer returns the hello the peer sent.
func (c *Conn) Peer() Hello { return c.peer }

// Version returns the negotiated protocol version.
func (c *Conn) Version() uint16 { return c.ver }

// Received returns the number of bytes read from the peer so far, the
// hello included. It grows as bytes arrive, in the middle of a large
// frame too, so a peer that is busy sending can be told from a silent
// one without a round trip: a health check whose ping waits behind
// megabytes of replies sees them arrive. It costs one atomic load and is
// safe to call at any time, also after the Conn has closed.
func (c *Conn) Received() uint64 { return c.received.Load() }

// Done returns a channel that is closed once the Conn has closed, its fd
// is released and every handler has returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the Conn closed: an error wrapping [ErrClosed] after
// Close or a peer's EOF, a *[FrameError] after a protocol violation. It
// returns nil while the Conn is open.
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Close closes the connection: pending calls fail with [ErrClosed], the
// handlers' context is cancelled, and Close returns once the fd is
// closed and every handler has returned. It is idempotent and safe to
// call from any goroutine except a Handler of this Conn.
func (c *Conn) Close() error {
	c.shutdown()
	<-c.done
	return nil
}

// shutdown starts closing the Conn without waiting for it to finish.
func (c *Conn) shutdown() {
	c.closeOnce.Do(func() {
		c.killOnce.Do(func() { close(c.kill) })
		c.fdmu.Lock()
		c.closing = true
		if c.fd >= 0 {
			unix.Shutdown(c.fd, unix.SHUT_RDWR) // wakes the reader and any writer
		}
		c.fdmu.Unlock()
	})
}

// abort closes the connection because of err without waiting.
func (c *Conn) abort(err error) {
	c.pmu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.pmu.Unlock()
	c.killOnce.Do(func() { close(c.kill) })
	c.fdmu.Lock()
	if c.fd >= 0 {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
	c.fdmu.Unlock()
}

// Ping sends a ping and waits for the pong, returning the round-trip
// time. It does not allocate.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if _, err := c.Call(ctx, TypePing, nil, nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// Probe sends a ping and returns without waiting for the pong. done
// runs on the Conn's reader goroutine with the ping's id and a nil error
// when the pong arrives, or an error wrapping [ErrClosed] if the Conn
// closes first; it must return quickly and must not call back into the
// Conn except for Forget. Probe returns the ping's id once the ping is
// written. ctx (or, if it has no deadline, the WriteTimeout) bounds only
// the write, its wait behind other frames included. Health
// checks use it: a goroutine that pings many peers does not have to wake
// for each pong, and Probe allocates nothing (unless it must wait behind
// other frames with the WriteTimeout as its bound).
func (c *Conn) Probe(ctx context.Context, done func(id uint64, err error)) (uint64, error) {
	cl := callPool.Get().(*call)
	cl.typ, cl.probe = TypePing, done
	c.pmu.Lock()
	if c.closed {
		err := c.err
		c.pmu.Unlock()
		c.putCall(cl)
		return 0, &OpError{Op: "call ping", Addr: c.cfg.Addr, Err: closeErr(err)}
	}
	c.nextID++
	id := c.nextID
	cl.id = id
	c.pending[id] = cl
	c.pmu.Unlock()
	if err := c.writeFrame(ctx, c.cfg.WriteTimeout, Header{Type: TypePing, ID: id}, nil); err != nil {
		if c.unregister(id) {
			c.putCall(cl)
		}
		return 0, err
	}
	return id, nil
}

// Forget drops the probe with this id if its pong has not arrived yet,
// so that its callback never runs, and reports whether it did.
func (c *Conn) Forget(id uint64) bool {
	c.pmu.Lock()
	cl, ok := c.pending[id]
	ok = ok && cl.probe != nil
	if ok {
		delete(c.pending, id)
	}
	c.pmu.Unlock()
	if ok {
		c.putCall(cl)
	}
	return ok
}

// Echo sends payload and returns what the peer sent back, read into dst
// when it is large enough (otherwise into a new slice).
func (c *Conn) Echo(ctx context.Context, payload, dst []byte) ([]byte, error) {
	return c.Call(ctx, TypeEcho, payload, dst)
}

// Call sends a request of type t and waits for its reply. The reply's
// payload is read straight into dst when cap(dst) is large enough, and
// into a new slice otherwise. Call may run concurrently with any number
// of other calls.
//
// Call returns when the reply arrives, the Conn closes, or ctx ends. An
// error reply is returned as a *[RemoteError]. If ctx ends while the
// reply is already being read into dst, Call cannot hand dst back until
// the read is done, so it closes the Conn (reason [ErrStalled]) to end
// the read at once; with a nil dst it simply abandons the reply.
func (c *Conn) Call(ctx context.Context, t Type, payload, dst []byte) ([]byte, error) {
	if len(payload) > int(c.cfg.MaxPayload) {
		return nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: &FrameError{Err: ErrFrameTooLarge, Detail: fmt.Sprintf("payload of %d bytes exceeds the limit of %d", len(payload), c.cfg.MaxPayload)}}
	}
	cl := callPool.Get().(*call)
	cl.typ, cl.dst = t, dst
	c.pmu.Lock()
	if c.closed {
		err := closeErr(c.err)
		c.pmu.Unlock()
		callPool.Put(cl)
		return nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.pmu.Unlock()

	if err := c.writeFrame(ctx, 0, Header{Type: t, ID: id}, payload); err != nil {
		if c.unregister(id) {
			c.putCall(cl)
		}
		return nil, err
	}
	spin := c.spin.Load()
	if !spin || !spinWait(cl) {
		var parked time.Time
		if !spin {
			parked = time.Now()
		}
		select {
		case <-cl.done:
			// Spin for the next reply only if this one came quickly.
			c.spin.Store(!spin && time.Since(parked) < spinFor)
		case <-ctx.Done():
			if !c.unregister(id) && cl.dst != nil {
				// The reader is filling dst right now, unless it has just
				// finished.
				select {
				case <-cl.done:
				default:
					c.abort(&OpError{Op: "read", Addr: c.cfg.Addr, Err: ErrStalled})
					<-cl.done
				}
				c.putCall(cl)
			}
			return nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: ctx.Err()}
		}
	}
	reply, err := cl.reply, cl.err
	c.putCall(cl)
	if err != nil {
		return nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
	}
	return reply, nil
}

// spinWait polls done for up to spinFor, yielding the processor between
// polls, and reports whether it fired. A round trip to another process
// takes some 15–30 µs on the reference machine; parking the caller and
// having the reader wake it through the scheduler adds a futex wake-up
// of another thread to every one. Polling for a short while lets the
// reader hand the reply over with a plain channel send instead. Callers
// still park for replies that take longer, and a Conn whose replies are
// slow (an idle worker's health ping, a busy handler) stops spinning
// until a parked call sees a quick reply again (Conn.spin).
func spinWait(cl *call) bool {
	// One spinner at a time per process: with many callers waiting, the
	// processors are better spent on the readers delivering replies.
	if !spinning.CompareAndSwap(false, true) {
		return false
	}
	defer spinning.Store(false)
	start := time.Now()
	for i := 1; !cl.ready.Load(); i++ {
		if i&63 == 0 && time.Since(start) > spinFor {
			return false
		}
	}
	<-cl.done // sent right after ready was set
	return true
}

// unregister removes a pending call and reports whether it was still
// there (false: the reader has claimed it).
func (c *Conn) unregister(id uint64) bool {
	c.pmu.Lock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	c.pmu.Unlock()
	return ok
}

func (c *Conn) putCall(cl *call) {
	cl.dst, cl.reply, cl.err, cl.probe, cl.id = nil, nil, nil, nil, 0
	cl.ready.Store(false)
	callPool.Put(cl)
}

func (c *Conn) closedErr() error {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.err != nil {
		return closeErr(c.err)
	}
	return ErrClosed
}

// closeErr returns the error for a call that failed because the Conn
// closed for reason err: err itself if it already wraps [ErrClosed],
// else err wrapped together with ErrClosed, so that callers can test
// for either.
func closeErr(err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// readLoop is the reader goroutine. It owns rbuf, r, w and big, and at
// its end it tears the Conn down and closes the fd.
func (c *Conn) readLoop() {
	err := c.readFrames()
	c.fdmu.Lock()
	closing := c.closing
	if c.fd >= 0 {
		unix.Shutdown(c.fd, unix.SHUT_RDWR) // wake writers waiting in poll
	}
	c.fdmu.Unlock()

	c.pmu.Lock()
	switch {
	case c.err != nil: // set by abort
	case closing:
		c.err = ErrClosed
	default:
		c.err = err
	}
	err = c.err
	c.closed = true
	pending := c.pending
	c.pending = nil
	c.pmu.Unlock()
	for _, cl := range pending {
		cl.err = closeErr(err)
		c.finish(cl)
	}
	c.cancel()

	c.wlock <- struct{}{}
	c.fdmu.Lock()
	c.wclosed = true
	c.closeFD()
	c.fd = -1
	c.fdmu.Unlock()
	<-c.wlock

	c.handlers.Wait()
	c.writers.Wait()
	c.giveBack()
	if !errors.Is(err, ErrClosed) {
		c.log.Debug("connection closed", "addr", c.cfg.Addr, "error", err)
	}
	close(c.done)
}

// readFrames reads and dispatches frames until the stream ends or
// breaks. Its error says why.
func (c *Conn) readFrames() error {
	hello := true
	for {
		if err := c.fill(HeaderSize); err != nil {
			if err == io.EOF && c.r == c.w {
				return ErrPeerClosed
			}
			if err == io.EOF {
				err = &FrameError{Err: ErrTruncated, Detail: fmt.Sprintf("stream ended after %d of %d header bytes", c.w-c.r, HeaderSize)}
			}
			return c.readErr(err)
		}
		h, err := ParseHeader(c.rbuf[c.r:c.w], c.cfg.MaxPayload)
		if err != nil {
			return c.protocolErr(h.ID, err)
		}
		c.r += HeaderSize
		if hello {
			if err := c.readHello(h); err != nil {
				return err
			}
			hello = false
			close(c.helloDone)
			continue
		}
		switch {
		case h.IsReply():
			err = c.deliver(h)
		case h.Type == TypePing:
			err = c.answerInline(h, MaxPingPayload)
		case h.Type == TypeEcho && !c.cfg.ForwardEcho:
			err = c.answerInline(h, c.cfg.MaxPayload)
		case h.Type == TypeHello || h.Type == TypeError:
			err = c.protocolErr(h.ID, &FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s request after the handshake", h.Type)})
		default:
			err = c.dispatch(h)
		}
		if err != nil {
			return err
		}
	}
}

func (c *Conn) readHello(h Header) error {
	if h.Type != TypeHello || h.IsReply() {
		if h.Type == TypeError && h.IsReply() {
			p, err := c.readPayload(h, nil)
			if err != nil {
				return err
			}
			return &OpError{Op: "hello", Addr: c.cfg.Addr, Err: ParseError(p)}
		}
		return c.protocolErr(h.ID, &FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("first frame is %s, want hello", h.Type)})
	}
	if h.Length > maxHelloPayload {
		return c.protocolErr(0, &FrameError{Err: ErrBadPayload, Detail: fmt.Sprintf("hello payload of %d bytes, limit %d", h.Length, maxHelloPayload)})
	}
	p, err := c.readPayload(h, nil)
	if err != nil {
		return err
	}
	peer, err := ParseHello(p)
	if err != nil {
		return c.protocolErr(0, err)
	}
	v, err := negotiate(Hello{MinVersion: MinProtocolVersion, MaxVersion: ProtocolVersion}, peer)
	if err != nil {
		c.sendError(0, CodeVersion, err.Error())
		return &OpError{Op: "hello", Addr: c.cfg.Addr, Err: err}
	}
	c.peer, c.ver = peer, v
	return nil
}

// deliver hands a reply to the caller waiting for it.
func (c *Conn) deliver(h Header) error {
	c.pmu.Lock()
	cl := c.pending[h.ID]
	delete(c.pending, h.ID)
	c.pmu.Unlock()
	if cl == nil {
		if h.Type == TypeError && h.ID == 0 {
			// A connection-level error: the peer is closing.
			p, err := c.readPayload(h, nil)
			if err != nil {
				return err
			}
			return &OpError{Op: "read", Addr: c.cfg.Addr, Err: ParseError(p)}
		}
		return c.discard(int(h.Length)) // its caller gave up
	}
	var err error
	switch {
	case h.Type == TypeError:
		var p []byte
		if p, err = c.readPayload(h, nil); err == nil {
			cl.err = ParseError(p)
		}
	case h.Type != cl.typ:
		err = c.protocolErr(0, &FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s reply to %s request %d", h.Type, cl.typ, h.ID)})
	default:
		cl.reply, err = c.readPayload(h, cl.dst)
	}
	if err != nil {
		cl.err = closeErr(err) // the Conn closes on any error here
	}
	c.finish(cl)
	return err
}

// finish hands a completed call to its waiter: a caller blocked in
// Call, or a Probe's callback.
func (c *Conn) finish(cl *call) {
	if f := cl.probe; f != nil {
		id, err := cl.id, cl.err
		c.putCall(cl)
		f(id, err)
		return
	}
	cl.ready.Store(true)
	cl.done <- struct{}{}
}

// answerInline answers a ping or an echo from the read buffer, without
// copying or allocating (unless the peer is not reading; see reply).
// The reply is held (budget.go) from before its payload is read until
// it is written. An echo that finds no room in the shared Budget is
// skipped and refused; a pong is too small to be refused.
func (c *Conn) answerInline(h Header, limit uint32) error {
	if h.Length > limit {
		return c.protocolErr(h.ID, &FrameError{Err: ErrFrameTooLarge, Detail: fmt.Sprintf("%s payload of %d bytes exceeds the limit of %d", h.Type, h.Length, limit)})
	}
	n := frameCost(int(h.Length))
	ok, err := c.admit(n, h.Type != TypePing)
	if err != nil {
		return err
	}
	if !ok {
		return c.refuseUnread(h, CodeUnavailable, errNoBudget)
	}
	p, err := c.payloadView(int(h.Length))
	if err != nil {
		c.release(n)
		return c.readErr(err)
	}
	return c.reply(Header{Type: h.Type, Flags: FlagReply, ID: h.ID}, p, n)
}

// dispatch runs the Handler for a request in its own goroutine.
//
// A shutdown request drains the Conn: requests that arrive after it are
// refused with CodeShutdown (pings and echoes are still answered), and
// its own reply goes out only once every request that arrived before it
// has been answered, after the Handler (if any) has seen it. So a peer
// that closes when it gets the shutdown reply loses no reply.
//
// Refused requests are skipped unread. A request handed to the Handler
// is held (budget.go) with room for its reply from before its payload
// is read until the reply is written, and keeps its handler slot until
// the reply's turn to be written comes.
func (c *Conn) dispatch(h Header) error {
	switch {
	case c.draining:
		return c.refuseUnread(h, CodeShutdown, "shutting down")
	case h.Type == TypeShutdown:
		n, hint := requestCost(h)
		ok, err := c.admit(n, true)
		if err != nil {
			return err
		}
		if !ok {
			return c.refuseUnread(h, CodeUnavailable, errNoBudget)
		}
		p, err := c.readPayload(h, nil)
		if err != nil {
			c.release(n)
			return err
		}
		c.draining = true
		c.handlers.Add(1)
		go func() {
			defer c.handlers.Done()
			c.inflight.Wait()
			var (
				resp []byte
				err  error
			)
			if c.cfg.Handler != nil {
				resp, err = c.cfg.Handler(c.ctx, Request{Type: h.Type, Payload: p})
			}
			c.answer(h, resp, err, n, hint, false)
		}()
		return nil
	case c.cfg.Handler == nil:
		return c.refuseUnread(h, CodeUnsupported, fmt.Sprintf("no handler for %s requests", h.Type))
	}
	select {
	case c.sem <- struct{}{}:
	default:
		return c.refuseUnread(h, CodeUnavailable, fmt.Sprintf("more than %d requests in flight", c.cfg.MaxConcurrent))
	}
	n, hint := requestCost(h)
	ok, err := c.admit(n, true)
	if !ok || err != nil {
		<-c.sem
		if err != nil {
			return err
		}
		return c.refuseUnread(h, CodeUnavailable, errNoBudget)
	}
	p, err := c.readPayload(h, nil)
	if err != nil {
		<-c.sem
		c.release(n)
		return err
	}
	c.handlers.Add(1)
	c.inflight.Add(1)
	go func() {
		defer c.handlers.Done()
		defer c.inflight.Done() // after the reply is written
		resp, err := c.cfg.Handler(c.ctx, Request{Type: h.Type, Payload: p})
		c.answer(h, resp, err, n, hint, true)
	}()
	return nil
}

// answer writes a handler's result as the reply to request h. n bytes
// are held for the request, hint of them for its reply; the difference
// to the real reply is settled first, and everything is released once
// the reply is written (or the Conn closes). With slot set, the handler
// slot is given back as soon as the reply's turn to be written comes:
// a peer that sends its next request only after this reply must find a
// slot free, while replies waiting their turn keep theirs, so that at
// most MaxConcurrent of them wait.
func (c *Conn) answer(h Header, resp []byte, err error, n, hint int64, slot bool) {
	deadline := time.Now().Add(c.cfg.WriteTimeout)
	rh := Header{Type: h.Type, Flags: FlagReply, ID: h.ID}
	if err != nil {
		var re *RemoteError
		if !errors.As(err, &re) {
			re = &RemoteError{Code: CodeInternal, Message: err.Error()}
		}
		rh.Type, resp = TypeError, AppendError(nil, re.Code, re.Message)
	} else if len(resp) > int(c.cfg.MaxPayload) {
		rh.Type, resp = TypeError, AppendError(nil, CodeTooLarge, fmt.Sprintf("reply of %d bytes exceeds the limit of %d", len(resp), c.cfg.MaxPayload))
	}
	if d := frameCost(len(resp)) - hint; d > 0 {
		c.force(d)
		n += d
	} else if d < 0 {
		c.release(-d)
		n += d
	}
	c.writeReply(rh, resp, n, deadline, slot)
}

// sendError writes an error reply from a goroutine that may wait for
// the write lock. Failing to write it means the Conn is closing anyway.
func (c *Conn) sendError(id uint64, code uint16, msg string) {
	c.writeFrame(context.Background(), c.cfg.WriteTimeout, Header{Type: TypeError, Flags: FlagReply, ID: id}, AppendError(nil, code, msg))
}

// refuseUnread skips request h's payload without reading it into
// memory and answers it with an error, from the reader goroutine.
func (c *Conn) refuseUnread(h Header, code uint16, msg string) error {
	if err := c.discard(int(h.Length)); err != nil {
		return err
	}
	return c.refuse(h.ID, code, msg)
}

// refuse answers a request with an error from the reader goroutine.
// The error reply is held like any other (it is small: it waits for
// room in the Conn's bound but not in a shared Budget).
func (c *Conn) refuse(id uint64, code uint16, msg string) error {
	p := AppendError(nil, code, msg)
	n := frameCost(len(p))
	if _, err := c.admit(n, false); err != nil {
		return err
	}
	return c.reply(Header{Type: TypeError, Flags: FlagReply, ID: id}, p, n)
}

// protocolErr tells the peer what it did wrong (best effort) and
// returns err for the reader to close the Conn with.
func (c *Conn) protocolErr(id uint64, err error) error {
	code := CodeProtocol
	if errors.Is(err, ErrFrameTooLarge) {
		code = CodeTooLarge
	}
	// The Conn closes right after: the reply is held without waiting.
	p := AppendError(nil, code, err.Error())
	n := frameCost(len(p))
	c.force(n)
	c.reply(Header{Type: TypeError, Flags: FlagReply, ID: id}, p, n)
	return &OpError{Op: "read", Addr: c.cfg.Addr, Err: err}
}

func (c *Conn) readErr(err error) error {
	if err == io.EOF {
		err = &FrameError{Err: ErrTruncated, Detail: "stream ended inside a frame"}
	} else if errors.Is(err, unix.EAGAIN) {
		err = fmt.Errorf("%w: nothing received for %v", ErrIdle, c.cfg.IdleTimeout)
	}
	return &OpError{Op: "read", Addr: c.cfg.Addr, Err: err}
}

// fill makes at least n bytes (n <= len(rbuf)) available in rbuf[r:w].
func (c *Conn) fill(n int) error {
	if c.w-c.r >= n {
		return nil
	}
	if c.r == c.w {
		c.r, c.w = 0, 0
	} else if c.r+n > len(c.rbuf) {
		c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
		c.r = 0
	}
	for c.w-c.r < n {
		k, err := c.read(c.rbuf[c.w:])
		if err != nil {
			return err
		}
		c.w += k
	}
	return nil
}

// read is one read(2) into p, yielding the P every few milliseconds so
// that sysmon does not treat the reader as a long-running goroutine.
func (c *Conn) read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(c.lastYield) > yieldEvery {
		c.lastYield = now
		runtime.Gosched()
	}
	var (
		n   int
		err error
	)
	if c.file == nil {
		n, err = readfd(c.fd, p)
	} else {
		if c.cfg.IdleTimeout > 0 {
			c.file.SetReadDeadline(time.Now().Add(c.cfg.IdleTimeout))
		}
		c.rp = p
		if err = c.rc.Read(c.pollFn); err == nil {
			n, err = c.rn, c.rerr
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			err = unix.EAGAIN // as SO_RCVTIMEO reports it: idle
		}
		c.rp = nil
	}
	if err == unix.ECONNRESET {
		// A unix stream peer that closes with data still unread in its
		// receive queue (one that crashed or was killed, typically)
		// makes our read fail with ECONNRESET instead of returning EOF.
		return 0, io.EOF
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	c.received.Add(uint64(n))
	return n, nil
}

// readFull reads len(p) bytes straight from the socket, first aligning
// the destination of large reads to 64 bytes (the kernel copies
// unaligned destinations at half speed on the reference machine).
func (c *Conn) readFull(p []byte) error {
	if len(p) >= alignThreshold {
		if off := int(uintptr(unsafe.Pointer(unsafe.SliceData(p))) & 63); off != 0 {
			if err := c.readFull(p[:64-off]); err != nil {
				return err
			}
			p = p[64-off:]
		}
	}
	for len(p) > 0 {
		n, err := c.read(p)
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// readPayload reads h's payload into dst if it is large enough, else
// into a new slice.
func (c *Conn) readPayload(h Header, dst []byte) ([]byte, error) {
	n := int(h.Length)
	if n == 0 {
		return dst[:0], nil
	}
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	m := copy(dst, c.rbuf[c.r:c.w])
	c.r += m
	if err := c.readFull(dst[m:]); err != nil {
		return nil, c.readErr(err)
	}
	return dst, nil
}

// payloadView returns the next n bytes, valid until the next read: a
// slice of rbuf when they fit, else of a reused larger buffer.
func (c *Conn) payloadView(n int) ([]byte, error) {
	if n <= len(c.rbuf) {
		if err := c.fill(n); err != nil {
			return nil, err
		}
		p := c.rbuf[c.r : c.r+n]
		c.r += n
		return p, nil
	}
	if c.big == nil {
		select {
		case c.big = <-c.spare: // lent to a background write, now back
		default:
		}
	}
	if cap(c.big) < n {
		c.big = make([]byte, n)
	}
	p := c.big[:n]
	m := copy(p, c.rbuf[c.r:c.w])
	c.r += m
	return p, c.readFull(p[m:])
}

// discard skips n payload bytes.
func (c *Conn) discard(n int) error {
	for n > 0 {
		if c.r == c.w {
			if err := c.fill(1); err != nil {
				return c.readErr(err)
			}
		}
		k := min(n, c.w-c.r)
		c.r += k
		n -= k
	}
	return nil
}
