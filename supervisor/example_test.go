//go:build linux

package supervisor_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"github.com/pairvisor/pairvisor/supervisor"
	"github.com/pairvisor/pairvisor/worker"
)

// A program that is both the supervisor and, re-executed, its workers.
// (Compile-only: it starts processes.)
func Example() {
	// The worker role: serve until the supervisor is done with us.
	if w, err := worker.FromEnv(); err != nil {
		log.Fatal(err)
	} else if w != nil {
		err := w.Serve(context.Background(), worker.Config{
			Handler: func(ctx context.Context, msg []byte) ([]byte, error) {
				return bytes.ToUpper(msg), nil
			},
		})
		if err != nil {
			log.Fatal(err)
		}
		os.Exit(0)
	}

	// The supervisor role.
	sup, err := supervisor.New(supervisor.Config{Workers: 4, Logger: hclog.Default()})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() {
		<-sup.Ready()
		reply, err := sup.Call(ctx, wire.TypeMessage, []byte("hello"), nil)
		fmt.Println(string(reply), err)
		stop()
	}()
	if err := sup.Run(ctx); err != nil { // returns once every worker is reaped
		log.Fatal(err)
	}
}
