package ipc

// How a Conn works: its goroutines, its locks and its hand-offs. This
// comment is the one place that describes them; the code refers here.
//
// # Goroutines
//
//   - The background reader (background, reader.go), one per Conn, from
//     newConn until the Conn has closed. It reads the hello, answers
//     the peer's requests, and reads every reply that no caller reads
//     itself. It alone tears the Conn down (teardown): it fails the
//     pending calls, closes the fd, waits for the goroutines below and
//     closes done.
//   - Callers: the user's goroutines in Call, Ping, Echo and Probe. A
//     caller writes its request and then waits for its reply; while it
//     waits it may hold the read side and read the reply itself (see
//     The read side).
//   - Handlers: one goroutine per request given to the Handler
//     (dispatch), counted by handlers. Each ends once the Handler has
//     returned (or panicked) and its reply is written, or the Conn has
//     closed. On a version 2 connection each has its own context,
//     registered in active under the request's id until the Handler
//     has returned, for the peer's cancel frames (serve.go).
//   - Background writers (write.go), counted by writers: replyLater
//     writes a copy of a reply that the reader could not write at once;
//     finishLater finishes a frame whose writer could not wait for it.
//     Each ends within WriteTimeout, or closes the Conn (ErrStalled).
//     writeCancels (cancel.go), also counted by writers, writes the
//     cancel frames of calls that gave up, at most one at a time, and
//     ends when its queue is empty or the Conn closes.
//
// # The read side
//
// The read side is a *reader (reader.go): the read buffer, the frame
// being read, and the reader's state. It is a token: exactly one
// goroutine holds it at a time, and only the holder reads from the
// socket or touches the reader's fields; it is passed on explicitly
// (handOn, under pmu) and is never locked. Its holder is either
//
//   - the background reader;
//   - a caller that leads: in blocking mode, a caller that finds the
//     read side idle after writing its request takes it and reads
//     until its own reply has arrived, on its own thread, as a C
//     program would: first polling the socket for a moment (poll),
//     then asleep in read(2). This is what makes a lone caller's round
//     trip cost one thread instead of two (a caller writing and a
//     reader waking it); docs/BENCHMARKS.md has the numbers. A leader
//     reads with a timeout of ioSlice: if nothing arrives for that long
//     it gives the read side to the background reader and waits like a
//     follower, where its context ends the wait at once; it also looks
//     at its context between frames. A leader that meets a request
//     (rather than a reply) gives the read side to the background
//     reader, with the request unread, so that a caller never waits for
//     room in a budget, a handler slot or the write lock on the peer's
//     behalf;
//   - nobody (idle): a leader that has its reply and sees no other
//     caller waiting leaves the read side idle, so that the next caller
//     can lead without waking anyone. The background reader takes an
//     idle read side back after it has been idle for linger, or at once
//     when a Probe needs its pong read or the Conn closes.
//
// Other callers waiting for replies are followers: they park on their
// call's done channel (after spinning for a moment, spinWait, while the
// background reader holds the read side), and the holder hands each its
// reply there. When a leader has its reply, it
// hands the read side to a waiting follower if there is one, which then
// reads its own reply. The background reader, about to block in read(2)
// with nothing buffered, hands the read side to a waiting follower
// likewise, and leaves it idle right after it has handed a reply to a
// caller, who is likely to call again. In polled mode only the
// background reader reads. In blocking mode a read that would wait, a
// leader's first or any of the background reader's, first polls the
// socket for a moment while polling pays, and now and then when it does
// not (poll in reader.go). At most one goroutine of the process spins
// or polls at a time (spinning).
//
// # Locks, in the order they may be taken
//
//  1. wlock, the write lock (write.go): a channel of capacity 1 that
//     serialises frames. It is FIFO and its waiters can give up. Its
//     holder may hand it to finishLater's goroutine, which unlocks it.
//     The holder of the read side never waits for it (tryLockW, and
//     replyLater when it is taken; the one exception is the error
//     about the connection sent as it closes, a protocol violation or
//     a refused hello, for at most closingWait), and a holder of wlock
//     never waits for the read side.
//  2. pmu: pending calls, the followers waiting, the idle read side,
//     nextID, closed and err, and the queue of cancel frames. Nothing
//     else is locked, and nothing blocks, while it is held: the channel
//     sends under it go to channels of capacity 1 known to be empty.
//  3. sock.mu (fdio_linux.go): the fd against its close; Budget.mu;
//     amu, the Handler's requests by id (active), taken alone.
//
// # Hand-offs
//
//   - A request: registered in pending before it is written; its reply
//     is claimed under pmu by the holder of the read side, read straight
//     into the caller's dst, and handed over by finish (a send on
//     call.done, or the Probe's callback). call.done carries exactly
//     one send per event: the reply (or the Conn's failure), or the
//     read side passed to the call.
//   - The read side: handOn, see above; toBg carries it to the
//     background reader.
//   - The write lock and the unsent rest of a frame: to finishLater.
//   - big, the reader's large-payload buffer: lent to finishLater with
//     a reply written from it, and given back through spare.
//   - Held bytes (budget.go): reserved by the reader when it takes a
//     request in, released by whoever writes the reply.
//   - A handler slot (sem): taken by the reader, given back when the
//     reply's turn to be written comes.
//   - Teardown: whoever reads the stream's end passes the read side to
//     the background reader, which tears down; pending calls fail with
//     the Conn's error.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// Defaults for the zero fields of [ConnConfig].
const (
	DefaultMaxConcurrent = 64
	DefaultWriteTimeout  = 10 * time.Second

	// DefaultMaxBuffered is room for one request of [wire.MaxPayload] bytes
	// handed to a Handler together with its reply of the same size
	// (2 × 16 MiB, the most one forwarded echo can need), plus 64 KiB
	// for the pongs and error replies that may wait beside them. Less
	// would refuse a valid request forever; more only lets one peer
	// queue more unread replies, which is what the bound is there to
	// stop. See [ConnConfig.MaxBuffered].
	DefaultMaxBuffered = 2*wire.MaxPayload + 64<<10
)

// Tuning. docs/BENCHMARKS.md ("Why the Conn reads the way it does")
// gives the measurements behind yieldEvery, alignThreshold, spinFor and
// the leader.
const (
	// readBufSize is the read buffer: headers, small payloads, and the
	// first bytes of large ones.
	readBufSize = 16 << 10

	// yieldEvery: the holder of the read side calls runtime.Gosched at
	// most this often, so that the Go runtime does not take the P of a
	// goroutine that only ever sits in system calls (see read).
	yieldEvery = 5 * time.Millisecond

	// alignThreshold: payloads of this size or more are read to a
	// 64-byte-aligned address (see readInto).
	alignThreshold = 32 << 10

	// spinFor bounds how long a follower polls for its reply before it
	// parks (spinWait), and how long a leader or the background reader
	// polls the socket before it sleeps in read(2) (poll).
	spinFor = 50 * time.Microsecond

	// repollMin and repollMax: while polling does not pay, a reader
	// polls all the same once in repollMin to repollMax reads (repoll).
	repollMin = 16
	repollMax = 1024

	// writeSlice bounds one blocking sendmsg(2) (SO_SNDTIMEO), so that
	// a writer waiting for a slow peer checks its context this often.
	writeSlice = 20 * time.Millisecond

	// ioSlice bounds one read(2) of a leading caller (SO_RCVTIMEO):
	// after that long without data it hands the read side to the
	// background reader and waits as a follower, where its context
	// ends its wait at once.
	ioSlice = writeSlice

	// linger is how long the read side may stay idle, between calls,
	// before the background reader takes it back to read whatever the
	// peer sends unasked.
	linger = time.Millisecond
)

// ConnConfig configures a [Conn]. The zero value is ready to use.
type ConnConfig struct {
	// Name is sent in our hello ("supervisor", "worker.3", "client").
	Name string

	// MaxVersion is the highest protocol version offered in our hello.
	// Zero means [wire.ProtocolVersion]; larger values are lowered to
	// it, and so is 3 without MaxFiles (version 3 is the one that
	// passes file descriptors). 1 makes the Conn a version 1 peer,
	// which neither sends nor accepts cancel frames: for testing mixed
	// versions, or for a gradual roll-out.
	MaxVersion uint16

	// MaxFiles, if positive, makes the Conn take file descriptors
	// passed with frames (protocol version 3; Linux only), at most
	// MaxFiles with one frame: it is lowered to [wire.MaxFiles], and a
	// peer that sends more loses the connection ([ErrTooManyFiles]).
	// Both sides need it for the connection to speak version 3, on
	// which [Conn.CallFiles] and [Request.AttachFiles] send
	// descriptors. Zero means none: the Conn offers at most version 2,
	// and reads with read(2) rather than recvmsg(2).
	MaxFiles int

	// Handler answers message, status, shutdown and reload requests.
	// Nil refuses them with [wire.CodeUnsupported] (and answers a
	// shutdown with an empty reply).
	Handler Handler

	// ForwardEcho hands echo requests to Handler instead of answering
	// them in the reader. The front door sets it to route echoes to
	// workers.
	ForwardEcho bool

	// MaxPayload bounds the payload of frames we accept and send. Zero
	// means [wire.MaxPayload]; larger values are lowered to it.
	MaxPayload uint32

	// MaxConcurrent bounds the requests handed to the Handler and not
	// yet answered (a request keeps its slot until its reply's turn to
	// be written comes); requests over the bound get [wire.CodeUnavailable].
	// Zero means [DefaultMaxConcurrent].
	MaxConcurrent int

	// WriteTimeout bounds replies written by the Conn itself (pongs,
	// echoes, handler results) when the peer does not read: a reply not
	// written within WriteTimeout of being ready, waiting for other
	// frames included, closes the Conn with an error wrapping
	// [ErrStalled] — unless the peer took some of the Conn's bytes
	// meanwhile (see [Conn.Sent]): a peer that reads, however slowly,
	// is not stalled, and the wait goes on for another WriteTimeout
	// from then. So the Conn closes once no byte has gone out for
	// WriteTimeout (it notices within twice that). Zero means
	// [DefaultWriteTimeout].
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
	// skipped unread and answered with [wire.CodeUnavailable], so that one
	// Conn never waits long for others' peers. Nil means no shared
	// bound.
	Budget *Budget

	// IdleTimeout closes the Conn when nothing at all arrives for this
	// long (give or take the few tens of milliseconds in which the
	// read side passes between callers and the background reader).
	// Zero means no limit.
	IdleTimeout time.Duration

	// Poll waits for the socket through the Go runtime's poller instead
	// of a thread blocked in read(2). It costs some microseconds per
	// round trip, and callers no longer read their own replies, but an
	// idle connection holds no OS thread: servers use it for their many
	// clients.
	Poll bool

	// Addr names the socket in errors and logs; empty for socketpairs.
	Addr string

	// Detachable lets [Conn.Detach] move the connection to another
	// Conn (detach.go). In blocking mode the background reader then
	// waits in read(2) at most 100 ms at a time, so that it sees a
	// detach while the peer is quiet.
	Detachable bool

	// DetachAt, if set, makes the Conn detach by itself (as by
	// [Conn.Detach]) instead of taking in a request of a type for which
	// it reports true: the request stays unread, at the start of the
	// Session's Buffered bytes, for whoever resumes the connection
	// ([Conn.Detach] returns them once the Conn is done). It is called
	// on the background reader's goroutine, for every request it takes
	// in, and must return at once.
	DetachAt func(t wire.Type) bool

	// Logger receives protocol errors at debug level, and handlers'
	// panics, with their stacks, at error level. Nil discards.
	Logger hclog.Logger

	// TrustUIDs are the uids, besides root and the caller's effective
	// uid, that [Dial] accepts as the server's (SO_PEERCRED). Dial to a
	// server of any other uid fails with [ErrUntrustedPeer].
	TrustUIDs []uint32
}

// Conn is one end of a framed pairvisor connection. It multiplexes any
// number of concurrent requests in both directions: replies are routed
// to their callers by request id, in whatever order they come, so a
// ping never waits for a handler's work on another request (it may wait
// for frames ahead of it on the wire: see docs/PROTOCOL.md, "Ordering");
// pings and echoes from the peer are answered by the Conn itself, other
// requests by the Handler. A caller that is alone in waiting reads its
// own reply on its own thread; otherwise a reader hands it over. On a
// version 2 connection a caller that gives up tells the peer, whose
// Handler's context is then cancelled.
//
// A Conn owns its file descriptor from [NewConn] on. It closes it once,
// after its background reader has ended and no write is in progress, so
// the number can never be reused under a late write. All methods are
// safe for concurrent use.
type Conn struct {
	cfg  ConnConfig
	log  hclog.Logger
	sock *sock
	peer wire.Hello
	ver  uint16

	// Write side (write.go): one frame at a time, from preallocated
	// iovecs, under wlock (see the comment at the top of this file).
	wlock   chan struct{}
	wclosed bool // the fd is closed; under wlock
	whdr    [wire.HeaderSize]byte
	iov     [2]unix.Iovec
	msg     unix.Msghdr
	wsem    chan struct{}  // bounds replyLater's goroutines
	spare   chan []byte    // the reader's big buffer, given back by finishLater
	writers sync.WaitGroup // replyLater and finishLater goroutines

	// Calls and the read side's hand-offs, under pmu.
	pmu     sync.Mutex
	pending map[uint64]*call
	nwait   atomic.Int32 // calls in pending that wait as followers (written under pmu)
	idle    *reader      // the read side while nobody holds it
	byCall  bool         // a caller holds the read side
	nextID  uint64
	closed  bool
	err     error        // why the Conn closed; set before done is closed
	toBg    chan *reader // capacity 1: the read side, for the background reader
	linger  *time.Timer  // the background reader's, while it waits for the read side

	spin     atomic.Bool   // followers: the last reply came quickly (spinWait)
	received atomic.Uint64 // bytes read from the peer (Received)
	sent     atomic.Uint64 // bytes written to the peer (Sent; the stall verdicts' progress, write.go)
	writing  atomic.Int64  // when the sendmsg in progress began (monotonic ns since connStart), 0 if none (Writing; write.go)

	// Bytes held on the peer's behalf (ConnConfig.MaxBuffered; see
	// budget.go). Only the holder of the read side waits for room.
	held     atomic.Int64
	peak     atomic.Int64  // the most held at once
	leftover int64         // held at teardown, given back then (tests)
	roomWait atomic.Bool   // the reader waits in waitRoom
	room     chan struct{} // capacity 1: bytes were released meanwhile

	// Requests given to the Handler.
	ctx      context.Context // cancelled when the Conn closes
	cancel   context.CancelFunc
	sem      chan struct{}  // handler slots (MaxConcurrent)
	handlers sync.WaitGroup // handler goroutines
	inflight sync.WaitGroup // requests given to the Handler and not yet answered

	// Cancellation (version 2): the peer's requests with the Handler,
	// and our cancel frames to write (cancel.go).
	amu      sync.Mutex                    // guards active; taken alone
	active   map[uint64]context.CancelFunc // the Handler's requests by id, for the peer's cancels
	cancelQ  []uint64                      // our cancels not yet written; under pmu
	cancelOn bool                          // writeCancels runs; under pmu

	// Detaching (detach.go).
	detachWant atomic.Bool   // Detach was called, or DetachAt said so
	detached   *detached     // set, under pmu, when the Conn detached
	drainCh    chan struct{} // closed when the peer's shutdown request arrives
	drainOnce  sync.Once

	kill      chan struct{} // closed when the Conn starts closing
	killOnce  sync.Once
	closeOnce sync.Once
	helloDone chan struct{}
	done      chan struct{}
}

var _ io.Closer = (*Conn)(nil)

// NewConn takes ownership of f, a connected stream socket (one end of
// [Socketpair], an inherited fd, an accepted or dialled socket),
// exchanges hellos and returns the established Conn. f is closed in
// every case: NewConn moves the descriptor into the Conn, which closes
// it on [Conn.Close]; on error nothing is left open. NewConn blocks
// until the peer's hello arrives or ctx ends. A Conn whose DetachAt took
// the peer's first request before NewConn returned is returned done,
// with [ErrDetached], for the caller to [Conn.Detach]: not an error.
func NewConn(ctx context.Context, f *os.File, cfg ConnConfig) (*Conn, error) {
	return NewConnPrefixed(ctx, f, nil, cfg)
}

// NewConnPrefixed is [NewConn] for a socket whose first bytes have
// already been read from it, by a server that tells protocols apart by
// them: the Conn takes prefix as the start of the stream (normally the
// peer's hello header) and reads on from the socket after it. prefix
// may hold at most [wire.HeaderSize] bytes; the Conn keeps no reference
// to it. f is closed in every case, as with NewConn.
func NewConnPrefixed(ctx context.Context, f *os.File, prefix []byte, cfg ConnConfig) (*Conn, error) {
	if len(prefix) > wire.HeaderSize {
		f.Close()
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: fmt.Errorf("prefix of %d bytes, at most %d allowed", len(prefix), wire.HeaderSize)}
	}
	fd, err := takeSocket(f)
	if err != nil {
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: err}
	}
	return newConn(ctx, fd, cfg, prefix, nil)
}

// newConn takes ownership of fd (closed on error too). prefix holds
// bytes already read from fd that belong to the stream. With sess the
// connection is established already (Resume): no hellos are exchanged.
func newConn(ctx context.Context, fd int, cfg ConnConfig, prefix []byte, sess *Session) (*Conn, error) {
	if cfg.MaxPayload == 0 || cfg.MaxPayload > wire.MaxPayload {
		cfg.MaxPayload = wire.MaxPayload
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
	if cfg.MaxVersion == 0 || cfg.MaxVersion > wire.ProtocolVersion {
		cfg.MaxVersion = wire.ProtocolVersion
	}
	cfg.MaxVersion = max(cfg.MaxVersion, wire.MinProtocolVersion)
	cfg.MaxFiles = min(max(cfg.MaxFiles, 0), wire.MaxFiles)
	if !filesSupported || cfg.MaxVersion < 3 {
		cfg.MaxFiles = 0
	}
	if cfg.MaxFiles == 0 {
		cfg.MaxVersion = min(cfg.MaxVersion, 2)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if sess != nil && (sess.Version < wire.MinProtocolVersion || sess.Version > cfg.MaxVersion) {
		unix.Close(fd)
		return nil, &OpError{Op: "resume", Addr: cfg.Addr, Err: fmt.Errorf("session at version %d, this Conn speaks %d to %d", sess.Version, wire.MinProtocolVersion, cfg.MaxVersion)}
	}
	s, err := newSock(fd, cfg.Poll, cfg.IdleTimeout, cfg.Detachable)
	if err != nil {
		return nil, &OpError{Op: "open", Addr: cfg.Addr, Err: err}
	}
	if cfg.MaxFiles > 0 {
		s.rf = newRecvFiles(cfg.MaxFiles)
	}
	c := &Conn{
		cfg:       cfg,
		log:       log,
		sock:      s,
		wlock:     make(chan struct{}, 1),
		wsem:      make(chan struct{}, cfg.MaxConcurrent),
		spare:     make(chan []byte, 1),
		pending:   make(map[uint64]*call),
		active:    make(map[uint64]context.CancelFunc),
		toBg:      make(chan *reader, 1),
		linger:    time.NewTimer(linger),
		room:      make(chan struct{}, 1),
		sem:       make(chan struct{}, cfg.MaxConcurrent),
		kill:      make(chan struct{}),
		drainCh:   make(chan struct{}),
		helloDone: make(chan struct{}),
		done:      make(chan struct{}),
	}
	c.linger.Stop()
	r := newReader(c, prefix)
	c.received.Store(uint64(len(prefix)))
	c.spin.Store(true)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.msg.Iov = &c.iov[0]
	c.iov[0].Base = &c.whdr[0]
	c.iov[0].SetLen(wire.HeaderSize)
	if sess != nil {
		c.peer, c.ver = sess.Peer, sess.Version
		if sess.NextID > 0 {
			c.nextID = sess.NextID - 1
		}
		r.hello = true
		close(c.helloDone)
		go c.background(r)
		return c, nil
	}
	hello := wire.AppendHello(make([]byte, 0, 64), c.ourHello(uint32(os.Getpid())))
	if err := c.writeFrame(ctx, 0, wire.Header{Type: wire.TypeHello}, hello); err != nil {
		c.cancel()
		s.close()
		return nil, err
	}
	go c.background(r)
	select {
	case <-c.helloDone:
		return c, nil
	case <-c.done:
		select {
		case <-c.helloDone:
			if errors.Is(c.err, ErrDetached) {
				// The peer's first request came right behind its
				// hello and DetachAt took it: the caller Detaches.
				return c, nil
			}
		default:
		}
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

// ourHello is the hello this side sends.
func (c *Conn) ourHello(pid uint32) wire.Hello {
	return wire.Hello{MinVersion: wire.MinProtocolVersion, MaxVersion: c.cfg.MaxVersion, PID: pid, Name: c.cfg.Name}
}

// Peer returns the hello the peer sent.
func (c *Conn) Peer() wire.Hello { return c.peer }

// Version returns the negotiated protocol version: the highest both
// hellos offer. Cancel frames are used from version 2 on.
func (c *Conn) Version() uint16 { return c.ver }

// Received returns the number of bytes read from the peer so far, the
// hello included. It grows as bytes arrive, in the middle of a large
// frame too, so a peer that is busy sending can be told from a silent
// one without a round trip: a health check whose ping waits behind
// megabytes of replies sees them arrive. It costs one atomic load and is
// safe to call at any time, also after the Conn has closed.
func (c *Conn) Received() uint64 { return c.received.Load() }

// Sent returns the number of bytes written to the peer so far, the hello
// included. It grows as the peer takes them, in the middle of a large
// frame too, so a peer that reads slowly can be told from one that does
// not read at all: that is how the Conn itself tells a slow peer from a
// stalled one (WriteTimeout). One atomic load; safe at any time, also
// after the Conn has closed.
func (c *Conn) Sent() uint64 { return c.sent.Load() }

// Writing reports whether a write to the peer has been in progress for
// longer than the socket's send timeout lets a write wait without room
// (20 ms; Writing allows four times that): such a write is taking
// bytes. A write on a blocking socket counts its bytes in Sent only when
// it returns, which it does once the peer stops taking them for that
// long, but not while the peer keeps reading, however slowly: so a peer
// whose Sent has not moved is stalled only if Writing is false too.
func (c *Conn) Writing() bool {
	since := c.writing.Load()
	return since != 0 && time.Since(connStart) > time.Duration(since)+4*writeSlice
}

// connStart is the origin of Conn.writing's monotonic times.
var connStart = time.Now()

// Done returns a channel that is closed once the Conn has closed, its fd
// is released and every handler has returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the Conn closed: an error wrapping [ErrClosed] after
// Close or a peer's EOF, a *[wire.FrameError] after a protocol violation. It
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
		c.sock.shutdown(true) // wakes whoever reads and every writer
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
	c.sock.shutdown(false)
}

// killed reports whether the Conn has started closing.
func (c *Conn) killed() bool {
	select {
	case <-c.kill:
		return true
	default:
		return false
	}
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

// teardown closes the Conn once the stream has ended for reason r.err.
// The background reader runs it, holding the read side, which it never
// passes on again.
func (c *Conn) teardown(r *reader) {
	c.sock.shutdown(false) // wake writers waiting in poll
	closing := c.sock.closedByUs()
	c.pmu.Lock()
	switch {
	case c.err != nil: // set by abort
	case closing:
		c.err = ErrClosed
	default:
		c.err = r.err
	}
	err := c.err
	c.closed = true
	pending := c.pending
	c.pending = nil
	for _, cl := range pending {
		cl.waiting = false
	}
	c.nwait.Store(0)
	c.pmu.Unlock()
	for _, cl := range pending {
		cl.err = closeErr(err)
		c.finish(cl)
	}
	c.cancel()

	c.wlock <- struct{}{}
	c.wclosed = true
	c.sock.close()
	<-c.wlock
	r.dropFiles()

	c.handlers.Wait()
	c.writers.Wait()
	c.giveBack()
	if !errors.Is(err, ErrClosed) {
		c.log.Debug("connection closed", "addr", c.cfg.Addr, "error", err)
	}
	close(c.done)
}
