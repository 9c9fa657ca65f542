//go:build linux

package frontdoor_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/frontdoor"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
)

// Tests of the server under thread, descriptor and slot exhaustion:
// thousands of idle clients, slowloris floods from our own uid and from
// others, and an open-file limit lower than MaxConns.

func init() {
	registerHelper("hostile-rlimit", helperHostileRlimit)
}

// hostileRlimit is the open-file limit the hostile-rlimit helper runs
// under.
const hostileRlimit = 256

// helperHostileRlimit lowers its open-file limit to hostileRlimit, then
// serves args[0] with MaxConns 15000. It writes "limit N" (MaxConnsLimit)
// on fd 3 once it serves, waits for EOF on fd 3, and writes its stats
// ("active A accepted B evicted C") before exiting. It logs to stderr.
func helperHostileRlimit(args ...string) int {
	ch := os.NewFile(contract.ChannelFD, "channel")
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, "getrlimit:", err)
		return 1
	}
	rl.Cur = hostileRlimit
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		return 1
	}
	l, err := listen.New(args[0], listen.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "rlimit", Output: os.Stderr, Level: hclog.Debug})
	srv := frontdoor.New(l, frontdoor.Config{ConnConfig: ipc.ConnConfig{Logger: log}, MaxConns: 15000})
	served := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { served <- srv.Serve(ctx) }()
	fmt.Fprintf(ch, "limit %d\n", frontdoor.MaxConnsLimit())
	buf := make([]byte, 64)
	for {
		if _, err := ch.Read(buf); err != nil {
			break
		}
	}
	st := srv.Stats()
	cancel()
	if err := <-served; err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	fmt.Fprintf(ch, "active %d accepted %d evicted %d\n", st.Active, st.Accepted, st.Evicted)
	return 0
}

// hostileThreads returns this process's thread count.
func hostileThreads(tb testing.TB) int {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatal("no Threads line in /proc/self/status")
	return 0
}

// hostileNofile makes sure this process may open n more descriptors.
func hostileNofile(tb testing.TB, n int) {
	tb.Helper()
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		tb.Fatal(err)
	}
	fds, err := testutil.OpenFDs()
	if err != nil {
		tb.Fatal(err)
	}
	need := uint64(len(fds) + n + 100)
	if rl.Cur >= need {
		return
	}
	rl.Cur, rl.Max = need, max(rl.Max, need)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		tb.Skipf("needs %d descriptors; raising RLIMIT_NOFILE: %v", need, err)
	}
}

// hostileRead is read(2) retried on EINTR (the runtime's preemption
// signals interrupt a blocking read).
func hostileRead(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// hostileIdle opens n connections to path that send nothing. They are
// closed at cleanup.
func hostileIdle(tb testing.TB, path string, n int) []int {
	tb.Helper()
	fds := make([]int, 0, n)
	tb.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	for range n {
		fd, err := testutil.ConnectUnix(path)
		if err != nil {
			tb.Fatalf("connect %d: %v", len(fds), err)
		}
		fds = append(fds, fd)
	}
	return fds
}

// TestHostileIdleRawThreads checks that idle raw and unclassified
// clients cost no OS thread each. It does not run in parallel: it
// counts this process's threads.
func TestHostileIdleRawThreads(t *testing.T) {
	const n = 3000
	hostileNofile(t, 2*n)
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{MaxConns: n + 100})
	before := hostileThreads(t)
	fds := hostileIdle(t, s.path, n)
	// Half of them become raw clients (one echo, then silence); the
	// others never send a byte.
	tv := unix.NsecToTimeval(testutil.UDSWait.Nanoseconds())
	for i, fd := range fds {
		if i%2 == 1 {
			continue
		}
		if _, err := unix.Write(fd, []byte("x\n")); err != nil {
			t.Fatalf("client %d: write: %v", i, err)
		}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		var b [2]byte
		if n, err := hostileRead(fd, b[:]); n != 2 || err != nil {
			t.Fatalf("client %d: read %d bytes, %v; want the echo", i, n, err)
		}
	}
	udsPoll(t, "every client to be served", func() bool {
		st := s.srv.Stats()
		return st.Active == n && st.Raw == n/2
	}, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })
	threads := hostileThreads(t)
	t.Logf("%d idle clients (%d raw, %d silent): %d threads, %d before they connected", n, n/2, n/2, threads, before)
	if threads > before+40 {
		t.Errorf("%d idle clients: %d threads (%d before); want no thread per idle client", n, threads, before)
	}
	// They are still served.
	for _, i := range []int{0, n / 2, n - 2} {
		if _, err := unix.Write(fds[i], []byte("y\n")); err != nil {
			t.Fatal(err)
		}
		var b [2]byte
		if n, err := hostileRead(fds[i], b[:]); n != 2 || err != nil || string(b[:]) != "y\n" {
			t.Errorf("client %d after the wait: %q, %v", i, b[:n], err)
		}
	}
}

// hostileFlooder keeps connecting clients that send nothing to path
// until stopped, holding at most keep of them open (it closes its
// oldest). count returns how many connections it made.
type hostileFlooder struct {
	stop  chan struct{}
	done  chan error
	mu    sync.Mutex
	count int
}

func hostileFlood(tb testing.TB, path string, keep int) *hostileFlooder {
	f := &hostileFlooder{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		var ring []int
		defer func() {
			for _, fd := range ring {
				unix.Close(fd)
			}
		}()
		for {
			select {
			case <-f.stop:
				f.done <- nil
				return
			default:
			}
			fd, err := testutil.ConnectUnix(path)
			if err != nil {
				f.done <- err
				return
			}
			ring = append(ring, fd)
			if len(ring) > keep {
				unix.Close(ring[0])
				ring = ring[1:]
			}
			f.mu.Lock()
			f.count++
			f.mu.Unlock()
		}
	}()
	tb.Cleanup(func() { f.halt(tb) })
	return f
}

func (f *hostileFlooder) made() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count
}

// halt stops the flood; it may be called more than once.
func (f *hostileFlooder) halt(tb testing.TB) {
	tb.Helper()
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	select {
	case err := <-f.done:
		if err != nil {
			tb.Errorf("flood: %v", err)
		}
	case <-time.After(testutil.UDSWait):
		tb.Errorf("the flood did not stop within %v", testutil.UDSWait)
	}
}

// TestHostileSlowlorisSameUID fills the connection table with clients
// of our own uid that send nothing, and keeps more coming, while a
// framed client dials and pings.
func TestHostileSlowlorisSameUID(t *testing.T) {
	t.Parallel()
	const maxConns = 64
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{MaxConns: maxConns})
	hostileIdle(t, s.path, 3*maxConns)
	udsPoll(t, "the idle clients to be accepted", func() bool { return s.srv.Stats().Accepted == 3*maxConns }, nil)

	flood := hostileFlood(t, s.path, 2*maxConns)
	udsPoll(t, "the flood to run", func() bool { return flood.made() >= maxConns }, nil)
	const attempts = 10
	var (
		c    *ipc.Conn
		errs []string
	)
	for i := 0; i < attempts && c == nil; i++ {
		ctx := udsCtx(t, testutil.UDSWait)
		conn, err := ipc.Dial(ctx, s.path, ipc.ConnConfig{Name: "legit"})
		if err == nil {
			if _, err = conn.Ping(ctx); err == nil {
				c = conn
				t.Cleanup(func() { c.Close() })
				break
			}
			conn.Close()
		}
		errs = append(errs, err.Error())
	}
	if c == nil {
		t.Fatalf("%d Dial+Ping attempts under a slowloris flood failed: %q; stats %+v", attempts, errs, s.srv.Stats())
	}
	t.Logf("Dial+Ping succeeded after %d failed attempts; stats %+v", len(errs), s.srv.Stats())

	// A framed client is not evicted by the flood that goes on.
	made := flood.made()
	udsPoll(t, "more flooding", func() bool { return flood.made() >= made+2*maxConns }, nil)
	if _, err := c.Ping(udsCtx(t, testutil.UDSWait)); err != nil {
		t.Errorf("ping after %d more flood connections: %v", flood.made()-made, err)
	}
	flood.halt(t)
	if st := s.srv.Stats(); st.Active > maxConns || st.Evicted == 0 {
		t.Errorf("stats %+v, want at most %d active and some evicted", st, maxConns)
	}
}

// TestHostileSlowlorisOtherUID floods a world-writable socket from
// uid 65534: it cannot hold more than its share of the table, the
// server's own uid gets through on the reserved slots, and another uid
// gets through too.
func TestHostileSlowlorisOtherUID(t *testing.T) {
	t.Parallel()
	const (
		maxConns = 64
		perUID   = maxConns / 4 // the default
		flood    = 200
	)
	s := udsServe(t, filepath.Join(hostileDir(t), "s"), listen.Config{Mode: 0o666, GID: -1}, frontdoor.Config{MaxConns: maxConns})
	p := hostileStart(t, hostileNobody, nil, hostilePyFlood, s.path, strconv.Itoa(flood))
	if l := p.line(t); l != fmt.Sprintf("connected %d", flood) {
		t.Fatalf("flood: %q", l)
	}
	udsPoll(t, "the flood to be accepted", func() bool { return s.srv.Stats().Accepted == flood }, func() string { return fmt.Sprintf("%+v", s.srv.Stats()) })

	if _, err := udsDial(t, s.path).Ping(udsCtx(t, testutil.UDSWait)); err != nil {
		t.Errorf("own uid under the flood: %v", err)
	}
	if got := hostileRun(t, hostileOther, nil, hostilePyClient, s.path, "ping"); got != "ping:ok" {
		t.Errorf("uid %d under uid %d's flood: %q, want ping:ok", hostileOther, hostileNobody, got)
	}
	p.stdin.Close()
	got := p.line(t)
	p.finish(t)
	var open, closed int
	if _, err := fmt.Sscanf(got, "open %d closed %d", &open, &closed); err != nil {
		t.Fatalf("flood result %q: %v", got, err)
	}
	t.Logf("uid %d's %d connections: %d still open, %d closed by the server; stats %+v", hostileNobody, flood, open, closed, s.srv.Stats())
	if open > perUID {
		t.Errorf("uid %d holds %d connections, want at most %d (MaxConnsPerUID's default)", hostileNobody, open, perUID)
	}
}

// TestHostileMaxConnsRlimit runs a server with MaxConns 15000 under an
// open-file limit of 256: MaxConns is lowered with a warning, and more
// clients than that are handled without the server running out of
// descriptors.
func TestHostileMaxConnsRlimit(t *testing.T) {
	t.Parallel()
	path := filepath.Join(testutil.ShortDir(t, "pv"), "s")
	h, ch := startHelper(t, "hostile-rlimit", path)
	defer ch.Close()
	ch.SetReadDeadline(time.Now().Add(testutil.UDSWait))
	rd := bufio.NewReader(ch)
	line, err := rd.ReadString('\n')
	if err != nil {
		h.Cmd.Process.Kill()
		h.wait(t)
		t.Fatalf("helper: %v; stderr:\n%s", err, h.Stderr.String())
	}
	var limit int
	if _, err := fmt.Sscanf(line, "limit %d", &limit); err != nil || limit <= 0 || limit >= hostileRlimit {
		t.Fatalf("helper says %q; want a limit under %d", line, hostileRlimit)
	}
	// One client after another, each served and then idle.
	clients := limit + 100
	tv := unix.NsecToTimeval(testutil.UDSWait.Nanoseconds())
	for i := range clients {
		fd := testutil.MustConnectUnix(t, path)
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			t.Fatalf("client %d: write: %v", i, err)
		}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		var b [1]byte
		if n, err := hostileRead(fd, b[:]); n != 1 || err != nil {
			h.Cmd.Process.Kill()
			h.wait(t)
			t.Fatalf("client %d of %d: read %d bytes, %v; want its echo; helper stderr:\n%s", i, clients, n, err, h.Stderr.String())
		}
	}
	rc, err := ch.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = syscall.Shutdown(int(fd), syscall.SHUT_WR) })
	if err != nil {
		t.Fatal(err)
	}
	ch.SetReadDeadline(time.Now().Add(testutil.UDSWait))
	line, err = rd.ReadString('\n')
	if err != nil {
		h.Cmd.Process.Kill()
		h.wait(t)
		t.Fatalf("helper stats: %v; stderr:\n%s", err, h.Stderr.String())
	}
	h.exitOK(t)
	var active, accepted, evicted int
	if _, err := fmt.Sscanf(line, "active %d accepted %d evicted %d", &active, &accepted, &evicted); err != nil {
		t.Fatalf("helper stats %q: %v", line, err)
	}
	t.Logf("limit %d; %d clients: %d active, %d accepted, %d evicted", limit, clients, active, accepted, evicted)
	if active > limit || accepted != clients {
		t.Errorf("%d active, %d accepted; want at most %d active and all %d accepted", active, accepted, limit, clients)
	}
	stderr := h.Stderr.String()
	if !strings.Contains(stderr, "max_conns=15000") || !strings.Contains(stderr, fmt.Sprintf("lowered_to=%d", limit)) {
		t.Errorf("no warning about the lowered MaxConns; stderr:\n%s", stderr)
	}
	if strings.Contains(stderr, "too many open files") || strings.Contains(stderr, "out of file descriptors") {
		t.Errorf("the server ran out of descriptors; stderr:\n%s", stderr)
	}
}

// TestHostileSlowReadersSameUID fills the table with raw clients of our
// own uid that send and never read their echo, so that the server is
// stuck writing to each with more of their bytes unread: a framed
// client still gets in.
func TestHostileSlowReadersSameUID(t *testing.T) {
	t.Parallel()
	const maxConns = 8
	s := udsServe(t, "", listen.Config{}, frontdoor.Config{MaxConns: maxConns})
	chunk := udsRandom(64 << 10)
	for _, fd := range hostileIdle(t, s.path, maxConns) {
		udsFill(t, fd, chunk)
	}
	udsPoll(t, "the slow readers to be served", func() bool { return s.srv.Stats().Raw == maxConns }, nil)
	const attempts = 10
	var errs []string
	for range attempts {
		ctx := udsCtx(t, testutil.UDSWait)
		c, err := ipc.Dial(ctx, s.path, ipc.ConnConfig{Name: "legit"})
		if err == nil {
			_, err = c.Ping(ctx)
			c.Close()
			if err == nil {
				break
			}
		}
		errs = append(errs, err.Error())
	}
	if len(errs) == attempts {
		t.Fatalf("%d Dial+Ping attempts with the table full of slow readers failed: %q; stats %+v", attempts, errs, s.srv.Stats())
	}
	if st := s.srv.Stats(); st.Evicted == 0 {
		t.Errorf("stats %+v, want a slow reader evicted", st)
	}
}
