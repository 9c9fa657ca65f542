//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/testutil"
)

// Listeners: sockets every worker inherits in the systemd
// socket-activation layout.

func init() {
	helperRoles["activation-http"] = activationHTTPRole
}

// activationHTTPRole is a program written for systemd socket
// activation, knowing nothing of pairvisor: it reads the layout as
// sd_listen_fds_with_names(3) does (LISTEN_PID its own pid, LISTEN_FDS
// descriptors from fd 3, LISTEN_FDNAMES) and serves HTTP on its one
// listener, answering with its pid, the listener's name and LISTEN_PID.
func activationHTTPRole(string) int {
	listenPID := os.Getenv("LISTEN_PID")
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if listenPID != strconv.Itoa(os.Getpid()) || err != nil || n != 1 {
		fmt.Fprintf(os.Stderr, "activation-http: want one listener for pid %d: LISTEN_PID=%s LISTEN_FDS=%s\n", os.Getpid(), listenPID, os.Getenv("LISTEN_FDS"))
		return 1
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	unix.CloseOnExec(3)
	f := os.NewFile(3, names[0])
	first, err := net.FileListener(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "activation-http: fd 3:", err)
		return 1
	}
	pid := strconv.Itoa(os.Getpid())
	err = http.Serve(first, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s %s %s", pid, names[0], listenPID)
	}))
	fmt.Fprintln(os.Stderr, "activation-http:", err)
	return 1
}

// tcpListener returns a listening TCP socket on a free loopback port,
// closed at the end of the test.
func tcpListener(t *testing.T) (*net.TCPListener, Listener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	sl, err := NewListener("http", l.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.File.Close() })
	return l.(*net.TCPListener), sl
}

// socketRefs counts this process's descriptors for the socket of f.
func socketRefs(t *testing.T, f *os.File) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("socket:[%d]", st.Ino)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == want {
			n++
		}
	}
	return n
}

// TestListenerLayout: a worker inherits exactly 0–2, the listeners on
// 3 and 4 and the channel on 5, with LISTEN_FDS, LISTEN_FDNAMES,
// LISTEN_PID (its own pid, although it was started through the exec
// shim) and PAIRVISOR_FD; nothing else. The worker is a shell, which
// opens no descriptor of its own, so /proc/$$/fd is what it inherited.
// The supervisor's duplicates of the listeners last until Run returns,
// and no health command inherits them.
func TestListenerLayout(t *testing.T) {
	t.Parallel()
	tl, http := tcpListener(t)
	dir := t.TempDir()
	ul, err := net.Listen("unix", filepath.Join(dir, "u.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	unixL, err := NewListener("", ul.(*net.UnixListener))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "report")
	base := socketRefs(t, http.File) // the caller's: its net.Listener and File
	cfg := Config{
		Workers:     2,
		Executable:  "/bin/sh",
		Args:        []string{"-c", `exec >"$0.%i.tmp" && echo "pid $$" && env && ls -l /proc/$$/fd && mv "$0.%i.tmp" "$0.%i" && exec sleep 1000`, out},
		Ready:       ReadyStarted,
		ReadyAfter:  50 * time.Millisecond,
		StopTimeout: time.Second,
		Listeners:   []Listener{http, unixL},
	}
	cfg.HealthCmd = []string{"/bin/sh", "-c", `ls -l /proc/$$/fd > "$0.health.tmp" && mv "$0.health.tmp" "$0.health"`, out}
	cfg.HealthInterval = 20 * time.Millisecond
	r := startSupervisor(t, cfg)
	r.waitReady()
	// The caller's files can go at once: the supervisor has its own.
	unixL.File.Close()
	if n := socketRefs(t, http.File); n != base+1 {
		t.Errorf("while running, %d descriptors of the TCP socket in the supervisor's process, want %d (the caller's and the supervisor's)", n, base+1)
	}
	for id := 1; id <= 2; id++ {
		var b []byte
		testutil.Poll(t, eventWait, 5*time.Millisecond, "worker report", func() bool {
			b, err = os.ReadFile(out + "." + strconv.Itoa(id))
			return err == nil
		}, nil)
		rep := string(b)
		var pid string
		fds := map[string]string{}
		env := map[string]string{}
		for _, l := range strings.Split(rep, "\n") {
			if p, ok := strings.CutPrefix(l, "pid "); ok {
				pid = p
			} else if k, v, ok := strings.Cut(l, "="); ok && !strings.Contains(k, " ") {
				env[k] = v
			} else if f := strings.Fields(l); len(f) >= 3 && f[len(f)-2] == "->" {
				fds[f[len(f)-3]] = f[len(f)-1]
			}
		}
		want := map[string]string{"LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:unknown", "LISTEN_PID": pid, "PAIRVISOR_FD": "5", "PAIRVISOR_WORKER": strconv.Itoa(id)}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("worker %d: %s=%q, want %q\n%s", id, k, env[k], v, rep)
			}
		}
		if _, ok := env["PAIRVISOR_EXEC_SHIM"]; ok {
			t.Errorf("worker %d: the shim's variable reached the program\n%s", id, rep)
		}
		var nums []int
		for n := range fds {
			i, _ := strconv.Atoi(n)
			nums = append(nums, i)
		}
		slices.Sort(nums)
		if !slices.Equal(nums, []int{0, 1, 2, 3, 4, 5}) {
			t.Errorf("worker %d inherited fds %v, want exactly 0–5\n%s", id, nums, rep)
		}
		ino := func(f *os.File) string {
			var st unix.Stat_t
			unix.Fstat(int(f.Fd()), &st)
			return fmt.Sprintf("socket:[%d]", st.Ino)
		}
		if fds["3"] != ino(http.File) || !strings.HasPrefix(fds["4"], "socket:") || !strings.HasPrefix(fds["5"], "socket:") || fds["4"] == fds["5"] {
			t.Errorf("worker %d: fd 3 %s (want the TCP socket %s), fd 4 %s, fd 5 %s", id, fds["3"], ino(http.File), fds["4"], fds["5"])
		}
	}
	var health string
	testutil.Poll(t, eventWait, 5*time.Millisecond, "a health command's report", func() bool {
		b, err := os.ReadFile(out + ".health")
		health = string(b)
		return err == nil
	}, nil)
	for _, l := range strings.Split(health, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[len(f)-2] == "->" && strings.HasPrefix(f[len(f)-1], "socket:") {
			t.Errorf("a health command inherited a socket: %s\n%s", l, health)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := socketRefs(t, http.File); n != base {
		t.Errorf("after Run, %d descriptors of the TCP socket in the supervisor's process, want %d (the caller's)", n, base)
	}
	// The socket still listens: the workers' ends were only copies.
	c, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Errorf("the caller's socket stopped listening: %v", err)
	} else {
		c.Close()
	}
}

// TestListenerGoActivation: a Go program written for systemd socket
// activation (reading the layout as sd_listen_fds_with_names(3) does)
// runs unchanged as a worker, and both workers serve the one socket.
func TestListenerGoActivation(t *testing.T) {
	t.Parallel()
	tl, l := tcpListener(t)
	cfg := testConfig(t, "activation-http", 2)
	cfg.Ready = ReadyStarted
	cfg.ReadyAfter = 50 * time.Millisecond
	cfg.Listeners = []Listener{l}
	r := startSupervisor(t, cfg)
	r.waitReady()
	want := map[string]bool{}
	for _, p := range pids(r.s.Status()) {
		want[strconv.Itoa(p)] = true
	}
	seen := map[string]bool{}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: eventWait}
	testutil.Poll(t, eventWait, time.Millisecond, "answers from both workers", func() bool {
		resp, err := client.Get("http://" + tl.Addr().String() + "/")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f := strings.Fields(string(b))
		if len(f) != 3 || !want[f[0]] || f[1] != "http" || f[2] != f[0] {
			t.Fatalf("answer %q: want a worker's pid (of %v), the name http, and LISTEN_PID equal to the pid", b, want)
		}
		seen[f[0]] = true
		return len(seen) == 2
	}, func() string { return fmt.Sprint(seen) })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestListenerConfig: New refuses listeners it cannot pass.
func TestListenerConfig(t *testing.T) {
	t.Parallel()
	_, l := tcpListener(t)
	closed, err := NewListener("x", l.File)
	if err != nil {
		t.Fatal(err)
	}
	closed.File.Close()
	many := make([]Listener, MaxListeners+1)
	for i := range many {
		many[i] = l
	}
	cases := map[string]struct {
		ls  []Listener
		env []string
		cfg bool // the error wraps ErrConfig
	}{
		"bad name":          {[]Listener{{Name: "a:b", File: l.File}}, nil, true},
		"long name":         {[]Listener{{Name: strings.Repeat("a", 256), File: l.File}}, nil, true},
		"no file":           {[]Listener{{Name: "a"}}, nil, true},
		"too many":          {many, nil, true},
		"LISTEN_FDS in Env": {[]Listener{l}, []string{"LISTEN_FDS=1"}, true},
		"LISTEN_PID in Env": {[]Listener{l}, []string{"LISTEN_PID=1"}, true},
		"closed file":       {[]Listener{closed}, nil, false},
	}
	for name, c := range cases {
		_, err := New(Config{Listeners: c.ls, Env: c.env})
		if err == nil || errors.Is(err, ErrConfig) != c.cfg {
			t.Errorf("%s: New = %v; want an error (wrapping ErrConfig: %v)", name, err, c.cfg)
		}
	}
	if _, err := New(Config{Env: []string{"LISTEN_FDS=1"}}); err != nil {
		t.Errorf("LISTEN_FDS in Env without listeners: %v", err)
	}
}

// TestNewListenerLeavesFlags: NewListener's file neither is polled nor
// changes O_NONBLOCK, which every holder of the socket shares, when
// its Fd is taken (as exec.Cmd does); net's File would clear it.
func TestNewListenerLeavesFlags(t *testing.T) {
	t.Parallel()
	tl, l := tcpListener(t)
	nonblock := func() bool {
		rc, err := tl.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var fl int
		rc.Control(func(fd uintptr) { fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		return fl&unix.O_NONBLOCK != 0
	}
	if !nonblock() {
		t.Fatal("set-up: net.Listen's socket is blocking")
	}
	l.File.Fd()
	if !nonblock() {
		t.Error("NewListener's File.Fd made the shared socket blocking")
	}
	fl, err := unix.FcntlInt(l.File.Fd(), unix.F_GETFD, 0)
	if err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("NewListener's File is not close-on-exec: %v", err)
	}
}
