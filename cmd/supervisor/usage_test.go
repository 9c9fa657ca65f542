//go:build linux

package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Tests of the command line itself: help, usage errors, version.

// flagsOf lists every flag each command documents.
var flagsOf = map[string][]string{
	"run": {"workers", "ping-interval", "ping-timeout", "ping-misses", "start-timeout", "stop-timeout",
		"restart", "healthy-after", "max-restarts", "restart-window", "log-level", "log-json",
		"socket", "mode", "group", "allow-uid", "allow-gid", "max-conns", "idle-timeout",
		"duration", "echo-interval", "echo-max"},
	"serve":  {"socket", "mode", "group", "allow-uid", "allow-gid", "max-conns", "idle-timeout", "log-level", "log-json"},
	"ping":   {"socket", "timeout", "count", "interval"},
	"echo":   {"socket", "timeout"},
	"status": {"socket", "timeout", "json"},
	"reload": {"socket", "timeout"},
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, args...)
			for _, c := range commands {
				if !strings.Contains(r.stdout, "  "+c.name+" ") {
					t.Errorf("usage does not list command %s:\n%s", c.name, r.stdout)
				}
			}
			if !strings.Contains(r.stdout, "Exit status: 0 success, 1 failure, 2 usage error") {
				t.Errorf("usage does not give the exit statuses:\n%s", r.stdout)
			}
		})
	}
	for cmd, flags := range flagsOf {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitOK, cliOpts{}, cmd, "--help")
			if !strings.HasPrefix(r.stdout, "Usage: supervisor "+cmd+" ") {
				t.Errorf("%s --help does not start with its usage line:\n%s", cmd, r.stdout)
			}
			for _, f := range flags {
				if !regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(f) + `\b`).MatchString(r.stdout) {
					t.Errorf("%s --help does not document -%s:\n%s", cmd, f, r.stdout)
				}
			}
			if r.stderr != "" {
				t.Errorf("%s --help wrote to stderr:\n%s", cmd, r.stderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	sock := filepath.Join(dir, "s")
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{nil, "Usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"ping", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"serve", "--socket", sock, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"run", "--workers", "many"}, `invalid value "many" for flag -workers`},
		{[]string{"run", "--restart", "sometimes"}, "sometimes"},
		{[]string{"run", "--log-level", "loud"}, `unknown log level "loud"`},
		{[]string{"serve"}, "--socket is required"},
		{[]string{"serve", "--socket", sock, "--log-level", "loud"}, `unknown log level "loud"`},
		{[]string{"ping"}, "--socket is required"},
		{[]string{"ping", "--socket", sock, "extra"}, `unexpected argument "extra"`},
		{[]string{"echo", "hello"}, "--socket is required"},
		{[]string{"status"}, "--socket is required"},
		{[]string{"status", "--socket", sock, "extra"}, `unexpected argument "extra"`},
		{[]string{"reload"}, "--socket is required"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := cliWant(t, exitUsage, cliOpts{}, tc.args...)
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("stderr does not say %q:\n%s", tc.stderr, r)
			}
		})
	}
	if !gone(sock) || !gone(sock+".lock") {
		t.Errorf("a usage error left files behind: %s", dir)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	want := fmt.Sprintf("supervisor %s (protocol %d)\n", version, wire.ProtocolVersion)
	for _, arg := range []string{"version", "--version"} {
		if r := cliWant(t, exitOK, cliOpts{}, arg); r.stdout != want {
			t.Errorf("%s printed %q, want %q", arg, r.stdout, want)
		}
	}
}
