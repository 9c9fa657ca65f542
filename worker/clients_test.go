//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// CLIENT requests to a real worker process (clients.go), sent by the
// test playing the supervisor.

// closedByWorker reports whether the worker has closed its copy of the
// connection whose other end is peer (ours closed already): peer then
// reads EOF. It waits at most childWait.
func closedByWorker(t *testing.T, peer *os.File) bool {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(childWait))
	n, err := peer.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestClientRefusals: a CLIENT request without exactly one descriptor,
// or with a malformed state, is refused with code 1, and the worker
// keeps no descriptor of the connection.
func TestClientRefusals(t *testing.T) {
	t.Parallel()
	_, conn := startWorkerWith(t, "serve", "2", ipc.ConnConfig{MaxFiles: wire.MaxFiles})
	if conn.Version() != 3 {
		t.Fatalf("version %d, want 3", conn.Version())
	}
	ctx := callCtx(t)
	state := wire.AppendClient(nil, wire.Client{})
	var re *wire.RemoteError
	if _, _, err := conn.CallFiles(ctx, wire.TypeClient, state, nil); !errors.As(err, &re) || re.Code != wire.CodeBadRequest {
		t.Errorf("CLIENT without a descriptor: %v, want code 1", err)
	}
	for name, payload := range map[string][]byte{"malformed": []byte("junk"), "two-files": state} {
		a, b, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		files := []*os.File{b}
		if name == "two-files" {
			files = append(files, b)
		}
		_, _, err = conn.CallFiles(ctx, wire.TypeClient, payload, files)
		b.Close()
		if !errors.As(err, &re) || re.Code != wire.CodeBadRequest {
			t.Errorf("%s CLIENT: %v, want code 1", name, err)
		}
		if !closedByWorker(t, a) {
			t.Errorf("%s CLIENT: the worker kept the connection open", name)
		}
		a.Close()
	}
}

// TestClientServedAndHandedBack: a client handed over before its hello
// is served by the worker (its hello, echoes, messages); a shutdown on
// the channel makes the worker hand it back, established, before it
// answers the shutdown; the connection then goes on with us.
func TestClientServedAndHandedBack(t *testing.T) {
	t.Parallel()
	_, conn := startWorkerWith(t, "serve", "2", ipc.ConnConfig{MaxFiles: wire.MaxFiles})
	ctx := callCtx(t)
	a, b, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	clientCh := make(chan *ipc.Conn, 1)
	go func() {
		c, err := ipc.NewConn(ctx, a, ipc.ConnConfig{Name: "client"})
		if err != nil {
			t.Error(err)
		}
		clientCh <- c
	}()
	type result struct {
		reply []byte
		err   error
	}
	res := make(chan result, 1)
	go func() {
		reply, _, err := conn.CallFiles(ctx, wire.TypeClient, wire.AppendClient(nil, wire.Client{Flags: wire.ClientControl}), []*os.File{b})
		res <- result{reply, err}
	}()
	client := <-clientCh
	if client == nil {
		t.FailNow()
	}
	defer client.Close()
	if p := client.Peer(); p.Name != "worker.2" {
		t.Errorf("the client's server is %+v, want worker.2", p)
	}
	if got, err := client.Call(ctx, wire.TypeMessage, []byte("hi"), nil); err != nil || string(got) != "hi" {
		t.Fatalf("message: %q, %v", got, err)
	}
	shut := make(chan error, 1)
	go func() { _, err := conn.Call(ctx, wire.TypeShutdown, nil, nil); shut <- err }()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(childWait):
		t.Fatal("no shutdown reply")
	}
	st, err := wire.ParseClient(r.reply)
	if err != nil || st.Flags&wire.ClientEstablished == 0 || st.Flags&wire.ClientHere != 0 || st.Flags&wire.ClientControl == 0 {
		t.Fatalf("handed back: %+v, %v; want established, control, not here", st, err)
	}
	peer, _ := wire.ParseHello(st.Hello)
	s, err := ipc.Resume(b, ipc.Session{Version: st.Version, Peer: peer, NextID: st.NextID, Buffered: st.Buffered}, ipc.ConnConfig{
		Name:    "us",
		Handler: func(context.Context, ipc.Request) ([]byte, error) { return []byte("us"), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := client.Call(ctx, wire.TypeMessage, []byte("hi"), nil); err != nil || string(got) != "us" {
		t.Fatalf("after the hand-back: %q, %v", got, err)
	}
}

// TestClientSlowReaderHandedBack: a stopping worker hands back a client
// that is still reading a large reply slowly, rather than closing it
// when its reply takes longer than clientDetachWait to go out: the
// hand-back waits as long as the client takes bytes. The client gets
// its whole echo, and the connection comes back established.
func TestClientSlowReaderHandedBack(t *testing.T) {
	t.Parallel()
	proc, conn := startWorkerWith(t, "serve", "2", ipc.ConnConfig{MaxFiles: wire.MaxFiles})
	ctx := callCtx(t)
	a, b, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	res := make(chan []byte, 1)
	go func() {
		reply, _, err := conn.CallFiles(ctx, wire.TypeClient, wire.AppendClient(nil, wire.Client{}), []*os.File{b})
		if err != nil {
			t.Error(err)
		}
		res <- reply
	}()
	// The client, raw: its hello, the worker's, then one 4 MiB echo.
	hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 2, Name: "slow"})
	if _, err := a.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello}, hello)); err != nil {
		t.Fatal(err)
	}
	var hb [wire.HeaderSize]byte
	a.SetReadDeadline(time.Now().Add(childWait))
	if _, err := io.ReadFull(a, hb[:]); err != nil {
		t.Fatal(err)
	}
	h, err := wire.ParseHeader(hb[:], 0)
	if err != nil || h.Type != wire.TypeHello {
		t.Fatalf("worker's hello: %v, %v", h, err)
	}
	if _, err := io.ReadFull(a, make([]byte, h.Length)); err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := a.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeEcho, ID: 1}, payload))
		werr <- err
	}()
	// The reply has begun: the worker stops now, while the client has
	// most of it still to read.
	if _, err := io.ReadFull(a, hb[:]); err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { _, err := conn.Call(ctx, wire.TypeShutdown, nil, nil); shut <- err }()
	// Read the rest slowly: 16 KiB every 10 ms, some 2.6 s in all,
	// more than twice clientDetachWait.
	start := time.Now()
	got := make([]byte, 0, size)
	buf := make([]byte, 16<<10)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for len(got) < size {
		<-tick.C // pacing the slow reader, not synchronising
		a.SetReadDeadline(time.Now().Add(childWait))
		n, err := a.Read(buf[:min(len(buf), size-len(got))])
		if err != nil {
			t.Fatalf("after %d of %d bytes, %v: %v\n%s", len(got), size, time.Since(start).Round(time.Millisecond), err, proc.Output())
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the echo came back different")
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	var reply []byte
	select {
	case reply = <-res:
	case <-time.After(childWait):
		t.Fatal("no reply to the CLIENT request")
	}
	st, err := wire.ParseClient(reply)
	if err != nil || st.Flags&wire.ClientEstablished == 0 || st.Flags&wire.ClientHere != 0 {
		t.Fatalf("reply %q: %+v, %v; want the client handed back, established", reply, st, err)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	t.Logf("handed back after the client read its 4 MiB reply over %v", time.Since(start).Round(time.Millisecond))
}
