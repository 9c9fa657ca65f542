//go:build linux

package sdnotify

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// MaxFDs is how many descriptors a datagram may carry: a barrier's one,
// and a few more for a sender that tries to use the descriptor store we
// do not have. A datagram with more is refused (ErrControlTruncated).
const MaxFDs = 8

// oobSize is the room for ancillary data: the credentials and MaxFDs
// descriptors.
var oobSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4*MaxFDs)

// bindAttempts bounds Listen's tries at a free name.
const bindAttempts = 8

// listenSeq numbers this process's sockets, for unique names.
var listenSeq atomic.Uint64

// Socket receives sd_notify datagrams for one worker process.
//
// Its descriptor is owned by file, registered with the Go runtime's
// poller; Close closes it, once, and the runtime defers the close(2)
// until no Read is inside a system call on it, so the number cannot be
// reused under a Read. The buffers belong to the Read in progress
// (readMu). No goroutine is started.
type Socket struct {
	addr   string
	file   *os.File
	rc     syscall.RawConn
	euid   uint32
	worker uint32 // the uid the worker runs as
	closed atomic.Bool

	refused atomic.Uint64

	readMu sync.Mutex // held by Read; the fields below are its own
	buf    []byte     // MaxDatagram bytes
	oob    []byte     // oobSize bytes
	readFn func(uintptr) bool
	n      int // the last recvmsg's results, set by readFn
	oobn   int
	flags  int
	err    error
}

// Listen creates a Socket bound to a fresh abstract name for a worker
// that runs as uid worker (our effective uid, unless the supervisor
// runs workers as another user): datagrams are accepted from that uid,
// ours and root's. The socket is close-on-exec; the caller owns it and
// must Close it.
func Listen(worker uint32) (*Socket, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("sdnotify: %w", os.NewSyscallError("socket", err))
	}
	// Credentials must be asked for before any datagram can arrive.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sdnotify: %w", os.NewSyscallError("setsockopt SO_PASSCRED", err))
	}
	addr, err := bindFresh(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	// From here the File owns fd (and closes it, should SyscallConn
	// fail).
	f := os.NewFile(uintptr(fd), addr)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sdnotify: %w", err)
	}
	s := &Socket{
		addr:   addr,
		file:   f,
		rc:     rc,
		euid:   uint32(os.Geteuid()),
		worker: worker,
		buf:    make([]byte, MaxDatagram),
		oob:    make([]byte, oobSize),
	}
	s.readFn = s.recv
	return s, nil
}

// bindFresh binds fd to "@pairvisor-notify/<pid>/<seq>-<random>",
// drawing another name if one is taken (by a stale process of a reused
// pid in our network namespace, say), and returns the name.
func bindFresh(fd int) (string, error) {
	prefix := "@pairvisor-notify/" + strconv.Itoa(os.Getpid()) + "/"
	var err error
	for range bindAttempts {
		// math/rand/v2's generator is seeded by the runtime from the
		// OS; the name needs to be unguessable only in passing (the
		// sender is checked anyway), and crypto/rand would link the
		// crypto packages into every worker.
		addr := prefix + strconv.FormatUint(listenSeq.Add(1), 10) + "-" + strconv.FormatUint(uint64(rand.Uint32()), 16)
		err = unix.Bind(fd, &unix.SockaddrUnix{Name: addr})
		if err == nil {
			return addr, nil
		}
		if err != unix.EADDRINUSE {
			break
		}
	}
	return "", fmt.Errorf("sdnotify: %w", os.NewSyscallError("bind", err))
}

// Addr returns the socket's name, the value for a worker's
// NOTIFY_SOCKET: "@" and the abstract name, as sd_notify(3) expects.
func (s *Socket) Addr() string { return s.addr }

// Refused returns how many datagrams Read has refused so far.
func (s *Socket) Refused() uint64 { return s.refused.Load() }

// Close closes the socket. A Read waiting on it returns ErrClosed
// promptly, and so do later ones. Datagrams still queued are discarded,
// and the kernel closes the descriptors they carried. Close may be
// called from any goroutine, any number of times; only the first call
// does anything, and it returns the close's error.
func (s *Socket) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := s.file.Close(); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}

// Read waits for the next datagram and returns what it says, with its
// sender's credentials.
//
// For a datagram it refuses (see the package doc) it returns a
// *RefusedError, which matches ErrRefused: the socket stays usable, and
// the caller logs the error under its own rate limit and calls Read
// again. After Close it returns ErrClosed. Any other error is a failed
// system call that should not happen; the caller should then Close the
// socket.
//
// Read is meant for one goroutine, the socket's reader; concurrent
// calls are safe but take turns. What it allocates does not grow with
// the datagram: a few bytes, the Message's Status, or the refusal.
func (s *Socket) Read() (Message, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if s.closed.Load() {
		return Message{}, ErrClosed
	}
	for {
		// A wait on a closed File fails (os.ErrClosed); Close sets the
		// flag before it closes, so the flag tells that failure from
		// others.
		err := s.rc.Read(s.readFn)
		if err == nil {
			err = s.err
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil && s.closed.Load():
			return Message{}, ErrClosed
		case err != nil:
			return Message{}, fmt.Errorf("sdnotify: %w", os.NewSyscallError("recvmsg", err))
		}
		// A datagram was taken, even if Close has been called since:
		// examine it, which closes its descriptors, and return it; the
		// next Read returns ErrClosed.
		m, err := s.examine(s.n, s.oobn, s.flags)
		if err != nil {
			s.refused.Add(1)
		}
		return m, err
	}
}

// recv is one recvmsg(2), called by the poller's RawConn.Read: it
// returns false to wait for the socket to become readable again. MSG_TRUNC
// makes it report a longer datagram's real length instead of the part
// that fit, and MSG_CMSG_CLOEXEC makes every descriptor that arrives
// close-on-exec from the start.
func (s *Socket) recv(fd uintptr) bool {
	s.n, s.oobn, s.flags, _, s.err = unix.Recvmsg(int(fd), s.buf, s.oob, unix.MSG_TRUNC|unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
	return s.err != unix.EAGAIN
}

// examine takes one received datagram, n bytes long (its real length)
// with oobn bytes of ancillary data in s.oob and recvmsg's flags. It
// closes every descriptor that came with it, then checks it in order:
// ancillary data complete, size, credentials, uid, content.
func (s *Socket) examine(n, oobn, flags int) (Message, error) {
	cred, hasCred, nfds := takeAncillary(s.oob[:oobn])
	refuse := func(reason error) (Message, error) {
		return Message{}, &RefusedError{Reason: reason, Sender: cred, Size: n, FDs: nfds}
	}
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		return refuse(ErrControlTruncated)
	case n > len(s.buf) || flags&unix.MSG_TRUNC != 0:
		return refuse(ErrTooLarge)
	case !hasCred || cred.PID <= 0:
		return refuse(ErrNoCredentials)
	case cred.UID != s.euid && cred.UID != 0 && cred.UID != s.worker:
		return refuse(ErrForeignUser)
	}
	m, err := Parse(s.buf[:n])
	if err != nil {
		return refuse(err)
	}
	m.Sender = cred
	return m, nil
}

// takeAncillary walks a datagram's ancillary data: it closes every
// descriptor in it and returns the credentials, if any, and how many
// descriptors it closed. It stops at the first malformed header (the
// kernel writes none; a truncated one comes with MSG_CTRUNC, which the
// caller refuses).
func takeAncillary(oob []byte) (cred Cred, hasCred bool, nfds int) {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		oob = rest
		if h.Level != unix.SOL_SOCKET {
			continue
		}
		switch h.Type {
		case unix.SCM_RIGHTS:
			for ; len(data) >= 4; data = data[4:] {
				unix.Close(int(int32(binary.NativeEndian.Uint32(data))))
				nfds++
			}
		case unix.SCM_CREDENTIALS:
			if len(data) >= unix.SizeofUcred && !hasCred {
				cred = Cred{
					PID: int32(binary.NativeEndian.Uint32(data[0:])),
					UID: binary.NativeEndian.Uint32(data[4:]),
					GID: binary.NativeEndian.Uint32(data[8:]),
				}
				hasCred = true
			}
		}
	}
	return cred, hasCred, nfds
}

// Supported returns nil where Listen can work, else an error wrapping
// ErrUnsupported that names the system. On Linux it returns nil.
func Supported() error { return nil }
