//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pairvisor/pairvisor/ipc"
)

// echoLoad is clients of a front door echoing back to back until
// stopped, counting the echoes that came back right and keeping what
// went wrong.
type echoLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ok     atomic.Int64
	mu     sync.Mutex
	errs   []error // at most maxLoadErrors
}

const maxLoadErrors = 10

// startEchoLoad starts n clients of sock; they stop at the end of the
// test at the latest.
func startEchoLoad(t *testing.T, sock string, n int) *echoLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &echoLoad{cancel: cancel}
	t.Cleanup(func() { l.stop() })
	for i := range n {
		l.wg.Add(1)
		go l.client(ctx, sock, byte(i))
	}
	return l
}

func (l *echoLoad) client(ctx context.Context, sock string, seed byte) {
	defer l.wg.Done()
	c, err := ipc.Dial(ctx, sock, ipc.ConnConfig{Name: "echo-load"})
	if err != nil {
		l.fail(err)
		return
	}
	defer c.Close()
	p := bytes.Repeat([]byte{seed}, 4<<10)
	for i := 0; ; i++ {
		p[i%len(p)]++
		rctx, cancel := context.WithTimeout(ctx, cliWait)
		got, err := c.Echo(rctx, p, nil)
		cancel()
		switch {
		case ctx.Err() != nil:
			return // stopped: what was in flight does not count
		case err != nil:
			l.fail(err)
		case !bytes.Equal(got, p):
			l.fail(fmt.Errorf("an echo of %d bytes came back different", len(p)))
		default:
			l.ok.Add(1)
		}
	}
}

func (l *echoLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < maxLoadErrors {
		l.errs = append(l.errs, err)
	}
}

// waitMore waits until n more echoes have come back right.
func (l *echoLoad) waitMore(t *testing.T, n int64, run *cliProc) {
	t.Helper()
	mark := l.ok.Load()
	poll(t, fmt.Sprintf("%d more echoes", n), func() bool { return l.ok.Load() >= mark+n }, func() string {
		_, errs := l.stop()
		return fmt.Sprintf("failures: %v\n%s", errors.Join(errs...), run.Output())
	})
}

// stop stops the clients and returns how many echoes came back right
// and the first failures.
func (l *echoLoad) stop() (int64, []error) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), slices.Clone(l.errs)
}
