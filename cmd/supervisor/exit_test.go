//go:build linux

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// TestRunServiceExit: a run without --duration is a service; stopped
// cleanly by SIGTERM or SIGINT it exits 0 even though a worker failed
// and was restarted during its life.
func TestRunServiceExit(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			run, sock, pids := startRun(t, 2, "--echo-interval", "5ms", "--ping-interval", "100ms")
			run.replaceWorker(t, sock, 2, pids[0])
			if code := run.stop(t, sig); code != exitOK {
				t.Errorf("run exited %d after %v with a restarted worker, want 0\n%s", code, sig, run.Output())
			}
			if !strings.Contains(run.Stdout.String(), "failures 1)") || !strings.Contains(run.Stdout.String(), "  result     ok\n") {
				t.Errorf("summary should count the failure and say ok:\n%s", run.Output())
			}
		})
	}
}

// TestRunDurationStrict: with --duration a run is a test, and a worker
// that failed makes it exit 1, even when a signal ends it early.
func TestRunDurationStrict(t *testing.T) {
	t.Parallel()
	run, sock, pids := startRun(t, 2, "--duration", "1h", "--echo-interval", "5ms")
	run.replaceWorker(t, sock, 2, pids[1])
	if code := run.stop(t, syscall.SIGTERM); code != exitFail {
		t.Errorf("run --duration exited %d with a failed worker, want 1\n%s", code, run.Output())
	}
	if !strings.Contains(run.Stdout.String(), "  result     FAILED\n") {
		t.Errorf("summary should say FAILED:\n%s", run.Output())
	}
}

// TestRunSIGTERMWithWorkers: SIGTERM sent to the supervisor and its
// workers at once, as systemd's KillMode=control-group does (workers
// first, the worst order), is a clean stop: exit 0, every time.
func TestRunSIGTERMWithWorkers(t *testing.T) {
	t.Parallel()
	for i := range 10 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			run, _, pids := startRun(t, 3, "--echo-interval", "1ms", "--ping-interval", "50ms")
			for _, pid := range append(pids, run.PID()) {
				syscall.Kill(pid, syscall.SIGTERM)
			}
			if code := run.stop(t, syscall.SIGTERM); code != exitOK {
				t.Errorf("run exited %d after SIGTERM to it and its workers, want 0\n%s", code, run.Output())
			}
			for _, pid := range pids {
				if !processGone(pid) {
					t.Errorf("worker %d survived", pid)
				}
			}
		})
	}
}

// TestFrontDoorNoWorker: with no worker ready, an echo through the
// front door fails at once saying so, not after its timeout.
func TestFrontDoorNoWorker(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "s")
	// One worker, restarted only after an hour once killed.
	run := cliStart(t, "run", "--workers", "1", "--socket", sock, "--echo-interval", "0", "--backoff-min", "1h", "--backoff-max", "1h")
	run.waitSocket(t, sock)
	pids := readyWorkers(t, sock, 1)
	syscall.Kill(pids[0], syscall.SIGKILL)
	poll(t, "the worker to be gone", func() bool {
		_, doc := statusJSON(t, sock)
		return doc.Workers[0].State == "backoff"
	}, run.Output)

	r := cliWant(t, exitFail, cliOpts{}, "echo", "--socket", sock, "--timeout", "1h", "hello")
	if want := sock + ": no ready worker (of 1: 1 backoff)"; !strings.Contains(r.stderr, want) {
		t.Errorf("echo with no worker: stderr does not say %q\n%s", want, r)
	}
	// Messages likewise, through the library.
	c, err := ipc.Dial(t.Context(), sock, ipc.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Call(t.Context(), wire.TypeMessage, []byte("x"), nil)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnavailable || !strings.HasPrefix(re.Message, "no ready worker") {
		t.Errorf("message with no worker: %v, want an unavailable error saying no ready worker", err)
	}
	// The supervisor itself still answers.
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock)
	if code := run.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run exited %d, want 0\n%s", code, run.Output())
	}
}

// TestEchoLimit: echo reads at most 16 MiB and one byte of stdin, and
// refuses more with a message naming the limit, before it connects.
func TestEchoLimit(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(tempDir(t), "none")
	f, err := os.Open("/dev/zero") // endless: a reader of all stdin would never finish
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := cliWant(t, exitFail, cliOpts{stdin: f}, "echo", "--socket", sock)
	if want := "the message is larger than 16 MiB (16777216 bytes), the most one echo carries"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q:\n%s", want, r)
	}
	r = cliWant(t, exitFail, cliOpts{stdin: bytes.NewReader(make([]byte, wire.MaxPayload))}, "echo", "--socket", sock)
	if !strings.Contains(r.stderr, "no such socket") {
		t.Errorf("16 MiB exactly is not refused for its size:\n%s", r)
	}
	if regexp.MustCompile(`larger than`).MatchString(r.stderr) {
		t.Errorf("16 MiB refused:\n%s", r)
	}
}
