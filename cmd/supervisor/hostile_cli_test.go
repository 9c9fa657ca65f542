//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
)

// Another local user against `run --socket`: it may ping a socket whose
// mode lets it in, but not reload the workers unless it is allowed to,
// and it is not served at all on an abstract socket without allow-lists.
func TestRunControlOtherUser(t *testing.T) {
	t.Parallel()
	dir, exe := otherUser(t)
	abstract := abstractName("ctl")
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
				t.Errorf("run exited %d\n%s", code, srv.Output())
			}
		})
	}
}

// A client does not trust a server run by another user (someone who
// bound the name first) unless told to.
func TestClientUntrustedServer(t *testing.T) {
	t.Parallel()
	_, exe := otherUser(t)
	sock := abstractName("squat")
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
		t.Errorf("serve exited %d\n%s", code, srv.Output())
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
	cmd := cliCommand(t, cliOpts{exe: "/bin/sh"}, "-c", contract.EnvParentPID+`=$$ "$0" "$@"; exit $?`, testutil.Executable(), "version")
	cmd.Env = append(cmd.Env, contract.EnvWorker+"=1", contract.EnvFD+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	p := testutil.StartProcess(t, cmd)
	theirs.Close()
	// A CLI that took the environment for a worker's would serve fd 3
	// until its peer closed it, and be killed.
	if err := p.Wait(t, cliWait); err != nil || !strings.Contains(p.Stdout.String(), "supervisor") || !strings.Contains(p.Stderr.String(), "not a worker") {
		t.Errorf("want the version and a warning, exit 0; got %v\n%s", err, p.Output())
	}
}
