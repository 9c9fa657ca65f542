package listen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/pairvisor/pairvisor/internal/sysfd"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults for [Config].
const (
	DefaultSocketMode    os.FileMode = 0o600
	DefaultWatchPeriod               = 2 * time.Second
	DefaultListenBacklog             = 1024
)

// lockMagic opens every lock file pairvisor writes, so that a stale
// one left by a crash can be told from somebody else's file.
const lockMagic = "pairvisor-lock "

// Sentinel errors of [New].
var (
	// ErrInUse reports a live server already listening on the path.
	ErrInUse = errors.New("listen: a live server is listening there")
	// ErrNotOurs reports something at the path (or its lock file) that
	// pairvisor did not create; it is left untouched.
	ErrNotOurs = errors.New("listen: path is taken by something that is not a pairvisor socket")
	// ErrPathTooLong reports a path longer than [MaxPathLen].
	ErrPathTooLong = errors.New("listen: socket path too long")
	// ErrLocked reports another server starting on the same path now.
	ErrLocked = errors.New("listen: another server holds the path's lock")
	// ErrAbstractUnsupported reports an "@name" on a system without
	// abstract sockets (all but Linux).
	ErrAbstractUnsupported = errors.New("listen: abstract socket names (@name) exist on Linux only")
)

// ErrClosed is wrapped by the errors of [Listener.Accept] and
// [Listener.SyscallConn] once the Listener is closed. It wraps
// os.ErrClosed, so errors.Is(err, os.ErrClosed) holds too. (It is not
// net.ErrClosed: this package does not link package net, which would
// make the supervisor command, which uses it, a dynamically linked
// binary.)
var ErrClosed = fmt.Errorf("listen: listener closed: %w", os.ErrClosed)

// Config says how [New] creates a socket. The zero value
// creates a 0600 socket owned by the caller's uid and gid.
type Config struct {
	// Mode is the socket file's permission bits (default 0600). The
	// file never exists with wider permissions, whatever the umask.
	Mode os.FileMode
	// GID, when not -1, is the group the socket file is given (use it
	// with a group-accessible Mode such as 0660). Zero means root's
	// group, except when Mode is zero too (as in the zero Config):
	// then the caller's group is kept, as with -1.
	GID int
	// WatchPeriod is how often the path is checked: a socket file that
	// was deleted (a tmp cleaner, an operator's rm) is bound again.
	// Default 2s; negative disables the watch.
	WatchPeriod time.Duration
	// Logger receives warnings about the path. Nil discards them.
	Logger hclog.Logger
}

// Listener is a listening Unix socket bound to a filesystem path or,
// for names starting with "@", to a Linux abstract name. One made by
// [New] owns the listening fd, the socket file and its lock file, and
// removes both files on Close if, and only if, they are still the ones
// it created; one made by [FromFile] owns only its fd.
type Listener struct {
	path     string
	abstract bool
	passed   bool // from FromFile: the path is somebody else's
	cfg      Config
	log      hclog.Logger

	lock *os.File // held flock; nil for abstract names

	// turn is held by the one Accept that waits in the poller; others
	// wait for it in a select that their context also ends.
	turn chan struct{}
	done chan struct{} // closed by Close

	mu sync.Mutex // guards what follows; serialises Close and rebinds
	// lf is the listening socket: close-on-exec, non-blocking and
	// registered with the runtime's poller. The Listener owns it; a
	// rebind replaces it (closing the old one wakes an Accept waiting
	// on it, which then takes the new one) and Close closes it. The Go
	// runtime closes the descriptor only once no Accept is using it, so
	// its number is never reused under one.
	lf     *os.File
	ino    fileID // identity of the socket file we created
	closed bool
	stop   chan struct{} // ends watch
	wg     sync.WaitGroup

	closeOnce sync.Once
}

// fileID identifies a file across renames. Inode numbers are reused at
// once on some filesystems, so the change time (set by the rename that
// put our socket in place) is part of it.
type fileID struct {
	dev   uint64
	ino   uint64
	ctime unix.Timespec
}

// New creates a listening socket at path, safely:
//
//   - a path longer than [MaxPathLen] is refused with [ErrPathTooLong];
//   - starts on the same path are serialised by an flock on path+".lock";
//     a second server finds it held and fails with [ErrLocked];
//   - nothing at the path: bind;
//   - a socket whose connect is refused (stale, from a crash): remove it
//     and bind;
//   - a socket with a live server: fail with [ErrInUse], naming the
//     server's pid, and leave it alone;
//   - anything else (regular file, directory, symlink, fifo): fail with
//     [ErrNotOurs] and leave it alone;
//   - the socket is bound inside a private 0700 directory, given its
//     mode and group there, and then renamed into place (without
//     replacing anything), so it never exists with wider permissions;
//   - while the Listener is open, a deleted socket file is bound again.
//
// Names starting with "@" are Linux abstract sockets: no file, no lock,
// nothing to clean up; guard them with peer credentials.
func New(path string, cfg Config) (*Listener, error) {
	if cfg.Mode == 0 {
		if cfg.GID == 0 {
			cfg.GID = -1 // the zero Config keeps the caller's group
		}
		cfg.Mode = DefaultSocketMode
	}
	if cfg.WatchPeriod == 0 {
		cfg.WatchPeriod = DefaultWatchPeriod
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := checkPath(path); err != nil {
		return nil, &os.PathError{Op: "listen", Path: path, Err: err}
	}
	l := &Listener{path: path, cfg: cfg, log: cfg.Logger, stop: make(chan struct{}),
		turn: make(chan struct{}, 1), done: make(chan struct{})}
	if strings.HasPrefix(path, "@") {
		if !abstractSupported {
			return nil, &os.PathError{Op: "listen", Path: path, Err: ErrAbstractUnsupported}
		}
		l.abstract = true
		fd, err := listenFD(path)
		if err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				err = fmt.Errorf("%w%s", ErrInUse, describePeer(path))
			}
			return nil, &os.PathError{Op: "listen", Path: path, Err: err}
		}
		l.lf = pollable(fd)
		return l, nil
	}
	lock, err := acquireLock(path + ".lock")
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		if derr := checkDir(filepath.Dir(path)); derr != nil {
			err = derr
		}
	}
	if errors.Is(err, ErrLocked) {
		if pid := describePeer(path); pid != "" {
			err = fmt.Errorf("%w%s; not replacing it", ErrInUse, pid)
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "listen", Path: path, Err: err}
	}
	l.lock = lock
	if err := clearStale(path); err != nil {
		l.releaseLock()
		return nil, &os.PathError{Op: "listen", Path: path, Err: err}
	}
	fd, id, err := bindInPlace(path, cfg)
	if err != nil {
		l.releaseLock()
		return nil, &os.PathError{Op: "listen", Path: path, Err: err}
	}
	l.lf = pollable(fd)
	l.ino = id
	if cfg.WatchPeriod > 0 {
		l.wg.Add(1)
		go l.watch()
	}
	return l, nil
}

// Addr returns the path or "@name" the Listener was created for.
func (l *Listener) Addr() string { return l.path }

// dirError reports a socket path whose directory is missing or is not
// a directory.
type dirError struct {
	dir string
	err error // unix.ENOENT or unix.ENOTDIR
}

func (e *dirError) Error() string {
	if e.err == unix.ENOTDIR {
		return "socket directory " + e.dir + " is not a directory"
	}
	return "socket directory " + e.dir + " does not exist"
}

func (e *dirError) Unwrap() error { return e.err }

// checkDir explains a lock file that cannot be created: its directory
// is missing or is not a directory. It returns nil if dir is fine.
func checkDir(dir string) error {
	var st unix.Stat_t
	err := unix.Stat(dir, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		return &dirError{dir: dir, err: unix.ENOENT}
	case errors.Is(err, unix.ENOTDIR), err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return &dirError{dir: dir, err: unix.ENOTDIR}
	}
	return nil
}

func checkPath(path string) error {
	switch {
	case path == "" || path == "@":
		return errors.New("empty socket path")
	case len(path) > MaxPathLen:
		return fmt.Errorf("%w: %d bytes, the kernel's limit (sun_path) is %d", ErrPathTooLong, len(path), MaxPathLen)
	case strings.IndexByte(path, 0) >= 0:
		return errors.New("socket path contains a NUL byte")
	}
	return nil
}

// acquireLock takes an exclusive flock on name, creating the file if
// needed. An existing file must be a pairvisor lock file.
func acquireLock(name string) (*os.File, error) {
	for range 3 {
		fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
		created := err == nil
		if errors.Is(err, unix.EEXIST) {
			fd, err = unix.Open(name, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				return nil, fmt.Errorf("%w: lock file %s is a symlink", ErrNotOurs, name)
			}
			if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENXIO) {
				return nil, fmt.Errorf("%w: lock file %s exists and is not a regular file", ErrNotOurs, name)
			}
			return nil, fmt.Errorf("lock file %s: %w", name, err)
		}
		f := os.NewFile(uintptr(fd), name)
		if !created {
			var st unix.Stat_t
			buf := make([]byte, len(lockMagic))
			n, _ := f.ReadAt(buf, 0)
			if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || !bytes.Equal(buf[:n], []byte(lockMagic)) && n > 0 {
				f.Close()
				return nil, fmt.Errorf("%w: %s exists and is not a pairvisor lock file", ErrNotOurs, name)
			}
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w (%s)", ErrLocked, name)
			}
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		// The holder before us may have removed the file between our
		// open and our flock: then we hold a lock nobody else sees.
		var a, b unix.Stat_t
		if unix.Fstat(fd, &a) != nil || unix.Lstat(name, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
			f.Close()
			continue
		}
		f.Truncate(0)
		f.WriteAt([]byte(lockMagic+strconv.Itoa(os.Getpid())+"\n"), 0)
		return f, nil
	}
	return nil, fmt.Errorf("%w: lock file %s keeps changing", ErrLocked, name)
}

// clearStale removes a stale socket at path and refuses anything else.
// The caller holds the path's lock.
func clearStale(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("checking the path: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%w: it is %s; leaving it alone", ErrNotOurs, describeMode(uint32(st.Mode)))
	}
	// Non-blocking: a connect to a server whose accept queue is full
	// would otherwise wait for as long as that server is stuck.
	fd, err := sysfd.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	switch {
	case err == nil:
		return fmt.Errorf("%w%s; not replacing it", ErrInUse, describeFD(fd))
	case errors.Is(err, unix.ECONNREFUSED):
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing stale socket: %w", err)
		}
		return nil
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("%w (its backlog is full); not replacing it", ErrInUse)
	default:
		return fmt.Errorf("probing the existing socket: %w", err)
	}
}

func describeMode(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFIFO:
		return "a fifo"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	}
	return "not a socket"
}

// describeFD returns " (uid U, pid P)" for the server at the other end
// of fd, or "" if the kernel does not say.
func describeFD(fd int) string {
	c, err := peerCred(fd)
	if err != nil {
		return ""
	}
	return c.describe()
}

// ours reports whether st, the file now at the path, is the socket this
// Listener placed there. Usually that is a matter of its identity
// (device, inode, change time). If only the change time moved, an
// operator's chmod or chown may have touched our socket, or a new file
// may have been given our inode number after ours was removed: it is
// ours if it is a socket and the process listening behind it is this
// one.
func (l *Listener) ours(st *unix.Stat_t) bool {
	l.mu.Lock()
	want := l.ino
	l.mu.Unlock()
	id := idOf(st)
	if id == want {
		return true
	}
	if id.dev != want.dev || id.ino != want.ino || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false
	}
	if c, ok := peerAt(l.path); !ok || c.PID != int32(os.Getpid()) {
		return false
	}
	l.mu.Lock()
	if l.ino == want {
		l.ino = id
	}
	l.mu.Unlock()
	return true
}

// describePeer returns " (uid U, pid P)" for the server listening at
// addr, or "" if there is none or it cannot be reached.
func describePeer(addr string) string {
	if c, ok := peerAt(addr); ok {
		return c.describe()
	}
	return ""
}

// peerAt connects to addr and returns the listening process's
// credentials; ok is false if there is none or it cannot be reached.
func peerAt(addr string) (c Cred, ok bool) {
	fd, err := sysfd.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0, true)
	if err != nil {
		return Cred{}, false
	}
	defer unix.Close(fd)
	if unix.Connect(fd, &unix.SockaddrUnix{Name: addr}) != nil {
		return Cred{}, false
	}
	c, err = peerCred(fd)
	return c, err == nil
}

// pollable wraps fd, a socket the caller owns, in a file registered
// with the runtime's poller; the file owns fd from then on.
func pollable(fd int) *os.File {
	unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), "pairvisor-listener")
}

// listenFD binds and listens on addr as is.
func listenFD(addr string) (int, error) {
	fd, err := sysfd.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0, true)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, DefaultListenBacklog); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("listen", err)
	}
	return fd, nil
}

// bindInPlace binds a socket in a fresh 0700 directory beside path,
// sets its mode and group there, and renames it to path without
// replacing anything that appeared meanwhile.
func bindInPlace(path string, cfg Config) (int, fileID, error) {
	dir := filepath.Dir(path)
	var tmpDir string
	for tries := 0; ; tries++ {
		// The name needs to be unused, not secret: Mkdir fails on a
		// name that exists, and then another is tried.
		tmpDir = filepath.Join(dir, fmt.Sprintf(".pv%08x", rand.Uint32()))
		if len(tmpDir)+2 > MaxPathLen {
			return -1, fileID{}, fmt.Errorf("%w: binding needs the temporary name %s/s (%d bytes, limit %d); use a shorter directory", ErrPathTooLong, tmpDir, len(tmpDir)+2, MaxPathLen)
		}
		err := unix.Mkdir(tmpDir, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || tries == 10 {
			return -1, fileID{}, fmt.Errorf("creating %s: %w", tmpDir, err)
		}
	}
	tmp := filepath.Join(tmpDir, "s")
	defer unix.Rmdir(tmpDir)
	fd, err := listenFD(tmp)
	if err != nil {
		return -1, fileID{}, err
	}
	fail := func(err error) (int, fileID, error) {
		unix.Unlink(tmp)
		unix.Close(fd)
		return -1, fileID{}, err
	}
	if err := unix.Chmod(tmp, uint32(cfg.Mode.Perm())); err != nil {
		return fail(fmt.Errorf("chmod %o: %w", cfg.Mode.Perm(), err))
	}
	if cfg.GID >= 0 && cfg.GID != os.Getegid() {
		if err := unix.Lchown(tmp, -1, cfg.GID); err != nil {
			return fail(fmt.Errorf("chown to group %d: %w", cfg.GID, err))
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(tmp, &st); err != nil {
		return fail(err)
	}
	if err := renameNoReplace(tmp, path); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fail(fmt.Errorf("%w: something appeared at the path while binding", ErrNotOurs))
		}
		return fail(fmt.Errorf("renaming into place: %w", err))
	}
	var placed unix.Stat_t
	if err := unix.Lstat(path, &placed); err != nil || placed.Ino != st.Ino || placed.Dev != st.Dev {
		// Replaced in the instant since the rename: not ours to remove.
		unix.Close(fd)
		return -1, fileID{}, fmt.Errorf("%w: the socket was replaced right after binding", ErrNotOurs)
	}
	return fd, idOf(&placed), nil
}

// watch re-binds the path when its socket file disappears.
func (l *Listener) watch() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.WatchPeriod)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		var st unix.Stat_t
		err := unix.Lstat(l.path, &st)
		if err == nil && l.ours(&st) {
			warned = false
			continue
		}
		// Gone, or replaced. A stale socket (say, from a server that
		// started meanwhile and crashed) is reclaimed as at start-up;
		// a live server's socket or a file that is not a socket is
		// left alone.
		if err := clearStale(l.path); err != nil {
			if !warned {
				l.log.Warn("socket path now holds something else; leaving it alone", "path", l.path, "error", err)
			}
			warned = true
			continue
		}
		if errors.Is(err, unix.ENOENT) {
			l.log.Warn("socket file was removed; binding it again", "path", l.path)
		} else {
			l.log.Warn("socket file was replaced by a stale socket; reclaiming the path", "path", l.path)
		}
		fd, id, err := bindInPlace(l.path, l.cfg)
		if err != nil {
			l.log.Error("binding the socket path again failed", "path", l.path, "error", err)
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			unix.Unlink(l.path)
			unix.Close(fd)
			return
		}
		old := l.lf
		l.ino = id
		l.lf = pollable(fd)
		l.mu.Unlock()
		old.Close() // wakes Accept, which takes the new one
		warned = false
	}
}

// Accept waits for a connection and returns it with the peer's
// credentials. The connection's file is close-on-exec and non-blocking
// (registered with the runtime's poller); the caller owns it. Accept
// returns promptly with ctx's error once ctx ends, and with an error
// wrapping [ErrClosed] once the Listener is closed. Concurrent
// Accepts take turns.
func (l *Listener) Accept(ctx context.Context) (*Peer, error) {
	select {
	case l.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, l.acceptErr(ctx.Err())
	case <-l.done:
		return nil, l.acceptErr(ErrClosed)
	}
	defer func() { <-l.turn }()
	// ctx ending sets a past deadline on the listening socket, which
	// wakes the wait in the poller; only the holder of turn waits there,
	// so the deadline disturbs no other Accept. It is cleared before
	// turn is given back.
	woke := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woke)
		l.mu.Lock()
		if l.lf != nil {
			l.lf.SetReadDeadline(time.Unix(1, 0))
		}
		l.mu.Unlock()
	})
	defer func() {
		if !stop() {
			<-woke
			l.mu.Lock()
			if l.lf != nil {
				l.lf.SetReadDeadline(time.Time{})
			}
			l.mu.Unlock()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return nil, l.acceptErr(err)
		}
		l.mu.Lock()
		f, closed := l.lf, l.closed
		l.mu.Unlock()
		if closed {
			return nil, l.acceptErr(ErrClosed)
		}
		nfd, err := acceptOn(f)
		if err == nil {
			c, err := peerCred(nfd)
			if err != nil { // the peer is gone already
				unix.Close(nfd)
				continue
			}
			return &Peer{File: os.NewFile(uintptr(nfd), "pairvisor-peer"), Cred: c}, nil
		}
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			l.log.Error("out of file descriptors or memory; pausing accept", "error", err)
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
			case <-l.done:
			}
			t.Stop()
		case errors.Is(err, errWoken):
			// Closed, rebound or ctx ended: the loop's checks say which.
		default:
			return nil, l.acceptErr(err)
		}
	}
}

// errWoken is acceptOn's report that its wait in the poller was ended
// from outside: a deadline set by Accept, or the file closed by Close or
// a rebind.
var errWoken = errors.New("woken")

// acceptOn accepts one connection on the listening socket f, waiting in
// the runtime's poller.
func acceptOn(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, errWoken // closed
	}
	nfd := -1
	var aerr error
	if err := rc.Read(func(fd uintptr) bool {
		nfd, aerr = acceptFD(int(fd))
		return aerr != unix.EAGAIN
	}); err != nil {
		return -1, errWoken
	}
	if aerr != nil {
		return -1, os.NewSyscallError("accept", aerr)
	}
	return nfd, nil
}

func (l *Listener) acceptErr(err error) error {
	return &os.PathError{Op: "accept", Path: l.path, Err: err}
}

// Close stops accepting, and removes the socket file and the lock file
// if they are still the ones this Listener created (a Listener from
// [FromFile] created neither and removes nothing). Connections already
// accepted are not affected. Close is idempotent and safe to call
// concurrently with Accept, which then returns an error wrapping
// [ErrClosed].
func (l *Listener) Close() error {
	l.closeOnce.Do(l.close) // concurrent callers wait for the first
	return nil
}

func (l *Listener) close() {
	l.mu.Lock()
	l.closed = true
	close(l.stop)
	close(l.done)
	l.mu.Unlock()
	l.wg.Wait() // no rebind can start now

	if !l.abstract && !l.passed {
		var st unix.Stat_t
		if unix.Lstat(l.path, &st) == nil && l.ours(&st) {
			unix.Unlink(l.path)
		}
	}
	l.mu.Lock()
	lf := l.lf
	l.lf = nil
	l.mu.Unlock()
	lf.Close() // wakes Accept
	l.releaseLock()
}

// releaseLock removes the lock file if it is still ours, then unlocks.
func (l *Listener) releaseLock() {
	if l.lock == nil {
		return
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(l.lock.Fd()), &a) == nil && unix.Lstat(l.lock.Name(), &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
		unix.Unlink(l.lock.Name()) // before unlocking: see acquireLock
	}
	l.lock.Close()
	l.lock = nil
}
