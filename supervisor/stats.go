package supervisor

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are a supervisor's counters since Run began.
type Stats struct {
	PingsSent     uint64
	PingsAnswered uint64
	RTTP50        time.Duration // of answered health pings
	RTTP99        time.Duration
	Restarts      uint64 // workers started again after ending
	Failures      uint64 // worker ends that counted as failures
	// SpawnFailures counts attempts to start a worker that failed for
	// want of the supervisor's own resources (descriptors, memory,
	// processes). They are retried and count neither as Failures nor
	// as Restarts, nor toward Config.MaxRestarts.
	SpawnFailures uint64
}

// Histogram buckets grow by 2 %, from 1 µs to about 100 s.
const (
	histBase    = 1.02
	histMinNS   = 1e3
	histBuckets = 931
)

// stats counts health pings: the tenders count those sent (before the
// write, so that a pong is never counted before its ping), the
// channels' reader goroutines record the round trips (prober.pong).
type stats struct {
	sent atomic.Uint64

	mu       sync.Mutex
	answered uint64
	hist     [histBuckets]uint32
}

func (s *stats) record(rtt time.Duration) {
	i := 0
	if ns := float64(rtt.Nanoseconds()); ns > histMinNS {
		i = min(int(math.Log(ns/histMinNS)/math.Log(histBase)), histBuckets-1)
	}
	s.mu.Lock()
	s.answered++
	s.hist[i]++
	s.mu.Unlock()
}

// quantile returns the upper bound of the bucket holding quantile q.
func (s *stats) quantile(q float64) time.Duration {
	if s.answered == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.answered)))
	var seen uint64
	for i, n := range s.hist {
		seen += uint64(n)
		if seen >= rank {
			return time.Duration(histMinNS * math.Pow(histBase, float64(i+1)))
		}
	}
	return 0
}

// snapshot returns the Stats of the histogram and of c, the loop's
// counters.
func (s *stats) snapshot(c counts) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	answered := s.answered // before sent: a pong is counted after its ping
	return Stats{
		PingsSent:     s.sent.Load(),
		PingsAnswered: answered,
		RTTP50:        s.quantile(0.50),
		RTTP99:        s.quantile(0.99),
		Restarts:      c.restarts,
		Failures:      c.failures,
		SpawnFailures: c.spawnFailures,
	}
}
