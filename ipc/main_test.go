//go:build linux

package ipc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairvisor/pairvisor/internal/contract"
	"github.com/pairvisor/pairvisor/internal/testutil"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/wire"
)

// The test binary doubles as the peer process, in the style of os/exec's
// exec_test.go: a test starts os.Args[0] with helperEnv naming a role and
// the child end of a socketpair as fd 3, and TestMain runs that role
// instead of the tests.

// harness runs the roles; see testutil.Harness.
var harness = testutil.NewHarness(testutil.HarnessConfig{})

func TestMain(m *testing.M) { harness.Main(m) }

func registerHelper(role string, f func(args ...string) int) { harness.Register(role, f) }

func init() {
	registerHelper("serve", helperServe)
	registerHelper("serve-v1", func(...string) int { return serveVersion(1) })
	registerHelper("mute", helperMute)
	for _, g := range garbageCases {
		registerHelper("garbage-"+g.name, func(...string) int { return helperGarbage(g) })
	}
}

// Bounds on waits for helper processes. They are generous because the
// suite runs under -race on two cores; a healthy run takes milliseconds.
const (
	helperHelloTimeout = 10 * time.Second
	helperExitTimeout  = 10 * time.Second
)

// helper is a child process playing a role.
type helper struct {
	*testutil.Process
	waited bool // a test waited for it: its cleanup does not
}

// startHelper starts role in a child process. It returns our end of the
// socketpair whose other end is the child's fd 3; the caller owns it.
// The child is killed and reaped at cleanup if still running.
func startHelper(tb testing.TB, role string, args ...string) (*helper, *os.File) {
	tb.Helper()
	parent, child, err := ipc.Socketpair()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := harness.Command(tb, role, args...)
	cmd.ExtraFiles = []*os.File{child}
	defer child.Close() // the child has its copy; ours would hide its EOF
	return &helper{Process: testutil.StartProcess(tb, cmd)}, parent
}

// dialHelper starts role and establishes a Conn with it. At cleanup the
// Conn is closed and the helper must exit with status 0 on its own.
func dialHelper(tb testing.TB, role string, cfg ipc.ConnConfig, args ...string) (*ipc.Conn, *helper) {
	tb.Helper()
	h, f := startHelper(tb, role, args...)
	ctx, cancel := context.WithTimeout(context.Background(), helperHelloTimeout)
	defer cancel()
	c, err := ipc.NewConn(ctx, f, cfg)
	if err != nil {
		tb.Fatalf("NewConn with helper %s: %v\n%s", role, err, h.Output())
	}
	tb.Cleanup(func() {
		c.Close()
		if !h.waited {
			h.exitOK(tb)
		}
	})
	return c, h
}

// wait waits for the helper to exit, killing it if it has not exited
// within helperExitTimeout (which fails the test).
func (h *helper) wait(tb testing.TB) error {
	tb.Helper()
	h.waited = true
	return h.Wait(tb, helperExitTimeout)
}

// exitOK waits for the helper and fails the test unless it exited 0.
func (h *helper) exitOK(tb testing.TB) {
	tb.Helper()
	h.waited = true
	h.WaitOK(tb, helperExitTimeout)
}

// Messages understood by the serve helper's handler. Any other
// TypeMessage payload is echoed back.
const (
	// msgBlock makes the handler tell us "blocked" (a TypeMessage call
	// back to the parent) and then wait until its Conn closes.
	msgBlock = "block"
	// msgBlocked is what a blocked handler sends back.
	msgBlocked = "blocked"
	// msgBlockReport blocks like msgBlock, and when the handler's
	// context is cancelled while the Conn is open (a cancel frame),
	// the handler tells us msgCancelled before it returns.
	msgBlockReport = "block-report"
	msgCancelled   = "cancelled"
	// msgError + "CODE:TEXT" makes the handler return a RemoteError.
	msgError = "error:"
	// msgFail + "TEXT" makes the handler return a plain error.
	msgFail = "fail:"
)

// helperServe establishes a Conn on fd 3 that answers pings and echoes
// and runs serveHandler, and exits when the Conn closes: 0 after a clean
// close, 1 after any other error (a frame it did not expect, such as a
// cancel frame on a version 1 connection, included).
func helperServe(...string) int { return serveVersion(0) }

// serveVersion is helperServe offering protocol versions up to max (0:
// the default).
func serveVersion(max uint16) int {
	var conn *ipc.Conn
	ready := make(chan struct{})
	handler := func(ctx context.Context, req ipc.Request) ([]byte, error) {
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return serveHandler(ctx, conn, req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperHelloTimeout)
	c, err := ipc.NewConn(ctx, os.NewFile(contract.ChannelFD, "channel"), ipc.ConnConfig{Name: "serve", Handler: handler, MaxVersion: max})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	conn = c
	close(ready)
	<-c.Done()
	if err := c.Err(); !errors.Is(err, ipc.ErrPeerClosed) {
		fmt.Fprintln(os.Stderr, "serve: connection ended with", err)
		return 1
	}
	return 0
}

func serveHandler(ctx context.Context, c *ipc.Conn, req ipc.Request) ([]byte, error) {
	p := string(req.Payload)
	switch {
	case req.Type != wire.TypeMessage:
		return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: "serve answers messages only"}
	case p == msgBlock || p == msgBlockReport:
		if _, err := c.Call(ctx, wire.TypeMessage, []byte(msgBlocked), nil); err != nil {
			return nil, err
		}
		<-ctx.Done()
		if p == msgBlockReport && c.Err() == nil {
			rctx, cancel := context.WithTimeout(context.Background(), helperHelloTimeout)
			defer cancel()
			c.Call(rctx, wire.TypeMessage, []byte(msgCancelled), nil)
		}
		return nil, ctx.Err()
	case strings.HasPrefix(p, msgError):
		code, text, _ := strings.Cut(strings.TrimPrefix(p, msgError), ":")
		n, err := strconv.ParseUint(code, 10, 16)
		if err != nil {
			return nil, err
		}
		return nil, &wire.RemoteError{Code: wire.Code(n), Message: text}
	case strings.HasPrefix(p, msgFail):
		return nil, errors.New(strings.TrimPrefix(p, msgFail))
	}
	return req.Payload, nil
}

// helperMute never sends a hello. It reads fd 3 until EOF.
func helperMute(...string) int {
	f := os.NewFile(contract.ChannelFD, "channel")
	if _, err := io.Copy(io.Discard, f); err != nil {
		fmt.Fprintln(os.Stderr, "mute:", err)
		return 1
	}
	return 0
}

// A garbageCase is a malformed byte sequence for the garbage helpers and
// what the receiving Conn must make of it.
type garbageCase struct {
	name  string
	bytes []byte
	want  error     // the sentinel the receiving Conn's error wraps
	code  wire.Code // the code of the error frame it sends back; 0 for none
	// closeWrite makes the helper shut down its sending side after the
	// garbage; the Conn then sees the stream end.
	closeWrite bool
	// afterHello makes the helper send a valid hello before the garbage.
	afterHello bool
}

func header(t wire.Type, flags uint8, length uint32, id uint64) []byte {
	b := make([]byte, wire.HeaderSize)
	wire.PutHeader(b, wire.Header{Type: t, Flags: flags, Length: length, ID: id})
	return b
}

var garbageCases = []garbageCase{
	// Instead of a hello.
	{name: "magic", bytes: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: wire.ErrBadMagic, code: wire.CodeProtocol},
	{name: "type", bytes: header(10, 0, 0, 7), want: wire.ErrUnknownType, code: wire.CodeProtocol},
	{name: "flags", bytes: header(wire.TypePing, 0x80, 0, 7), want: wire.ErrBadFlags, code: wire.CodeProtocol},
	{name: "length", bytes: header(wire.TypeHello, 0, 0xFFFFFFFF, 0), want: wire.ErrFrameTooLarge, code: wire.CodeTooLarge},
	{name: "hello-length", bytes: header(wire.TypeHello, 0, 1000, 0), want: wire.ErrFrameTooLarge, code: wire.CodeTooLarge},
	{name: "hello-id", bytes: append(header(wire.TypeHello, 0, 8, 5), 1, 0, 1, 0, 0, 0, 0, 0), want: ipc.ErrUnexpected, code: wire.CodeProtocol},
	{name: "not-hello", bytes: header(wire.TypePing, 0, 0, 7), want: ipc.ErrUnexpected, code: wire.CodeProtocol},
	{name: "truncated", bytes: append(header(wire.TypeHello, 0, 100, 0), make([]byte, 40)...), want: wire.ErrTruncated, closeWrite: true},
	{name: "truncated-header", bytes: header(wire.TypeHello, 0, 100, 0)[:10], want: wire.ErrTruncated, closeWrite: true},

	// After a valid hello.
	{name: "after-hello-magic", afterHello: true, bytes: []byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"), want: wire.ErrBadMagic, code: wire.CodeProtocol},
	{name: "after-hello-type", afterHello: true, bytes: header(0, 0, 0, 7), want: wire.ErrUnknownType, code: wire.CodeProtocol},
	{name: "after-hello-length", afterHello: true, bytes: header(wire.TypeEcho, 0, 0xFFFFFFFF, 7), want: wire.ErrFrameTooLarge, code: wire.CodeTooLarge},
	{name: "after-hello-second-hello", afterHello: true, bytes: header(wire.TypeHello, 0, 0, 7), want: ipc.ErrUnexpected, code: wire.CodeProtocol},
	{name: "after-hello-truncated", afterHello: true, bytes: append(header(wire.TypeEcho, 0, 100, 7), make([]byte, 40)...), want: wire.ErrTruncated, closeWrite: true},
}

// helperGarbage writes g's bytes to fd 3, preceded by a valid hello if
// g.afterHello, and then checks what comes back until EOF: our
// hello, then the error frame g.code calls for. It exits 1 if anything
// else arrives.
func helperGarbage(g garbageCase) int {
	f := os.NewFile(contract.ChannelFD, "channel")
	var out []byte
	if g.afterHello {
		hello := wire.AppendHello(nil, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: uint32(os.Getpid()), Name: "garbage"})
		out = wire.AppendFrame(out, wire.Header{Type: wire.TypeHello}, hello)
	}
	out = append(out, g.bytes...)
	if _, err := f.Write(out); err != nil {
		fmt.Fprintln(os.Stderr, "garbage: write:", err)
		return 1
	}
	if g.closeWrite {
		rc, err := f.SyscallConn()
		if err == nil {
			rc.Control(func(fd uintptr) { err = syscall.Shutdown(int(fd), syscall.SHUT_WR) })
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "garbage: shutdown:", err)
			return 1
		}
	}
	var got []string
	for {
		h, p, err := wire.ReadFrame(f, 0)
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "garbage: read:", err)
			return 1
		}
		s := h.Type.String()
		if h.Type == wire.TypeError {
			s += ":" + strconv.Itoa(int(wire.ParseError(p).Code))
		}
		got = append(got, s)
	}
	want := []string{"hello"}
	if g.code != 0 {
		want = append(want, "error:"+strconv.Itoa(int(g.code)))
	}
	if !slices.Equal(got, want) {
		fmt.Fprintf(os.Stderr, "garbage %s: received frames %q, want %q\n", g.name, got, want)
		return 1
	}
	return 0
}
