//go:build linux

package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
)

func init() {
	harness.Register("listeners", listenersRole)
}

// listenersReport is what the "listeners" role prints.
type listenersReport struct {
	Err      string   `json:"err"`       // FromEnv's
	ListErr  string   `json:"list_err"`  // Listeners'
	Names    []string `json:"names"`     // the listeners', in order
	Same     bool     `json:"same"`      // a second Listeners call returned the same ones
	ByName   string   `json:"by_name"`   // Listener("admin")'s address network
	NoSuch   bool     `json:"no_such"`   // Listener("nope") wraps ErrNoListener
	Env      []string `json:"env"`       // LISTEN_ and PAIRVISOR_ variables left
	CloExec  []bool   `json:"cloexec"`   // fds 3, 4, 5 close-on-exec before FromEnv
	Channel  bool     `json:"channel"`   // the channel is fd 5: Serve could say hello
	ChildFDs []string `json:"child_fds"` // sockets a child of the worker holds
}

// listenersRole takes the listeners, reports, then answers one
// connection on each with the listener's name.
func listenersRole(...string) int {
	var rep listenersReport
	for fd := 3; fd <= 5; fd++ {
		fl, err := fcntlGetfd(fd)
		rep.CloExec = append(rep.CloExec, err == nil && fl&syscall.FD_CLOEXEC != 0)
	}
	w, err := FromEnv()
	if err != nil || w == nil {
		rep.Err = fmt.Sprint(w, err)
		json.NewEncoder(os.Stdout).Encode(rep)
		return 0
	}
	rep.Channel = w.file.Fd() == 5
	ls, err := w.Listeners()
	if err != nil {
		rep.ListErr = err.Error()
	}
	again, _ := w.Listeners()
	rep.Same = len(ls) > 0 && len(again) == len(ls) && again[0].File == ls[0].File
	for _, l := range ls {
		rep.Names = append(rep.Names, l.Name)
	}
	if f, err := w.Listener("admin"); err == nil {
		if l, err := net.FileListener(f); err == nil {
			rep.ByName = l.Addr().Network()
			l.Close()
		}
	}
	_, err = w.Listener("nope")
	rep.NoSuch = errors.Is(err, ErrNoListener)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, "PAIRVISOR_") {
			rep.Env = append(rep.Env, kv)
		}
	}
	out, _ := exec.Command("/bin/sh", "-c", `ls -l /proc/$$/fd`).Output()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "socket:") {
			rep.ChildFDs = append(rep.ChildFDs, l)
		}
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	for _, sl := range ls {
		l, err := net.FileListener(sl.File)
		sl.File.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "FileListener:", err)
			return 1
		}
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			return 1
		}
		io.WriteString(c, sl.Name)
		c.Close()
		l.Close()
	}
	return 0
}

// TestListeners: a worker started in the systemd layout (a shell sets
// LISTEN_PID to its own pid and execs the worker, keeping it) finds
// its two listeners by name, its channel after them, nothing of the
// layout left in its environment, and none of the descriptors in its
// children.
func TestListeners(t *testing.T) {
	t.Parallel()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	ul, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	tf, _ := tl.(*net.TCPListener).File()
	defer tf.Close()
	uf, _ := ul.(*net.UnixListener).File()
	defer uf.Close()
	_, childEnd := socketpair(t)

	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, testutil.Executable())
	cmd.Env = append(os.Environ(), harness.Use(t, "listeners"))
	cmd.Env = append(cmd.Env, contractEnv("1")...)
	cmd.Env = append(cmd.Env, contract.EnvFD+"=5", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin")
	cmd.ExtraFiles = []*os.File{tf, uf, childEnd}
	c := testutil.StartProcess(t, cmd)
	var rep listenersReport
	if l := c.Line(t, childWait); json.Unmarshal([]byte(l), &rep) != nil {
		t.Fatalf("report %q\n%s", l, c.Output())
	}
	if rep.Err != "" || rep.ListErr != "" {
		t.Fatalf("%+v\n%s", rep, c.Output())
	}
	if !slices.Equal(rep.Names, []string{"web", "admin"}) || !rep.Same || rep.ByName != "unix" || !rep.NoSuch || !rep.Channel {
		t.Errorf("report %+v: want listeners web and admin (the same on a second call, admin a unix one), no nope, the channel on fd 5", rep)
	}
	if !slices.Equal(rep.CloExec, []bool{true, true, true}) {
		t.Errorf("before FromEnv, fds 3, 4, 5 close-on-exec: %v, want all (the package's init)", rep.CloExec)
	}
	if len(rep.Env) > 0 || len(rep.ChildFDs) > 0 {
		t.Errorf("left for the worker's children: variables %q, sockets %q", rep.Env, rep.ChildFDs)
	}
	for _, addr := range []struct{ network, addr, want string }{{"tcp", tl.Addr().String(), "web"}, {"unix", ul.Addr().String(), "admin"}} {
		conn, err := net.Dial(addr.network, addr.addr)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(b) != addr.want {
			t.Errorf("%s listener answered %q, %v; want %q", addr.network, b, err, addr.want)
		}
	}
	c.WaitOK(t, childWait)
}

// TestListenersNotOurs: with LISTEN_PID naming another process the
// descriptors are not the worker's (sd_listen_fds(3)): no listeners,
// no error; and a worker given none has none.
func TestListenersNotOurs(t *testing.T) {
	t.Parallel()
	_, childEnd := socketpair(t)
	c := startChild(t, "listeners", childEnd, append(contractEnv("1"), "LISTEN_FDS=1", "LISTEN_PID=1")...)
	var rep listenersReport
	if l := c.Line(t, childWait); json.Unmarshal([]byte(l), &rep) != nil {
		t.Fatalf("report %q\n%s", l, c.Output())
	}
	if rep.Err != "" || rep.ListErr != "" || len(rep.Names) != 0 || len(rep.Env) != 0 {
		t.Errorf("LISTEN_PID of another process: %+v; want a worker without listeners and the variables removed", rep)
	}
	c.WaitOK(t, childWait)
}

func TestParseListenEnv(t *testing.T) {
	const pid = 100
	env := func(kv ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for _, e := range kv {
				if n, v, _ := strings.Cut(e, "="); n == k {
					return v, true
				}
			}
			return "", false
		}
	}
	cases := []struct {
		name  string
		env   []string
		chfd  int
		fds   []int
		names []string
		err   string
	}{
		{"none", nil, 3, nil, nil, ""},
		{"another pid", []string{"LISTEN_FDS=1", "LISTEN_PID=99"}, 3, nil, nil, ""},
		{"no pid", []string{"LISTEN_FDS=1"}, 3, nil, nil, ""},
		{"unnamed", []string{"LISTEN_FDS=2", "LISTEN_PID=100"}, 5, []int{3, 4}, []string{"unknown", "unknown"}, ""},
		{"named", []string{"LISTEN_FDS=2", "LISTEN_PID=100", "LISTEN_FDNAMES=a:b.c-d_e"}, 5, []int{3, 4}, []string{"a", "b.c-d_e"}, ""},
		{"zero", []string{"LISTEN_FDS=0", "LISTEN_PID=100", "LISTEN_FDNAMES="}, 3, nil, nil, ""},
		{"zero, channel elsewhere", []string{"LISTEN_FDS=0", "LISTEN_PID=100"}, 7, nil, nil, ""},
		{"bad count", []string{"LISTEN_FDS=x", "LISTEN_PID=100"}, 3, nil, nil, "not a count"},
		{"negative", []string{"LISTEN_FDS=-1", "LISTEN_PID=100"}, 3, nil, nil, "not a count"},
		{"huge", []string{"LISTEN_FDS=100000", "LISTEN_PID=100"}, 3, nil, nil, "not a count"},
		{"channel elsewhere", []string{"LISTEN_FDS=2", "LISTEN_PID=100"}, 3, nil, nil, "the channel should be fd 5"},
		{"too few names", []string{"LISTEN_FDS=2", "LISTEN_PID=100", "LISTEN_FDNAMES=a"}, 5, nil, nil, "1 names for 2"},
		{"bad name", []string{"LISTEN_FDS=1", "LISTEN_PID=100", "LISTEN_FDNAMES=a b"}, 4, nil, nil, "not a valid listener name"},
		{"empty name", []string{"LISTEN_FDS=2", "LISTEN_PID=100", "LISTEN_FDNAMES=a:"}, 5, nil, nil, "not a valid listener name"},
	}
	for _, c := range cases {
		fds, names, err := parseListenEnv(env(c.env...), pid, c.chfd)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one saying %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(fds, c.fds) || !slices.Equal(names, c.names) {
			t.Errorf("%s: %v %q %v; want %v %q", c.name, fds, names, err, c.fds, c.names)
		}
	}
	for _, s := range []string{"3", "5", "1027"} {
		if fd, err := channelFD(env(contract.EnvFD + "=" + s)); err != nil || strconv.Itoa(fd) != s {
			t.Errorf("PAIRVISOR_FD=%s: %d, %v", s, fd, err)
		}
	}
	for _, s := range []string{"", "2", "x", "-3", "1028"} {
		if _, err := channelFD(env(contract.EnvFD + "=" + s)); err == nil {
			t.Errorf("PAIRVISOR_FD=%q: no error", s)
		}
	}
	if fd, err := channelFD(env()); fd != 3 || err != nil {
		t.Errorf("no PAIRVISOR_FD: %d, %v; want 3", fd, err)
	}
}

// FuzzParseListenEnv: whatever the variables hold, parseListenEnv
// neither panics nor returns descriptors that are not 3, 4, … with a
// valid name each, ending right before the channel.
func FuzzParseListenEnv(f *testing.F) {
	f.Add("2", "100", "a:b", 5)
	f.Add("1", "100", "", 4)
	f.Add("0", "100", "x", 3)
	f.Add("1", "99", "a", 4)
	f.Add("3", "100", "a::b", 6)
	f.Fuzz(func(t *testing.T, n, pid, names string, chfd int) {
		env := map[string]string{"LISTEN_FDS": n, "LISTEN_PID": pid, "LISTEN_FDNAMES": names}
		fds, got, err := parseListenEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, 100, chfd)
		if err != nil {
			return
		}
		if len(fds) != len(got) {
			t.Fatalf("%d fds, %d names", len(fds), len(got))
		}
		for i, fd := range fds {
			if fd != 3+i || !contract.ValidListenName(got[i]) {
				t.Fatalf("fd %d name %q at %d", fd, got[i], i)
			}
		}
		if len(fds) > 0 && chfd != 3+len(fds) {
			t.Fatalf("%d listeners with the channel on %d", len(fds), chfd)
		}
	})
}
