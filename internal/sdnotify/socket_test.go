//go:build linux

package sdnotify_test

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

// TestListenAddr checks the names: "@pairvisor-notify/<our pid>/", a
// different one for each socket, each reachable.
func TestListenAddr(t *testing.T) {
	a, b := listen(t), listen(t)
	prefix := "@pairvisor-notify/" + strconv.Itoa(os.Getpid()) + "/"
	for _, s := range []*sdnotify.Socket{a, b} {
		if !strings.HasPrefix(s.Addr(), prefix) || len(s.Addr()) <= len(prefix) {
			t.Errorf("Addr() = %q, want %q and more", s.Addr(), prefix)
		}
	}
	if a.Addr() == b.Addr() {
		t.Fatalf("two sockets share the name %q", a.Addr())
	}
	send(t, a.Addr(), []byte("STATUS=a"))
	send(t, b.Addr(), []byte("STATUS=b"))
	if m := readOK(t, b); m.Status != "b" {
		t.Errorf("b read %+v", m)
	}
	if m := readOK(t, a); m.Status != "a" {
		t.Errorf("a read %+v", m)
	}
}

// TestReadSender checks a valid datagram from this process: its
// content, and the credentials the kernel attached.
func TestReadSender(t *testing.T) {
	s := listen(t)
	send(t, s.Addr(), []byte("READY=1\nSTATUS=up\nWATCHDOG=1\n"))
	m := readOK(t, s)
	want := sdnotify.Message{
		Sender: sdnotify.Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())},
		Ready:  true, Status: "up", HasStatus: true, Watchdog: true,
	}
	if m != want {
		t.Errorf("Read = %+v, want %+v", m, want)
	}
	if n := s.Refused(); n != 0 {
		t.Errorf("Refused() = %d", n)
	}
}

// TestSizeLimit checks the 4096-byte limit: 4096 bytes are read whole,
// 4097 or far more are refused with their real length (MSG_TRUNC), and
// the socket goes on.
func TestSizeLimit(t *testing.T) {
	s := listen(t)
	status := strings.Repeat("s", sdnotify.MaxDatagram-len("STATUS="))
	send(t, s.Addr(), []byte("STATUS="+status))
	if m := readOK(t, s); m.Status != status {
		t.Errorf("a %d-byte datagram: status of %d bytes, want %d", sdnotify.MaxDatagram, len(m.Status), len(status))
	}
	for _, size := range []int{sdnotify.MaxDatagram + 1, 100 << 10} {
		big := append([]byte("READY=1\nSTATUS="), bytes.Repeat([]byte("b"), size-len("READY=1\nSTATUS="))...)
		send(t, s.Addr(), big)
		re := readRefused(t, s, sdnotify.ErrTooLarge)
		if re.Size != size || re.Sender.PID != int32(os.Getpid()) {
			t.Errorf("refusal of a %d-byte datagram: %+v", size, re)
		}
	}
	send(t, s.Addr(), []byte("READY=1"))
	if m := readOK(t, s); !m.Ready {
		t.Errorf("after the refusals: %+v", m)
	}
	if n := s.Refused(); n != 2 {
		t.Errorf("Refused() = %d, want 2", n)
	}
}

// TestGarbage checks that invalid datagrams are refused one by one,
// each with its reason, and that valid ones still get through.
func TestGarbage(t *testing.T) {
	s := listen(t)
	garbage := []string{
		"hello",
		"READY=2",
		"WATCHDOG_USEC=abc",
		"ERRNO=-1",
		"READY=1\x00\x00",
		"\x00\x01\x02\x03",
		"STATUS=\xff",
		"BARRIER=1\nREADY=1",
	}
	for i, g := range garbage {
		send(t, s.Addr(), []byte(g))
		re := readRefused(t, s, sdnotify.ErrInvalid)
		if re.Size != len(g) || re.Sender.PID != int32(os.Getpid()) {
			t.Errorf("refusal of %q: %+v", g, re)
		}
		if msg := re.Error(); !strings.Contains(msg, "refused a "+strconv.Itoa(len(g))+"-byte datagram from pid ") {
			t.Errorf("refusal of %q says %q", g, msg)
		}
		send(t, s.Addr(), []byte("ERRNO="+strconv.Itoa(i)))
		if m := readOK(t, s); !m.HasErrno || m.Errno != i {
			t.Errorf("after %q: %+v", g, m)
		}
	}
	if n := s.Refused(); n != uint64(len(garbage)) {
		t.Errorf("Refused() = %d, want %d", n, len(garbage))
	}
}

// TestDescriptorsClosed sends descriptors along with datagrams: with a
// valid one (FDSTORE=1, which we ignore), with an invalid one, and more
// than MaxFDs with a valid one. Every descriptor that reached this
// process is closed by Read (the pipes' read ends reach EOF once our own
// write ends are closed), and this process's descriptors and
// goroutines are as before.
func TestDescriptorsClosed(t *testing.T) {
	before := testutil.TakeSnapshot()
	func() {
		s := listen(t)
		defer s.Close()

		r, w, closeFD := pipes(t, 2)
		send(t, s.Addr(), []byte("FDSTORE=1\nFDNAME=db\nSTATUS=kept"), w...)
		for _, fd := range w {
			closeFD(fd)
		}
		if m := readOK(t, s); m.Status != "kept" {
			t.Errorf("FDSTORE=1 datagram: %+v", m)
		}
		waitEOF(t, "the two FDSTORE descriptors closed", r...)
		for _, fd := range r {
			closeFD(fd)
		}

		r, w, closeFD = pipes(t, 1)
		send(t, s.Addr(), []byte("READY=maybe"), w...)
		closeFD(w[0])
		if re := readRefused(t, s, sdnotify.ErrInvalid); re.FDs != 1 {
			t.Errorf("invalid datagram with a descriptor: %+v", re)
		}
		waitEOF(t, "the invalid datagram's descriptor closed", r...)
		closeFD(r[0])

		r, w, closeFD = pipes(t, 10)
		send(t, s.Addr(), []byte("READY=1"), w...)
		for _, fd := range w {
			closeFD(fd)
		}
		// The kernel passes as many as fit, MaxFDs, and drops the rest.
		if re := readRefused(t, s, sdnotify.ErrControlTruncated); re.FDs != sdnotify.MaxFDs || re.Sender.PID != int32(os.Getpid()) {
			t.Errorf("datagram with 10 descriptors: %+v, want %d descriptors from pid %d", re, sdnotify.MaxFDs, os.Getpid())
		}
		waitEOF(t, "all 10 descriptors closed", r...)
		for _, fd := range r {
			closeFD(fd)
		}
	}()
	if err := before.Check(leakWait); err != nil {
		t.Fatal(err)
	}
}

// TestCloseUnblocksRead closes the socket while a Read waits in the
// poller: the Read returns ErrClosed, as does every later one, and a
// second Close is harmless.
func TestCloseUnblocksRead(t *testing.T) {
	s := listen(t)
	ch := make(chan error, 1)
	go func() {
		_, err := s.Read()
		ch <- err
	}()
	// Wait until the Read is parked in the poller, so that Close has a
	// waiting Read to wake.
	testutil.Poll(t, readTimeout, time.Millisecond, "a Read waiting in the poller", func() bool {
		for _, g := range strings.Split(testutil.Stacks(), "\n\n") {
			if strings.Contains(g, "sdnotify.(*Socket).Read") && strings.Contains(g, "runtime_pollWait") {
				return true
			}
		}
		return false
	}, testutil.Stacks)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := testutil.Receive(t, ch, readTimeout, "the waiting Read to return"); !errors.Is(err, sdnotify.ErrClosed) {
		t.Fatalf("waiting Read returned %v, want ErrClosed", err)
	}
	if _, err := s.Read(); !errors.Is(err, sdnotify.ErrClosed) {
		t.Errorf("Read after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCloseReleasesQueued closes a socket with a datagram and its
// descriptor still queued: the kernel releases the descriptor.
func TestCloseReleasesQueued(t *testing.T) {
	s := listen(t)
	r, w, closeFD := pipes(t, 1)
	send(t, s.Addr(), []byte("BARRIER=1"), w...)
	closeFD(w[0])
	if atEOF(r[0]) {
		t.Fatal("the queued descriptor is closed before the socket is")
	}
	s.Close()
	waitEOF(t, "the queued descriptor released", r...)
}

// TestReadAllocation checks that what Read allocates does not grow with
// the datagram: reading (and refusing) 100 KiB datagrams allocates a
// small fraction of one.
func TestReadAllocation(t *testing.T) {
	s := listen(t)
	const n, size = 8, 100 << 10 // 8 stay below the kernel's queue limit, 10
	big := bytes.Repeat([]byte("x"), size)
	for range n {
		send(t, s.Addr(), big)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		// The datagrams are queued: Read does not wait.
		if _, err := s.Read(); !errors.Is(err, sdnotify.ErrTooLarge) {
			t.Fatalf("Read = %v, want ErrTooLarge", err)
		}
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<10 {
		t.Errorf("reading %d datagrams of %d bytes allocated %d bytes", n, size, got)
	}
}
