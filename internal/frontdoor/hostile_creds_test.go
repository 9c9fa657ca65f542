//go:build linux

package frontdoor_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Tests of the server against other local users: who may connect, who
// may send control requests, whom a client trusts, and how much a flood
// of refused peers may log. Other users are played by /usr/bin/python3
// run through setpriv as uid 65534 (nobody) or 65533. Every helper here
// is prefixed with "hostile".

const (
	hostileNobody = 65534
	hostileOther  = 65533 // a second unprivileged uid, with no passwd entry
	hostileGroup  = 4242  // a supplementary group given to a client
)

// hostilePyClient speaks the framed protocol: it sends a hello, then one
// request per argument after the address (ping, status, echo, message,
// reload, shutdown), and prints one line: "op:ok" or "op:errorCODE" for
// each, or "closed" when the server closes the connection.
const hostilePyClient = `
import os, socket, struct, sys
TYPES = {"ping": 2, "echo": 3, "message": 4, "shutdown": 5, "status": 6, "reload": 7}
def frame(t, i, p=b""):
    return struct.pack("<BBBBIQ", 0xC1, 0x50, t, 0, len(p), i) + p
def readn(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b
def readframe(s):
    _, _, t, _, n, i = struct.unpack("<BBBBIQ", readn(s, 16))
    return t, i, readn(s, n)
addr = sys.argv[1]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
out = []
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(addr)
    s.sendall(frame(1, 0, struct.pack("<HHI", 1, 1, os.getpid()) + b"py"))
    t, i, p = readframe(s)
    if t != 1:
        raise EOFError
    for n, op in enumerate(sys.argv[2:], 1):
        s.sendall(frame(TYPES[op], n, b"x"))
        t, i, p = readframe(s)
        if t == 15:
            out.append("%s:error%d" % (op, struct.unpack("<H", p[:2])[0]))
        else:
            out.append(op + ":ok")
except (EOFError, ConnectionResetError, BrokenPipeError):
    out.append("closed")
print(" ".join(out), flush=True)
`

// hostilePyFlood opens argv[2] connections to argv[1] that send
// nothing and prints "connected N". With argv[3] == "churn" it closes
// each at once instead and prints "done N". Otherwise it then waits for
// its stdin to close and prints "open K closed M": how many of its
// connections the server still holds and how many it closed.
const hostilePyFlood = `
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
churn = len(sys.argv) > 3 and sys.argv[3] == "churn"
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(addr)
    if churn:
        s.close()
    else:
        socks.append(s)
if churn:
    print("done", n, flush=True)
    sys.exit(0)
print("connected", len(socks), flush=True)
sys.stdin.read()
opened = closed = 0
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(1)
        closed += 1
    except BlockingIOError:
        opened += 1
    except OSError:
        closed += 1
print("open", opened, "closed", closed, flush=True)
`

// hostilePyServer listens on argv[1], prints "listening", and then
// until its stdin closes accepts connections: for each it prints
// "got N", N being the bytes the client sent before it waited for an
// answer, and answers a hello if it got any.
const hostilePyServer = `
import os, select, socket, struct, sys
addr = sys.argv[1]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(addr)
l.listen(16)
print("listening", flush=True)
while True:
    r, _, _ = select.select([l, sys.stdin], [], [])
    if sys.stdin in r:
        break
    c, _ = l.accept()
    c.settimeout(20)
    d = c.recv(4096)
    print("got", len(d), flush=True)
    if d:
        hello = struct.pack("<HHI", 1, 1, os.getpid()) + b"impostor"
        c.sendall(struct.pack("<BBBBIQ", 0xC1, 0x50, 1, 0, len(hello), 0) + hello)
        while c.recv(4096):
            pass
    c.close()
`

// hostileProc is a python3 process running as another user.
type hostileProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *testutil.LogBuffer
	waited chan error
	done   bool
}

// hostileStart runs script under /usr/bin/python3 (or another python3
// every user may run) as uid:uid with the given supplementary groups,
// through setpriv. It is killed at cleanup unless finish was called.
func hostileStart(tb testing.TB, uid int, groups []int, script string, args ...string) *hostileProc {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to run a client as another user")
	}
	setpriv := testutil.RequireTool(tb, "setpriv")
	py := testutil.ToolForOthers(tb, "python3")
	sp := []string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid)}
	if len(groups) == 0 {
		sp = append(sp, "--clear-groups")
	} else {
		var gs []string
		for _, g := range groups {
			gs = append(gs, strconv.Itoa(g))
		}
		sp = append(sp, "--groups="+strings.Join(gs, ","))
	}
	sp = append(sp, py, "-c", script)
	p := &hostileProc{cmd: exec.Command(setpriv, append(sp, args...)...), lines: make(chan string, 16), stderr: new(testutil.LogBuffer), waited: make(chan error, 1)}
	p.cmd.Dir = "/"
	p.cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.waited <- p.cmd.Wait()
	}()
	tb.Cleanup(func() {
		if !p.done {
			p.cmd.Process.Kill()
			p.stdin.Close()
			for range p.lines {
			}
			<-p.waited
		}
	})
	return p
}

// line returns the next line the process prints, failing the test if
// none comes within testutil.UDSWait.
func (p *hostileProc) line(tb testing.TB) string {
	tb.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			tb.Fatalf("python exited without printing; stderr:\n%s", p.stderr.String())
		}
		return l
	case <-time.After(testutil.UDSWait):
		tb.Fatalf("python printed nothing within %v; stderr:\n%s", testutil.UDSWait, p.stderr.String())
		return ""
	}
}

// finish closes the process's stdin and waits for it to exit 0.
func (p *hostileProc) finish(tb testing.TB) {
	tb.Helper()
	p.done = true
	p.stdin.Close()
	timeout := time.After(testutil.UDSWait)
	for {
		select {
		case l, ok := <-p.lines:
			if ok {
				tb.Errorf("python printed more: %q", l)
				continue
			}
			select {
			case err := <-p.waited:
				if err != nil {
					tb.Errorf("python: %v; stderr:\n%s", err, p.stderr.String())
				}
			case <-timeout:
				p.cmd.Process.Kill()
				<-p.waited
				tb.Errorf("python did not exit within %v", testutil.UDSWait)
			}
			return
		case <-timeout:
			p.cmd.Process.Kill()
			for range p.lines {
			}
			<-p.waited
			tb.Errorf("python did not exit within %v", testutil.UDSWait)
			return
		}
	}
}

// hostileRun runs script to completion as uid and returns the one line
// it prints.
func hostileRun(tb testing.TB, uid int, groups []int, script string, args ...string) string {
	tb.Helper()
	p := hostileStart(tb, uid, groups, script, args...)
	l := p.line(tb)
	p.finish(tb)
	return l
}

// hostileDir returns a fresh directory other users may enter.
func hostileDir(tb testing.TB) string {
	tb.Helper()
	dir := testutil.ShortDir(tb, "pv")
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// hostileAbstract returns an abstract socket name unique to the test.
func hostileAbstract(tb testing.TB) string {
	return fmt.Sprintf("@pairvisor-hostile-%d-%s", os.Getpid(), filepath.Base(testutil.ShortDir(tb, "pv")))
}

// hostileManyGroups returns more supplementary groups than fit the
// first buffer SO_PEERGROUPS is read into, hostileGroup last.
func hostileManyGroups() []int {
	var gs []int
	for g := 5000; g < 5040; g++ {
		gs = append(gs, g)
	}
	return append(gs, hostileGroup)
}

// hostileHandler answers every request it gets, so that a refusal can
// only come from the server's own checks.
func hostileHandler(ctx context.Context, req ipc.Request) ([]byte, error) {
	return []byte("done:" + req.Type.String()), nil
}

// TestHostileControlRequests checks who may send control requests
// (message, reload, shutdown) and who may connect at all: peers other
// than the server's own uid and root get CodeDenied for them unless a
// control list names them, an abstract socket without an allow-list
// serves only its own uid and root, and group lists honour
// supplementary groups.
func TestHostileControlRequests(t *testing.T) {
	t.Parallel()
	readOnly := "ping:ok status:ok echo:ok"
	denied := fmt.Sprintf("message:error%[1]d reload:error%[1]d shutdown:error%[1]d", wire.CodeDenied)
	allowed := "message:ok reload:ok shutdown:ok"
	ops := []string{"ping", "status", "echo", "message", "reload", "shutdown"}
	cases := []struct {
		name     string
		abstract bool
		cfg      frontdoor.Config
		groups   []int
		want     string
	}{
		{name: "path-open", cfg: frontdoor.Config{}, want: readOnly + " " + denied},
		{name: "path-control-uid", cfg: frontdoor.Config{ControlUIDs: []uint32{hostileNobody}}, want: readOnly + " " + allowed},
		{name: "path-control-other-uid", cfg: frontdoor.Config{ControlUIDs: []uint32{hostileOther}}, want: readOnly + " " + denied},
		{name: "path-control-supplementary-gid", cfg: frontdoor.Config{ControlGIDs: []uint32{hostileGroup}}, groups: []int{hostileGroup}, want: readOnly + " " + allowed},
		{name: "path-control-gid-not-held", cfg: frontdoor.Config{ControlGIDs: []uint32{hostileGroup}}, want: readOnly + " " + denied},
		{name: "path-allow-supplementary-gid", cfg: frontdoor.Config{AllowGIDs: []uint32{hostileGroup}}, groups: []int{hostileGroup}, want: readOnly + " " + denied},
		{name: "path-allow-gid-among-many", cfg: frontdoor.Config{AllowGIDs: []uint32{hostileGroup}}, groups: hostileManyGroups(), want: readOnly + " " + denied},
		{name: "path-allow-gid-not-held", cfg: frontdoor.Config{AllowGIDs: []uint32{hostileGroup}}, groups: []int{hostileGroup + 1}, want: "closed"},
		{name: "abstract-no-list", abstract: true, cfg: frontdoor.Config{}, want: "closed"},
		{name: "abstract-other-uid-listed", abstract: true, cfg: frontdoor.Config{AllowUIDs: []uint32{hostileOther}}, want: "closed"},
		{name: "abstract-allow-uid", abstract: true, cfg: frontdoor.Config{AllowUIDs: []uint32{hostileNobody}}, want: readOnly + " " + denied},
		{name: "abstract-control-uid", abstract: true, cfg: frontdoor.Config{ControlUIDs: []uint32{hostileNobody}}, want: readOnly + " " + allowed},
		{name: "abstract-allow-supplementary-gid", abstract: true, cfg: frontdoor.Config{AllowGIDs: []uint32{hostileGroup}}, groups: []int{hostileGroup}, want: readOnly + " " + denied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.Handler = hostileHandler
			var s *udsServer
			if tc.abstract {
				s = udsServe(t, hostileAbstract(t), listen.Config{}, tc.cfg)
			} else {
				s = udsServe(t, filepath.Join(hostileDir(t), "s"), listen.Config{Mode: 0o666, GID: -1}, tc.cfg)
			}
			uid := hostileNobody
			got := hostileRun(t, uid, tc.groups, hostilePyClient, append([]string{s.path}, ops...)...)
			if got != tc.want {
				t.Errorf("as uid %d groups %v: %q, want %q", uid, tc.groups, got, tc.want)
			}
			switch {
			case tc.want == "closed":
				s.logs.WaitFor(t, "refused peer", fmt.Sprintf("uid=%d", uid))
			case strings.Contains(tc.want, fmt.Sprintf("reload:error%d", wire.CodeDenied)):
				s.logs.WaitFor(t, "denied control request", fmt.Sprintf("uid=%d", uid), "type=reload")
			}
			// The server's own uid may do anything, whatever the lists.
			c := udsDial(t, s.path)
			ctx := udsCtx(t, testutil.UDSWait)
			for _, typ := range []wire.Type{wire.TypeStatus, wire.TypeMessage, wire.TypeReload, wire.TypeShutdown} {
				if got, err := c.Call(ctx, typ, nil, nil); err != nil || string(got) != "done:"+typ.String() {
					t.Errorf("own uid %s: %q, %v", typ, got, err)
				}
			}
		})
	}
}

// TestHostileDialUntrusted checks that Dial refuses a server run by
// another user before sending it a byte, unless TrustUIDs names it.
func TestHostileDialUntrusted(t *testing.T) {
	t.Parallel()
	name := hostileAbstract(t)
	srv := hostileStart(t, hostileNobody, nil, hostilePyServer, name)
	if l := srv.line(t); l != "listening" {
		t.Fatalf("python server: %q", l)
	}
	pid := srv.cmd.Process.Pid // setpriv execs python: same pid

	c, err := ipc.Dial(udsCtx(t, testutil.UDSWait), name, ipc.ConnConfig{})
	if err == nil {
		c.Close()
		t.Errorf("Dial to a server run by uid %d succeeded", hostileNobody)
	} else {
		t.Logf("Dial: %v", err)
		if !errors.Is(err, ipc.ErrUntrustedPeer) {
			t.Errorf("Dial: %v, want ErrUntrustedPeer", err)
		}
		for _, want := range []string{fmt.Sprintf("uid %d", hostileNobody), fmt.Sprintf("pid %d", pid)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Dial error %q does not name the server (%s)", err, want)
			}
		}
		var op *ipc.OpError
		if !errors.As(err, &op) || op.Op != "dial" {
			t.Errorf("Dial error %v is not a dial OpError", err)
		}
	}
	if l := srv.line(t); l != "got 0" {
		t.Errorf("the untrusted server received bytes: %q, want \"got 0\"", l)
	}

	// Trusted on request.
	c, err = ipc.Dial(udsCtx(t, testutil.UDSWait), name, ipc.ConnConfig{TrustUIDs: []uint32{4000, hostileNobody}})
	if err != nil {
		t.Fatalf("Dial with TrustUIDs naming the server: %v", err)
	}
	if p := c.Peer(); p.Name != "impostor" {
		t.Errorf("peer %+v", p)
	}
	c.Close()
	if l := srv.line(t); !strings.HasPrefix(l, "got ") || l == "got 0" {
		t.Errorf("trusted dial: server saw %q", l)
	}
	srv.finish(t)
}

// TestHostileListenAbstractHeld checks the one-line error of a Listen
// on an abstract name another user holds.
func TestHostileListenAbstractHeld(t *testing.T) {
	t.Parallel()
	name := hostileAbstract(t)
	srv := hostileStart(t, hostileNobody, nil, hostilePyServer, name)
	if l := srv.line(t); l != "listening" {
		t.Fatalf("python server: %q", l)
	}
	l, err := listen.New(name, listen.Config{})
	if err == nil {
		l.Close()
		t.Fatal("Listen on a held abstract name succeeded")
	}
	if !errors.Is(err, listen.ErrInUse) {
		t.Errorf("Listen: %v, want ErrInUse", err)
	}
	msg := err.Error()
	t.Logf("Listen: %v", err)
	for _, want := range []string{name, fmt.Sprintf("uid %d", hostileNobody), fmt.Sprintf("pid %d", srv.cmd.Process.Pid)} {
		if !strings.Contains(msg, want) {
			t.Errorf("Listen error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("Listen error spans lines: %q", msg)
	}
	// Listen's probe connected once.
	if l := srv.line(t); l != "got 0" {
		t.Errorf("probe: %q", l)
	}
	srv.finish(t)
}

// TestHostileRefusedFlood checks that a flood of refused peers logs a
// few lines a second plus a count of the rest, and that the count is
// exact.
func TestHostileRefusedFlood(t *testing.T) {
	t.Parallel()
	const n = 2000
	s := udsServe(t, filepath.Join(hostileDir(t), "s"), listen.Config{Mode: 0o666, GID: -1}, frontdoor.Config{AllowUIDs: []uint32{4242}})
	start := time.Now()
	if got := hostileRun(t, hostileNobody, nil, hostilePyFlood, s.path, strconv.Itoa(n), "churn"); got != fmt.Sprintf("done %d", n) {
		t.Fatalf("flood: %q", got)
	}
	udsPoll(t, "every flood connection to be refused", func() bool { return s.srv.Stats().Refused == n }, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })
	hostileLogBounded(t, s.logs, "refused peer", n, start)
}

// hostileLogBounded checks that the log accounts for n events of the
// kind msg (lines plus the counts of summary lines), and that it spent
// at most 5 lines and one summary per second since start on them.
func hostileLogBounded(t *testing.T, logs *testutil.LogBuffer, msg string, n int, start time.Time) {
	t.Helper()
	countRe := regexp.MustCompile(`count=(\d+)`)
	var lines, summaries, suppressed int
	tally := func() bool {
		lines, summaries, suppressed = 0, 0, 0
		for _, l := range strings.Split(logs.String(), "\n") {
			if !strings.Contains(l, msg+":") {
				continue
			}
			if m := countRe.FindStringSubmatch(l); m != nil && strings.Contains(l, "suppressed") {
				k, _ := strconv.Atoi(m[1])
				summaries++
				suppressed += k
				continue
			}
			lines++
		}
		return lines+suppressed == n
	}
	// The last summary is written once its second has passed.
	udsPoll(t, "the log to account for every "+msg, tally, func() string {
		return fmt.Sprintf("%d lines + %d suppressed (in %d summaries) != %d events", lines, suppressed, summaries, n)
	})
	elapsed := time.Since(start)
	// A few lines per second, and one summary per second at most.
	seconds := int(elapsed/time.Second) + 2
	t.Logf("%d × %q in %v: %d lines, %d summaries", n, msg, elapsed.Round(time.Millisecond), lines, summaries)
	if lines > 5*seconds || summaries > seconds {
		t.Errorf("%d × %q in %v: %d lines and %d summaries; want at most %d and %d", n, msg, elapsed, lines, summaries, 5*seconds, seconds)
	}
}

// TestHostileFullFlood checks the same for a flood of clients that find
// the table full of framed clients, which are never evicted.
func TestHostileFullFlood(t *testing.T) {
	t.Parallel()
	const (
		maxConns = 4
		n        = 1000
	)
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{MaxConns: maxConns})
	for range maxConns {
		udsDial(t, s.path)
	}
	start := time.Now()
	for i := range n {
		fd, err := testutil.ConnectUnix(s.path)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		unix.Close(fd)
	}
	udsPoll(t, "every flood connection to be refused", func() bool { return s.srv.Stats().Refused == n }, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })
	hostileLogBounded(t, s.logs, "too many connections; closing new one", n, start)
}
