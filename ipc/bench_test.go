//go:build linux

package ipc_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/ipc"
)

// The benchmarks run between two processes, as in production: this one
// and the serve helper, over a socketpair. They measure what
// docs/BASELINES.md measured for the baselines: ping round-trip
// latency (p50 and p99 from one time.Now pair per round trip, nearest
// rank) and echo throughput with one request in flight (MB/s is payload
// bytes one way).

func BenchmarkPing(b *testing.B) { benchPing(b, ipc.ConnConfig{Name: "bench"}) }

// benchPing measures ping round trips to the serve helper through a
// Conn with cfg.
func benchPing(b *testing.B, cfg ipc.ConnConfig) { benchPingRole(b, "serve", cfg) }

// benchPingRole measures ping round trips to role through a Conn with
// cfg.
func benchPingRole(b *testing.B, role string, cfg ipc.ConnConfig) {
	c, _ := dialHelper(b, role, cfg)
	ctx := context.Background()
	for range 1000 { // warm up both processes
		if _, err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
	rtt := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range rtt {
		start := time.Now()
		if _, err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
		rtt[i] = time.Since(start)
	}
	b.StopTimer()
	reportPercentiles(b, rtt)
}

func BenchmarkEcho(b *testing.B) { benchEcho(b, "serve", ipc.ConnConfig{Name: "bench"}) }

// BenchmarkFilesPing and BenchmarkFilesEcho: BenchmarkPing and
// BenchmarkEcho on a version 3 connection (MaxFiles on both sides),
// which reads with recvmsg(2) instead of read(2) so that descriptors
// can arrive; none is sent.
func BenchmarkFilesPing(b *testing.B) {
	benchPingRole(b, "serve-files", ipc.ConnConfig{Name: "bench", MaxFiles: 16})
}

func BenchmarkFilesEcho(b *testing.B) {
	benchEcho(b, "serve-files", ipc.ConnConfig{Name: "bench", MaxFiles: 16})
}

// benchEcho measures echo round trips to role through a Conn with cfg.
func benchEcho(b *testing.B, role string, cfg ipc.ConnConfig) {
	c, _ := dialHelper(b, role, cfg)
	for _, size := range []int{64, 4 << 10, 64 << 10, 1 << 20} {
		name := fmt.Sprintf("%dB", size)
		switch {
		case size >= 1<<20:
			name = fmt.Sprintf("%dMiB", size>>20)
		case size >= 1<<10:
			name = fmt.Sprintf("%dKiB", size>>10)
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			payload := randBytes(uint64(size), size)
			dst := make([]byte, size)
			for range 10 {
				if _, err := c.Echo(ctx, payload, dst); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				got, err := c.Echo(ctx, payload, dst)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != size {
					b.Fatalf("echo of %d bytes came back with %d", size, len(got))
				}
			}
		})
	}
}

// reportPercentiles reports the median and 99th percentile of d in ns.
func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	rank := func(p int) time.Duration { return d[(len(d)*p+99)/100-1] }
	b.ReportMetric(float64(rank(50).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(rank(99).Nanoseconds()), "p99-ns")
}

// BenchmarkConcurrentPing: several goroutines ping through one Conn at
// once, so that most callers wait as followers while another reads (see
// the top of conn.go). One op is one ping of one goroutine.
func BenchmarkConcurrentPing(b *testing.B) {
	c, _ := dialHelper(b, "serve", ipc.ConnConfig{Name: "bench"})
	ctx := context.Background()
	b.SetParallelism(2)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Ping(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPolledPing: BenchmarkPing on a Conn in polled mode
// (ConnConfig.Poll), where every caller waits for the background reader
// to hand its reply over.
func BenchmarkPolledPing(b *testing.B) {
	benchPing(b, ipc.ConnConfig{Name: "bench", Poll: true})
}
