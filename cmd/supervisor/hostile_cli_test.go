//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
)

// Another local user against `run --socket`: it may ping a socket whose
// mode lets it in, but not reload the workers unless it is allowed to,
// and it is not served at all on an abstract socket without allow-lists.
func TestRunControlOtherUser(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	dir := worldDir(t)
	exe := exeForOthers(t, dir)
	abstract := fmt.Sprintf("@pv-ctl-%d-%d", syscall.Getpid(), time.Now().UnixNano())
	for _, tc := range []struct {
		name         string
		socket       string
		flags        []string
		ping, reload bool // what nobody may do
	}{
		{"path 0666", filepath.Join(dir, "open"), []string{"--mode", "0666"}, true, false},
		{"path 0666 control allowed", filepath.Join(dir, "ctl"), []string{"--mode", "0666", "--allow-control-uid", "65534"}, true, true},
		{"abstract", abstract, nil, false, false},
		{"abstract control allowed", abstract + "-ctl", []string{"--allow-control-uid", "65534"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"run", "--workers", "1", "--echo-interval", "0", "--socket", tc.socket}, tc.flags...)
			srv := cliStart(t, args...)
			srv.waitSocket(t, tc.socket)
			readyWorkers(t, tc.socket, 1)

			r := cliRun(t, cliOpts{exe: exe, cred: nobody}, "ping", "--socket", tc.socket)
			if (r.code == exitOK) != tc.ping {
				t.Errorf("nobody's ping: want served=%v, got\n%s", tc.ping, r)
			}
			r = cliRun(t, cliOpts{exe: exe, cred: nobody}, "reload", "--socket", tc.socket)
			switch {
			case tc.reload && r.code != exitOK:
				t.Errorf("nobody's reload with --allow-control-uid: want exit 0, got\n%s", r)
			case !tc.reload && r.code != exitFail:
				t.Errorf("nobody's reload: want exit 1, got\n%s", r)
			case !tc.reload && tc.ping && !strings.Contains(r.stderr, "uid 65534 is none of them"):
				t.Errorf("nobody's reload: want the denial's reason, got\n%s", r)
			}
			cliWant(t, exitOK, cliOpts{}, "reload", "--socket", tc.socket) // our own uid may
			if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
				t.Errorf("run exited %d\n%s", code, srv.output())
			}
		})
	}
}

// A client does not trust a server run by another user (someone who
// bound the name first) unless told to.
func TestClientUntrustedServer(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	dir := worldDir(t)
	exe := exeForOthers(t, dir)
	sock := fmt.Sprintf("@pv-squat-%d-%d", syscall.Getpid(), time.Now().UnixNano())
	srv := cliStartOpts(t, cliOpts{exe: exe, cred: nobody}, "serve", "--socket", sock)
	srv.waitSocket(t, sock)

	for _, cmd := range [][]string{{"ping"}, {"status"}, {"reload"}, {"echo", "hi"}} {
		r := cliRun(t, cliOpts{}, append(cmd[:1:1], append([]string{"--socket", sock}, cmd[1:]...)...)...)
		if r.code != exitFail || !strings.Contains(r.stderr, "untrusted server: "+sock) || !strings.Contains(r.stderr, "65534") {
			t.Errorf("%s to nobody's server: want exit 1 naming the untrusted uid, got\n%s", cmd[0], r)
		}
	}
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock, "--trust-uid", "65534")
	cliWant(t, exitOK, cliOpts{}, "ping", "--socket", sock, "--trust-uid", "nobody")
	if code := srv.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("serve exited %d\n%s", code, srv.output())
	}
}

// A process that inherits a worker's environment and a socket on fd 3
// that is not its parent's channel (a worker's child that kept them, a
// shell script passing them on) is the command line, not a worker.
func TestStrayWorkerEnvIsIgnored(t *testing.T) {
	t.Parallel()
	ours, theirs, err := ipc.Socketpair() // created by us, not by the CLI's parent
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	// sh is the CLI's parent and names itself, so only fd 3's peer
	// credentials give the stray away; "; exit" keeps sh from exec'ing.
	cmd := cliCommand(cliOpts{exe: "/bin/sh"}, "-c", ipc.EnvParentPID+`=$$ "$0" "$@"; exit $?`, testBinary(), "version")
	cmd.Env = append(cmd.Env, ipc.EnvWorker+"=1", ipc.EnvFD+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	var stdout, stderr testutil.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(stdout.String(), "supervisor") || !strings.Contains(stderr.String(), "not a worker") {
			t.Errorf("want the version and a warning, exit 0; got %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
		}
	case <-time.After(cliWait):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the CLI took the stray environment for a worker's and served fd 3\nstderr: %s", stderr.String())
	}
}
