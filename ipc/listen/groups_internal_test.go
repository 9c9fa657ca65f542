//go:build linux

package listen

import (
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHostilePeerGroups checks both ways of reading a peer's
// supplementary groups against the process's own.
func TestHostilePeerGroups(t *testing.T) {
	t.Parallel()
	own, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	var want []uint32
	for _, g := range own {
		want = append(want, uint32(g))
	}
	slices.Sort(want)
	check := func(how string, got []uint32, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		got = slices.Sorted(slices.Values(got))
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("%s: %v, want %v", how, got, want)
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	got, err := peerGroups(fds[0], int32(os.Getpid()))
	check("SO_PEERGROUPS", got, err)
	got, err = procGroups(int32(os.Getpid()))
	check("/proc/self/status", got, err)
	if _, err := procGroups(0); err == nil {
		t.Error("procGroups(0) succeeded")
	}
}
