//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/worker"
)

// Supervisor.HandOff with real worker processes (clients.go,
// worker/clients.go). The "client" here is a Conn of the test's, on one
// end of a socketpair; the other end is what a server would have
// accepted, and is what HandOff passes on.

func init() {
	workerRoles["no-clients"] = func(w *worker.Worker, _ string) int {
		return serve(context.Background(), w, worker.Config{MaxClients: -1})
	}
	workerRoles["one-client"] = func(w *worker.Worker, _ string) int {
		return serve(context.Background(), w, worker.Config{MaxClients: 1, Handler: func(_ context.Context, msg []byte) ([]byte, error) {
			return []byte(strconv.Itoa(w.ID())), nil
		}})
	}
}

// clientConn is a client of a handed-over connection.
type clientConn struct {
	server *os.File       // the end a server accepted: HandOff's
	conn   chan *ipc.Conn // the client's Conn, once some server said hello
	err    chan error
}

// newClient starts a client on one end of a socketpair; its hello is
// answered by whoever serves the other end.
func newClient(t *testing.T) *clientConn {
	t.Helper()
	a, b, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	cc := &clientConn{server: b, conn: make(chan *ipc.Conn, 1), err: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		c, err := ipc.NewConn(ctx, a, ipc.ConnConfig{Name: "client"})
		if err != nil {
			cc.err <- err
			return
		}
		cc.conn <- c
	}()
	t.Cleanup(func() {
		cc.server.Close()
		cancel() // a client nobody said hello to gives up
		<-ended
		select {
		case c := <-cc.conn: // established, but never taken by the test
			c.Close()
		default:
		}
	})
	return cc
}

// established waits for the client's hello exchange.
func (cc *clientConn) established(t *testing.T) *ipc.Conn {
	t.Helper()
	select {
	case c := <-cc.conn:
		t.Cleanup(func() { c.Close() })
		return c
	case err := <-cc.err:
		t.Fatalf("client hello: %v", err)
	case <-time.After(eventWait):
		t.Fatal("no hello for the client")
	}
	return nil
}

type handOffResult struct {
	reply []byte
	err   error
}

// handOff runs HandOff for cc in the background, with a fresh state
// (nothing read from the client yet).
func handOff(ctx context.Context, s *Supervisor, cc *clientConn, flags uint8) chan handOffResult {
	res := make(chan handOffResult, 1)
	go func() {
		reply, err := s.HandOff(ctx, cc.server, wire.AppendClient(nil, wire.Client{Flags: flags, UID: uint32(os.Getuid()), PID: uint32(os.Getpid())}))
		res <- handOffResult{reply, err}
	}()
	return res
}

func waitResult(t *testing.T, ch chan handOffResult) handOffResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(eventWait):
		t.Fatal("HandOff did not return")
	}
	return handOffResult{}
}

// TestHandOffServed: a worker takes a client before its hello, says
// hello itself, serves its echoes and messages, and when the client goes
// away HandOff returns an empty reply. The clients are spread over the
// workers, the least loaded first.
func TestHandOffServed(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "whoami", 3))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	var (
		clients []*ipc.Conn
		results []chan handOffResult
	)
	for range 6 {
		cc := newClient(t)
		results = append(results, handOff(ctx, r.s, cc, wire.ClientControl))
		c := cc.established(t)
		if p := c.Peer(); p.Name == "supervisor" || p.PID == uint32(os.Getpid()) {
			t.Fatalf("the client's hello came from %+v, not a worker", p)
		}
		clients = append(clients, c)
	}
	counts := r.s.ClientCounts()
	if len(counts) != 3 || counts[1] != 2 || counts[2] != 2 || counts[3] != 2 {
		t.Errorf("clients per worker %v, want 2 each (least loaded first)", counts)
	}
	for i, c := range clients {
		p := bytes.Repeat([]byte{byte(i)}, 100<<10)
		if got, err := c.Echo(ctx, p, nil); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("client %d: echo: %d bytes, %v", i, len(got), err)
		}
		if got, err := c.Call(ctx, wire.TypeMessage, []byte("hi"), nil); err != nil || !bytes.HasSuffix(got, []byte(":hi")) {
			t.Fatalf("client %d: message: %q, %v", i, got, err)
		}
		c.Close()
		if res := waitResult(t, results[i]); res.err != nil || len(res.reply) != 0 {
			t.Fatalf("client %d: HandOff = %q, %v; want an empty reply once the client went away", i, res.reply, res.err)
		}
	}
	if counts := r.s.ClientCounts(); len(counts) != 0 {
		t.Errorf("clients per worker %v after every client left", counts)
	}
}

// TestHandOffDenied: a client without the control right gets code 9 for
// a message from the worker; its echoes are served.
func TestHandOffDenied(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "echo", 1))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	cc := newClient(t)
	res := handOff(ctx, r.s, cc, 0)
	c := cc.established(t)
	if got, err := c.Echo(ctx, []byte("e"), nil); err != nil || string(got) != "e" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	for _, typ := range []wire.Type{wire.TypeMessage, wire.TypeShutdown} {
		var re *wire.RemoteError
		if _, err := c.Call(ctx, typ, []byte("m"), nil); !errors.As(err, &re) || re.Code != wire.CodeDenied {
			t.Errorf("%s from a client without the control right: %v, want code 9", typ, err)
		}
	}
	c.Close()
	waitResult(t, res)
}

// TestHandOffNotTaken: workers that take no clients (MaxClients < 0, or
// protocol version 2), or have no room, leave the client untouched:
// HandOff fails with ErrNoTaker and the caller serves the client itself.
func TestHandOffNotTaken(t *testing.T) {
	t.Parallel()
	for _, role := range []string{"no-clients", "old-protocol"} {
		t.Run(role, func(t *testing.T) {
			t.Parallel()
			r := startSupervisor(t, testConfig(t, role, 2))
			r.waitReady()
			ctx, cancel := context.WithTimeout(context.Background(), eventWait)
			defer cancel()
			cc := newClient(t)
			if res := waitResult(t, handOff(ctx, r.s, cc, 0)); !errors.Is(res.err, ErrNoTaker) {
				t.Fatalf("HandOff to %s workers: %v, want ErrNoTaker", role, res.err)
			}
			// Untouched: we can serve it ourselves.
			s, err := ipc.NewConn(ctx, cc.server, ipc.ConnConfig{Name: "ourselves"})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c := cc.established(t)
			if got, err := c.Echo(ctx, []byte("here"), nil); err != nil || string(got) != "here" || c.Peer().Name != "ourselves" {
				t.Fatalf("served by us: %q, %v, peer %+v", got, err, c.Peer())
			}
		})
	}
	t.Run("full", func(t *testing.T) {
		t.Parallel()
		r := startSupervisor(t, testConfig(t, "one-client", 1))
		r.waitReady()
		ctx, cancel := context.WithTimeout(context.Background(), eventWait)
		defer cancel()
		first := newClient(t)
		res1 := handOff(ctx, r.s, first, 0)
		c1 := first.established(t)
		second := newClient(t)
		if res := waitResult(t, handOff(ctx, r.s, second, 0)); !errors.Is(res.err, ErrNoTaker) {
			t.Fatalf("HandOff to a full worker: %v, want ErrNoTaker", res.err)
		}
		c1.Close()
		waitResult(t, res1)
	})
}

// TestHandOffBack: the client is handed back, established, with its
// unread bytes: with wire.ClientHere in front of a status request, and
// without it when the worker stops (here: a rolling restart). Resumed
// by the caller, the connection goes on where it was.
func TestHandOffBack(t *testing.T) {
	t.Parallel()
	r := startSupervisor(t, testConfig(t, "echo", 1))
	r.waitReady()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	cc := newClient(t)
	res := handOff(ctx, r.s, cc, wire.ClientControl)
	c := cc.established(t)
	if _, err := c.Echo(ctx, []byte("1"), nil); err != nil {
		t.Fatal(err)
	}
	status := make(chan error, 1)
	go func() {
		got, err := c.Call(ctx, wire.TypeStatus, nil, nil)
		if err == nil && string(got) != "ours" {
			err = errors.New("status reply " + string(got))
		}
		status <- err
	}()
	back := waitResult(t, res)
	if back.err != nil {
		t.Fatal(back.err)
	}
	st, err := wire.ParseClient(back.reply)
	if err != nil {
		t.Fatal(err)
	}
	if st.Flags&wire.ClientEstablished == 0 || st.Flags&wire.ClientHere == 0 || st.Flags&wire.ClientControl == 0 {
		t.Fatalf("handed back with flags %#x, want established, here, control", st.Flags)
	}
	if h, err := wire.ParseHeader(st.Buffered, 0); err != nil || h.Type != wire.TypeStatus {
		t.Fatalf("the bytes handed back begin with %v, %v; want the status request", h, err)
	}
	// Serve the status ourselves, then hand the client over again:
	// our Conn detaches in front of the next echo.
	resume := func(st wire.Client) *ipc.Conn {
		t.Helper()
		peer, _ := wire.ParseHello(st.Hello)
		f, err := dupFile(cc.server)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ipc.Resume(f, ipc.Session{Version: st.Version, Peer: peer, NextID: st.NextID, Buffered: st.Buffered}, ipc.ConnConfig{
			Name: "ours",
			Handler: func(_ context.Context, req ipc.Request) ([]byte, error) {
				return []byte("ours"), nil
			},
			DetachAt: func(t wire.Type) bool { return t == wire.TypeEcho },
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := resume(st)
	if err := <-status; err != nil {
		t.Fatal(err)
	}
	echoed := make(chan error, 1)
	go func() {
		got, err := c.Echo(ctx, []byte("2"), nil)
		if err == nil && string(got) != "2" {
			err = errors.New("echo reply " + string(got))
		}
		echoed <- err
	}()
	<-s.Done()
	df, sess, err := s.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	df.Close() // cc.server is the connection we keep
	st2 := wire.Client{Flags: wire.ClientEstablished | wire.ClientControl, Version: sess.Version, NextID: sess.NextID, Hello: wire.AppendHello(nil, sess.Peer), Buffered: sess.Buffered}
	res = make(chan handOffResult, 1)
	go func() {
		reply, err := r.s.HandOff(ctx, cc.server, wire.AppendClient(nil, st2))
		res <- handOffResult{reply, err}
	}()
	if err := <-echoed; err != nil {
		t.Fatalf("echo after the second hand-over: %v", err)
	}
	// A rolling restart stops the worker, which hands the client back
	// without ClientHere.
	if err := r.s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	back = waitResult(t, res)
	if back.err != nil {
		t.Fatal(back.err)
	}
	if st, err = wire.ParseClient(back.reply); err != nil || st.Flags&wire.ClientHere != 0 || st.Flags&wire.ClientEstablished == 0 {
		t.Fatalf("handed back by a stopping worker: %+v, %v", st, err)
	}
	s = resume(st)
	defer s.Close()
	if got, err := c.Call(ctx, wire.TypeMessage, nil, nil); err != nil || string(got) != "ours" {
		t.Fatalf("after the stopping worker handed it back: %q, %v", got, err)
	}
}

// dupFile returns a duplicate of f's descriptor, for a Conn to take.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		fd   int
		derr error
	)
	rc.Control(func(s uintptr) { fd, derr = unixDupCloexec(s) })
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), "dup"), nil
}

func unixDupCloexec(fd uintptr) (int, error) { return unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }
