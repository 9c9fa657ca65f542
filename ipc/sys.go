package ipc

import (
	"errors"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds the raw system calls of the hot path. In blocking
// mode (fdio_linux.go) a Conn's reads and writes sit in read(2) and
// sendmsg(2) like a C program's, which measured faster than the
// runtime's netpoller (docs/BASELINES.md). SO_SNDTIMEO bounds each
// blocking send (writeSlice) so that a writer waiting for a peer that
// does not read still notices its context ending; SO_RCVTIMEO bounds a
// leading caller's read (ioSlice) likewise.

// sendmsg writes the iovecs in msg without raising SIGPIPE. On a
// blocking fd it waits at most the socket's SO_SNDTIMEO; on a polled
// (non-blocking) one not at all. It returns the bytes written, which may
// be fewer than asked (then err is nil or EAGAIN). It does not allocate.
func sendmsg(fd int, msg *unix.Msghdr) (int, error) {
	return retry(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), msgNoSignal, 0)
}

// recvNow is recv(2) with MSG_DONTWAIT: it returns unix.EAGAIN if
// nothing is there. It does not allocate.
func recvNow(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return retry(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_DONTWAIT)
}

// retry makes system call trap with arguments a1 to a4, again on EINTR,
// and returns its result as a count.
func retry(trap, a1, a2, a3, a4 uintptr) (int, error) {
	for {
		n, _, e := unix.Syscall6(trap, a1, a2, a3, a4, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		default:
			return 0, e
		}
	}
}

// readfd is read(2) retried on EINTR.
func readfd(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// waitWritable blocks until fd is writable, the deadline passes or done
// is closed. It sleeps in poll(2) in slices so that a context without a
// deadline is still noticed within pollSlice.
func waitWritable(fd int, deadline time.Time, done <-chan struct{}) error {
	const pollSlice = 20 * time.Millisecond
	for {
		wait := pollSlice
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			wait = min(wait, left)
		}
		select {
		case <-done:
			return errCanceled
		default:
		}
		pfd := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd[:], int(wait/time.Millisecond)+1)
		if err != nil && err != unix.EINTR {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 && pfd[0].Revents&unix.POLLOUT == 0 {
				return unix.EPIPE
			}
			return nil
		}
	}
}

var errCanceled = errors.New("canceled")

// setSendTimeout bounds each blocking write on fd (SO_SNDTIMEO).
func setSendTimeout(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return os.NewSyscallError("setsockopt", unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv))
}

// setRecvTimeout bounds each blocking read on fd (SO_RCVTIMEO).
func setRecvTimeout(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return os.NewSyscallError("setsockopt", unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
}

// takeFile moves f's descriptor into a new close-on-exec, blocking fd
// that the caller owns, and closes f. f is closed even on error.
func takeFile(f *os.File) (int, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var serr error
	if err := rc.Control(func(s uintptr) {
		fd, serr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, os.NewSyscallError("fcntl", serr)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}

// takeSocket is takeFile for a file that must be a socket: it fails
// with ErrNotSocket (and nothing open) if it is not.
func takeSocket(f *os.File) (int, error) {
	fd, err := takeFile(f)
	if err != nil {
		return -1, err
	}
	if !isSocket(fd) {
		unix.Close(fd)
		return -1, ErrNotSocket
	}
	return fd, nil
}

// isSocket reports whether fd refers to a socket.
func isSocket(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK
}

// pairSendBuffer is the send buffer (SO_SNDBUF) that [Socketpair] asks
// for on each end. Linux doubles it, and caps the request at
// net.core.wmem_max (208 KiB by default, which gives 416 KiB): against
// the default of 208 KiB, this halves the round-trip time of a 1 MiB
// message on the reference machine, because its writer sleeps for room
// and is woken less often (docs/BENCHMARKS.md). It is only a ceiling:
// the kernel holds that much per direction only while the peer does not
// read.
const pairSendBuffer = 256 << 10

// Socketpair returns the two ends of a connected AF_UNIX stream socket
// pair, both close-on-exec, with the larger send buffers described at
// pairSendBuffer where the system allows them. The caller owns both files; on error there
// is nothing to close. Pass one end to a child in exec.Cmd.ExtraFiles,
// close it in the parent right after Start, and wrap the other with
// [NewConn].
func Socketpair() (parent, child *os.File, err error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, &OpError{Op: "socketpair", Err: os.NewSyscallError("socketpair", err)}
	}
	for _, fd := range fds {
		// Best effort: the kernel caps the size at net.core.wmem_max (and
		// doubles it), and a pair with the default buffer works the same,
		// only slower for large messages.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, pairSendBuffer)
	}
	return os.NewFile(uintptr(fds[0]), "pairvisor-parent"), os.NewFile(uintptr(fds[1]), "pairvisor-child"), nil
}
