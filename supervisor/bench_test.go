//go:build linux

package supervisor

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// BenchmarkEcho measures the routing hot path: an echo through
// Supervisor.Echo to one of two ready workers and back.
func BenchmarkEcho(b *testing.B) {
	for _, size := range []int{64, 4 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			s, err := New(Config{
				Workers:      2,
				Env:          []string{role(b, "echo")},
				PingInterval: time.Hour,
				StopTimeout:  5 * time.Second,
				Logger:       hclog.NewNullLogger(),
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					b.Error(err)
				}
			}()
			select {
			case <-s.Ready():
			case err := <-done:
				b.Fatalf("Run returned: %v", err)
			case <-time.After(readyWait):
				b.Fatal("workers not ready")
			}
			payload := randomBytes(size, 1)
			dst := make([]byte, 0, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				got, err := s.Echo(ctx, payload, dst)
				if err != nil || len(got) != size {
					b.Fatalf("echo: %d bytes, %v", len(got), err)
				}
			}
		})
	}
}

// BenchmarkSpawnListener measures a worker's start, from New to its
// hello, without listeners and with one (which starts it through the
// exec shim, internal/execshim: this binary, re-executed, execs the
// worker): the difference is the shim's cost.
func BenchmarkSpawnListener(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	sl, err := NewListener("http", l.(*net.TCPListener))
	if err != nil {
		b.Fatal(err)
	}
	defer sl.File.Close()
	for _, c := range []struct {
		name string
		ls   []Listener
	}{{"none", nil}, {"listener", []Listener{sl}}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				s, err := New(Config{Workers: 1, Env: []string{role(b, "echo")}, PingInterval: time.Hour, Listeners: c.ls})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- s.Run(ctx) }()
				select {
				case <-s.Ready():
				case err := <-done:
					b.Fatalf("Run returned: %v", err)
				case <-time.After(readyWait):
					b.Fatal("worker not ready")
				}
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
