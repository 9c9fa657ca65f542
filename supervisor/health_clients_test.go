//go:build linux

package supervisor

import (
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// quietChannel is a worker channel on which nothing arrives: no pong,
// no reply (the worker does all its work with handed-over clients).
type quietChannel struct{ channel }

func (*quietChannel) Received() uint64   { return 0 }
func (*quietChannel) Forget(uint64) bool { return true }

// TestHealthBusyWithClients: a probe overdue while the worker moves
// the bytes of a handed-over client (reads what the client sent, or
// writes to it) is not a miss: the worker is busy, starved of CPU
// perhaps, not hung. When nothing moves, or only the client does (it
// writes, or reads what was queued for it), the probe is missed, so a
// hung worker is still found. Real sockets; the queues are the kernel's.
func TestHealthBusyWithClients(t *testing.T) {
	t.Parallel()
	client, server, err := ipc.Socketpair() // server: the end HandOff passes, and keeps
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()
	s := &Supervisor{}
	c := &quietChannel{}
	s.clients.serving(c, server)
	defer s.clients.done(c, server)
	pr := newProber(s)
	const timeout = time.Second
	now := time.Now()
	id := uint64(0)
	probe := func(what string, move func() error, want verdict) {
		t.Helper()
		id++
		pr.written(now, id, c)
		if move != nil {
			if err := move(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		now = now.Add(timeout)
		v, next := pr.judge(now, c, timeout)
		if v != want {
			t.Errorf("%s: verdict %v, want %v", what, v, want)
		}
		if v == answered && next { // a busy verdict waits on for the same probe
			t.Errorf("%s: the busy probe was closed", what)
		}
		if v == answered { // nothing moves now: the same probe is missed next
			now = now.Add(timeout)
			if v, _ := pr.judge(now, c, timeout); v != missed {
				t.Errorf("%s, then nothing: verdict %v, want missed", what, v)
			}
		}
	}
	buf := make([]byte, 4096)
	probe("nothing moves", nil, missed)
	probe("the worker writes to its client", func() error { _, err := server.Write(buf[:1000]); return err }, answered)
	probe("the client reads", func() error { _, err := client.Read(buf); return err }, missed)
	probe("the client writes", func() error { _, err := client.Write(buf[:1000]); return err }, missed)
	probe("the worker reads", func() error { _, err := server.Read(buf); return err }, answered)
	probe("nothing moves again", nil, missed)
}
