package ipc

import (
	"context"
	"errors"
	"fmt"
	"github.com/pairvisor/pairvisor/internal/sysfd"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/pairvisor/pairvisor/ipc/listen"
	"golang.org/x/sys/unix"
)

// dialRetry is how often Dial retries a connect refused with EAGAIN
// (the server's accept queue is full).
const dialRetry = 10 * time.Millisecond

// checkPath refuses a path that no socket can have.
func checkPath(path string) error {
	switch {
	case path == "" || path == "@":
		return errors.New("empty socket path")
	case len(path) > listen.MaxPathLen:
		return fmt.Errorf("%w: %d bytes, the kernel's limit (sun_path) is %d", listen.ErrPathTooLong, len(path), listen.MaxPathLen)
	case strings.IndexByte(path, 0) >= 0:
		return errors.New("socket path contains a NUL byte")
	}
	return nil
}

// Dial connects to the server at path (or "@name"), exchanges hellos
// and returns the Conn, which the caller must Close. ctx bounds the
// connect and the hello. Before it sends anything, Dial checks who the
// server is (SO_PEERCRED): root, the caller's effective uid, or one of
// cfg.TrustUIDs; anyone else (another user who bound the name first)
// fails with [ErrUntrustedPeer], naming the server's uid and pid.
// Other errors name the cause: the socket does not exist
// (errors.Is(err, os.ErrNotExist)), permission denied
// (os.ErrPermission), nobody listening (unix.ECONNREFUSED), or the
// deadline. While the server's accept queue is full, Dial keeps trying
// to connect until ctx ends.
func Dial(ctx context.Context, path string, cfg ConnConfig) (*Conn, error) {
	if cfg.Addr == "" {
		cfg.Addr = path
	}
	if cfg.Name == "" {
		cfg.Name = "client"
	}
	if err := checkPath(path); err != nil {
		return nil, &OpError{Op: "dial", Addr: path, Err: err}
	}
	fd, err := sysfd.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0, true)
	if err != nil {
		return nil, &OpError{Op: "dial", Addr: path, Err: err}
	}
	addr := &unix.SockaddrUnix{Name: path}
	err = unix.Connect(fd, addr)
	if errors.Is(err, unix.EAGAIN) {
		// The server's accept queue is full. A Unix socket's
		// non-blocking connect does not complete later by itself (the
		// socket stays unconnected), so try again until there is room
		// or ctx ends.
		t := time.NewTimer(dialRetry)
		for errors.Is(err, unix.EAGAIN) {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-t.C:
				err = unix.Connect(fd, addr)
				t.Reset(dialRetry)
			}
		}
		t.Stop()
	}
	if errors.Is(err, unix.EINPROGRESS) {
		deadline, _ := ctx.Deadline()
		if err = waitWritable(fd, deadline, ctx.Done()); err == nil {
			var soerr int
			if soerr, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soerr != 0 {
				err = unix.Errno(soerr)
			}
		} else if err == errCanceled {
			err = ctx.Err()
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: fmt.Errorf("connect: %w", err)}
	}
	if err := checkServerCred(fd, cfg.TrustUIDs); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &OpError{Op: "dial", Addr: path, Err: os.NewSyscallError("fcntl", err)}
	}
	return newConn(ctx, fd, cfg, nil, nil)
}

// checkServerCred is Dial's check of the server it reached, before it
// sends anything: the server must run as root, as our effective uid or
// as one of trust.
func checkServerCred(fd int, trust []uint32) error {
	uid, pid, err := serverCred(fd)
	if err != nil {
		return err
	}
	euid := uint32(os.Geteuid())
	if uid == 0 || uid == euid || slices.Contains(trust, uid) {
		return nil
	}
	who := fmt.Sprintf("uid %d", uid)
	if pid != 0 {
		who += fmt.Sprintf(", pid %d", pid)
	}
	want := fmt.Sprintf("root or uid %d", euid)
	if len(trust) > 0 {
		want = fmt.Sprintf("root, uid %d or one of the trusted uids %v", euid, trust)
	}
	return fmt.Errorf("%w: it is %s, not %s", ErrUntrustedPeer, who, want)
}
