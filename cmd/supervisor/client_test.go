//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// Tests of the clients (ping, echo, status, reload) against sockets
// that do not answer as a server would.

func TestPingFailures(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("not a socket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // bound, then closed: a crashed server's socket

	for _, tc := range []struct {
		name, socket, want string
	}{
		{"no-such-socket", filepath.Join(dir, "missing"), "no such socket: " + filepath.Join(dir, "missing")},
		{"no-such-dir", filepath.Join(dir, "nodir", "s"), "no such socket"},
		{"regular-file", file, "not a socket: " + file},
		{"directory", dir, "not a socket: " + dir},
		{"stale-socket", stale, "connection refused: " + stale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, cmd := range []string{"ping", "echo", "status", "reload"} {
				r := cliWant(t, exitFail, cliOpts{}, cmd, "--socket", tc.socket)
				if !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
					t.Errorf("%s: want the one-line reason %q:\n%s", cmd, tc.want, r)
				}
			}
		})
	}

	t.Run("permission-denied", func(t *testing.T) {
		t.Parallel()
		wdir, exe := otherUser(t)
		sock := filepath.Join(wdir, "s")
		l, err := listen.New(sock, listen.Config{}) // 0600, root's
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		r := cliWant(t, exitFail, cliOpts{exe: exe, cred: nobody}, "ping", "--socket", sock)
		if !strings.Contains(r.stderr, "permission denied: "+sock) {
			t.Errorf("want permission denied:\n%s", r)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		// A server that accepts and never answers.
		t.Parallel()
		sock := filepath.Join(dir, "mute")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 16)
		go func() {
			defer close(accepted)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
		defer func() {
			ln.Close()
			for c := range accepted {
				c.Close()
			}
		}()
		r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock, "--timeout", "500ms")
		if !strings.Contains(r.stderr, "timeout: "+sock+" did not answer in time") {
			t.Errorf("want a timeout:\n%s", r)
		}
		if r.elapsed < 500*time.Millisecond || r.elapsed > 500*time.Millisecond+10*time.Second {
			t.Errorf("ping --timeout 500ms took %v", r.elapsed)
		}
	})

	t.Run("timeout-backlog-full", func(t *testing.T) {
		// A stuck server whose accept queue is full.
		t.Parallel()
		sock := filepath.Join(dir, "full")
		testutil.FullListener(t, sock)
		r := cliWant(t, exitFail, cliOpts{}, "ping", "--socket", sock, "--timeout", "500ms")
		if !strings.Contains(r.stderr, "timeout: "+sock) {
			t.Errorf("want a timeout:\n%s", r)
		}
	})
}
