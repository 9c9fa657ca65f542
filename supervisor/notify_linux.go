//go:build linux

package supervisor

import (
	"errors"
	"os"
	"strconv"
	"time"

	"github.com/pairvisor/pairvisor/internal/sdnotify"
)

// Config.Ready == ReadyNotify: each worker process gets a datagram
// socket of its own (an abstract name, random, close-on-exec in the
// supervisor) in NOTIFY_SOCKET. Its reader is the process's
// listenNotify goroutine, through process.notice; the socket is closed
// when the process is reaped, which ends that goroutine.
//
// Who may speak for a worker: the socket accepts datagrams from our
// own uid, root and the worker's uid (Config.Credential) only
// (sdnotify.Socket.Read checks SCM_CREDENTIALS), and of those only from
// the worker or a descendant of it. A sender that has already exited
// when its datagram is read cannot be placed in the tree (a one-shot
// sender: python3 -c, socat): if it ran as our uid or root, its
// datagram is accepted on the strength of the socket's name, which only
// the worker was given. If it ran as the worker's own, other uid, it is
// refused: abstract names are visible to every process, and that uid
// may be shared (nobody, www-data) with processes that are not ours.
// systemd-notify waits (BARRIER=1) until its datagrams are read, so it
// is alive, and placed, when they are.

// notifyLogEvery bounds the log lines about refused datagrams: one per
// process per interval, with a count of those left out.
const notifyLogEvery = 10 * time.Second

// notifyEnv returns the environment entries for a notify socket.
func notifyEnv(sock *sdnotify.Socket, watchdog time.Duration) []string {
	// MANAGERPID: systemd-notify run by root sends with its parent's pid
	// unless its parent is the manager; a worker that execs it (sh -c
	// 'exec systemd-notify …') would otherwise speak with our pid.
	env := []string{"NOTIFY_SOCKET=" + sock.Addr(), "MANAGERPID=" + strconv.Itoa(os.Getpid())}
	if watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(watchdog.Microseconds(), 10))
	}
	return env
}

// notice returns the worker's next sd_notify datagram that it, or a
// process of its tree, sent.
func (p *process) notice() (notice, error) {
	if p.notify == nil {
		return notice{}, errNoNotices
	}
	var (
		loggedAt time.Time
		left     int
	)
	refuse := func(err error, sender sdnotify.Cred) {
		if now := time.Now(); now.Sub(loggedAt) >= notifyLogEvery {
			p.log.Warn("notify datagram refused", "error", err, "sender_pid", sender.PID, "sender_uid", sender.UID, "not_logged_since_last", left)
			loggedAt, left = now, 0
		} else {
			left++
		}
	}
	for {
		m, err := p.notify.Read()
		var re *sdnotify.RefusedError
		switch {
		case errors.As(err, &re):
			refuse(re, re.Sender)
			continue
		case err != nil:
			return notice{}, errNoNotices
		}
		if pid := int(m.Sender.PID); pid != p.pd && !sdnotify.FromTree(m.Sender.PID, p.pd) &&
			(processExists(pid) || !trustGone(m.Sender.UID)) {
			refuse(errors.New("sender is not the worker or one of its descendants"), m.Sender)
			continue
		}
		if m.Barrier {
			continue // Read closed its descriptor: that is the answer
		}
		return notice{
			ready:            m.Ready,
			reloading:        m.Reloading,
			stopping:         m.Stopping,
			watchdog:         m.Watchdog,
			trigger:          m.WatchdogTrigger,
			status:           m.Status,
			hasStatus:        m.HasStatus,
			watchdogEvery:    m.WatchdogInterval,
			hasWatchdogEvery: m.HasWatchdogInterval,
			extend:           m.ExtendTimeout,
			errno:            m.Errno,
			hasErrno:         m.HasErrno,
		}, nil
	}
}

// processExists reports whether a process pid exists (a zombie too).
func processExists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// trustGone reports whether a notify datagram from a sender of uid that
// has exited may be taken on the strength of the socket's name: ours
// and root's, not another uid the workers run as (see above).
func trustGone(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Geteuid())
}
