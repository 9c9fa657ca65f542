//go:build linux

package worker

import (
	"context"
	"errors"
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
