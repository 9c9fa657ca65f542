//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Detach and Resume (detach.go): a connection moves from one Conn to
// another while its peer goes on sending, and the peer notices nothing.

// detachPair returns a client Conn and the server Conn of the other end
// of a socketpair, the server detachable with cfg.
func detachPair(tb testing.TB, cfg ipc.ConnConfig) (client, server *ipc.Conn) {
	tb.Helper()
	cfg.Detachable = true
	return pair(tb, ipc.ConnConfig{Name: "client"}, cfg)
}

// echoServer answers messages with their payload, prefixed by name.
func echoServer(name string) ipc.Handler {
	return func(_ context.Context, req ipc.Request) ([]byte, error) {
		return append([]byte(name+":"), req.Payload...), nil
	}
}

// TestDetachResume: while several goroutines of the client send echoes
// and messages back to back, the server's side is detached and resumed
// in a new Conn again and again, in blocking and in polled mode. Every
// request gets its right reply, none fails, and no descriptor is left
// open.
func TestDetachResume(t *testing.T) {
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			before := openFDs(t)
			func() {
				cfg := ipc.ConnConfig{Name: "server", Handler: echoServer("s"), Poll: poll, Detachable: true}
				client, server := detachPair(t, cfg)
				ctx := ctxTimeout(t, waitTimeout)
				var (
					stop   atomic.Bool
					wg     sync.WaitGroup
					done   atomic.Int64
					failed = make(chan error, 8)
				)
				for g := range 4 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; !stop.Load(); i++ {
							p := randBytes(uint64(g*100000+i), 1+(i*977)%20000)
							got, err := client.Echo(ctx, p, nil)
							if err == nil && !bytes.Equal(got, p) {
								err = fmt.Errorf("echo of %d bytes came back different", len(p))
							}
							if err == nil {
								var r []byte
								r, err = client.Call(ctx, wire.TypeMessage, p[:1], nil)
								if err == nil && !bytes.Equal(r, append([]byte("s:"), p[0])) {
									err = fmt.Errorf("message reply %q", r)
								}
							}
							if err != nil {
								failed <- err
								return
							}
							done.Add(1)
						}
					}()
				}
				for round := range 20 {
					f, sess, err := server.Detach(ctx)
					if err != nil {
						t.Fatalf("round %d: Detach: %v", round, err)
					}
					if !errors.Is(server.Err(), ipc.ErrDetached) {
						t.Fatalf("round %d: a detached Conn reports %v", round, server.Err())
					}
					if sess.Version != client.Version() || sess.Peer.Name != "client" || len(sess.Buffered) > 16<<10 {
						t.Fatalf("round %d: session %+v", round, sess)
					}
					if server, err = ipc.Resume(f, sess, cfg); err != nil {
						t.Fatalf("round %d: Resume: %v", round, err)
					}
					// Let some requests through the new Conn.
					deadline := time.Now().Add(waitTimeout)
					for n := done.Load(); done.Load() < n+5; {
						select {
						case err := <-failed:
							t.Fatalf("round %d: %v", round, err)
						default:
						}
						if time.Now().After(deadline) {
							t.Fatalf("round %d: no requests answered within %v", round, waitTimeout)
						}
						runtime.Gosched()
					}
				}
				stop.Store(true)
				wg.Wait()
				select {
				case err := <-failed:
					t.Fatal(err)
				default:
				}
				client.Close()
				server.Close()
			}()
			waitFDs(t, before, "after the detaches")
		})
	}
}

// TestDetachAt: a Conn that DetachAt tells to leave status requests
// answers what comes before one, and detaches in front of it; the Conn
// that resumes the session reads the status request first, and what
// follows it.
func TestDetachAt(t *testing.T) {
	t.Parallel()
	client, server := pair(t, ipc.ConnConfig{Name: "client"}, ipc.ConnConfig{
		Name:     "worker",
		Handler:  echoServer("w"),
		DetachAt: func(t wire.Type) bool { return t == wire.TypeStatus },
	})
	ctx := ctxTimeout(t, waitTimeout)
	if r, err := client.Call(ctx, wire.TypeMessage, []byte("1"), nil); err != nil || string(r) != "w:1" {
		t.Fatalf("before the status: %q, %v", r, err)
	}
	status := make(chan error, 1)
	go func() {
		r, err := client.Call(ctx, wire.TypeStatus, nil, nil)
		if err == nil && string(r) != "status from s" {
			err = fmt.Errorf("status reply %q", r)
		}
		status <- err
	}()
	waitDone(t, server)
	if !errors.Is(server.Err(), ipc.ErrDetached) {
		t.Fatalf("Err() = %v, want ErrDetached", server.Err())
	}
	f, sess, err := server.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := f.SyscallConn()
	var flags int
	rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if flags&unix.O_NONBLOCK != 0 {
		t.Error("the detached socket is non-blocking: os.NewFile put it in the runtime's poller")
	}
	if h, err := wire.ParseHeader(sess.Buffered, 0); err != nil || h.Type != wire.TypeStatus {
		t.Fatalf("Buffered begins with %v, %v; want the status request", h, err)
	}
	s2, err := ipc.Resume(f, sess, ipc.ConnConfig{Name: "supervisor", Handler: func(_ context.Context, req ipc.Request) ([]byte, error) {
		if req.Type == wire.TypeStatus {
			return []byte("status from s"), nil
		}
		return echoServer("s")(ctx, req)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := recv(t, status, "the status reply"); err != nil {
		t.Fatal(err)
	}
	if r, err := client.Call(ctx, wire.TypeMessage, []byte("2"), nil); err != nil || string(r) != "s:2" {
		t.Fatalf("after the status: %q, %v", r, err)
	}
	if _, _, err := server.Detach(ctx); err != nil {
		t.Fatalf("a second Detach: %v", err)
	}
}

// TestDetachWaitsForRequests: a detach waits until every request the
// Conn took in is answered: the peer gets the reply of a request that
// was with the handler, from the old Conn.
func TestDetachWaitsForRequests(t *testing.T) {
	t.Parallel()
	blk := newBlocker(3)
	client, server := detachPair(t, ipc.ConnConfig{Name: "server", Handler: blk.handle})
	ctx := ctxTimeout(t, waitTimeout)
	reply := make(chan error, 1)
	go func() {
		r, err := client.Call(ctx, wire.TypeMessage, []byte(msgBlock), nil)
		if err == nil && len(r) != 3 {
			err = fmt.Errorf("reply of %d bytes", len(r))
		}
		reply <- err
	}()
	recv(t, blk.started, "the blocked request")
	detached := make(chan error, 1)
	var f *os.File
	var sess ipc.Session
	go func() {
		var err error
		f, sess, err = server.Detach(ctx)
		detached <- err
	}()
	select {
	case err := <-detached:
		t.Fatalf("Detach returned (%v) while a request was with the handler", err)
	case err := <-reply:
		t.Fatalf("the blocked request was answered (%v) before its release", err)
	default:
	}
	close(blk.release)
	if err := recv(t, reply, "the released reply"); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, detached, "the detach"); err != nil {
		t.Fatal(err)
	}
	s2, err := ipc.Resume(f, sess, ipc.ConnConfig{Name: "s2", Handler: echoServer("s2")})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if r, err := client.Call(ctx, wire.TypeMessage, []byte("x"), nil); err != nil || string(r) != "s2:x" {
		t.Fatalf("after the resume: %q, %v", r, err)
	}
}

// TestDetachDraining: a Conn whose peer asked for a shutdown does not
// detach; Detach reports it once the Conn has run to its end.
func TestDetachDraining(t *testing.T) {
	t.Parallel()
	client, server := detachPair(t, ipc.ConnConfig{Name: "server"})
	ctx := ctxTimeout(t, waitTimeout)
	if _, err := client.Call(ctx, wire.TypeShutdown, nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-server.Draining():
	default:
		t.Fatal("Draining() is not closed after the shutdown request")
	}
	res := make(chan error, 1)
	go func() { _, _, err := server.Detach(ctx); res <- err }()
	if _, err := client.Ping(ctx); err != nil { // pings are still answered
		t.Fatal(err)
	}
	client.Close()
	if err := recv(t, res, "Detach"); err == nil || errors.Is(err, ipc.ErrDetached) || !errors.Is(err, ipc.ErrClosed) {
		t.Fatalf("Detach of a draining Conn: %v, want a plain close", err)
	}
}

// TestDetachNotDetachable: Detach needs ConnConfig.Detachable.
func TestDetachNotDetachable(t *testing.T) {
	t.Parallel()
	_, server := pair(t, ipc.ConnConfig{Name: "client"}, ipc.ConnConfig{Name: "server"})
	if _, _, err := server.Detach(ctxTimeout(t, waitTimeout)); err == nil {
		t.Fatal("Detach of a Conn without Detachable succeeded")
	}
	if server.Err() != nil {
		t.Fatalf("the refused Detach closed the Conn: %v", server.Err())
	}
}

// TestResumeVersion: a session at a version the new Conn does not speak
// is refused, and the socket closed.
func TestResumeVersion(t *testing.T) {
	t.Parallel()
	a, b, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = ipc.Resume(a, ipc.Session{Version: 3, Peer: wire.Hello{MinVersion: 1, MaxVersion: 3}}, ipc.ConnConfig{})
	if err == nil {
		t.Fatal("Resume at version 3 without MaxFiles succeeded")
	}
	if n, _ := b.Read(make([]byte, 1)); n != 0 {
		t.Fatal("the peer read data")
	}
}

// TestDetachAtBehindHello: a peer whose first request comes in the same
// write as its hello, so that the Conn detaches before NewConn has
// returned, still gets a Conn: NewConn returns it (done, with
// ErrDetached) rather than an error that would lose the connection, and
// Detach hands the request on. Each round is a race between the hello
// and the detach; 200 rounds lose it often without the fix.
func TestDetachAtBehindHello(t *testing.T) {
	t.Parallel()
	for round := range 200 {
		ours, theirs, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: wire.ProtocolVersion, PID: 1, Name: "client"})
		b := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, hello)
		b = wire.AppendFrame(b, wire.Header{Type: wire.TypeEcho, ID: 1}, []byte("first"))
		if _, err := theirs.Write(b); err != nil {
			t.Fatal(err)
		}
		ctx := ctxTimeout(t, waitTimeout)
		c, err := ipc.NewConn(ctx, ours, ipc.ConnConfig{
			Name:     "server",
			DetachAt: func(t wire.Type) bool { return t == wire.TypeEcho },
		})
		if err != nil {
			theirs.Close()
			t.Fatalf("round %d: NewConn: %v", round, err)
		}
		waitDone(t, c)
		if !errors.Is(c.Err(), ipc.ErrDetached) {
			t.Fatalf("round %d: Err() = %v, want ErrDetached", round, c.Err())
		}
		f, sess, err := c.Detach(ctx)
		if err != nil {
			t.Fatalf("round %d: Detach: %v", round, err)
		}
		if h, err := wire.ParseHeader(sess.Buffered, 0); err != nil || h.Type != wire.TypeEcho {
			t.Fatalf("round %d: Buffered begins with %v, %v; want the echo", round, h, err)
		}
		f.Close()
		theirs.Close()
	}
}

// sockTimeouts returns the read and write timeouts (SO_RCVTIMEO,
// SO_SNDTIMEO) of the socket fd refers to. They are the socket's, not
// the descriptor's: every duplicate of it, in any process, shares them.
func sockTimeouts(tb testing.TB, fd int) (rcv, snd time.Duration) {
	tb.Helper()
	get := func(opt int) time.Duration {
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, opt)
		if err != nil {
			tb.Fatal(err)
		}
		return time.Duration(tv.Nano())
	}
	return get(unix.SO_RCVTIMEO), get(unix.SO_SNDTIMEO)
}

// TestResumeSetsReadTimeout: a Conn in blocking mode sets its socket's
// read timeout (SO_RCVTIMEO) to its own, none included, whatever the
// socket had. The socket a detachable Conn detaches carries that Conn's
// detachTick; a Conn resumed on it without Detachable and without an
// IdleTimeout once kept it, so that its background reader's first
// read(2) to wait detachTick for nothing failed with EAGAIN, taken for
// an idle timeout: the Conn shut the connection down a tenth of a
// second after the resume, and the peer's next call failed with
// ErrPeerClosed. Each case keeps a duplicate of the socket to look at
// its options after the resume.
func TestResumeSetsReadTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  ipc.ConnConfig
		want time.Duration
	}{
		{"plain", ipc.ConnConfig{}, 0},
		{"idle", ipc.ConnConfig{IdleTimeout: time.Hour}, time.Hour},
		{"detachable", ipc.ConnConfig{Detachable: true}, ipc.DetachTick},
		{"polled", ipc.ConnConfig{Poll: true}, -1}, // non-blocking: not looked at
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, server := detachPair(t, ipc.ConnConfig{Name: "server", Handler: echoServer("s1")})
			ctx := ctxTimeout(t, waitTimeout)
			if r, err := client.Call(ctx, wire.TypeMessage, []byte("x"), nil); err != nil || string(r) != "s1:x" {
				t.Fatalf("before the detach: %q, %v", r, err)
			}
			f, sess, err := server.Detach(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if rcv, _ := sockTimeouts(t, int(f.Fd())); rcv != ipc.DetachTick {
				t.Fatalf("the detached socket's read timeout is %v, want the detachable Conn's %v (the case proves nothing)", rcv, ipc.DetachTick)
			}
			probe, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(probe)
			cfg := tc.cfg
			cfg.Name, cfg.Handler = "s2", echoServer("s2")
			s2, err := ipc.Resume(f, sess, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			rcv, snd := sockTimeouts(t, probe)
			if tc.want >= 0 && rcv != tc.want {
				t.Errorf("read timeout after the resume: %v, want %v", rcv, tc.want)
			}
			if !tc.cfg.Poll && snd != ipc.WriteSlice {
				t.Errorf("write timeout after the resume: %v, want %v", snd, ipc.WriteSlice)
			}
			// What it did: the resumed Conn closed after detachTick of
			// silence. Nothing can show that it stays open but some
			// silence; several ticks of it are enough to fail without
			// the fix, every time.
			select {
			case <-s2.Done():
				t.Fatalf("the resumed Conn closed while its peer was silent: %v", s2.Err())
			case <-time.After(5 * ipc.DetachTick):
			}
			if r, err := client.Call(ctx, wire.TypeMessage, []byte("y"), nil); err != nil || string(r) != "s2:y" {
				t.Fatalf("after the resume and some silence: %q, %v", r, err)
			}
		})
	}
}

// TestNewConnSetsReadTimeout: NewConn sets the read timeout of an
// inherited socket to its own too, none included, rather than keep one
// that its previous owner left (which it would take for idleness).
func TestNewConnSetsReadTimeout(t *testing.T) {
	t.Parallel()
	fa, fb, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(int(fb.Fd()), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	probe, err := unix.FcntlInt(fb.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(probe)
	ctx := ctxTimeout(t, waitTimeout)
	res := make(chan error, 1)
	var server *ipc.Conn
	go func() {
		var err error
		server, err = ipc.NewConn(ctx, fb, ipc.ConnConfig{Name: "server", Handler: echoServer("s")})
		res <- err
	}()
	client, err := ipc.NewConn(ctx, fa, ipc.ConnConfig{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := recv(t, res, "the server's NewConn"); err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if rcv, _ := sockTimeouts(t, probe); rcv != 0 {
		t.Fatalf("read timeout after NewConn: %v, want none", rcv)
	}
	select {
	case <-server.Done():
		t.Fatalf("the Conn closed while its peer was silent: %v", server.Err())
	case <-time.After(10 * 20 * time.Millisecond):
	}
	if r, err := client.Call(ctx, wire.TypeMessage, []byte("y"), nil); err != nil || string(r) != "s:y" {
		t.Fatalf("after some silence: %q, %v", r, err)
	}
}

// TestDetachRacesClose: a Close of the Conn in another goroutine that
// comes while the detach has duplicated the socket for the new owner
// and not yet closed its own descriptor must not shut the connection
// down: shutdown(2) acts on the socket, the duplicate Detach returns
// included. It once could: detachTeardown looked at whether the Conn
// was closing, duplicated the fd, and closed its own later, while
// Close marks the Conn closing and then shuts the socket down; a Close
// between the look and the close left Detach returning a socket that
// was shut down both ways, and the resumed Conn's peer saw EOF. The
// hook makes that interleaving happen: it starts the Close and waits
// until it has marked the Conn closing.
func TestDetachRacesClose(t *testing.T) {
	t.Parallel()
	client, server := detachPair(t, ipc.ConnConfig{Name: "server", Handler: echoServer("s1")})
	ctx := ctxTimeout(t, waitTimeout)
	closed := make(chan struct{})
	ipc.SetDetachDupHook(server, func() {
		go func() { server.Close(); close(closed) }()
		deadline := time.Now().Add(waitTimeout)
		for !ipc.Killed(server) {
			if time.Now().After(deadline) {
				t.Errorf("Close did not start within %v", waitTimeout)
				return
			}
			runtime.Gosched()
		}
	})
	f, sess, err := server.Detach(ctx)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	recv(t, closed, "the racing Close")
	s2, err := ipc.Resume(f, sess, ipc.ConnConfig{Name: "s2", Handler: echoServer("s2")})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if r, err := client.Call(ctx, wire.TypeMessage, []byte("x"), nil); err != nil || string(r) != "s2:x" {
		t.Fatalf("after a detach raced by Close: %q, %v", r, err)
	}
}
