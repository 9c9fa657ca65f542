package ipc

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sock is a Conn's descriptor and the one place that knows how the
// Conn waits for it. Nothing else in the package looks at the mode.
//
//   - Blocking (the default): the fd is in blocking mode and a wait is
//     a thread asleep in read(2) or sendmsg(2), as in a C program. Each
//     blocking send is cut into writeSlices by SO_SNDTIMEO. A read
//     waits without limit (or IdleTimeout) for the background reader,
//     and at most ioSlice for a caller reading its own reply (lead), so
//     that a caller notices its context ending; SO_RCVTIMEO is switched
//     only when the read side passes between the two.
//   - Polled (ConnConfig.Poll): the fd is non-blocking and registered
//     with the Go runtime's poller, so an idle Conn costs no thread.
//     Only the background reader reads (leads reports false): a caller
//     waiting in the poller would be woken through the same poller as
//     the background reader, for no gain.
//
// The fd is closed once, by close, after the background reader has
// ended and under the write lock, so its number can never be reused
// under a late write; mu orders that close against shutdown, which
// any goroutine may call to wake the reader and writers.
type sock struct {
	mu      sync.Mutex
	fd      int  // -1 once closed
	closing bool // Close was called: the stream ends by our will

	idle time.Duration // ConnConfig.IdleTimeout (0: none)

	// Blocking mode: the read timeout now set (SO_RCVTIMEO), for a
	// leading caller (ioSlice) or the background reader (idle).
	leading bool

	// Polled mode: file owns fd and is registered with the poller.
	// rp, rn and rerr are pollRead's buffer and results (the holder of
	// the read side only); wwait is pollWritable's state (the holder of
	// the write lock only). The callbacks are bound once, so that a
	// wait allocates nothing.
	file    *os.File
	rc      syscall.RawConn
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
	rp      []byte
	rn      int
	rerr    error
	wwait   bool

	// rf, when the Conn takes file descriptors, makes every read a
	// recvmsg(2) that can receive them (fds_linux.go); nil otherwise.
	rf *recvFiles

	// wk, when the Conn is detachable, lets a detach reach the
	// background reader (detach.go); nil otherwise.
	wk *sockWake
}

// errSlice is returned by sock.read to a leading caller whose read
// found nothing for ioSlice.
var errSlice = errors.New("ipc: nothing to read within the slice")

// newSock prepares fd, which it takes ownership of, for its mode. On
// error the fd is closed.
func newSock(fd int, poll bool, idle time.Duration, detachable bool) (*sock, error) {
	s := &sock{fd: fd, idle: idle}
	if detachable {
		s.wk = new(sockWake)
	}
	if err := s.setup(poll); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *sock) setup(poll bool) error {
	if !poll {
		// Both timeouts are set, none (0) included: they belong to the
		// socket, not to this descriptor, and one that a previous owner
		// left (a detached Conn's detachTick, an inherited socket's) would
		// end a read(2) that should wait, and be taken for idleness.
		if err := setSendTimeout(s.fd, writeSlice); err != nil {
			return err
		}
		return setRecvTimeout(s.fd, s.bgTimeout())
	}
	if err := unix.SetNonblock(s.fd, true); err != nil {
		return os.NewSyscallError("fcntl", err)
	}
	s.file = os.NewFile(uintptr(s.fd), "pairvisor-conn")
	rc, err := s.file.SyscallConn()
	if err != nil {
		return err
	}
	s.rc = rc
	s.readFn, s.writeFn = s.pollRead, s.pollWritable
	return nil
}

// leads reports whether a caller may read its own reply (see lead in
// reader.go): in blocking mode only.
func (s *sock) leads() bool { return s.file == nil }

// lead switches the read timeout between a leading caller's (ioSlice,
// on) and the background reader's (IdleTimeout or none, off). Holder of
// the read side only; a no-op when nothing changes or in polled mode.
func (s *sock) lead(on bool) error {
	if s.leading == on || s.file != nil {
		return nil
	}
	d := s.bgTimeout()
	if on {
		d = ioSlice
		if s.idle > 0 {
			d = min(d, s.idle)
		}
	}
	s.leading = on
	return setRecvTimeout(s.fd, d)
}

// read is one read(2) into p. It waits for data (in the kernel or the
// poller) for at most the read timeout: then it returns errSlice to a
// leading caller, and unix.EAGAIN (idle) to the background reader.
// Holder of the read side only.
func (s *sock) read(p []byte) (int, error) {
	if s.wk != nil && !s.leading {
		if s.file == nil {
			return s.readBlocking(p)
		}
		return s.readPolled(p)
	}
	if s.file == nil {
		n, err := s.readFD(p)
		if err == unix.EAGAIN && s.leading {
			err = errSlice
		}
		return n, err
	}
	if s.idle > 0 {
		s.file.SetReadDeadline(time.Now().Add(s.idle))
	}
	s.rp = p
	defer func() { s.rp = nil }()
	if err := s.rc.Read(s.readFn); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = unix.EAGAIN // as SO_RCVTIMEO reports it: idle
		}
		return 0, err
	}
	return s.rn, s.rerr
}

// readFD is one read of p from the fd in blocking mode, waiting for at
// most the fd's read timeout: recvmsg(2) when the Conn takes
// descriptors, read(2) otherwise.
func (s *sock) readFD(p []byte) (int, error) {
	if s.rf != nil {
		return s.rf.recv(s.fd, p, 0)
	}
	return readfd(s.fd, p)
}

// readNow is one read that does not wait (MSG_DONTWAIT): unix.EAGAIN
// if nothing is there. Blocking mode, holder of the read side only.
func (s *sock) readNow(p []byte) (int, error) {
	if s.rf != nil {
		return s.rf.recv(s.fd, p, unix.MSG_DONTWAIT)
	}
	return recvNow(s.fd, p)
}

// pollRead is the RawConn.Read callback: one read(2) into s.rp.
func (s *sock) pollRead(fd uintptr) bool {
	if s.rf != nil {
		s.rn, s.rerr = s.rf.recv(int(fd), s.rp, 0)
	} else {
		s.rn, s.rerr = readfd(int(fd), s.rp)
	}
	return s.rerr != unix.EAGAIN
}

// sendmsg writes msg's iovecs without raising SIGPIPE, waiting at most
// a writeSlice for room (blocking mode) or not at all (polled). It
// returns the bytes written, which may be fewer than asked (then err is
// nil or EAGAIN). Holder of the write lock only.
func (s *sock) sendmsg(msg *unix.Msghdr) (int, error) { return sendmsg(s.fd, msg) }

// waitWrite waits for room in the socket buffer after a send that
// returned early. A blocking fd has already waited a writeSlice in the
// kernel; a polled one waits here, for at most a writeSlice, through
// the poller. Holder of the write lock only.
func (s *sock) waitWrite() {
	if s.file == nil {
		return
	}
	s.file.SetWriteDeadline(time.Now().Add(writeSlice))
	s.wwait = false
	s.rc.Write(s.writeFn)
}

// pollWritable is a RawConn.Write callback that waits once for the fd
// to become writable.
func (s *sock) pollWritable(uintptr) bool {
	s.wwait = !s.wwait
	return !s.wwait
}

// shutdown shuts the socket down both ways, which wakes every goroutine
// waiting in it, unless it is closed already. closing records that the
// Conn's own Close asked for it. Any goroutine.
func (s *sock) shutdown(closing bool) {
	s.mu.Lock()
	if closing {
		s.closing = true
	}
	if s.fd >= 0 {
		unix.Shutdown(s.fd, unix.SHUT_RDWR)
	}
	s.mu.Unlock()
}

// closedByUs reports whether Close was called.
func (s *sock) closedByUs() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// close closes the fd, through the poller's file in polled mode. The
// Conn calls it once, from its teardown, with the write lock held.
func (s *sock) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

// closeLocked is close with mu held.
func (s *sock) closeLocked() {
	if s.fd < 0 {
		return
	}
	if s.file != nil {
		s.file.Close()
	} else {
		unix.Close(s.fd)
	}
	s.fd = -1
}
