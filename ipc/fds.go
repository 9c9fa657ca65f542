package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// File descriptors passed with frames (protocol version 3,
// docs/PROTOCOL.md "File descriptors").
//
// Sending. A frame with descriptors is written like any other, from one
// writer holding the write lock, with the descriptors attached
// (SCM_RIGHTS) to the sendmsg(2) that writes its first byte; its header
// has wire.FlagFiles. The kernel takes its own reference at that
// moment, so the sender keeps its files and may close them as soon as
// the frame is written. The Conn sends duplicates it makes for the
// purpose (dupFiles), never the numbers of the caller's *os.Files,
// which could be closed under it, and closes them once the frame is
// written or has failed.
//
// Receiving. A Conn that takes descriptors (ConnConfig.MaxFiles > 0)
// reads only with recvmsg(2) and MSG_CMSG_CLOEXEC (fds_linux.go), from
// its first read on: read(2) would discard them, and the peer may send
// a frame with descriptors right behind its hello. The kernel hands the
// descriptors of one sendmsg to the read that returns the first byte of
// that sendmsg's data, and ends that read with that data's first
// socket buffer, so a read brings at most one frame's descriptors, and
// the frame's header starts within the read's bytes. The holder of the
// read side records each read's descriptors with the stream offsets the
// read covered (a batch); a frame with FlagFiles claims the oldest
// batch, which must cover the offset of its header. Anything else is a
// protocol violation that closes the Conn: a FlagFiles frame without a
// batch, a batch the stream has passed without a frame claiming it, more
// than maxBatches batches waiting, descriptors on a version 1 or 2
// connection or with a hello or cancel frame, and a truncated control
// message (MSG_CTRUNC: the peer sent more than MaxFiles, and the kernel
// closed the rest).
//
// Ownership. Every received descriptor has exactly one owner at every
// moment: the read side (its batches, and the frame being handled,
// inFiles), then a reply's call or a request's Handler, or it is
// closed. Descriptors of frames that nobody takes — pings, echoes
// answered by the Conn, refused requests, replies whose caller gave up
// or did not ask for files — are closed, and so is everything the read
// side holds when the Conn ends.

// maxBatches bounds the batches of descriptors the read side holds
// unclaimed: the frame that claims the newest may still be unread, and
// the one before it may be waiting for its header to be parsed. More
// means the peer attached descriptors to no frame.
const maxBatches = 2

// fileBatch is what one read brought: its descriptors and the stream
// offsets [start, end) of its bytes.
type fileBatch struct {
	fds        []int
	start, end uint64
}

// arrived takes the descriptors the last read (of n bytes, ending at
// offset received) brought into a batch, or fails the stream if their
// control message was truncated or nothing can claim them. Holder of
// the read side only.
func (r *reader) arrived(n int) error {
	rf := r.c.sock.rf
	fds, trunc := rf.got, rf.trunc
	rf.got, rf.trunc = nil, false
	switch {
	case trunc:
		closeFDs(fds)
		return r.protocolErr(&wire.FrameError{Err: ErrTooManyFiles, Detail: fmt.Sprintf("more file descriptors with one frame than the %d accepted (the control message was truncated)", r.c.cfg.MaxFiles)})
	case len(r.files) >= maxBatches:
		closeFDs(fds)
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: "file descriptors arrived with no frame to claim them"})
	}
	end := r.c.received.Load()
	r.files = append(r.files, fileBatch{fds: fds, start: end - uint64(n), end: end})
	return nil
}

// claimFiles checks the descriptors for the frame whose header h is at
// the front of the read buffer and makes them the frame's (inFiles).
// Holder of the read side, before it consumes the header.
func (r *reader) claimFiles(h wire.Header) error {
	at := r.c.received.Load() - uint64(r.w-r.r) // the header's stream offset
	if len(r.files) > 0 && r.files[0].end <= at {
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("file descriptors arrived with bytes %d to %d of the stream, and no frame there carries them", r.files[0].start, r.files[0].end)})
	}
	if !h.HasFiles() {
		return nil
	}
	switch {
	case !r.hello:
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s frame with file descriptors before the hello exchange", h.Type)})
	case r.c.ver < 3:
		return r.protocolErr(&wire.FrameError{Err: wire.ErrBadFlags, Detail: fmt.Sprintf("%s frame with file descriptors on a version %d connection", h.Type, r.c.ver)})
	case h.Type == wire.TypeHello || h.Type == wire.TypeCancel:
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s frame with file descriptors", h.Type)})
	case len(r.files) == 0 || r.files[0].start > at:
		return r.protocolErr(&wire.FrameError{Err: ErrUnexpected, Detail: fmt.Sprintf("%s frame %d says it carries file descriptors, and none came with it", h.Type, h.ID)})
	}
	r.inFiles = r.files[0].fds
	r.files[0] = fileBatch{}
	r.files = r.files[1:]
	return nil
}

// takeFiles hands the descriptors of the frame being handled to the
// caller, who owns them from now on.
func (r *reader) takeFiles() []int {
	fds := r.inFiles
	r.inFiles = nil
	return fds
}

// dropFiles closes every descriptor the read side holds: the Conn is
// ending.
func (r *reader) dropFiles() {
	for _, b := range r.files {
		closeFDs(b.fds)
	}
	r.files = nil
	closeFDs(r.inFiles)
	r.inFiles = nil
	closeFDs(r.part.files)
	r.part.files = nil
	if rf := r.c.sock.rf; rf != nil {
		closeFDs(rf.got)
		rf.got = nil
	}
}

// closeFDs closes raw descriptors.
func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// filesOf wraps received descriptors in *os.Files, which the receiver
// owns.
func filesOf(fds []int) []*os.File {
	if len(fds) == 0 {
		return nil
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "pairvisor-received-"+strconv.Itoa(fd))
	}
	return files
}

// dupFiles returns close-on-exec duplicates of the descriptors of
// files, made while each file is held open (RawConn.Control), so that
// a file closed concurrently cannot make us send another one's number.
// The caller owns and closes the duplicates. On error none is left
// open.
func dupFiles(files []*os.File) ([]int, error) {
	fds := make([]int, 0, len(files))
	for i, f := range files {
		if f == nil {
			closeFDs(fds)
			return nil, fmt.Errorf("file %d is nil", i)
		}
		rc, err := f.SyscallConn()
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("file %d (%s): %w", i, f.Name(), err)
		}
		fd, derr := -1, error(nil)
		if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
			derr = err
		}
		if derr != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("file %d (%s): %w", i, f.Name(), os.NewSyscallError("fcntl", derr))
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// checkFiles returns why files cannot go with a frame on c, or nil.
func (c *Conn) checkFiles(n int) error {
	switch {
	case n > wire.MaxFiles:
		return &wire.FrameError{Err: ErrTooManyFiles, Detail: fmt.Sprintf("%d file descriptors, at most %d go with one frame", n, wire.MaxFiles)}
	case c.ver < 3:
		return fmt.Errorf("%w: the connection speaks version %d (version 3 passes descriptors, and needs ConnConfig.MaxFiles on both sides)", ErrNoFiles, c.ver)
	}
	return nil
}

// CallFiles is [Conn.Call] with file descriptors: files go with the
// request (none: a plain request), and replyFiles are the descriptors
// that came with the reply. It needs a version 3 connection (both sides
// with [ConnConfig.MaxFiles]); with files on any other it fails with
// [ErrNoFiles], sending nothing. At most [wire.MaxFiles] go with one
// request ([ErrTooManyFiles]).
//
// Ownership: the caller keeps files, and may close them once CallFiles
// has returned (the peer has its own references from the moment the
// request is written). The caller owns replyFiles, which are
// close-on-exec. When CallFiles returns an error, replyFiles is nil:
// any descriptors that came with an error reply, or with a reply that
// arrived after the caller gave up, are closed.
func (c *Conn) CallFiles(ctx context.Context, t wire.Type, payload []byte, files []*os.File) (reply []byte, replyFiles []*os.File, err error) {
	var ctl []byte
	if len(files) > 0 {
		if err := c.checkFiles(len(files)); err != nil {
			return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
		}
		fds, err := dupFiles(files)
		if err != nil {
			return nil, nil, &OpError{Op: "call " + t.String(), Addr: c.cfg.Addr, Err: err}
		}
		defer closeFDs(fds)
		ctl = unix.UnixRights(fds...)
	}
	reply, fds, err := c.call(ctx, t, payload, nil, ctl)
	return reply, filesOf(fds), err
}

// replyFiles holds the files a Handler attaches to its reply.
type replyFiles struct {
	mu    sync.Mutex
	files []*os.File
	done  bool // the Handler has returned: too late to attach
}

// AttachFiles sends files with the reply to this request (protocol
// version 3). The Conn owns them from the call on, in every case: it
// closes them once the reply is written, or has failed, or when the
// Handler returns an error (an error reply carries no descriptors), or
// at once when AttachFiles fails: on a connection below version 3
// ([ErrNoFiles]), with more than [wire.MaxFiles] attached in all
// ([ErrTooManyFiles]), or after the Handler has returned. It may be
// called more than once, from the Handler's goroutine or another,
// before the Handler returns.
func (r Request) AttachFiles(files ...*os.File) error {
	rf := r.reply
	fail := func(err error) error {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		return err
	}
	if rf == nil {
		return fail(fmt.Errorf("%w: the request came on a connection below version 3", ErrNoFiles))
	}
	rf.mu.Lock()
	defer rf.mu.Unlock()
	switch {
	case rf.done:
		return fail(errors.New("ipc: AttachFiles after the Handler returned"))
	case len(rf.files)+len(files) > wire.MaxFiles:
		return fail(&wire.FrameError{Err: ErrTooManyFiles, Detail: fmt.Sprintf("%d file descriptors, at most %d go with one frame", len(rf.files)+len(files), wire.MaxFiles)})
	}
	for _, f := range files {
		if f == nil {
			return fail(errors.New("ipc: AttachFiles with a nil file"))
		}
	}
	rf.files = append(rf.files, files...)
	return nil
}

// take ends attaching and returns what was attached; nil-safe.
func (rf *replyFiles) take() []*os.File {
	if rf == nil {
		return nil
	}
	rf.mu.Lock()
	defer rf.mu.Unlock()
	rf.done = true
	files := rf.files
	rf.files = nil
	return files
}

// closeFiles closes files, ignoring errors.
func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// replyRights turns the files a Handler attached into the control
// message of its reply: duplicates of their descriptors, which the
// caller closes once the reply is written (the files themselves are
// closed here). A failure to duplicate them fails the request.
func replyRights(files []*os.File) (ctl []byte, fds []int, err error) {
	if len(files) == 0 {
		return nil, nil, nil
	}
	defer closeFiles(files)
	fds, err = dupFiles(files)
	if err != nil {
		return nil, nil, err
	}
	return unix.UnixRights(fds...), fds, nil
}
