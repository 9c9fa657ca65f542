//go:build linux

package sdnotify_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

// TestSendAbstract: Send reaches a receiver on an abstract name, as
// systemd's own socket is; the receiver reads what systemd would.
func TestSendAbstract(t *testing.T) {
	s := listen(t)
	t.Setenv("NOTIFY_SOCKET", s.Addr())
	sent, err := sdnotify.Send("READY=1\nSTATUS=all good\n" + sdnotify.MonotonicUSec())
	if !sent || err != nil {
		t.Fatalf("Send: %v, %v; want sent", sent, err)
	}
	m := readOK(t, s)
	if !m.Ready || m.Status != "all good" || m.MonotonicUSec == 0 || m.Sender.PID != int32(os.Getpid()) {
		t.Fatalf("received %+v", m)
	}
}

// TestSendPath: Send reaches a socket at a path, one datagram per call,
// byte for byte.
func TestSendPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	want := []string{"READY=1", "STATUS=x\nWATCHDOG=1"}
	for _, st := range want {
		if sent, err := sdnotify.Send(st); !sent || err != nil {
			t.Fatalf("Send(%q): %v, %v", st, sent, err)
		}
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: int64(readTimeout.Seconds())})
	buf := make([]byte, 4096)
	for _, st := range want {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || string(buf[:n]) != st {
			t.Fatalf("received %q, %v; want %q", buf[:max(n, 0)], err, st)
		}
	}
}

// TestSendNoManager: with NOTIFY_SOCKET unset or empty, Send sends
// nothing and says so, without error.
func TestSendNoManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := sdnotify.Send("READY=1"); sent || err != nil {
		t.Fatalf("empty NOTIFY_SOCKET: %v, %v; want false, nil", sent, err)
	}
	os.Unsetenv("NOTIFY_SOCKET")
	if sent, err := sdnotify.Send("READY=1"); sent || err != nil {
		t.Fatalf("NOTIFY_SOCKET unset: %v, %v; want false, nil", sent, err)
	}
}

// TestSendUnusable: an address sd_notify(3) does not take, or where no
// socket listens, is an error, and nothing is reported sent.
func TestSendUnusable(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		envErr bool
	}{
		{"relative/notify", true},
		{"vsock:2:1234", true},
		{filepath.Join(t.TempDir(), "nobody-here"), false},
		{"@pairvisor-test-nobody-listens-here", false},
	} {
		t.Setenv("NOTIFY_SOCKET", tc.addr)
		sent, err := sdnotify.Send("READY=1")
		if sent || err == nil || errors.Is(err, sdnotify.ErrEnv) != tc.envErr || !strings.Contains(err.Error(), tc.addr) {
			t.Errorf("NOTIFY_SOCKET=%s: %v, %v; want not sent, an error naming it (ErrEnv: %v)", tc.addr, sent, err, tc.envErr)
		}
	}
}

// TestSendToSystemdNotifyReceiver: our datagrams and systemd-notify's
// read the same at the same receiver.
func TestSendToSystemdNotifyReceiver(t *testing.T) {
	bin, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Skip("systemd-notify not installed")
	}
	s := listen(t)
	cmd := exec.Command(bin, "--no-block", "--status=from the tool")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+s.Addr())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-notify: %v\n%s", err, out)
	}
	theirs := readOK(t, s)
	t.Setenv("NOTIFY_SOCKET", s.Addr())
	if _, err := sdnotify.Send("STATUS=from the tool"); err != nil {
		t.Fatal(err)
	}
	ours := readOK(t, s)
	if ours.Status != theirs.Status || !ours.HasStatus || ours.Ready != theirs.Ready {
		t.Fatalf("ours %+v, systemd-notify's %+v", ours, theirs)
	}
}
