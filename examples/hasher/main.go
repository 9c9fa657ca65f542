// Command hasher is a worker that does real work, and the supervisor
// that runs it, in one binary: the pattern package worker is made for.
//
// Run as a supervisor (no flags), it starts two copies of itself as
// workers with package supervisor, sends each of its arguments to them
// as an application message, and prints the SHA-256 the workers
// computed:
//
//	go run ./examples/hasher hello world
//
// Run by `supervisor run` (see pairvisor.toml here), it is only the
// worker: FromEnv finds the channel on fd 3 and Serve answers hashes
// until the supervisor stops it.
//
//	go build -o /tmp/hasher ./examples/hasher
//	go run ./cmd/supervisor run --config examples/hasher/pairvisor.toml
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
	"github.com/pairvisor/pairvisor/worker"
)

func main() {
	w, err := worker.FromEnv()
	if err != nil && !errors.Is(err, worker.ErrNotWorker) {
		fmt.Fprintln(os.Stderr, "hasher:", err)
		os.Exit(1)
	}
	if w != nil {
		os.Exit(serve(w))
	}
	os.Exit(supervise(os.Args[1:]))
}

// serve is the worker role: each application message is answered with
// the hex SHA-256 of its payload.
func serve(w *worker.Worker) int {
	log := w.Logger().Named("hasher")
	err := w.Serve(context.Background(), worker.Config{
		Logger: log,
		Handler: func(ctx context.Context, msg []byte) ([]byte, error) {
			sum := sha256.Sum256(msg)
			log.Debug("hashed", "bytes", len(msg))
			return []byte(hex.EncodeToString(sum[:])), nil
		},
	})
	if err != nil {
		log.Error("serve failed", "error", err)
		return 1
	}
	return 0
}

// supervise is the supervisor role: two workers (this binary again),
// one message per argument.
func supervise(words []string) int {
	if len(words) == 0 {
		words = []string{"hello", "world"}
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "hasher", Level: hclog.Warn})
	sup, err := supervisor.New(supervisor.Config{Workers: 2, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hasher:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	status := 0
	for _, word := range words {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		sum, err := sup.Call(cctx, wire.TypeMessage, []byte(word), nil)
		ccancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "hasher:", err)
			status = 1
			break
		}
		fmt.Printf("%s  %s\n", sum, word)
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "hasher:", err)
		status = 1
	}
	return status
}
