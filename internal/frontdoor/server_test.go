//go:build linux

package frontdoor_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Tests of Server and Dial: raw and framed clients on one socket path.

// udsServer is a Server running on a fresh path.
type udsServer struct {
	path   string
	dir    string
	srv    *frontdoor.Server
	logs   *testutil.LogBuffer
	cancel context.CancelFunc
	done   chan error

	once sync.Once
	err  error
}

// udsServe starts a Server on dir/s (a fresh dir unless lcfg says
// otherwise through path) and stops it at cleanup. Unset loggers log
// into the returned server's logs.
func udsServe(tb testing.TB, path string, lcfg listen.Config, scfg frontdoor.Config) *udsServer {
	tb.Helper()
	if path == "" {
		path = filepath.Join(testutil.ShortDir(tb, "pv"), "s")
	}
	s := &udsServer{path: path, dir: filepath.Dir(path), logs: new(testutil.LogBuffer), done: make(chan error, 1)}
	if lcfg.Logger == nil {
		lcfg.Logger = testutil.DebugLogger(s.logs)
	}
	if scfg.Logger == nil {
		scfg.Logger = testutil.DebugLogger(s.logs)
	}
	l, err := listen.New(path, lcfg)
	if err != nil {
		tb.Fatalf("Listen(%q): %v", path, err)
	}
	s.srv = frontdoor.New(l, scfg)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- s.srv.Serve(ctx) }()
	tb.Cleanup(func() {
		if err := s.stop(tb); err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return s
}

// stop cancels Serve and returns its result; it fails the test if Serve
// does not return within testutil.UDSWait. It may be called more than once.
func (s *udsServer) stop(tb testing.TB) error {
	tb.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case s.err = <-s.done:
		case <-time.After(testutil.UDSWait):
			s.err = fmt.Errorf("Serve did not return within %v of the cancel", testutil.UDSWait)
		}
	})
	return s.err
}

// udsHandler answers status and message requests.
func udsHandler(ctx context.Context, req ipc.Request) ([]byte, error) {
	switch req.Type {
	case wire.TypeStatus:
		return []byte(`{"ok":true}`), nil
	case wire.TypeMessage:
		return append([]byte("got:"), req.Payload...), nil
	}
	return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: req.Type.String() + " not served in tests"}
}

func udsCtx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// udsDial dials a framed client; it is closed at cleanup.
func udsDial(tb testing.TB, path string) *ipc.Conn {
	tb.Helper()
	c, err := ipc.Dial(udsCtx(tb, testutil.UDSWait), path, ipc.ConnConfig{Name: "test-client"})
	if err != nil {
		tb.Fatalf("Dial(%q): %v", path, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// udsRawDial connects a raw client; it is closed at cleanup.
func udsRawDial(tb testing.TB, path string) *net.UnixConn {
	tb.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		tb.Fatalf("dial %s: %v", path, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// udsRawEcho writes p on c and checks that exactly p comes back. It is
// safe to call from any goroutine.
func udsRawEcho(c net.Conn, p []byte) error {
	c.SetDeadline(time.Now().Add(testutil.UDSWait))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(p)
		werr <- err
	}()
	got := make([]byte, len(p))
	_, rerr := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("raw write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("raw read: %w", rerr)
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("raw echo of %d bytes came back different", len(p))
	}
	return nil
}

// udsFramedEcho checks a ping and an echo of p on c.
func udsFramedEcho(ctx context.Context, c *ipc.Conn, p []byte) error {
	if _, err := c.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	got, err := c.Echo(ctx, p, nil)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("framed echo of %d bytes came back different (%d bytes)", len(p), len(got))
	}
	return nil
}

// udsWantEOF checks that the server closes c: a read returns EOF (or a
// reset, when it closed with our bytes unread) within testutil.UDSWait.
func udsWantEOF(tb testing.TB, c net.Conn) {
	tb.Helper()
	c.SetReadDeadline(time.Now().Add(testutil.UDSWait))
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			continue // echoes of what we sent before
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return
		}
		tb.Fatalf("read: %v, want EOF (server closes the connection)", err)
	}
}

func udsRandom(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

// udsHeader encodes a frame header.
func udsHeader(t wire.Type, flags uint8, length uint32, id uint64) []byte {
	b := make([]byte, wire.HeaderSize)
	wire.PutHeader(b, wire.Header{Type: t, Flags: flags, Length: length, ID: id})
	return b
}

// udsHelloFrame is a valid client hello frame.
func udsHelloFrame() []byte {
	return wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello},
		wire.AppendHello(nil, wire.Hello{MinVersion: wire.MinProtocolVersion, MaxVersion: wire.ProtocolVersion, PID: uint32(os.Getpid()), Name: "raw-test"}))
}

// udsReadFrames reads frames from c until the stream ends and returns
// them as "type" or "error:CODE", with the error that ended the stream.
func udsReadFrames(c net.Conn) ([]string, error) {
	c.SetReadDeadline(time.Now().Add(testutil.UDSWait))
	var frames []string
	for {
		var hb [wire.HeaderSize]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			return frames, err
		}
		h, err := wire.ParseHeader(hb[:], 0)
		if err != nil {
			return frames, err
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c, p); err != nil {
			return frames, err
		}
		s := h.Type.String()
		if h.Type == wire.TypeError {
			re := wire.ParseError(p)
			s += ":" + strconv.Itoa(int(re.Code))
		}
		frames = append(frames, s)
	}
}

// udsFDs lists this process's open descriptors.
func udsFDs(tb testing.TB) []string {
	tb.Helper()
	open, err := testutil.OpenFDs()
	if err != nil {
		tb.Fatal(err)
	}
	var fds []string
	for _, fd := range open {
		fds = append(fds, fd.String())
	}
	return fds
}

// udsIPCGoroutines returns the stacks of goroutines running the ipc
// package's server, listener or connection code.
func udsIPCGoroutines() []string {
	var found []string
	for _, g := range strings.Split(testutil.Stacks(), "\n\n") {
		if strings.Contains(g, "ipc.(*Server)") || strings.Contains(g, "ipc.(*Conn)") || strings.Contains(g, "ipc.(*Listener)") {
			found = append(found, g)
		}
	}
	return found
}

func TestServerRawAndFramed(t *testing.T) {
	t.Parallel()
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{Name: "test-server", Handler: udsHandler}})

	raw := udsRawDial(t, s.path)
	if err := udsRawEcho(raw, []byte("hello raw\n")); err != nil {
		t.Fatal(err)
	}

	c := udsDial(t, s.path)
	if p := c.Peer(); p.Name != "test-server" || p.PID != uint32(os.Getpid()) {
		t.Errorf("server hello %+v, want name test-server pid %d", p, os.Getpid())
	}
	ctx := udsCtx(t, testutil.UDSWait)
	if err := udsFramedEcho(ctx, c, udsRandom(100<<10)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Call(ctx, wire.TypeStatus, nil, nil); err != nil || string(got) != `{"ok":true}` {
		t.Errorf("status: %q, %v", got, err)
	}
	if got, err := c.Call(ctx, wire.TypeMessage, []byte("hi"), nil); err != nil || string(got) != "got:hi" {
		t.Errorf("message: %q, %v", got, err)
	}
	var re *wire.RemoteError
	if _, err := c.Call(ctx, wire.TypeReload, nil, nil); !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Errorf("reload: %v, want a RemoteError with code %d", err, wire.CodeUnsupported)
	}

	// Both at once, on the same socket.
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		for i := range 50 {
			if err := udsRawEcho(raw, []byte(fmt.Sprintf("raw line %d\n", i))); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Go(func() {
		for i := range 50 {
			if err := udsFramedEcho(ctx, c, udsRandom(i*100)); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c.Err() != nil {
		t.Errorf("framed client closed: %v", c.Err())
	}
	st := s.srv.Stats()
	if st.Raw != 1 || st.Framed != 1 || st.Accepted != 2 || st.Active != 2 || st.Refused != 0 {
		t.Errorf("stats %+v, want 1 raw, 1 framed, 2 accepted, 2 active, 0 refused", st)
	}

	// A server without a Handler still answers pings and echoes.
	s2 := udsServe(t, "", listen.Config{}, frontdoor.Config{})
	c2 := udsDial(t, s2.path)
	if err := udsFramedEcho(ctx, c2, []byte("x")); err != nil {
		t.Error(err)
	}
	if p := c2.Peer(); p.Name != "" {
		t.Errorf("default server name %q, want none (the caller names its product)", p.Name)
	}
	if _, err := c2.Call(ctx, wire.TypeStatus, nil, nil); !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Errorf("status without a handler: %v, want code %d", err, wire.CodeUnsupported)
	}
}

// TestServerMagicThenRaw: a stream that does not begin with both magic
// bytes is a raw client, however it goes on.
func TestServerMagicThenRaw(t *testing.T) {
	t.Parallel()
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{Handler: udsHandler}})
	cases := []struct {
		name  string
		first []byte
	}{
		{"magic-only", []byte{wire.Magic0}}, // then nothing: raw after the hello wait
		{"magic-text", append([]byte{wire.Magic0}, "not a hello, just bytes\n"...)},
		{"bad-magic1", append([]byte{wire.Magic0, 'X'}, udsHeader(wire.TypeHello, 0, 8, 0)[2:]...)},
		{"magic1-first", udsHeader(wire.TypePing, 0, 0, 1)[1:]},
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := udsRawDial(t, s.path)
				if err := udsRawEcho(c, tc.first); err != nil {
					t.Fatal(err)
				}
				if err := udsRawEcho(c, append([]byte("and more\n"), udsRandom(50<<10)...)); err != nil {
					t.Fatal(err)
				}
			})
		}
		t.Run("split-hello", udsSplitHello(s.path))
	})
	if st := s.srv.Stats(); st.Framed != 1 || st.Raw != int64(len(cases)) {
		t.Errorf("stats %+v, want 1 framed and %d raw", st, len(cases))
	}
}

// TestServerRefusesBadHello: a stream that begins with both magic bytes
// is a framed client; if its first header is not a hello header, or is
// not whole within the hello wait, it gets one error frame about the
// connection (id 0, in place of the server's hello) and is closed.
func TestServerRefusesBadHello(t *testing.T) {
	t.Parallel()
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{Handler: udsHandler}})
	cases := []struct {
		name  string
		first []byte
		code  wire.Code
	}{
		{"magic-short", []byte{wire.Magic0, wire.Magic1, 1}, wire.CodeProtocol}, // a header's start, then nothing
		{"ping", udsHeader(wire.TypePing, 0, 0, 1), wire.CodeProtocol},
		{"message", wire.AppendFrame(nil, wire.Header{Type: wire.TypeMessage, ID: 1}, []byte("hi")), wire.CodeProtocol},
		{"hello-reply-flag", udsHeader(wire.TypeHello, wire.FlagReply, 8, 0), wire.CodeProtocol},
		{"hello-files-flag", udsHeader(wire.TypeHello, wire.FlagFiles, 8, 0), wire.CodeProtocol},
		{"hello-id", udsHeader(wire.TypeHello, 0, 8, 5), wire.CodeProtocol},
		{"hello-short", udsHeader(wire.TypeHello, 0, 4, 0), wire.CodeProtocol},
		{"hello-too-long", udsHeader(wire.TypeHello, 0, 100000, 0), wire.CodeTooLarge},
		{"hello-over-max", udsHeader(wire.TypeHello, 0, 0xFFFFFFFF, 0), wire.CodeTooLarge},
		{"unknown-type", udsHeader(0x7f, 0, 8, 0), wire.CodeProtocol},
		{"bad-flags", udsHeader(wire.TypeHello, 0x80, 8, 0), wire.CodeProtocol},
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := udsRawDial(t, s.path)
				if _, err := c.Write(tc.first); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(testutil.UDSWait))
				h, p, err := wire.ReadFrame(c, 0)
				if err != nil {
					t.Fatalf("reading the server's answer: %v", err)
				}
				re := wire.ParseError(p)
				if h.Type != wire.TypeError || !h.IsReply() || h.ID != 0 || re.Code != tc.code || !strings.HasPrefix(re.Message, "hello expected: ") {
					t.Fatalf("server answered %+v %+v, want an error frame with id 0 and code %d", h, re, tc.code)
				}
				udsWantEOF(t, c)
			})
		}
	})
	if st := s.srv.Stats(); st.BadHello != int64(len(cases)) || st.Framed != 0 || st.Raw != 0 {
		t.Errorf("stats %+v, want %d bad hellos and nothing else", st, len(cases))
	}
}

// udsSplitHello checks that a framed client whose hello arrives in
// pieces is still framed.
func udsSplitHello(path string) func(t *testing.T) {
	return func(t *testing.T) {
		t.Parallel()
		c := udsRawDial(t, path)
		ping := udsHeader(wire.TypePing, 0, 0, 1)
		hello := udsHelloFrame()
		if _, err := c.Write(hello[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(hello[1:]); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(ping); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		frames, err := udsReadFrames(c)
		if want := []string{"hello", "ping"}; !errors.Is(err, io.EOF) || !slices.Equal(frames, want) {
			t.Errorf("frames %q ending with %v, want %q and EOF", frames, err, want)
		}
	}
}

func TestServerManyClients(t *testing.T) {
	t.Parallel()
	const (
		clients = 200
		size    = 64 << 10
	)
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{})
	start := make(chan struct{})
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			p := udsRandom(size)
			<-start
			if i%2 == 0 {
				c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: s.path, Net: "unix"})
				if err != nil {
					errs <- fmt.Errorf("raw client %d: %w", i, err)
					return
				}
				defer c.Close()
				if err := udsRawEcho(c, p); err != nil {
					errs <- fmt.Errorf("raw client %d: %w", i, err)
				}
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*testutil.UDSWait)
			defer cancel()
			c, err := ipc.Dial(ctx, s.path, ipc.ConnConfig{})
			if err != nil {
				errs <- fmt.Errorf("framed client %d: %w", i, err)
				return
			}
			defer c.Close()
			got, err := c.Echo(ctx, p, nil)
			if err != nil {
				errs <- fmt.Errorf("framed client %d: %w", i, err)
			} else if !bytes.Equal(got, p) {
				errs <- fmt.Errorf("framed client %d: echo of %d bytes came back different (%d bytes)", i, len(p), len(got))
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	udsPoll(t, "every connection to end", func() bool { return s.srv.Stats().Active == 0 }, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })
	if st := s.srv.Stats(); st.Accepted != clients || st.Raw != clients/2 || st.Framed != clients/2 || st.Refused != 0 {
		t.Errorf("stats %+v, want %d accepted, half raw, half framed, none refused", st, clients)
	}
}

// udsBackground keeps a framed and a raw client busy until stop is
// called, which returns how many rounds they completed and the first
// error.
func udsBackground(tb testing.TB, path string) (stop func() (int64, error)) {
	tb.Helper()
	framed := udsDial(tb, path)
	raw := udsRawDial(tb, path)
	quit := make(chan struct{})
	var rounds atomic.Int64
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	loop := func(f func(i int) error) {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-quit:
				errs <- nil
				return
			default:
			}
			if err := f(i); err != nil {
				errs <- err
				return
			}
			rounds.Add(1)
		}
	}
	wg.Add(2)
	go loop(func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.UDSWait)
		defer cancel()
		return udsFramedEcho(ctx, framed, udsRandom(1+i%4096))
	})
	go loop(func(i int) error { return udsRawEcho(raw, []byte(fmt.Sprintf("line %d\n", i))) })
	return func() (int64, error) {
		close(quit)
		wg.Wait()
		return rounds.Load(), errors.Join(<-errs, <-errs)
	}
}

func TestServerBadFramedClients(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{Handler: udsHandler, MaxPayload: limit}})
	stop := udsBackground(t, s.path)
	good := udsDial(t, s.path)

	badHello := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, []byte{0, 0, 1, 0, 0, 0, 0, 0}) // version range 0..1
	cases := []struct {
		name     string
		bytes    []byte
		noHello  bool // bytes replace our hello
		closeW   bool
		want     []string
		logWants []string
	}{
		{name: "huge-length", bytes: udsHeader(wire.TypeEcho, 0, 0xFFFFFFFF, 7), want: []string{"hello", "error:5"}, logWants: []string{"frame too large"}},
		{name: "over-server-limit", bytes: udsHeader(wire.TypeEcho, 0, limit+1, 8), want: []string{"hello", "error:5"}, logWants: []string{"payload of 1048577 bytes exceeds the limit of 1048576"}},
		{name: "garbage", bytes: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: []string{"hello", "error:8"}, logWants: []string{"bad frame magic"}},
		{name: "unknown-type", bytes: udsHeader(9, 0, 0, 7), want: []string{"hello", "error:8"}, logWants: []string{"unknown frame type"}},
		{name: "bad-flags", bytes: udsHeader(wire.TypePing, 0x80, 0, 7), want: []string{"hello", "error:8"}, logWants: []string{"undefined frame flags"}},
		{name: "second-hello", bytes: udsHelloFrame(), want: []string{"hello", "error:8"}, logWants: []string{"unexpected frame"}},
		{name: "bad-hello", noHello: true, bytes: badHello, want: []string{"hello", "error:8"}, logWants: []string{"version range 0..1"}},
		{name: "truncated", bytes: append(udsHeader(wire.TypeEcho, 0, 100, 7), make([]byte, 40)...), closeW: true, want: []string{"hello"}, logWants: []string{"truncated frame"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := udsRawDial(t, s.path)
			var out []byte
			if !tc.noHello {
				out = udsHelloFrame()
			}
			if _, err := c.Write(append(out, tc.bytes...)); err != nil {
				t.Fatal(err)
			}
			if tc.closeW {
				c.CloseWrite()
			}
			frames, err := udsReadFrames(c)
			if !slices.Equal(frames, tc.want) {
				t.Errorf("frames %q, want %q", frames, tc.want)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("stream ended with %v, want the server to close it", err)
			}
			// Logged as a dropped client, or as a failed hello when the
			// garbage arrived with the hello.
			s.logs.WaitFor(t, tc.logWants...)
			// The other clients are still served.
			if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), good, []byte(tc.name)); err != nil {
				t.Errorf("good client after %s: %v", tc.name, err)
			}
		})
	}

	// A Conn that receives the server's connection-level error reports it.
	for _, tc := range []struct {
		name    string
		garbage []byte
		code    wire.Code
	}{
		{"conn-huge-length", udsHeader(wire.TypeEcho, 0, 0xFFFFFFFF, 0), wire.CodeTooLarge},
		{"conn-garbage", []byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"), wire.CodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, err := testutil.ConnectUnix(s.path)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ipc.NewConn(udsCtx(t, testutil.UDSWait), os.NewFile(uintptr(dup), "client"), ipc.ConnConfig{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Bypass the Conn: write the garbage on another fd of its socket.
			if _, err := unix.Write(fd, tc.garbage); err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.Done():
			case <-time.After(testutil.UDSWait):
				t.Fatal("the Conn was not dropped")
			}
			var re *wire.RemoteError
			if err := c.Err(); !errors.As(err, &re) || re.Code != tc.code {
				t.Errorf("Conn.Err() = %v, want a RemoteError with code %d", err, tc.code)
			}
			if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), good, []byte(tc.name)); err != nil {
				t.Errorf("good client after %s: %v", tc.name, err)
			}
		})
	}

	rounds, err := stop()
	if err != nil {
		t.Errorf("a well-behaved client failed meanwhile: %v", err)
	}
	if rounds == 0 {
		t.Error("the well-behaved clients completed no round")
	}
	if good.Err() != nil {
		t.Errorf("good client dropped: %v", good.Err())
	}
}

// udsFill writes chunk over and over on fd (non-blocking) until
// neither the socket buffers nor the peer take more for 200ms: the peer
// is stuck writing to us.
func udsFill(tb testing.TB, fd int, chunk []byte) int {
	tb.Helper()
	total, off := 0, 0
	deadline := time.Now().Add(testutil.UDSWait)
	for time.Now().Before(deadline) {
		n, err := unix.SendmsgN(fd, chunk[off:], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == nil {
			total += n
			off = (off + n) % len(chunk)
			continue
		}
		if !errors.Is(err, unix.EAGAIN) {
			tb.Fatalf("send: %v", err)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(pfd, 200); n == 0 {
			return total
		}
	}
	tb.Fatalf("the peer kept reading for %v", testutil.UDSWait)
	return 0
}

func TestServerSlowClient(t *testing.T) {
	t.Parallel()
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{IdleTimeout: time.Minute}})
	before := udsDial(t, s.path) // connected before the slow clients

	// A raw client that sends and never reads: the server is stuck
	// writing its echo.
	slowRaw, err := testutil.ConnectUnix(s.path)
	if err != nil {
		t.Fatal(err)
	}
	closeSlowRaw := sync.OnceFunc(func() { unix.Close(slowRaw) })
	defer closeSlowRaw()
	n := udsFill(t, slowRaw, bytes.Repeat([]byte("x"), 64<<10))
	t.Logf("slow raw client wrote %d bytes", n)

	// A framed client that sends echo requests and never reads.
	slowFramed, err := testutil.ConnectUnix(s.path)
	if err != nil {
		t.Fatal(err)
	}
	closeSlowFramed := sync.OnceFunc(func() { unix.Close(slowFramed) })
	defer closeSlowFramed()
	if _, err := unix.Write(slowFramed, udsHelloFrame()); err != nil {
		t.Fatal(err)
	}
	n = udsFill(t, slowFramed, wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 1}, make([]byte, 64<<10)))
	t.Logf("slow framed client wrote %d bytes", n)

	// Everyone else is served, well within the slow clients' timeouts.
	ctx := udsCtx(t, 5*time.Second)
	if err := udsFramedEcho(ctx, before, udsRandom(32<<10)); err != nil {
		t.Errorf("client connected before: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			p := udsRandom(16 << 10)
			if i%2 == 0 {
				c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: s.path, Net: "unix"})
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				errs <- udsRawEcho(c, p)
				return
			}
			c, err := ipc.Dial(ctx, s.path, ipc.ConnConfig{})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			errs <- udsFramedEcho(ctx, c, p)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("client while slow clients stall: %v", err)
		}
	}

	// Closing the slow clients frees their connections.
	closeSlowRaw()
	closeSlowFramed()
	udsPoll(t, "the slow clients' connections to end", func() bool { return s.srv.Stats().Active == 1 }, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })
}

func TestServerMaxConns(t *testing.T) {
	t.Parallel()
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{MaxConns: 3})
	var conns []*ipc.Conn
	for range 3 {
		conns = append(conns, udsDial(t, s.path))
	}
	// The next ones are closed at once, raw or framed.
	extra := udsRawDial(t, s.path)
	udsWantEOF(t, extra)
	if c, err := ipc.Dial(udsCtx(t, testutil.UDSWait), s.path, ipc.ConnConfig{}); err == nil {
		c.Close()
		t.Error("a fourth framed client was served")
	} else if !errors.Is(err, ipc.ErrClosed) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("fourth Dial: %v, want the connection closed", err)
	}
	s.logs.WaitFor(t, "too many connections; closing new one", "max_conns=3")
	if st := s.srv.Stats(); st.Refused != 2 || st.Active != 3 {
		t.Errorf("stats %+v, want 2 refused, 3 active", st)
	}
	for _, c := range conns {
		if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), c, []byte("still here")); err != nil {
			t.Errorf("served client: %v", err)
		}
	}
	// Room again once one leaves.
	conns[0].Close()
	udsPoll(t, "a connection slot to free up", func() bool { return s.srv.Stats().Active == 2 }, nil)
	c := udsDial(t, s.path)
	if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), c, []byte("room")); err != nil {
		t.Error(err)
	}
}

func TestServerIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{ConnConfig: ipc.ConnConfig{IdleTimeout: idle}})

	t.Run("silent-raw", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		c := udsRawDial(t, s.path)
		udsWantEOF(t, c)
		if d := time.Since(start); d < idle-50*time.Millisecond {
			t.Errorf("closed after %v, before the idle timeout %v", d, idle)
		}
	})
	t.Run("raw-after-echo", func(t *testing.T) {
		t.Parallel()
		c := udsRawDial(t, s.path)
		if err := udsRawEcho(c, []byte("once\n")); err != nil {
			t.Fatal(err)
		}
		udsWantEOF(t, c)
	})
	t.Run("magic-then-silent", func(t *testing.T) {
		t.Parallel()
		c := udsRawDial(t, s.path)
		if err := udsRawEcho(c, []byte{wire.Magic0}); err != nil {
			t.Fatal(err)
		}
		udsWantEOF(t, c)
	})
	t.Run("framed", func(t *testing.T) {
		t.Parallel()
		c := udsDial(t, s.path)
		select {
		case <-c.Done():
		case <-time.After(testutil.UDSWait):
			t.Fatal("idle framed client not closed")
		}
		if err := c.Err(); !errors.Is(err, ipc.ErrClosed) {
			t.Errorf("idle framed client ended with %v, want closed by the peer", err)
		}
	})
	t.Run("busy-framed", func(t *testing.T) {
		// A client that keeps talking outlives the idle timeout.
		t.Parallel()
		c := udsDial(t, s.path)
		tick := time.NewTicker(idle / 6)
		defer tick.Stop()
		end := time.Now().Add(4 * idle)
		for time.Now().Before(end) {
			<-tick.C
			if _, err := c.Ping(udsCtx(t, testutil.UDSWait)); err != nil {
				t.Fatalf("busy client: %v", err)
			}
		}
	})
	t.Run("busy-raw", func(t *testing.T) {
		t.Parallel()
		c := udsRawDial(t, s.path)
		tick := time.NewTicker(idle / 6)
		defer tick.Stop()
		end := time.Now().Add(4 * idle)
		for time.Now().Before(end) {
			<-tick.C
			if err := udsRawEcho(c, []byte("tick\n")); err != nil {
				t.Fatalf("busy raw client: %v", err)
			}
		}
	})
}

func TestServerAllowUIDs(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	py := testutil.ToolForOthers(t, "python3")
	const script = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
msg = b"hello from nobody"
got = b""
try:
    s.sendall(msg)
    while len(got) < len(msg):
        d = s.recv(4096)
        if not d:
            break
        got += d
except OSError as e:
    print("error", e)
print("served" if got == msg else "closed", flush=True)
`
	cases := []struct {
		name   string
		cfg    frontdoor.Config
		served bool
	}{
		{"uid-not-allowed", frontdoor.Config{AllowUIDs: []uint32{4242}}, false},
		{"gid-not-allowed", frontdoor.Config{AllowGIDs: []uint32{4242}}, false},
		{"uid-allowed", frontdoor.Config{AllowUIDs: []uint32{4242, 65534}}, true},
		{"gid-allowed", frontdoor.Config{AllowGIDs: []uint32{65534}}, true},
		{"no-restriction", frontdoor.Config{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := testutil.ShortDir(t, "pv")
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			s := udsServe(t, filepath.Join(dir, "s"), listen.Config{Mode: 0o777, GID: -1}, tc.cfg)

			cmd := exec.Command(py, "-c", script, s.path)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			cmd.Dir = dir
			var out testutil.LogBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pid := cmd.Process.Pid
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				if err != nil {
					t.Fatalf("client as uid 65534: %v\n%s", err, out.String())
				}
			case <-time.After(testutil.UDSWait):
				cmd.Process.Kill()
				<-waited
				t.Fatalf("client as uid 65534 did not finish\n%s", out.String())
			}
			want := "closed"
			if tc.served {
				want = "served"
			}
			if got := strings.TrimSpace(out.String()); !strings.HasSuffix(got, want) {
				t.Errorf("client output %q, want %q", got, want)
			}

			// Our own uid is always served.
			if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), udsDial(t, s.path), []byte("root")); err != nil {
				t.Errorf("own uid: %v", err)
			}
			st := s.srv.Stats()
			if tc.served {
				if st.Refused != 0 || strings.Contains(s.logs.String(), "refused peer") {
					t.Errorf("peer refused: stats %+v, log:\n%s", st, s.logs.String())
				}
				return
			}
			if st.Refused != 1 {
				t.Errorf("stats %+v, want 1 refused", st)
			}
			s.logs.WaitFor(t, "refused peer", "uid=65534", "gid=65534", fmt.Sprintf("pid=%d", pid))
		})
	}
}

// TestServerShutdown checks what Serve leaves when it returns: nothing.
// It does not run in parallel, so that it can count descriptors and
// goroutines.
func TestServerShutdown(t *testing.T) {
	fds0 := udsFDs(t)
	dir := testutil.ShortDir(t, "pv")
	path := filepath.Join(dir, "s")
	var logs testutil.LogBuffer
	l, err := listen.New(path, listen.Config{WatchPeriod: 50 * time.Millisecond, Logger: testutil.DebugLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	srv := frontdoor.New(l, frontdoor.Config{ConnConfig: ipc.ConnConfig{Handler: udsHandler, Logger: testutil.DebugLogger(&logs)}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	// Clients in every state.
	framed, err := ipc.Dial(udsCtx(t, testutil.UDSWait), path, ipc.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer framed.Close()
	if err := udsFramedEcho(udsCtx(t, testutil.UDSWait), framed, []byte("x")); err != nil {
		t.Fatal(err)
	}
	raw, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := udsRawEcho(raw, []byte("raw\n")); err != nil {
		t.Fatal(err)
	}
	silent, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	halfHello, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer halfHello.Close()
	hello := udsHelloFrame()
	if _, err := halfHello.Write(hello[:wire.HeaderSize]); err != nil {
		t.Fatal(err)
	}
	slow, err := testutil.ConnectUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	closeSlow := sync.OnceFunc(func() { unix.Close(slow) })
	defer closeSlow()
	udsFill(t, slow, make([]byte, 64<<10))
	udsPoll(t, "every client to be accepted", func() bool { return srv.Stats().Accepted == 5 }, nil)

	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(testutil.UDSWait):
		t.Fatalf("Serve did not return within %v of the cancel", testutil.UDSWait)
	}
	// Well under the 5s a half-sent hello may take.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Serve took %v to return", d)
	}
	testutil.AssertGone(t, path, path+".lock")
	if left := testutil.PVLeftovers(t, dir); len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}
	select {
	case <-framed.Done():
	case <-time.After(testutil.UDSWait):
		t.Error("framed client not closed by the shutdown")
	}
	for name, c := range map[string]net.Conn{"raw": raw, "silent": silent, "half-hello": halfHello} {
		t.Run(name, func(t *testing.T) { udsWantEOF(t, c) })
	}
	if _, err := testutil.ConnectUnix(path); err == nil {
		t.Error("connect after Serve returned succeeded")
	}
	framed.Close()
	raw.Close()
	silent.Close()
	halfHello.Close()
	closeSlow()

	// Nothing left running or open.
	deadline := time.Now().Add(testutil.UDSWait)
	for {
		fds := udsFDs(t)
		gs := udsIPCGoroutines()
		if len(fds) <= len(fds0) && len(gs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Serve returned and the clients closed:\n%d descriptors (%d before): %v\nbefore: %v\n%d goroutines:\n%s",
				len(fds), len(fds0), fds, fds0, len(gs), strings.Join(gs, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDialErrors(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortDir(t, "pv")
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	testutil.StaleSocket(t, stale)
	for _, tc := range []struct {
		name string
		path string
		want error
	}{
		{"missing", filepath.Join(dir, "missing"), os.ErrNotExist},
		{"missing-dir", filepath.Join(dir, "no", "s"), os.ErrNotExist},
		{"regular-file", file, unix.ECONNREFUSED},
		{"directory", dir, unix.ECONNREFUSED},
		{"stale", stale, unix.ECONNREFUSED},
		{"empty", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ipc.Dial(udsCtx(t, testutil.UDSWait), tc.path, ipc.ConnConfig{})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var op *ipc.OpError
			if !errors.As(err, &op) || op.Op != "dial" || op.Addr != tc.path {
				t.Errorf("Dial error %v is not an OpError for dial %s", err, tc.path)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Dial: %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("mute-server", func(t *testing.T) {
		// Accepts, never answers: Dial gives up at the context's end.
		path := filepath.Join(dir, "mute")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		held := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				held <- c
			}
			close(held)
		}()
		defer func() {
			ln.Close()
			for c := range held {
				c.Close()
			}
		}()
		start := time.Now()
		c, err := ipc.Dial(udsCtx(t, 300*time.Millisecond), path, ipc.ConnConfig{})
		if err == nil {
			c.Close()
			t.Fatal("Dial succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial: %v, want the deadline", err)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > testutil.UDSWait {
			t.Errorf("Dial returned after %v, want about 300ms", d)
		}
	})

	t.Run("backlog-full", func(t *testing.T) {
		path := filepath.Join(dir, "full")
		lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lfd)
		if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(lfd, 0); err != nil {
			t.Fatal(err)
		}
		tv := unix.NsecToTimeval(testutil.UDSWait.Nanoseconds()) // bounds accept4
		if err := unix.SetsockoptTimeval(lfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		queued, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(queued)
		if err := unix.Connect(queued, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		// Full: Dial waits for room until its context ends.
		c, err := ipc.Dial(udsCtx(t, 300*time.Millisecond), path, ipc.ConnConfig{})
		if err == nil {
			c.Close()
			t.Fatal("Dial succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial to a full accept queue: %v, want the deadline", err)
		}

		// Room appears while Dial waits: it connects.
		type result struct {
			c   *ipc.Conn
			err error
		}
		dialed := make(chan result, 1)
		go func() {
			c, err := ipc.Dial(udsCtx(t, testutil.UDSWait), path, ipc.ConnConfig{})
			dialed <- result{c, err}
		}()
		first, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC) // the queued one
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(first)
		srv, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC) // Dial's
		if err != nil {
			t.Fatal(err)
		}
		unix.SetNonblock(srv, true) // for deadlines
		f := os.NewFile(uintptr(srv), "server")
		defer f.Close()
		f.SetDeadline(time.Now().Add(testutil.UDSWait))
		if h, _, err := wire.ReadFrame(f, 0); err != nil || h.Type != wire.TypeHello {
			t.Fatalf("reading Dial's hello: %v %v", h, err)
		}
		if _, err := f.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, Name: "fake"}))); err != nil {
			t.Fatal(err)
		}
		r := <-dialed
		if r.err != nil {
			t.Fatalf("Dial once there is room: %v", r.err)
		}
		if r.c.Peer().Name != "fake" {
			t.Errorf("peer %+v", r.c.Peer())
		}
		r.c.Close()
	})
}
