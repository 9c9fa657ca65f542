//go:build linux

package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestFlagValues: every invalid flag value of every command is a usage
// error (exit 2) whose message names the flag and its valid range, and
// nothing starts.
func TestFlagValues(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	long := "/" + strings.Repeat("x", 120)
	positive := "must be a positive duration"
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		// run: the supervisor's flags
		{[]string{"run", "--workers", "0"}, "--workers must be between 1 and "},
		{[]string{"run", "--workers", "-1"}, "--workers must be between 1 and "},
		{[]string{"run", "--workers", "100000"}, "(RLIMIT_NOFILE is "},
		{[]string{"run", "--ping-interval", "-1s"}, "--ping-interval " + positive},
		{[]string{"run", "--ping-interval", "0"}, "--ping-interval " + positive},
		{[]string{"run", "--ping-timeout", "0"}, "--ping-timeout " + positive},
		{[]string{"run", "--ping-misses", "0"}, "--ping-misses must be at least 1, got 0"},
		{[]string{"run", "--start-timeout", "0"}, "--start-timeout " + positive},
		{[]string{"run", "--stop-timeout", "-1s"}, "--stop-timeout " + positive + " (like 500ms or 2s), got -1s"},
		{[]string{"run", "--stop-timeout", "0"}, "--stop-timeout " + positive},
		{[]string{"run", "--healthy-after", "-1s"}, "--healthy-after " + positive},
		{[]string{"run", "--max-restarts", "-3"}, "--max-restarts must be 0 (no limit) or positive, got -3"},
		{[]string{"run", "--restart-window", "0"}, "--restart-window " + positive},
		{[]string{"run", "--restart", "sometimes"}, `--restart must be always, on-failure or never, got "sometimes"`},
		// run: its own flags
		{[]string{"run", "--duration", "-5s"}, "--duration must be 0 (none: run until SIGINT or SIGTERM) or a positive duration, got -5s"},
		{[]string{"run", "--echo-interval", "-1ms"}, "--echo-interval must be 0 (no echo traffic) or a positive duration"},
		{[]string{"run", "--echo-max", "-1"}, "--echo-max must be between 0 and 16777216"},
		{[]string{"run", "--echo-max", "16777217"}, "--echo-max must be between 0 and 16777216"},
		// run and serve: the socket flags
		{[]string{"run", "--socket", sock, "--mode", "rwx"}, `--mode must be an octal permission from 0001 to 0777 (like 0600 or 0660), got "rwx"`},
		{[]string{"serve", "--socket", sock, "--mode", "rwx"}, "--mode must be an octal permission"},
		{[]string{"serve", "--socket", sock, "--mode", "0"}, "--mode must be an octal permission"},
		{[]string{"serve", "--socket", sock, "--mode", "1777"}, "--mode must be an octal permission"},
		{[]string{"serve", "--socket", sock, "--group", "nosuchgroup"}, `--group must be a group name or gid: userdb: no such user or group: group "nosuchgroup" is not in /etc/group`},
		{[]string{"run", "--socket", sock, "--group", "nosuchgroup"}, "--group must be a group name or gid"},
		{[]string{"serve", "--socket", sock, "--allow-uid", "nosuchuser"}, "--allow-uid must be a user name or uid"},
		{[]string{"serve", "--socket", sock, "--allow-gid", "nosuchgroup"}, "--allow-gid must be a group name or gid"},
		{[]string{"serve", "--socket", sock, "--max-conns", "0"}, "--max-conns must be at least 1, got 0"},
		{[]string{"serve", "--socket", sock, "--max-conns", "2000000000"}, "--max-conns must be between 1 and "},
		{[]string{"run", "--socket", sock, "--max-conns", "2000000000"}, "(RLIMIT_NOFILE is "},
		{[]string{"serve", "--socket", sock, "--idle-timeout", "0"}, "--idle-timeout " + positive},
		{[]string{"serve", "--socket", long}, "--socket must be a path of at most 107 bytes"},
		// the clients
		{[]string{"ping", "--socket", sock, "--count", "0"}, "--count must be at least 1, got 0"},
		{[]string{"ping", "--socket", sock, "--timeout", "0s"}, "--timeout " + positive},
		{[]string{"ping", "--socket", sock, "--interval", "-1s"}, "--interval must be 0 (no pause) or a positive duration"},
		{[]string{"echo", "--socket", sock, "--timeout", "-1s", "x"}, "--timeout " + positive},
		{[]string{"status", "--socket", sock, "--timeout", "-1s"}, "--timeout " + positive + " (like 500ms or 2s), got -1s"},
		{[]string{"reload", "--socket", sock, "--timeout", "0"}, "--timeout " + positive + " (like 500ms or 2s), got 0s"},
		// bench
		{[]string{"bench", "--pings", "0"}, "--pings must be at least 1"},
		{[]string{"bench", "--warmup", "-1"}, "--warmup must be at least 0"},
		{[]string{"bench", "--echo-seconds", "0"}, "--echo-seconds " + positive},
		{[]string{"bench", "--spawns", "0"}, "--spawns must be at least 1"},
		{[]string{"bench", "--socket", sock, "--clients", "0"}, "--clients must be between 1 and "},
		{[]string{"bench", "--socket", sock, "--size", "-1"}, "--size must be between 0 and 16777216"},
		{[]string{"bench", "--socket", sock, "--duration", "0"}, "--duration " + positive},
		// version takes no flags
		{[]string{"version", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitUsage, cliOpts{}, tc.args...)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, r)
			}
			if strings.Contains(r.stderr, "did not answer") || strings.Contains(r.stderr, "starting") {
				t.Errorf("a usage error started something:\n%s", r)
			}
		})
	}
	if !gone(sock) || !gone(sock+".lock") {
		t.Errorf("a usage error left files behind in %s", dir)
	}
}

// ulimited returns the options and arguments that run the CLI with
// args under RLIMIT_NOFILE n (soft and hard).
func ulimited(n int, args ...string) (cliOpts, []string) {
	return cliOpts{exe: "/bin/sh"}, append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, n), testutil.Executable()}, args...)
}

// TestFDLimit: --workers and --max-conns are checked against
// RLIMIT_NOFILE, and the most workers the check allows do start
// without running out of descriptors.
func TestFDLimit(t *testing.T) {
	t.Parallel()
	const limit = 128
	maxWorkers := (limit - fdReserve) / fdsPerWorker
	sock := filepath.Join(tempDir(t), "s")

	o, args := ulimited(limit, "run", "--workers", fmt.Sprint(maxWorkers+1))
	r := cliWant(t, exitUsage, o, args...)
	if want := fmt.Sprintf("--workers must be between 1 and %d (RLIMIT_NOFILE is %d, and each worker holds up to %d descriptors), got %d",
		maxWorkers, limit, fdsPerWorker, maxWorkers+1); !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q:\n%s", want, r)
	}
	o, args = ulimited(limit, "serve", "--socket", sock, "--max-conns", "1000")
	r = cliWant(t, exitUsage, o, args...)
	keep := max(64, limit/8) // what ipc.MaxConnsLimit leaves to the rest of the process
	if want := fmt.Sprintf("--max-conns must be between 1 and %d (RLIMIT_NOFILE is %d, %d descriptors are needed besides the clients', and the server keeps %d for the rest of the process), got 1000",
		min(limit-fdReserve, limit-keep), limit, fdReserve, keep); !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q:\n%s", want, r)
	}
	o, args = ulimited(limit, "run", "--workers", fmt.Sprint(maxWorkers), "--socket", sock)
	r = cliWant(t, exitUsage, o, args...)
	if !strings.Contains(r.stderr, "no descriptor is left for the clients of --socket") {
		t.Errorf("run with the most workers and a socket:\n%s", r)
	}

	// The most workers allowed all start, and the run stops cleanly.
	o, args = ulimited(limit, "run", "--workers", fmt.Sprint(maxWorkers), "--echo-interval", "5ms")
	p := cliStartOpts(t, o, args...)
	poll(t, "every worker to be ready", func() bool { return strings.Contains(p.Stderr.String(), "all workers ready") || p.Exited() }, p.Output)
	if code := p.stop(t, syscall.SIGTERM); code != exitOK {
		t.Errorf("run of %d workers under RLIMIT_NOFILE %d exited %d\n%s", maxWorkers, limit, code, p.Output())
	}
	if regexp.MustCompile(`too many open files|EMFILE`).MatchString(p.Stderr.String()) {
		t.Errorf("ran out of descriptors:\n%s", p.Output())
	}
	if !strings.Contains(p.Stdout.String(), fmt.Sprintf("workers    %d (restarts 0, failures 0)", maxWorkers)) {
		t.Errorf("summary:\n%s", p.Output())
	}
}
