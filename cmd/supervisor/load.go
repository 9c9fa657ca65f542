package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// busyBackoff is how long a load client waits after a "server busy"
// answer before it tries again.
const busyBackoff = 10 * time.Millisecond

// loadResult is the JSON document of `supervisor bench --socket`.
type loadResult struct {
	Clients        int     `json:"clients"`
	Size           int     `json:"size"`
	Seconds        float64 `json:"seconds"`
	RoundTrips     int64   `json:"round_trips"`
	RoundTripsPerS float64 `json:"round_trips_per_s"`
	MBPerS         float64 `json:"mb_per_s"`
	Latency        latency `json:"latency"`
	Failed         int64   `json:"failed"`
	Busy           int64   `json:"busy"` // answered "server busy" (retried after a pause)
	Corrupted      int64   `json:"corrupted"`
}

// runLoad connects clients framed clients to socket and has each echo
// size random bytes back to back for d, checking every echo.
func runLoad(stdout, stderr io.Writer, socket string, clients, size int, d time.Duration, asJSON bool) int {
	var (
		wg                sync.WaitGroup
		failed, corrupted atomic.Int64
		busy              atomic.Int64 // "server busy" answers, retried
		mu                sync.Mutex
		rtts              []time.Duration
	)
	conns := make([]*ipc.Conn, clients)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := ipc.Dial(ctx, socket, ipc.ConnConfig{Name: "load", Poll: clients > frontdoor.DefaultPollAbove})
		cancel()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			fmt.Fprintf(stderr, "supervisor bench: client %d: %s\n", i+1, reason(socket, err))
			return exitFail
		}
		conns[i] = c
	}
	start := time.Now()
	end := start.Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			payload, dst := make([]byte, size), make([]byte, size)
			for i := range payload {
				payload[i] = byte(rng.Uint32())
			}
			local := make([]time.Duration, 0, 1024)
			for seq := uint64(1); time.Now().Before(end); seq++ {
				vary(payload, seq, rng)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t0 := time.Now()
				got, err := c.Echo(ctx, payload, dst)
				rtt := time.Since(t0)
				cancel()
				var re *wire.RemoteError
				switch {
				case errors.As(err, &re) && re.Code == wire.CodeUnavailable:
					// The server is at its memory bound: back off and
					// try again, as a well-behaved client does.
					busy.Add(1)
					time.Sleep(busyBackoff)
				case err != nil:
					failed.Add(1)
					fmt.Fprintln(stderr, "supervisor bench: echo failed:", err)
					return
				case !bytes.Equal(got, payload):
					corrupted.Add(1)
				default:
					local = append(local, rtt)
				}
			}
			mu.Lock()
			rtts = append(rtts, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	res := loadResult{Clients: clients, Size: size, Seconds: el.Seconds(), RoundTrips: int64(len(rtts)), Failed: failed.Load(), Corrupted: corrupted.Load(), Busy: busy.Load()}
	if len(rtts) > 0 {
		res.Latency = summarise(rtts)
		res.RoundTripsPerS = float64(len(rtts)) / el.Seconds()
		res.MBPerS = res.RoundTripsPerS * float64(size) / 1e6
	}
	if asJSON {
		writeJSON(stdout, res)
	} else {
		fmt.Fprintf(stdout, "%d clients echoing %s through %s for %v\n", clients, sizeName(size), socket, el.Round(time.Millisecond))
		fmt.Fprintf(stdout, "  %d round trips, %.0f/s, %.1f MB/s\n", res.RoundTrips, res.RoundTripsPerS, res.MBPerS)
		fmt.Fprintf(stdout, "  latency p50 %.0f µs, p99 %.0f µs, p999 %.0f µs\n", res.Latency.P50US, res.Latency.P99US, res.Latency.P999US)
		fmt.Fprintf(stdout, "  %d failed, %d corrupted, %d busy (retried)\n", res.Failed, res.Corrupted, res.Busy)
	}
	if res.Failed > 0 || res.Corrupted > 0 {
		return exitFail
	}
	return exitOK
}

// vary makes payload, random already, differ from what it was for the
// previous echo without rewriting all of it (which costs more than the
// echo itself at 1 MiB): the first 8 bytes become seq, and 8 bytes at a
// position that moves with seq become random. Small payloads are
// rewritten whole.
func vary(payload []byte, seq uint64, rng *rand.Rand) {
	if len(payload) < 32 {
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		return
	}
	binary.LittleEndian.PutUint64(payload, seq)
	off := 8 + int(seq*4099%uint64(len(payload)-16))
	binary.LittleEndian.PutUint64(payload[off:], rng.Uint64())
}
