package frontdoor

import (
	"container/list"
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pairvisor/pairvisor/ipc"
	"github.com/pairvisor/pairvisor/ipc/listen"
	"github.com/pairvisor/pairvisor/ipc/wire"
	"golang.org/x/sys/unix"
)

// Admission: which clients a Server takes, what they may ask, and which
// connection makes room when the table is full.
//
// Every accepted connection holds one slot of MaxConns until it ends.
// Raw and not-yet-classified connections are evictable: when a new
// client finds the table full (or its uid's share used up), the one
// that has been quiet longest makes room, provided nothing it sent is
// still unread in its receive queue (unless it is a raw client that
// does not read its echo, so that the server cannot read on). So
// clients that connect and send nothing cannot keep out one that talks:
// a framed client's hello is in its receive queue from the moment it
// connects until the server reads it, and then the connection is framed
// and no longer evictable. The decision rests on the kernel's queue,
// not on a clock, so it holds however fast the flood comes.

const (
	// reservedConns slots of MaxConns (at most a quarter of it) are
	// kept for the server's own uid and root.
	reservedConns = 8

	// evictScan bounds how many candidates one admission looks at
	// before it gives up and refuses the newcomer.
	evictScan = 32

	// nofileHeadroom: MaxConnsLimit leaves an eighth of RLIMIT_NOFILE,
	// and at least this many descriptors, to the rest of the process.
	nofileHeadroom = 64

	// Throttled log lines: at most logBurst lines of a kind per
	// logWindow, then one summary with the number left out.
	logBurst  = 5
	logWindow = time.Second
)

// MaxConnsLimit returns the largest MaxConns a [Server] may use in this
// process: the open-file limit (RLIMIT_NOFILE's soft value, which the
// Go runtime raises to the hard one at start-up) less an eighth of it,
// and at least 64 descriptors, left for the rest of the process (the
// listener, workers' sockets and pipes, log files). [New] lowers
// a larger MaxConns to it. It is at least 1.
func MaxConnsLimit() int {
	n := nofile()
	return int(max(1, n-max(nofileHeadroom, n/8)))
}

// nofile returns RLIMIT_NOFILE's soft value.
func nofile() int64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return DefaultMaxConns + nofileHeadroom + DefaultMaxConns/8
	}
	return int64(min(rl.Cur, 1<<30))
}

// cred is who a connected peer is: the credentials the kernel recorded
// when it connected and, where a group list asks for them, its
// supplementary groups (see listen.Peer.Groups).
type cred struct {
	uid, gid uint32
	pid      int32
	groups   []uint32
}

// inGroup reports whether the peer's primary or a supplementary group
// is in gids.
func (c *cred) inGroup(gids []uint32) bool {
	if slices.Contains(gids, c.gid) {
		return true
	}
	for _, g := range c.groups {
		if slices.Contains(gids, g) {
			return true
		}
	}
	return false
}

// connSlot is one accepted connection, from accept until its goroutine
// ends.
type connSlot struct {
	cred cred
	priv bool // the server's own uid, or root
	ctl  bool // may send control requests

	// f owns the fd (non-blocking, registered with the runtime poller)
	// while the client is raw or unclassified; a framed client's fd
	// moves to a Conn.
	f  *os.File
	rc syscall.RawConn

	// Guarded by Server.mu.
	conn   *ipc.Conn     // once framed
	elem   *list.Element // in its uid's idle list while evictable
	queued uint64        // the stamp the list position reflects
	gone   bool          // counted out of the table: evicted or ended

	// stamp is Server.seq at the connection's last sign of life.
	stamp atomic.Uint64
	// stalled is set while a raw echo waits for the client to read.
	stalled atomic.Bool

	// serveRaw's state, shared with its RawConn callbacks.
	rbuf            *[]byte
	rn              int
	rerr            error
	wp              []byte
	werr            error
	readFn, writeFn func(uintptr) bool
}

// uidConns is one uid's share of the table.
type uidConns struct {
	n    int
	idle list.List // *connSlot, raw or unclassified, least recently active first (roughly)
}

// touch records a sign of life.
func (s *Server) touch(sl *connSlot) { sl.stamp.Store(s.seq.Add(1)) }

// unread reports whether the client has sent bytes the server has not
// read yet.
func (sl *connSlot) unread() bool {
	n := 0
	sl.rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), fionread) })
	return n > 0
}

// kick shuts the connection down, which wakes its goroutine.
func (sl *connSlot) kick() {
	sl.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

func (s *Server) privileged(uid uint32) bool { return uid == 0 || uid == s.euid }

// mayConnect reports whether an unprivileged peer is served at all. A
// path socket without allow-lists leaves that to the socket file's
// mode; an abstract socket has no file, so it serves nobody unlisted.
func (s *Server) mayConnect(c *cred) bool {
	if !s.abstract && len(s.cfg.AllowUIDs) == 0 && len(s.cfg.AllowGIDs) == 0 {
		return true
	}
	return slices.Contains(s.cfg.AllowUIDs, c.uid) || c.inGroup(s.cfg.AllowGIDs) || s.mayControl(c)
}

// mayControl reports whether an unprivileged peer may send control
// requests.
func (s *Server) mayControl(c *cred) bool {
	return slices.Contains(s.cfg.ControlUIDs, c.uid) || c.inGroup(s.cfg.ControlGIDs)
}

// admit decides on an accepted connection. It takes ownership of p.File
// and returns the connection's slot, or nil when it refused (and
// closed) it.
func (s *Server) admit(p *listen.Peer) *connSlot {
	c := cred{uid: p.Cred.UID, gid: p.Cred.GID, pid: p.Cred.PID}
	priv := s.privileged(c.uid)
	if !priv && s.wantGroups {
		groups, err := p.Groups()
		if err != nil {
			s.log.Debug("cannot read a peer's supplementary groups", "uid", c.uid, "pid", c.pid, "error", err)
		}
		c.groups = groups
	}
	if !priv && !s.mayConnect(&c) {
		s.refused.Add(1)
		s.refusedLog.log("uid", c.uid, "gid", c.gid, "pid", c.pid)
		p.File.Close()
		return nil
	}
	sl := &connSlot{cred: c, priv: priv, ctl: priv || s.mayControl(&c)}
	sl.f = p.File
	rc, err := sl.f.SyscallConn()
	if err != nil { // not for a socket; but never serve what we cannot wait on
		sl.f.Close()
		return nil
	}
	sl.rc = rc

	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		sl.f.Close()
		return nil
	}
	victim, why := s.room(sl)
	if why != "" {
		s.mu.Unlock()
		s.refused.Add(1)
		if why == "uid" {
			s.uidFullLog.log("max_conns_per_uid", s.cfg.MaxConnsPerUID, "uid", c.uid, "pid", c.pid)
		} else {
			s.fullLog.log("max_conns", s.cfg.MaxConns, "uid", c.uid, "pid", c.pid)
		}
		sl.f.Close()
		return nil
	}
	if victim != nil {
		s.countOut(victim)
		victim.kick()
		s.evicted.Add(1)
		s.evictLog.log("uid", victim.cred.uid, "pid", victim.cred.pid, "for_uid", c.uid, "for_pid", c.pid)
	}
	u := s.uids[c.uid]
	if u == nil {
		u = new(uidConns)
		s.uids[c.uid] = u
	}
	u.n++
	s.n++
	s.active.Store(int64(s.n))
	sl.queued = s.seq.Add(1)
	sl.stamp.Store(sl.queued)
	sl.elem = u.idle.PushBack(sl)
	s.slots[sl] = struct{}{}
	s.mu.Unlock()
	return sl
}

// room finds room in the table for sl: nothing to do, a connection to
// evict, or a reason to refuse ("uid": its uid's share is used up;
// "full"). Called with mu held.
func (s *Server) room(sl *connSlot) (victim *connSlot, refuse string) {
	uid := sl.cred.uid
	if !sl.priv && s.cfg.MaxConnsPerUID > 0 {
		if u := s.uids[uid]; u != nil && u.n >= s.cfg.MaxConnsPerUID {
			if v := s.idlest(func(id uint32) bool { return id == uid }); v != nil {
				return v, ""
			}
			return nil, "uid"
		}
	}
	limit := s.cfg.MaxConns
	if !sl.priv {
		limit -= s.reserve
	}
	if s.n < limit {
		return nil, ""
	}
	// The privileged may make room at anyone's expense; others only at
	// the expense of the unprivileged.
	if v := s.idlest(func(id uint32) bool { return sl.priv || !s.privileged(id) }); v != nil {
		return v, ""
	}
	return nil, "full"
}

// idlest returns the evictable connection, among those of the uids ok
// accepts, that has been quiet longest and has nothing unread (or does
// not read its echo, so that we cannot read on); nil if there is none,
// or if evictScan candidates in a row had bytes unread. Called with mu
// held.
//
// Each uid's idle list is kept in the order of its connections' last
// activity lazily: a connection active since it was queued is moved to
// the back when it reaches the front. That costs one move per sign of
// life, so it does not count against evictScan.
func (s *Server) idlest(ok func(uid uint32) bool) *connSlot {
	for checked, moved := 0, 0; checked < evictScan && moved <= s.n; {
		var best *connSlot
		for uid, u := range s.uids {
			if !ok(uid) {
				continue
			}
			if e := u.idle.Front(); e != nil {
				if sl := e.Value.(*connSlot); best == nil || sl.queued < best.queued {
					best = sl
				}
			}
		}
		if best == nil {
			return nil
		}
		if st := best.stamp.Load(); st != best.queued {
			moved++
		} else if checked++; best.unread() && !best.stalled.Load() {
			s.touch(best) // it has spoken; we just have not listened yet
		} else {
			return best
		}
		best.queued = best.stamp.Load()
		s.uids[best.cred.uid].idle.MoveToBack(best.elem)
	}
	return nil
}

// countOut takes sl out of the table. Called with mu held; idempotent.
func (s *Server) countOut(sl *connSlot) {
	if sl.gone {
		return
	}
	sl.gone = true
	u := s.uids[sl.cred.uid]
	if sl.elem != nil {
		u.idle.Remove(sl.elem)
		sl.elem = nil
	}
	if u.n--; u.n == 0 {
		delete(s.uids, sl.cred.uid)
	}
	s.n--
	s.active.Store(int64(s.n))
	delete(s.slots, sl)
}

// release takes sl out of the table when its goroutine is done with it.
func (s *Server) release(sl *connSlot) {
	s.mu.Lock()
	s.countOut(sl)
	s.mu.Unlock()
}

// handoff takes a framed client out of the eviction order, before its
// file moves to a Conn. It reports false if the slot was evicted
// meanwhile or the server is stopping; the caller still owns sl.f.
func (s *Server) handoff(sl *connSlot) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl.gone || s.stopping {
		return false
	}
	s.uids[sl.cred.uid].idle.Remove(sl.elem) // framed: no longer evictable
	sl.elem = nil
	return true
}

// guard wraps the Handler for a peer that may not send control
// requests: status and (forwarded) echo requests reach the Handler;
// message, reload and shutdown requests, and any other type that may
// change state, are refused with CodeDenied.
func (s *Server) guard(c cred) ipc.Handler {
	h := s.cfg.Handler
	return func(ctx context.Context, req ipc.Request) ([]byte, error) {
		switch req.Type {
		case wire.TypeStatus, wire.TypeEcho:
			if h == nil {
				return nil, &wire.RemoteError{Code: wire.CodeUnsupported, Message: fmt.Sprintf("no handler for %s requests", req.Type)}
			}
			return h(ctx, req)
		}
		s.denied.Add(1)
		s.deniedLog.log("type", req.Type.String(), "uid", c.uid, "gid", c.gid, "pid", c.pid)
		return nil, &wire.RemoteError{Code: wire.CodeDenied, Message: fmt.Sprintf("%s requests are for the server's own uid, root and the control uids and gids; uid %d is none of them", req.Type, c.uid)}
	}
}

// throttle rate-limits one kind of log line: at most logBurst lines per
// logWindow are written; the rest are counted, and the count is written
// in one summary line once the window has passed. It is safe for
// concurrent use.
type throttle struct {
	out   hclog.Logger
	level hclog.Level
	msg   string

	mu      sync.Mutex
	start   time.Time // of the current window
	n       int       // lines written in it
	dropped int
	timer   *time.Timer // writes the summary at the window's end
	stopped bool
	wg      sync.WaitGroup // the timer's function, until it has run or been stopped
}

func newThrottle(log hclog.Logger, level hclog.Level, msg string) *throttle {
	return &throttle{out: log, level: level, msg: msg}
}

// log writes the line, or counts it if too many were written lately.
func (t *throttle) log(args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.start) >= logWindow {
		t.summary()
		t.start, t.n = now, 0
	}
	if t.n < logBurst {
		t.n++
		t.out.Log(t.level, t.msg, args...)
		return
	}
	t.dropped++
	if t.timer == nil && !t.stopped {
		t.wg.Add(1)
		var tm *time.Timer
		tm = time.AfterFunc(t.start.Add(logWindow).Sub(now), func() {
			defer t.wg.Done()
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.timer == tm {
				t.timer = nil
			}
			t.summary()
		})
		t.timer = tm
	}
}

// summary writes the count of lines left out, if any, and disarms the
// timer. Called with mu held.
func (t *throttle) summary() {
	if t.dropped > 0 {
		t.out.Log(t.level, t.msg+": similar lines suppressed", "count", t.dropped, "window", logWindow.String())
		t.dropped = 0
	}
	if t.timer != nil && t.timer.Stop() {
		t.wg.Done()
	}
	t.timer = nil
}

// stop writes any pending summary and returns once no timer of t can
// run any more. Lines logged afterwards are still throttled, but their
// count is never written.
func (t *throttle) stop() {
	t.mu.Lock()
	t.stopped = true
	t.summary()
	t.mu.Unlock()
	t.wg.Wait()
}
