//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults for [ServerConfig].
const (
	DefaultMaxConns    = 1024
	DefaultIdleTimeout = 5 * time.Minute
	DefaultPollAbove   = 16

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
	// reload requests, and echo requests when ForwardEcho is set.
	Handler     Handler
	ForwardEcho bool

	// MaxConns bounds concurrent connections (default 1024); more are
	// closed at once and logged.
	MaxConns int
	// IdleTimeout closes a connection that sends nothing for this long
	// (default 5m).
	IdleTimeout time.Duration
	// MaxPayload bounds framed clients' frames (default [MaxPayload]).
	MaxPayload uint32

	// PollAbove: framed clients that connect while more than this many
	// connections are open are served through the runtime's poller
	// (ConnConfig.Poll) rather than a thread each, so that a thousand
	// clients do not mean a thousand threads. Default 16; -1 polls
	// always.
	PollAbove int

	// AllowUIDs and AllowGIDs, when either is non-empty, restrict the
	// clients served, beyond the socket file's mode: a peer is served if
	// its uid is listed, its gid is listed, or it runs as our own uid.
	// Refused peers are logged with their credentials and closed.
	AllowUIDs []uint32
	AllowGIDs []uint32

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
}

// Server serves connections accepted from a [Listener]: framed clients
// speak the protocol, anything else is echoed byte for byte.
type Server struct {
	cfg ServerConfig
	log hclog.Logger
	l   *Listener

	mu       sync.Mutex
	stopping bool // set once Serve winds down; nothing registers after
	conns    map[*Conn]struct{}
	raws     map[int]struct{} // raw clients' fds, shut down on stop
	wg       sync.WaitGroup

	active, accepted, refused, framed, raw atomic.Int64
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
	return &Server{cfg: cfg, log: cfg.Logger, l: l, conns: make(map[*Conn]struct{}), raws: make(map[int]struct{})}
}

// Stats returns the server's connection counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{Active: s.active.Load(), Accepted: s.accepted.Load(), Refused: s.refused.Load(), Framed: s.framed.Load(), Raw: s.raw.Load()}
}

// Serve accepts and serves connections until ctx ends, then closes the
// listener (removing its socket file), closes every connection and
// returns once every goroutine it started has ended. Each connection is
// served by its own goroutine, so a slow client only slows itself.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	var err error
	for {
		fd, cred, aerr := s.l.Accept()
		if aerr != nil {
			if !errors.Is(aerr, ErrClosed) {
				err = aerr
			}
			break
		}
		s.accepted.Add(1)
		if !s.allowed(cred) {
			s.refused.Add(1)
			s.log.Warn("refused peer", "uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid)
			unix.Close(fd)
			continue
		}
		if s.active.Load() >= int64(s.cfg.MaxConns) {
			s.refused.Add(1)
			s.log.Warn("too many connections; closing new one", "max_conns", s.cfg.MaxConns, "pid", cred.Pid)
			unix.Close(fd)
			continue
		}
		s.active.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.active.Add(-1)
			s.serveConn(ctx, fd, cred)
		}()
	}
	s.l.Close()
	s.mu.Lock()
	s.stopping = true
	for c := range s.conns {
		c.shutdown() // its serveConn goroutine waits for the rest
	}
	for fd := range s.raws {
		unix.Shutdown(fd, unix.SHUT_RDWR)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) allowed(c *unix.Ucred) bool {
	if len(s.cfg.AllowUIDs) == 0 && len(s.cfg.AllowGIDs) == 0 {
		return true
	}
	return c.Uid == uint32(os.Geteuid()) || slices.Contains(s.cfg.AllowUIDs, c.Uid) || slices.Contains(s.cfg.AllowGIDs, c.Gid)
}

// serveConn owns fd: it classifies the client by its first bytes and
// serves it as framed or raw until it goes away.
func (s *Server) serveConn(ctx context.Context, fd int, cred *unix.Ucred) {
	log := s.log.With("pid", cred.Pid, "uid", cred.Uid)
	if !s.track(fd) {
		unix.Close(fd)
		return
	}
	prefix, framed, err := s.classify(fd)
	if err != nil || !framed {
		if err == nil {
			s.raw.Add(1)
			err = s.serveRaw(fd, prefix)
		}
		s.untrack(fd)
		unix.Close(fd)
		if err != nil && !errors.Is(err, io.EOF) {
			log.Debug("raw client ended", "error", err)
		}
		return
	}
	s.untrack(fd)
	s.framed.Add(1)
	hctx, cancel := context.WithTimeout(ctx, handshakeWait)
	c, err := newConn(hctx, fd, ConnConfig{
		Name:        s.cfg.Name,
		Handler:     s.cfg.Handler,
		ForwardEcho: s.cfg.ForwardEcho,
		MaxPayload:  s.cfg.MaxPayload,
		IdleTimeout: s.cfg.IdleTimeout,
		Poll:        s.active.Load() > int64(s.cfg.PollAbove),
		Addr:        s.l.Addr(),
		Logger:      log,
	}, prefix)
	cancel()
	if err != nil {
		log.Debug("framed client failed its hello", "error", err)
		return
	}
	s.mu.Lock()
	stopping := s.stopping
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	if stopping {
		c.Close()
	}
	<-c.Done()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	if err := c.Err(); err != nil && !errors.Is(err, ErrClosed) {
		log.Warn("dropped client", "error", err)
	}
}

// track registers a raw or unclassified fd for shutdown on stop; it
// reports false when the server is already stopping.
func (s *Server) track(fd int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.raws[fd] = struct{}{}
	return true
}

func (s *Server) untrack(fd int) {
	s.mu.Lock()
	delete(s.raws, fd)
	s.mu.Unlock()
}

// classify reads the client's first bytes. A first byte other than
// Magic0 means a raw client, decided at once. After Magic0 it waits (up
// to helloWait) for a whole header and checks that it is a hello.
func (s *Server) classify(fd int) ([]byte, bool, error) {
	if err := setRecvTimeout(fd, s.cfg.IdleTimeout); err != nil {
		return nil, false, err
	}
	buf := make([]byte, HeaderSize, readBufSize)
	n, err := readfd(fd, buf)
	if err != nil {
		return nil, false, err
	}
	if n == 0 {
		return nil, false, io.EOF
	}
	if buf[0] != Magic0 {
		return buf[:n], false, nil
	}
	if n < HeaderSize {
		if err := setRecvTimeout(fd, helloWait); err != nil {
			return nil, false, err
		}
		for n < HeaderSize {
			k, err := readfd(fd, buf[n:])
			if err != nil || k == 0 {
				break // too slow or gone: raw
			}
			n += k
		}
	}
	h, err := ParseHeader(buf[:n], s.cfg.MaxPayload)
	framed := err == nil && h.Type == TypeHello && !h.IsReply() && h.ID == 0 && h.Length <= maxHelloPayload
	return buf[:n], framed, nil
}

// serveRaw echoes everything the client sends, starting with first,
// until it closes, errs or idles out.
func (s *Server) serveRaw(fd int, first []byte) error {
	if err := setRecvTimeout(fd, s.cfg.IdleTimeout); err != nil {
		return err
	}
	buf := make([]byte, 0, 32<<10)
	buf = append(buf, first...)
	for {
		if err := writeAll(fd, buf, s.cfg.IdleTimeout); err != nil {
			return err
		}
		n, err := readfd(fd, buf[:cap(buf)])
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		buf = buf[:n]
	}
}

// writeAll writes p to fd, waiting up to timeout whenever the socket
// buffer is full.
func writeAll(fd int, p []byte, timeout time.Duration) error {
	for len(p) > 0 {
		n, err := unix.SendmsgN(fd, p, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch {
		case err == nil:
			p = p[n:]
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := waitWritable(fd, time.Now().Add(timeout), nil); err != nil {
				return err
			}
		default:
			return os.NewSyscallError("sendmsg", err)
		}
	}
	return nil
}

// Dial connects to the server at path (or "@name"), exchanges hellos
// and returns the Conn, which the caller must Close. ctx bounds the
// connect and the hello. Errors name the cause: the socket does not
// exist (errors.Is(err, os.ErrNotExist)), permission denied
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
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: fmt.Errorf("connect: %w", err)}
	}
	return newConn(ctx, fd, cfg, nil)
}
