//go:build linux

package ipc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// File descriptors passed with frames (fds.go, docs/PROTOCOL.md "File
// descriptors"). The tests that count this process's descriptors are
// not parallel: a parallel test opening files meanwhile would make the
// count meaningless (parallel tests wait while these run).

func init() {
	registerHelper("serve-files", helperServeFiles)
}

// filesCfg is a ConnConfig that takes descriptors (version 3).
func filesCfg(name string, h ipc.Handler) ipc.ConnConfig {
	return ipc.ConnConfig{Name: name, Handler: h, MaxFiles: wire.MaxFiles}
}

// openFDs counts this process's open descriptors.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents) - 1 // ReadDir's own
}

// waitFDs waits until this process has want descriptors open: the Conns
// close what they do not hand over from their own goroutines, so the
// count settles a moment after the frame.
func waitFDs(tb testing.TB, want int, what string) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		n := openFDs(tb)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %d descriptors open, want %d (%+d leaked)", what, n, want, n-want)
		}
		time.Sleep(time.Millisecond)
	}
}

// pipeWith returns the read end of a pipe holding s, whose write end is
// closed: reading it gives s and EOF.
func pipeWith(tb testing.TB, s string) *os.File {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.WriteString(s); err != nil {
		tb.Fatal(err)
	}
	w.Close()
	return r
}

// readAllClose reads f to EOF and closes it.
func readAllClose(tb testing.TB, f *os.File) string {
	tb.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		tb.Fatalf("reading %s: %v", f.Name(), err)
	}
	return string(b)
}

// cloexec reports whether f's descriptor is close-on-exec.
func cloexec(tb testing.TB, f *os.File) bool {
	tb.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var flags int
	var ferr error
	rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFD, 0) })
	if ferr != nil {
		tb.Fatal(ferr)
	}
	return flags&unix.FD_CLOEXEC != 0
}

// sendRaw writes b to the raw socket f in one sendmsg, with fds attached
// (SCM_RIGHTS) if any.
func sendRaw(tb testing.TB, f *os.File, b []byte, fds ...int) {
	tb.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(int(f.Fd()), b, oob, nil, 0); err != nil {
		tb.Fatal(err)
	}
}

// sendRawFiles writes b to the raw socket f in one sendmsg with n
// descriptors (pipe ends) attached, and closes ours: the receiver has
// duplicates.
func sendRawFiles(tb testing.TB, f *os.File, b []byte, n int) {
	tb.Helper()
	var fds []int
	for len(fds) < n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			tb.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	defer closeFDsTest(fds)
	sendRaw(tb, f, b, fds[:n]...)
}

// filesHandler answers a message with the content of every file that
// came with it, "|"-separated, each file's close-on-exec flag, and
// attaches a pipe holding "reply" for each file received.
func filesHandler(tb testing.TB) ipc.Handler {
	return func(ctx context.Context, req ipc.Request) ([]byte, error) {
		var parts []string
		for _, f := range req.Files {
			ce := cloexec(tb, f)
			parts = append(parts, fmt.Sprintf("%s:%v", readAllClose(tb, f), ce))
			if err := req.AttachFiles(pipeWith(tb, "reply")); err != nil {
				return nil, err
			}
		}
		return []byte(strings.Join(parts, "|")), nil
	}
}

// TestFilesRoundTrip: files go with a request and with its reply, on a
// version 3 connection; what arrives is the same file (its content),
// close-on-exec, and owned by the receiver; nothing is left open.
func TestFilesRoundTrip(t *testing.T) {
	before := openFDs(t)
	func() {
		a, b := pair(t, filesCfg("a", nil), filesCfg("b", filesHandler(t)))
		if a.Version() != 3 || b.Version() != 3 {
			t.Fatalf("versions %d and %d, want 3 with MaxFiles on both sides", a.Version(), b.Version())
		}
		ctx := ctxTimeout(t, waitTimeout)
		for n := 0; n <= wire.MaxFiles; n += 5 {
			var files []*os.File
			var want []string
			for i := range n {
				files = append(files, pipeWith(t, fmt.Sprintf("file-%d", i)))
				want = append(want, fmt.Sprintf("file-%d:true", i))
			}
			reply, rfiles, err := a.CallFiles(ctx, wire.TypeMessage, []byte("x"), files)
			if err != nil {
				t.Fatalf("%d files: %v", n, err)
			}
			closeAll(files) // the sender keeps its own: closing them is ours
			if string(reply) != strings.Join(want, "|") {
				t.Errorf("%d files: reply %q, want %q", n, reply, strings.Join(want, "|"))
			}
			if len(rfiles) != n {
				t.Fatalf("%d files sent, %d came back", n, len(rfiles))
			}
			for _, f := range rfiles {
				if !cloexec(t, f) {
					t.Errorf("a file of the reply is not close-on-exec")
				}
				if got := readAllClose(t, f); got != "reply" {
					t.Errorf("a file of the reply holds %q, want %q", got, "reply")
				}
			}
		}
		a.Close()
		b.Close()
	}()
	waitFDs(t, before, "after the round trips")
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// helperServeFiles is helperServe taking descriptors (version 3) and
// answering messages with filesHandler, in another process: the
// descriptors cross a process boundary, and the helper checks that they
// arrive close-on-exec.
func helperServeFiles(...string) int {
	tb := &helperTB{}
	ctx, cancel := context.WithTimeout(context.Background(), helperHelloTimeout)
	c, err := ipc.NewConn(ctx, os.NewFile(contract.ChannelFD, "channel"), filesCfg("serve-files", filesHandler(tb)))
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve-files:", err)
		return 1
	}
	<-c.Done()
	if err := c.Err(); !errors.Is(err, ipc.ErrPeerClosed) || tb.failed {
		fmt.Fprintln(os.Stderr, "serve-files: connection ended with", err, tb.msgs)
		return 1
	}
	return 0
}

// helperTB is the testing.TB of a helper process: its failures make the
// helper exit 1.
type helperTB struct {
	testing.TB
	failed bool
	msgs   []string
}

func (h *helperTB) Helper() {}
func (h *helperTB) Fatal(args ...any) {
	h.failed = true
	h.msgs = append(h.msgs, fmt.Sprint(args...))
	panic(fmt.Sprint(args...)) // the Conn answers code 10
}
func (h *helperTB) Fatalf(format string, args ...any) { h.Fatal(fmt.Sprintf(format, args...)) }

// TestFilesAcrossProcesses: files sent to another process arrive there
// close-on-exec with their content, and the files it sends back arrive
// here.
func TestFilesAcrossProcesses(t *testing.T) {
	before := openFDs(t)
	func() {
		c, _ := dialHelper(t, "serve-files", filesCfg("test", nil))
		if c.Version() != 3 {
			t.Fatalf("version %d, want 3", c.Version())
		}
		ctx := ctxTimeout(t, waitTimeout)
		files := []*os.File{pipeWith(t, "one"), pipeWith(t, "two")}
		reply, rfiles, err := c.CallFiles(ctx, wire.TypeMessage, nil, files)
		closeAll(files)
		if err != nil {
			t.Fatal(err)
		}
		if string(reply) != "one:true|two:true" {
			t.Errorf("reply %q, want the two files' contents, each close-on-exec", reply)
		}
		if len(rfiles) != 2 {
			t.Fatalf("%d files came back, want 2", len(rfiles))
		}
		for _, f := range rfiles {
			if !cloexec(t, f) || readAllClose(t, f) != "reply" {
				t.Errorf("a file from the helper is not a close-on-exec pipe holding %q", "reply")
			}
		}
		c.Close()
	}()
	waitFDs(t, before, "after the call")
}

// TestFilesVersions: a Conn that takes descriptors works unchanged with
// a version 1 or 2 peer, both ways round: they speak the peer's version,
// requests and replies flow, and CallFiles with files fails with
// ErrNoFiles without sending anything (the connection goes on).
func TestFilesVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		role   string // the helper's
		cfg    ipc.ConnConfig
		want   uint16
		v2peer bool
	}{
		{"we-v3-peer-v2", "serve", filesCfg("test", nil), 2, true},
		{"we-v3-peer-v1", "serve-v1", filesCfg("test", nil), 1, true},
		{"we-v2-peer-v3", "serve-files", ipc.ConnConfig{Name: "test"}, 2, false},
		{"we-v1-peer-v3", "serve-files", ipc.ConnConfig{Name: "test", MaxVersion: 1}, 1, false},
		{"we-v2-max-files-peer-v3", "serve-files", ipc.ConnConfig{Name: "test", MaxVersion: 2, MaxFiles: 4}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := dialHelper(t, tc.role, tc.cfg)
			if c.Version() != tc.want {
				t.Fatalf("version %d, want %d", c.Version(), tc.want)
			}
			ctx := ctxTimeout(t, waitTimeout)
			f := pipeWith(t, "x")
			defer f.Close()
			_, _, err := c.CallFiles(ctx, wire.TypeMessage, []byte("hi"), []*os.File{f})
			if !errors.Is(err, ipc.ErrNoFiles) {
				t.Fatalf("CallFiles with a file on version %d: %v, want ErrNoFiles", tc.want, err)
			}
			for i := range 20 {
				msg := []byte(fmt.Sprintf("m%d", i))
				reply, files, err := c.CallFiles(ctx, wire.TypeMessage, msg, nil)
				if err != nil || len(files) != 0 || (tc.v2peer && !bytes.Equal(reply, msg)) {
					t.Fatalf("message %d: %q, %d files, %v", i, reply, len(files), err)
				}
				if _, err := c.Echo(ctx, msg, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestFilesLimits: the sender refuses more than wire.MaxFiles with one
// frame, and a Handler's AttachFiles likewise, both closing nothing of
// the caller's and leaking nothing.
func TestFilesLimits(t *testing.T) {
	before := openFDs(t)
	func() {
		attachErr := make(chan error, 1)
		a, b := pair(t, filesCfg("a", nil), filesCfg("b", func(ctx context.Context, req ipc.Request) ([]byte, error) {
			var many []*os.File
			for range wire.MaxFiles + 1 {
				many = append(many, pipeWith(t, "x"))
			}
			attachErr <- req.AttachFiles(many...) // closes them
			return []byte("ok"), nil
		}))
		ctx := ctxTimeout(t, waitTimeout)
		var files []*os.File
		for range wire.MaxFiles + 1 {
			files = append(files, pipeWith(t, "x"))
		}
		_, _, err := a.CallFiles(ctx, wire.TypeMessage, nil, files)
		if !errors.Is(err, ipc.ErrTooManyFiles) {
			t.Errorf("CallFiles with %d files: %v, want ErrTooManyFiles", len(files), err)
		}
		for _, f := range files { // still ours, and open
			if _, err := f.Stat(); err != nil {
				t.Errorf("CallFiles closed the caller's file: %v", err)
			}
		}
		closeAll(files)
		reply, rfiles, err := a.CallFiles(ctx, wire.TypeMessage, nil, nil)
		if err != nil || string(reply) != "ok" || len(rfiles) != 0 {
			t.Fatalf("reply %q with %d files, %v; want ok and none", reply, len(rfiles), err)
		}
		if err := recv(t, attachErr, "AttachFiles"); !errors.Is(err, ipc.ErrTooManyFiles) {
			t.Errorf("AttachFiles with %d files: %v, want ErrTooManyFiles", wire.MaxFiles+1, err)
		}
		a.Close()
		b.Close()
	}()
	waitFDs(t, before, "after the refusals")
}

// TestFilesTruncated: a peer that sends more descriptors with a frame
// than the receiver's MaxFiles makes the kernel cut the control message
// (MSG_CTRUNC, closing the excess); the receiver closes the ones that
// did arrive, sends an error about the connection (code 5) and closes.
// Once from a Go sender (another Conn), once by hand.
func TestFilesTruncated(t *testing.T) {
	before := openFDs(t)
	func() {
		small := filesCfg("b", filesHandler(t))
		small.MaxFiles = 2
		a, b := pair(t, filesCfg("a", nil), small)
		files := []*os.File{pipeWith(t, "1"), pipeWith(t, "2"), pipeWith(t, "3")}
		_, _, err := a.CallFiles(ctxTimeout(t, waitTimeout), wire.TypeMessage, nil, files)
		closeAll(files)
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != wire.CodeTooLarge || !errors.Is(err, ipc.ErrClosed) {
			t.Errorf("CallFiles with 3 files to a peer taking 2: %v, want the peer's error 5 and a closed Conn", err)
		}
		waitDone(t, b)
		wantOpFrameError(t, b.Err(), ipc.ErrTooManyFiles)
		a.Close()
	}()
	waitFDs(t, before, "after a Go sender's truncated control message")

	func() {
		cfg := filesCfg("c", filesHandler(t))
		cfg.MaxFiles = 1
		c, raw := rawPeerVersions(t, cfg, 1, 3)
		sendRawFiles(t, raw, header(wire.TypeMessage, wire.FlagFiles, 0, 1), 5)
		h, p := readRaw(t, raw)
		if h.Type != wire.TypeError || h.ID != 0 || wire.ParseError(p).Code != wire.CodeTooLarge {
			t.Errorf("answer to 5 descriptors for MaxFiles 1: %v %q, want an error about the connection, code 5", h, p)
		}
		waitDone(t, c)
		wantOpFrameError(t, c.Err(), ipc.ErrTooManyFiles)
		raw.Close()
	}()
	waitFDs(t, before, "after a raw sender's truncated control message")
}

func closeFDsTest(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// TestFilesRefused: descriptors that come with a frame nobody takes are
// closed, and the connection goes on: a ping and an echo (answered by
// the Conn), a request refused for want of a handler, a handler slot, or
// because a shutdown came first, a reply to a plain Call, and a reply
// whose caller gave up.
func TestFilesRefused(t *testing.T) {
	before := openFDs(t)
	func() {
		blk := newBlocker(0)
		cfg := filesCfg("c", blk.handle)
		cfg.MaxConcurrent = 1
		c, raw := rawPeerVersions(t, cfg, 3, 3)
		if c.Version() != 3 {
			t.Fatalf("version %d, want 3", c.Version())
		}
		expect := func(what string, id uint64, typ wire.Type, code wire.Code) {
			t.Helper()
			h, p := readRaw(t, raw)
			switch {
			case h.ID != id || !h.IsReply():
				t.Fatalf("%s: got %v, want the reply to %d", what, h, id)
			case code != 0 && (h.Type != wire.TypeError || wire.ParseError(p).Code != code):
				t.Fatalf("%s: got %v %q, want error code %d", what, h, p, code)
			case code == 0 && h.Type != typ:
				t.Fatalf("%s: got %v %q, want %s", what, h, p, typ)
			case h.HasFiles():
				t.Fatalf("%s: the reply carries descriptors", what)
			}
		}
		// A ping and an echo with descriptors: answered, descriptors closed.
		sendRawFiles(t, raw, header(wire.TypePing, wire.FlagFiles, 0, 1), 3)
		expect("ping", 1, wire.TypePing, 0)
		sendRawFiles(t, raw, append(header(wire.TypeEcho, wire.FlagFiles, 2, 2), "hi"...), 2)
		expect("echo", 2, wire.TypeEcho, 0)
		// No handler slot: the blocker holds the only one.
		sendRaw(t, raw, append(header(wire.TypeMessage, 0, uint32(len(msgBlock)), 3), msgBlock...))
		recv(t, blk.started, "the blocked request")
		sendRawFiles(t, raw, append(header(wire.TypeMessage, wire.FlagFiles, 1, 4), 'x'), 4)
		expect("no handler slot", 4, 0, wire.CodeUnavailable)
		close(blk.release)
		expect("the blocked request", 3, wire.TypeMessage, 0)
		// A reply to a plain Call, and one whose caller gave up.
		done := make(chan error, 1)
		go func() { _, err := c.Call(ctxTimeout(t, waitTimeout), wire.TypeMessage, []byte("q"), nil); done <- err }()
		h, _ := readRaw(t, raw)
		sendRawFiles(t, raw, append(header(wire.TypeMessage, wire.FlagReply|wire.FlagFiles, 1, h.ID), 'r'), 2)
		if err := recv(t, done, "the call's reply"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _, _, err := c.CallFiles(ctx, wire.TypeMessage, []byte("q"), nil); done <- err }()
		h, _ = readRaw(t, raw)
		cancel()
		if err := recv(t, done, "the cancelled call"); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled CallFiles: %v", err)
		}
		if h2, _ := readRaw(t, raw); h2.Type != wire.TypeCancel || h2.ID != h.ID {
			t.Fatalf("after the caller gave up: %v, want its cancel", h2)
		}
		sendRawFiles(t, raw, append(header(wire.TypeMessage, wire.FlagReply|wire.FlagFiles, 1, h.ID), 'r'), 2)
		// A shutdown, then a request with descriptors: refused, code 6.
		sendRaw(t, raw, header(wire.TypeShutdown, 0, 0, 5))
		expect("shutdown", 5, wire.TypeShutdown, 0)
		sendRawFiles(t, raw, append(header(wire.TypeMessage, wire.FlagFiles, 1, 6), 'x'), 3)
		expect("after the shutdown", 6, 0, wire.CodeShutdown)
		if err := c.Err(); err != nil {
			t.Fatalf("the Conn closed: %v", err)
		}
		c.Close()
		raw.Close()

		// Without a Handler: refused with code 2.
		c, raw = rawPeerVersions(t, filesCfg("d", nil), 3, 3)
		sendRawFiles(t, raw, append(header(wire.TypeMessage, wire.FlagFiles, 1, 1), 'x'), 2)
		expect("no handler", 1, 0, wire.CodeUnsupported)
		c.Close()
		raw.Close()
	}()
	waitFDs(t, before, "after the refused frames")
}

// TestFilesViolations: descriptors where the protocol allows none, or a
// frame that says it carries descriptors and has none, are protocol
// violations: the receiver sends an error about the connection (code 8)
// and closes, and every descriptor that arrived is closed.
func TestFilesViolations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		peer    uint16 // the raw peer's highest version (its lowest is 1)
		pre     []byte // sent first, without descriptors
		frame   []byte // sent with n descriptors
		n       int
		next    []byte // sent after it, without descriptors
		want    error
		wantVer uint16
	}{
		{name: "flag-on-v2", peer: 2, frame: append(header(wire.TypeMessage, wire.FlagFiles, 1, 1), 'x'), n: 1, want: wire.ErrBadFlags, wantVer: 2},
		{name: "unannounced-on-v2", peer: 2, frame: append(header(wire.TypeMessage, 0, 1, 1), 'x'), n: 2, next: header(wire.TypePing, 0, 0, 2), want: ipc.ErrUnexpected, wantVer: 2},
		{name: "flag-without-files", peer: 3, frame: append(header(wire.TypeMessage, wire.FlagFiles, 1, 1), 'x'), want: ipc.ErrUnexpected, wantVer: 3},
		{name: "unannounced", peer: 3, frame: append(header(wire.TypeEcho, 0, 1, 1), 'x'), n: 3, next: header(wire.TypePing, 0, 0, 2), want: ipc.ErrUnexpected, wantVer: 3},
		{name: "mid-frame", peer: 3, pre: header(wire.TypeEcho, 0, 4, 1), frame: []byte("abcd"), n: 1, next: header(wire.TypePing, 0, 0, 2), want: ipc.ErrUnexpected, wantVer: 3},
		{name: "cancel", peer: 3, frame: header(wire.TypeCancel, wire.FlagFiles, 0, 7), n: 1, want: ipc.ErrUnexpected, wantVer: 3},
		{name: "client-on-v2", peer: 2, frame: header(wire.TypeClient, 0, 0, 1), want: wire.ErrUnknownType, wantVer: 2},
		{name: "client-on-v2-with-files", peer: 2, frame: header(wire.TypeClient, 0, 0, 1), n: 1, next: header(wire.TypePing, 0, 0, 2), want: wire.ErrUnknownType, wantVer: 2},
		{name: "reply-to-nothing-flag-only", peer: 3, frame: header(wire.TypeMessage, wire.FlagReply|wire.FlagFiles, 0, 99), want: ipc.ErrUnexpected, wantVer: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			func() {
				c, raw := rawPeerVersions(t, filesCfg("c", func(ctx context.Context, req ipc.Request) ([]byte, error) {
					closeAll(req.Files)
					return nil, nil
				}), 1, tc.peer)
				defer raw.Close()
				if c.Version() != tc.wantVer {
					t.Fatalf("version %d, want %d", c.Version(), tc.wantVer)
				}
				if tc.pre != nil {
					sendRaw(t, raw, tc.pre)
				}
				sendRawFiles(t, raw, tc.frame, tc.n)
				if tc.next != nil {
					// The Conn may have closed at the frame already.
					unix.Sendmsg(int(raw.Fd()), tc.next, nil, nil, unix.MSG_NOSIGNAL)
				}
				waitDone(t, c)
				wantOpFrameError(t, c.Err(), tc.want)
				for {
					h, p := readRaw(t, raw)
					if h.Type == wire.TypeError && h.ID == 0 {
						if code := wire.ParseError(p).Code; code != wire.CodeProtocol {
							t.Errorf("error about the connection with code %d, want %d", code, wire.CodeProtocol)
						}
						break
					}
				}
			}()
			waitFDs(t, before, tc.name)
		})
	}
}

// TestFilesHello: a hello that says it carries descriptors is refused
// like any malformed hello.
func TestFilesHello(t *testing.T) {
	before := openFDs(t)
	func() {
		fc, raw, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		sendRawFiles(t, raw, wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, Flags: wire.FlagFiles}, rawHello(1, 3)), 2)
		_, err = ipc.NewConn(ctxTimeout(t, waitTimeout), fc, filesCfg("c", nil))
		if !errors.Is(err, ipc.ErrUnexpected) {
			t.Fatalf("NewConn after a hello with descriptors: %v, want ErrUnexpected", err)
		}
	}()
	waitFDs(t, before, "after the hello")
}
