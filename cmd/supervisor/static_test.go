//go:build linux

package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// The supervisor binary is also every built-in worker (it re-executes
// itself), so what it links is paid at each worker start. Package net
// links the cgo resolver (runtime/cgo), which with the default
// CGO_ENABLED=1 makes the binary dynamically linked: the dynamic loader
// then runs before every worker (about 0.7 ms). os/user links cgo too;
// crypto would bring its package inits and megabytes. These tests keep
// them out.

// forbiddenDep says why the supervisor must not link package p, or "".
func forbiddenDep(p string) string {
	switch {
	case p == "net" || strings.HasPrefix(p, "net/") && p != "net/netip":
		return "package net (or above it) links the cgo resolver"
	case p == "runtime/cgo":
		return "cgo makes the binary dynamically linked"
	case p == "os/user":
		return "os/user links the cgo user lookup"
	case p == "crypto" || strings.HasPrefix(p, "crypto/"):
		return "crypto is megabytes and package inits at every worker start"
	}
	return ""
}

// goEnv is the environment for the go tool here: ours without
// CGO_ENABLED, so that the tool's default applies, as for a user who
// runs `go build ./cmd/supervisor`.
func goEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CGO_ENABLED=") })
}

// goTool runs the go tool in this package's directory and returns its
// standard output.
func goTool(t *testing.T, env []string, args ...string) string {
	t.Helper()
	gobin := testutil.RequireTool(t, "go")
	cmd := exec.Command(gobin, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// TestNoNetDeps: the supervisor command links none of net, runtime/cgo,
// os/user or crypto, here and on the other systems it builds for.
func TestNoNetDeps(t *testing.T) {
	t.Parallel()
	for _, goos := range []string{"", "darwin", "freebsd"} {
		env := goEnv()
		if goos != "" {
			env = append(env, "GOOS="+goos, "GOARCH=arm64")
		}
		deps := strings.Fields(goTool(t, env, "list", "-deps", "."))
		if !slices.Contains(deps, "os") {
			t.Fatalf("GOOS=%s go list -deps: no package os among %d; the listing is wrong", goos, len(deps))
		}
		for _, p := range deps {
			if why := forbiddenDep(p); why != "" {
				t.Errorf("GOOS=%s: the supervisor command links %s: %s (`go list -deps ./cmd/supervisor`; find the importer with `go list -f '{{.ImportPath}} {{.Imports}}' -deps ./cmd/supervisor`)", goos, p, why)
			}
		}
	}
}

// TestStaticBinary: `go build ./cmd/supervisor` with the default
// settings (CGO_ENABLED unset) gives a static binary: no program
// interpreter (PT_INTERP), no shared library needed.
func TestStaticBinary(t *testing.T) {
	t.Parallel()
	env := goEnv()
	if cgo := strings.TrimSpace(goTool(t, env, "env", "CGO_ENABLED")); cgo != "1" {
		// Still built and checked; TestNoNetDeps catches what cgo would link.
		t.Logf("cgo is off by default here (CGO_ENABLED=%s: no C compiler?): the build cannot show what cgo would link", cgo)
	}
	bin := filepath.Join(t.TempDir(), "supervisor")
	start := time.Now()
	goTool(t, env, "build", "-o", bin, ".")
	t.Logf("built in %v", time.Since(start).Round(time.Millisecond))
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			t.Errorf("the default build is dynamically linked: program interpreter %q (a package links cgo: see TestNoNetDeps)", strings.TrimRight(string(b), "\x00"))
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the default build needs shared libraries %q (%v)", libs, err)
	}
}
