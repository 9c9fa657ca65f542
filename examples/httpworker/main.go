// Command httpworker is an HTTP server worker for pairvisor's shared
// listeners: the supervisor binds the socket once, every worker accepts
// on it, and a rolling restart loses no connection and fails no
// request.
//
//	go build -o /tmp/httpworker ./examples/httpworker
//	go run ./cmd/supervisor run --workers 3 --listen http=tcp://127.0.0.1:8080 -- /tmp/httpworker
//	curl -i http://127.0.0.1:8080/          # answered by one of the three
//	kill -HUP <the supervisor's pid>        # rolling restart: nothing lost
//
// It gets the listener named by -listener (default "http"; the first if
// there is one only) from package worker, which reads the systemd
// socket-activation layout (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID),
// serves HTTP on it, and says hello on its channel once it is serving.
//
// It stops gracefully on the supervisor's shutdown message, on SIGTERM
// or SIGINT, and when the supervisor goes away: it stops accepting
// (the socket stays open in the supervisor and the other workers, and
// the kernel queues new connections for them), answers every request
// that arrives on its open connections with "Connection: close" for up
// to -drain, so that keep-alive clients move to another worker between
// two requests rather than in the middle of one, then closes the
// connections left idle and waits for the requests in flight (at most
// -shutdown-timeout). Keep -drain plus the longest request below half
// the supervisor's --stop-timeout, when SIGTERM follows the shutdown
// message.
//
// Requests: GET /?sleep=DURATION (at most 10s) waits before answering;
// the answer names the worker ("worker 2 pid 1234") in its body and in
// the X-Worker and X-Pid headers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pairvisor/pairvisor/worker"
)

func main() {
	w, err := worker.FromEnv()
	if w == nil {
		fmt.Fprintln(os.Stderr, "httpworker: not started by a pairvisor supervisor; run it as: supervisor run --listen http=tcp://127.0.0.1:8080 -- httpworker", err)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("httpworker", flag.ContinueOnError)
	name := fs.String("listener", "http", "name of the listener to serve (LISTEN_FDNAMES); the only one if there is one")
	drain := fs.Duration("drain", time.Second, "on stop, how long to answer requests on open connections with Connection: close before closing the idle ones")
	shutdownTimeout := fs.Duration("shutdown-timeout", 5*time.Second, "on stop, how long to wait for requests in flight after the drain")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	os.Exit(run(w, *name, *drain, *shutdownTimeout))
}

func run(w *worker.Worker, name string, drain, shutdownTimeout time.Duration) int {
	log := w.Logger().Named("http")
	ln, err := listener(w, name)
	if err != nil {
		log.Error("no listener", "error", err)
		return 1
	}
	s := &server{log: log}
	srv := &http.Server{
		Handler:           s.handler(w.ID()),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         s.connState,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// The hello says "ready" once we are serving; Serve returns on the
	// shutdown message or when the supervisor closes the channel.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	channel := make(chan error, 1)
	go func() { channel <- w.Serve(ctx, worker.Config{Logger: log}) }()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	select {
	case err := <-channel:
		log.Info("stopping: the supervisor asked or went away", "error", err)
		channel = nil
	case sig := <-sigs:
		log.Info("stopping", "signal", sig.String())
	case err := <-served:
		log.Error("serving failed", "error", err)
		return 1
	}
	code := s.stop(srv, ln, drain, shutdownTimeout)
	cancel()
	if channel != nil {
		<-channel
	}
	<-served
	return code
}

// listener returns the listener named name, or the only one. The
// worker package hands out the inherited socket as a file;
// net.FileListener makes a listener of its own duplicate, so the file
// is closed at once.
func listener(w *worker.Worker, name string) (net.Listener, error) {
	ls, err := w.Listeners()
	if err != nil {
		return nil, err
	}
	var f *os.File
	if len(ls) == 1 {
		f = ls[0].File
	} else if f, err = w.Listener(name); err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileListener(f)
}

// server counts the open connections and knows whether it is draining.
type server struct {
	log      hclog.Logger
	draining atomic.Bool

	mu    sync.Mutex
	conns int
	none  chan struct{} // closed when conns drops to 0 while draining
}

func (s *server) handler(id int) http.Handler {
	pid := strconv.Itoa(os.Getpid())
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d > 0 {
			select {
			case <-time.After(min(d, 10*time.Second)):
			case <-r.Context().Done():
				return
			}
		}
		if s.draining.Load() {
			rw.Header().Set("Connection", "close") // the server closes it after this reply
		}
		rw.Header().Set("X-Worker", strconv.Itoa(id))
		rw.Header().Set("X-Pid", pid)
		fmt.Fprintf(rw, "worker %d pid %s\n", id, pid)
	})
}

// connState counts connections: new ones until they close.
func (s *server) connState(_ net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateNew:
		s.conns++
	case http.StateClosed, http.StateHijacked:
		s.conns--
		if s.conns == 0 && s.none != nil {
			close(s.none)
			s.none = nil
		}
	}
}

// stop stops accepting, drains the open connections for up to drain,
// then shuts the server down (closing idle connections, waiting for
// requests in flight) within shutdownTimeout.
func (s *server) stop(srv *http.Server, ln net.Listener, drain, shutdownTimeout time.Duration) int {
	s.draining.Store(true)
	ln.Close() // no more accepts here; the other workers go on
	s.mu.Lock()
	none := make(chan struct{})
	if s.conns == 0 {
		close(none)
	} else {
		s.none = none
	}
	open := s.conns
	s.mu.Unlock()
	s.log.Debug("draining", "connections", open)
	select {
	case <-none:
	case <-time.After(drain):
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("requests still in flight at the shutdown timeout", "error", err)
		return 1
	}
	return 0
}
