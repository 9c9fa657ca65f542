//go:build linux

package ipc

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
	"golang.org/x/sys/unix"
)

// Defaults for [ServerConfig].
const (
	DefaultMaxConns = 1024

	// DefaultServerBuffered bounds what all a server's clients may hold
	// (ServerConfig.MaxBuffered): eight times one client's bound.
	DefaultServerBuffered = 8 * DefaultMaxBuffered
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultPollAbove      = 16

	// helloWait bounds how long a connection that began with the frame
	// magic may take to send the rest of its hello header before it is
	// treated as a raw client.
	helloWait = 200 * time.Millisecond

	// handshakeWait bounds a framed client's whole hello.
	handshakeWait = 5 * time.Second

	// dialRetry is how often Dial retries a connect refused with EAGAIN
	// (the server's accept queue is full).
	dialRetry = 10 * time.Millisecond
)

// ServerConfig configures [Serve]. The zero value serves pings and
// echoes to clients of the listener's own uid.
type ServerConfig struct {
	// Name is sent in the server's hello (default "supervisor").
	Name string
	// Handler answers framed clients' status, message, shutdown and
	// reload requests, and echo requests when ForwardEcho is set. The
	// requests that change state (message, shutdown, reload) reach it
	// only from peers allowed to send them: see ControlUIDs.
	Handler     Handler
	ForwardEcho bool

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
	// IdleTimeout closes a connection that sends nothing for this long
	// (default 5m).
	IdleTimeout time.Duration
	// MaxBuffered bounds the bytes all framed clients together may
	// hold in the server's memory: requests being answered and replies
	// not yet read (default [DefaultServerBuffered]). Each client also
	// holds at most [DefaultMaxBuffered] (see [ConnConfig].MaxBuffered);
	// a request that finds no room in the total is answered with
	// [CodeUnavailable] unread, and the client may try again (see
	// [Budget]).
	MaxBuffered int64
	// MaxPayload bounds framed clients' frames (default [MaxPayload]).
	MaxPayload uint32

	// PollAbove: framed clients that connect while more than this many
	// connections are open are served through the runtime's poller
	// (ConnConfig.Poll) rather than a thread each, so that a thousand
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
	// supplementary group. Anyone else served gets [CodeDenied] for
	// them, logged; ping, echo and status are open to every peer served.
	// Being listed here also lets a peer connect, as AllowUIDs does.
	ControlUIDs []uint32
	ControlGIDs []uint32

	// Logger receives connection events. Nil discards them.
	Logger hclog.Logger
}

// ServerStats counts a server's connections.
type ServerStats struct {
	Active   int64 `json:"active"`
	Accepted int64 `json:"accepted"`
	Refused  int64 `json:"refused"`
	Framed   int64 `json:"framed"`
	Raw      int64 `json:"raw"`
	Evicted  int64 `json:"evicted"` // quiet connections closed to make room for a newcomer
	Denied   int64 `json:"denied"`  // control requests refused with CodeDenied
}

// Server serves connections accepted from a [Listener]: framed clients
// speak the protocol, anything else is echoed byte for byte.
type Server struct {
	cfg        ServerConfig
	log        hclog.Logger
	l          *Listener
	euid       uint32
	budget     *Budget // shared by every framed client's Conn
	reserve    int     // slots of MaxConns kept for the privileged
	wantGroups bool    // a group list needs peers' supplementary groups

	mu       sync.Mutex
	stopping bool // set once Serve winds down; nothing registers after
	slots    map[*connSlot]struct{}
	uids     map[uint32]*uidConns
	n        int // connections in the table
	wg       sync.WaitGroup

	seq atomic.Uint64 // activity clock of the eviction order

	refusedLog, fullLog, uidFullLog, evictLog, deniedLog *throttle

	active, accepted, refused, framed, raw, evicted, denied atomic.Int64
}

// NewServer returns a Server for l. It takes ownership of l: Serve
// closes it when it returns.
func NewServer(l *Listener, cfg ServerConfig) *Server {
	if cfg.Name == "" {
		cfg.Name = "supervisor"
	}
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
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = DefaultServerBuffered
	}
	if cfg.MaxConnsPerUID == 0 {
		cfg.MaxConnsPerUID = max(1, cfg.MaxConns/4)
	}
	log := cfg.Logger
	return &Server{
		cfg:        cfg,
		log:        log,
		l:          l,
		euid:       uint32(os.Geteuid()),
		budget:     NewBudget(cfg.MaxBuffered),
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
func (s *Server) Stats() ServerStats {
	return ServerStats{Active: s.active.Load(), Accepted: s.accepted.Load(), Refused: s.refused.Load(),
		Framed: s.framed.Load(), Raw: s.raw.Load(), Evicted: s.evicted.Load(), Denied: s.denied.Load()}
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
		fd, cred, aerr := s.l.accept(unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK)
		if aerr != nil {
			if !errors.Is(aerr, ErrClosed) {
				err = aerr
			}
			break
		}
		s.accepted.Add(1)
		sl := s.admit(fd, cred)
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
	for sl := range s.slots {
		if sl.conn != nil {
			sl.conn.shutdown() // its serveConn goroutine waits for the rest
		} else if sl.elem != nil {
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
	prefix, framed, err := s.classify(sl)
	if err != nil || !framed {
		if err == nil {
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
	fd, err := s.handoff(sl, poll)
	if err != nil {
		s.release(sl)
		if !errors.Is(err, ErrClosed) {
			log.Debug("framed client lost", "error", err)
		}
		return
	}
	s.framed.Add(1)
	handler := s.cfg.Handler
	if !sl.ctl {
		handler = s.guard(sl.cred)
	}
	hctx, cancel := context.WithTimeout(ctx, handshakeWait)
	c, err := newConn(hctx, fd, ConnConfig{
		Name:        s.cfg.Name,
		Handler:     handler,
		ForwardEcho: s.cfg.ForwardEcho,
		MaxPayload:  s.cfg.MaxPayload,
		IdleTimeout: s.cfg.IdleTimeout,
		Budget:      s.budget,
		Poll:        poll,
		Addr:        s.l.Addr(),
		Logger:      log,
	}, prefix)
	cancel()
	if err != nil {
		s.release(sl)
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
	<-c.Done()
	s.release(sl)
	if err := c.Err(); err != nil && !errors.Is(err, ErrClosed) {
		log.Warn("dropped client", "error", err)
	}
}

// classify reads the client's first bytes. A first byte other than
// Magic0 means a raw client, decided at once. After Magic0 it waits (up
// to helloWait) for a whole header and checks that it is a hello.
func (s *Server) classify(sl *connSlot) ([]byte, bool, error) {
	sl.f.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
	buf := make([]byte, HeaderSize)
	n, err := sl.f.Read(buf)
	if err != nil {
		return nil, false, err
	}
	s.touch(sl)
	if buf[0] != Magic0 {
		return buf[:n], false, nil
	}
	if n < HeaderSize {
		sl.f.SetReadDeadline(time.Now().Add(helloWait))
		for n < HeaderSize {
			k, err := sl.f.Read(buf[n:])
			if err != nil {
				break // too slow or gone: raw
			}
			n += k
		}
	}
	h, err := ParseHeader(buf[:n], s.cfg.MaxPayload)
	framed := err == nil && h.Type == TypeHello && !h.IsReply() && h.ID == 0 && h.Length <= maxHelloPayload
	return buf[:n], framed, nil
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
	n, err := readfd(int(fd), *buf)
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

// Dial connects to the server at path (or "@name"), exchanges hellos
// and returns the Conn, which the caller must Close. ctx bounds the
// connect and the hello. Before it sends anything, Dial checks who the
// server is (SO_PEERCRED): root, the caller's effective uid, or one of
// cfg.TrustUIDs; anyone else (another user who bound the name first)
// fails with [ErrUntrustedPeer], naming the server's uid and pid.
// Other errors name the cause: the socket does not exist
// (errors.Is(err, os.ErrNotExist)), permission denied
// (os.ErrPermission), nobody listening (unix.ECONNREFUSED), or the
// deadline. While the server's accept queue is full, Dial keeps trying
// to connect until ctx ends.
func Dial(ctx context.Context, path string, cfg ConnConfig) (*Conn, error) {
	if cfg.Addr == "" {
		cfg.Addr = path
	}
	if cfg.Name == "" {
		cfg.Name = "client"
	}
	if err := checkPath(path); err != nil {
		return nil, &OpError{Op: "dial", Addr: path, Err: err}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, &OpError{Op: "dial", Addr: path, Err: os.NewSyscallError("socket", err)}
	}
	addr := &unix.SockaddrUnix{Name: path}
	err = unix.Connect(fd, addr)
	if errors.Is(err, unix.EAGAIN) {
		// The server's accept queue is full. A Unix socket's
		// non-blocking connect does not complete later by itself (the
		// socket stays unconnected), so try again until there is room
		// or ctx ends.
		t := time.NewTimer(dialRetry)
		for errors.Is(err, unix.EAGAIN) {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-t.C:
				err = unix.Connect(fd, addr)
				t.Reset(dialRetry)
			}
		}
		t.Stop()
	}
	if errors.Is(err, unix.EINPROGRESS) {
		deadline, _ := ctx.Deadline()
		if err = waitWritable(fd, deadline, ctx.Done()); err == nil {
			var soerr int
			if soerr, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soerr != 0 {
				err = unix.Errno(soerr)
			}
		} else if err == errCanceled {
			err = ctx.Err()
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: fmt.Errorf("connect: %w", err)}
	}
	if err := checkServerCred(fd, cfg.TrustUIDs); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: os.NewSyscallError("fcntl", err)}
	}
	return newConn(ctx, fd, cfg, nil)
}
