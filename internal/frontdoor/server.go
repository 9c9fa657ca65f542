package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// Defaults for [Config].
const (
	DefaultMaxConns = 1024

	// DefaultTotalBuffered bounds what all a server's clients may hold
	// (Config.TotalBuffered): eight times one client's bound.
	DefaultTotalBuffered = 8 * ipc.DefaultMaxBuffered
	DefaultIdleTimeout   = 5 * time.Minute
	DefaultPollAbove     = 16

	// helloWait bounds how long a connection that began with the frame
	// magic may take to send the rest of its hello header: the second
	// magic byte, or it is a raw client; the rest of the header, or it
	// is refused (see classify).
	helloWait = 200 * time.Millisecond

	// handshakeWait bounds a framed client's whole hello.
	handshakeWait = 5 * time.Second
)

// Config configures a [Server]. The zero value serves pings and echoes
// to clients of the listener's own uid.
type Config struct {
	// ConnConfig configures the Conn of each framed client. Its Name is
	// sent in the server's hello (no default: the caller names its
	// product). Its Handler answers framed clients' status, message,
	// shutdown and reload requests, and echo requests when ForwardEcho
	// is set; the requests that change state (message, shutdown,
	// reload) reach it only from peers allowed to send them: see
	// ControlUIDs. Its IdleTimeout also closes raw and unclassified
	// clients, and defaults to [DefaultIdleTimeout] here (zero does not
	// mean "none"). The server sets Addr and Poll itself, and gives
	// every Conn one shared [ipc.Budget] of TotalBuffered bytes unless
	// Budget is set. TrustUIDs is for dialling and is not used.
	ipc.ConnConfig

	// MaxConns bounds concurrent connections (default 1024). It is
	// lowered, with a warning, to [MaxConnsLimit] when the open-file
	// limit cannot hold that many. When the table is full, a newcomer
	// takes the slot of the raw or unclassified connection that has
	// been quiet longest and has nothing unread (a client that connected
	// and sent nothing, typically); if there is none it is closed at
	// once and logged. The last 8 slots (at most a quarter of
	// MaxConns) are kept for the server's own uid and root.
	MaxConns int
	// MaxConnsPerUID bounds the connections of any one uid other than
	// the server's own and root's; a newcomer over it takes the slot of
	// that uid's quietest raw or unclassified connection, or is closed.
	// Zero means a quarter of MaxConns (256 by default); negative means
	// no bound.
	MaxConnsPerUID int
	// TotalBuffered bounds the bytes all framed clients together may
	// hold in the server's memory: requests being answered and replies
	// not yet read (default [DefaultTotalBuffered]). Each client also
	// holds at most ConnConfig.MaxBuffered (see [ipc.ConnConfig]); a
	// request that finds no room in the total is answered with
	// [wire.CodeUnavailable] unread, and the client may try again (see
	// [ipc.Budget]).
	TotalBuffered int64

	// PollAbove: framed clients that connect while more than this many
	// connections are open are served through the runtime's poller
	// (ipc.ConnConfig.Poll) rather than a thread each, so that a thousand
	// clients do not mean a thousand threads. Default 16; -1 polls
	// always. Raw and unclassified clients are always served through
	// the poller.
	PollAbove int

	// AllowUIDs and AllowGIDs restrict the clients served beyond the
	// socket file's mode: when either is non-empty, a peer is served if
	// its uid is listed, its primary or a supplementary group is listed
	// (or it may send control requests), or it runs as our own uid or
	// root. An abstract socket ("@name") has no file mode to guard it,
	// so with both lists empty it serves only our own uid and root.
	// Refused peers are logged with their credentials (a few lines a
	// second at most) and closed.
	AllowUIDs []uint32
	AllowGIDs []uint32

	// ControlUIDs and ControlGIDs name the peers, besides our own uid
	// and root, that may send requests that change state (message,
	// reload, shutdown); a group matches a peer's primary or
	// supplementary group. Anyone else served gets [wire.CodeDenied] for
	// them, logged; ping, echo and status are open to every peer served.
	// Being listed here also lets a peer connect, as AllowUIDs does.
	ControlUIDs []uint32
	ControlGIDs []uint32

	// HandOff, if set, is offered every framed client before the
	// server says hello to it, to pass the connection to a worker that
	// serves it directly (handoff.go). Nil serves every client here.
	HandOff HandOffFunc
}

// Stats counts a server's connections.
type Stats struct {
	Active   int64 `json:"active"`
	Accepted int64 `json:"accepted"`
	Refused  int64 `json:"refused"`
	Framed   int64 `json:"framed"`
	Raw      int64 `json:"raw"`
	Evicted  int64 `json:"evicted"`   // quiet connections closed to make room for a newcomer
	Denied   int64 `json:"denied"`    // control requests refused with wire.CodeDenied
	BadHello int64 `json:"bad_hello"` // framed clients refused because their first header was not a hello
	// With Config.HandOff (handoff.go):
	HandedOff   int64 `json:"handed_off"`   // hand-overs to a worker that have ended: the client went away, or came back
	WithWorkers int64 `json:"with_workers"` // clients being handed over or served by workers now
}

// Server serves connections accepted from a [listen.Listener]: framed
// clients (their first two bytes are the frame magic) speak the
// protocol, anything else is echoed byte for byte.
type Server struct {
	cfg        Config
	log        hclog.Logger
	l          *listen.Listener
	abstract   bool // l is an abstract socket: no file mode guards it
	euid       uint32
	budget     *ipc.Budget // shared by every framed client's Conn
	reserve    int         // slots of MaxConns kept for the privileged
	wantGroups bool        // a group list needs peers' supplementary groups

	mu       sync.Mutex
	stopping bool          // set once Serve winds down; nothing registers after
	stop     chan struct{} // closed when Serve winds down: framed clients' goroutines close their Conns
	slots    map[*connSlot]struct{}
	uids     map[uint32]*uidConns
	n        int // connections in the table
	wg       sync.WaitGroup

	seq atomic.Uint64 // activity clock of the eviction order

	refusedLog, fullLog, uidFullLog, evictLog, deniedLog *throttle

	active, accepted, refused, framed, raw, evicted, denied, badHello atomic.Int64
	handedOff, withWorkers                                            atomic.Int64 // handoff.go
}

// New returns a Server for l. It takes ownership of l: Serve closes it
// when it returns.
func New(l *listen.Listener, cfg Config) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.PollAbove == 0 {
		cfg.PollAbove = DefaultPollAbove
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if limit := MaxConnsLimit(); cfg.MaxConns > limit {
		cfg.Logger.Warn("max_conns lowered to fit the open-file limit (RLIMIT_NOFILE)", "max_conns", cfg.MaxConns, "lowered_to", limit, "nofile", nofile())
		cfg.MaxConns = limit
	}
	if cfg.TotalBuffered <= 0 {
		cfg.TotalBuffered = DefaultTotalBuffered
	}
	budget := cfg.Budget
	if budget == nil {
		budget = ipc.NewBudget(cfg.TotalBuffered)
	}
	if cfg.MaxConnsPerUID == 0 {
		cfg.MaxConnsPerUID = max(1, cfg.MaxConns/4)
	}
	log := cfg.Logger
	return &Server{
		cfg:        cfg,
		log:        log,
		l:          l,
		abstract:   strings.HasPrefix(l.Addr(), "@"),
		euid:       uint32(os.Geteuid()),
		budget:     budget,
		stop:       make(chan struct{}),
		reserve:    min(reservedConns, cfg.MaxConns/4),
		wantGroups: len(cfg.AllowGIDs) > 0 || len(cfg.ControlGIDs) > 0,
		slots:      make(map[*connSlot]struct{}),
		uids:       make(map[uint32]*uidConns),
		refusedLog: newThrottle(log, hclog.Warn, "refused peer"),
		fullLog:    newThrottle(log, hclog.Warn, "too many connections; closing new one"),
		uidFullLog: newThrottle(log, hclog.Warn, "too many connections from one uid; closing new one"),
		evictLog:   newThrottle(log, hclog.Debug, "closed a quiet connection to make room"),
		deniedLog:  newThrottle(log, hclog.Warn, "denied control request"),
	}
}

// Stats returns the server's connection counters.
func (s *Server) Stats() Stats {
	return Stats{Active: s.active.Load(), Accepted: s.accepted.Load(), Refused: s.refused.Load(),
		Framed: s.framed.Load(), Raw: s.raw.Load(), Evicted: s.evicted.Load(), Denied: s.denied.Load(),
		BadHello: s.badHello.Load(), HandedOff: s.handedOff.Load(), WithWorkers: s.withWorkers.Load()}
}

// Serve accepts and serves connections until ctx ends, then closes the
// listener (removing its socket file), closes every connection and
// returns once every goroutine it started has ended. Each connection is
// served by its own goroutine, so a slow client only slows itself; raw
// and unclassified clients wait in the runtime's poller, not in a
// thread each.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	var err error
	for {
		p, aerr := s.l.Accept(context.Background()) // ctx ending closes l: see stop
		if aerr != nil {
			if !errors.Is(aerr, listen.ErrClosed) {
				err = aerr
			}
			break
		}
		s.accepted.Add(1)
		sl := s.admit(p)
		if sl == nil {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, sl)
		}()
	}
	s.l.Close()
	s.mu.Lock()
	s.stopping = true
	close(s.stop) // framed clients' goroutines close their Conns
	for sl := range s.slots {
		if sl.conn == nil && sl.elem != nil {
			sl.kick() // raw or unclassified
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	for _, t := range []*throttle{s.refusedLog, s.fullLog, s.uidFullLog, s.evictLog, s.deniedLog} {
		t.stop()
	}
	return err
}

// serveConn owns sl: it classifies the client by its first bytes and
// serves it as framed or raw until it goes away.
func (s *Server) serveConn(ctx context.Context, sl *connSlot) {
	log := s.log.With("pid", sl.cred.pid, "uid", sl.cred.uid)
	prefix, framed, refusal, err := s.classify(sl)
	if err != nil || !framed || refusal != nil {
		switch {
		case err != nil:
		case refusal != nil:
			s.badHello.Add(1)
			err = s.refuseHello(sl, refusal)
			log.Debug("framed client refused: no hello", "error", refusal)
		default:
			s.raw.Add(1)
			err = s.serveRaw(sl, prefix)
		}
		s.release(sl)
		sl.f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			log.Debug("raw client ended", "error", err)
		}
		return
	}
	poll := s.active.Load() > int64(s.cfg.PollAbove)
	if !s.handoff(sl) {
		sl.f.Close()
		s.release(sl)
		return
	}
	s.framed.Add(1)
	s.serveFramed(ctx, sl, prefix, poll, log)
	s.release(sl)
}

// serveFramed serves a framed client whose first bytes are prefix, by a
// Conn of ours and, with Config.HandOff, by workers for the stretches
// of its life that begin with an echo or a message (handoff.go). It
// owns sl.f, and closes it.
func (s *Server) serveFramed(ctx context.Context, sl *connSlot, prefix []byte, poll bool, log hclog.Logger) {
	f := sl.f
	var (
		sess *ipc.Session // where a worker left the client
		ho   *handOff
	)
	if s.cfg.HandOff != nil {
		ho = s.newHandOff(sl)
	}
	for {
		cfg := s.cfg.ConnConfig
		if !sl.ctl {
			cfg.Handler = s.guard(sl.cred)
		}
		cfg.Budget, cfg.Poll, cfg.Addr, cfg.Logger = s.budget, poll, s.l.Addr(), log
		if ho != nil {
			cfg.DetachAt = ho.detachAt
		}
		var (
			c   *ipc.Conn
			err error
		)
		if sess != nil {
			c, err = ipc.Resume(f, *sess, cfg) // closes f
		} else {
			hctx, cancel := context.WithTimeout(ctx, handshakeWait)
			c, err = ipc.NewConnPrefixed(hctx, f, prefix, cfg) // closes f
			cancel()
		}
		if err != nil {
			log.Debug("framed client failed its hello", "error", err)
			return
		}
		s.mu.Lock()
		stopping := s.stopping
		sl.conn = c
		s.mu.Unlock()
		if stopping {
			c.Close()
		}
		select {
		case <-c.Done():
		case <-s.stop:
			c.Close()
		}
		err = c.Err()
		if ho == nil || !errors.Is(err, ipc.ErrDetached) {
			if err != nil && !errors.Is(err, ipc.ErrClosed) {
				log.Warn("dropped client", "error", err)
			}
			return
		}
		var ds ipc.Session
		if f, ds, err = c.Detach(ctx); err != nil { // detached already: at once
			return
		}
		var done bool
		if sess, done = ho.offer(ctx, f, ds, log); done {
			return
		}
	}
}

// classify reads the client's first bytes (docs/PROTOCOL.md, "Socket
// paths"). A stream that does not begin with both magic bytes is a raw
// client: a first byte other than Magic0 decides it at once, a second
// byte other than Magic1, or none within helloWait, likewise. One that
// begins with them is a framed client: it must send a whole hello
// header (type hello, no flags, id 0, a length of 8 to
// wire.MaxHelloPayload) within helloWait of its first byte, and is
// served by a Conn if it does; if not, classify returns the error frame
// to refuse it with (refusal). prefix holds the bytes read.
func (s *Server) classify(sl *connSlot) (prefix []byte, framed bool, refusal *wire.RemoteError, err error) {
	sl.f.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
	buf := make([]byte, wire.HeaderSize)
	n, err := sl.f.Read(buf)
	if err != nil {
		return nil, false, nil, err
	}
	s.touch(sl)
	if buf[0] != wire.Magic0 {
		return buf[:n], false, nil, nil
	}
	if n < wire.HeaderSize {
		sl.f.SetReadDeadline(time.Now().Add(helloWait))
		for n < wire.HeaderSize && (n < 2 || buf[1] == wire.Magic1) {
			k, err := sl.f.Read(buf[n:])
			if err != nil {
				break // too slow, or gone
			}
			n += k
		}
	}
	if n < 2 || buf[1] != wire.Magic1 {
		return buf[:n], false, nil, nil
	}
	return buf[:n], true, checkHello(buf[:n], s.cfg.MaxPayload), nil
}

// checkHello returns nil if b is a whole hello header as a framed
// client's first header must be, else the error to refuse the client
// with: code wire.CodeTooLarge for a length over the limit, else
// wire.CodeProtocol.
func checkHello(b []byte, maxPayload uint32) *wire.RemoteError {
	bad := func(code wire.Code, format string, args ...any) *wire.RemoteError {
		return &wire.RemoteError{Code: code, Message: "hello expected: " + fmt.Sprintf(format, args...)}
	}
	if len(b) < wire.HeaderSize {
		return bad(wire.CodeProtocol, "%d of the %d header bytes within %v", len(b), wire.HeaderSize, helloWait)
	}
	h, err := wire.ParseHeader(b, maxPayload)
	switch {
	case errors.Is(err, wire.ErrFrameTooLarge):
		return bad(wire.CodeTooLarge, "%v", err)
	case err != nil:
		return bad(wire.CodeProtocol, "%v", err)
	case h.Type != wire.TypeHello:
		return bad(wire.CodeProtocol, "the first frame is %s", h.Type)
	case h.IsReply():
		return bad(wire.CodeProtocol, "the first frame is a hello with the reply flag")
	case h.Flags != 0:
		return bad(wire.CodeProtocol, "the first frame is a hello with flags %#02x", h.Flags)
	case h.ID != 0:
		return bad(wire.CodeProtocol, "the first frame is a hello with id %d, want 0", h.ID)
	case h.Length > wire.MaxHelloPayload:
		return bad(wire.CodeTooLarge, "hello payload of %d bytes exceeds the limit of %d", h.Length, wire.MaxHelloPayload)
	case h.Length < 8:
		return bad(wire.CodeProtocol, "hello payload of %d bytes, want 8 to %d", h.Length, wire.MaxHelloPayload)
	}
	return nil
}

// refuseHello sends a framed client whose first header is not a hello
// the error frame re (id 0: about the connection, in place of our
// hello); the caller then closes the connection.
func (s *Server) refuseHello(sl *connSlot, re *wire.RemoteError) error {
	sl.writeFn = sl.rawWrite
	frame := wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, Flags: wire.FlagReply}, wire.AppendError(nil, re.Code, re.Message))
	return sl.write(frame, helloWait)
}

// rawBufs holds raw clients' read buffers. An idle raw client holds
// none: it waits in the poller and takes a buffer only for the read
// that follows.
var rawBufs = sync.Pool{New: func() any { b := make([]byte, rawBufSize); return &b }}

const rawBufSize = 32 << 10

// serveRaw echoes everything the client sends, starting with first,
// until it closes, errs or idles out.
func (s *Server) serveRaw(sl *connSlot, first []byte) error {
	sl.readFn, sl.writeFn = sl.rawRead, sl.rawWrite
	if err := sl.write(first, s.cfg.IdleTimeout); err != nil {
		return err
	}
	for {
		sl.f.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		sl.rbuf, sl.rn, sl.rerr = nil, 0, nil
		err := sl.rc.Read(sl.readFn)
		buf, n := sl.rbuf, sl.rn
		sl.rbuf = nil
		if err == nil {
			err = sl.rerr
		}
		if err == nil && n > 0 {
			s.touch(sl)
			err = sl.write((*buf)[:n], s.cfg.IdleTimeout)
		}
		if buf != nil {
			rawBufs.Put(buf)
		}
		if err != nil {
			if errors.Is(err, unix.ECONNRESET) {
				return io.EOF // the client closed with our echo unread
			}
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

// rawRead is serveRaw's RawConn.Read callback: one read(2) into a
// pooled buffer, given back if there is nothing to read yet.
func (sl *connSlot) rawRead(fd uintptr) bool {
	buf := rawBufs.Get().(*[]byte)
	n, err := readFD(int(fd), *buf)
	if err == unix.EAGAIN {
		rawBufs.Put(buf)
		return false
	}
	sl.rbuf, sl.rn = buf, n
	if err != nil {
		sl.rerr = os.NewSyscallError("read", err)
	}
	return true
}

// write writes p to the raw client, waiting for room in the socket
// buffer through the poller for up to timeout.
func (sl *connSlot) write(p []byte, timeout time.Duration) error {
	if len(p) == 0 {
		return nil
	}
	sl.f.SetWriteDeadline(time.Now().Add(timeout))
	sl.wp, sl.werr = p, nil
	err := sl.rc.Write(sl.writeFn)
	sl.wp = nil
	sl.stalled.Store(false)
	if err == nil {
		err = sl.werr
	}
	return err
}

// rawWrite is write's RawConn.Write callback.
func (sl *connSlot) rawWrite(fd uintptr) bool {
	for len(sl.wp) > 0 {
		n, err := unix.SendmsgN(int(fd), sl.wp, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch err {
		case nil:
			sl.wp = sl.wp[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			sl.stalled.Store(true) // evictable: see idlest
			return false
		default:
			sl.werr = os.NewSyscallError("sendmsg", err)
			return true
		}
	}
	return true
}

// readFD is read(2) retried on EINTR.
func readFD(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}
