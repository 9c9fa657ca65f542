// Package sdnotify receives sd_notify(3) datagrams, so that a program
// written for systemd's Type=notify services (one that calls
// sd_notify(3), runs systemd-notify(1), or writes the datagram itself)
// can be supervised unchanged: the supervisor gives each worker a
// socket of its own ([Listen]), puts [Socket.Addr] in the worker's
// NOTIFY_SOCKET, and reads what the worker reports ([Socket.Read]).
//
// # The socket
//
// A [Socket] is an AF_UNIX datagram socket, close-on-exec and
// non-blocking (it waits in the Go runtime's poller, so a blocked Read
// holds no thread), bound to a fresh name in the abstract namespace,
// "@pairvisor-notify/<supervisor pid>/<sequence>-<random>", with
// SO_PASSCRED set before it is bound, so every datagram arrives with
// its sender's credentials. The name is never a file: nothing to clean
// up, nothing to chmod. The abstract namespace is open to every process
// of the network namespace, whatever its uid, which is why the sender
// is checked (below).
//
// The kernel bounds what waits in the socket: a datagram socket queues
// at most net.unix.max_dgram_qlen datagrams (10 by default), after
// which a sender blocks (sd_notify(3) and systemd-notify use a blocking
// socket) or gets EAGAIN. The caller must therefore keep a Read pending
// for as long as the worker runs, not read only when it has time, or
// the worker stalls in sd_notify.
//
// # Datagrams
//
// The format is systemd's: assignments KEY=VALUE separated by newlines;
// a trailing newline is optional, empty lines are skipped, and, as in
// systemd, a carriage return separates lines too. One trailing NUL byte
// is tolerated (some senders count the C string's terminator); a NUL
// anywhere else makes the datagram invalid, as in systemd. Keys are
// case-sensitive and taken as they are: " READY=1" is the unknown key
// " READY". Values are taken literally (systemd's splitter happens to
// drop backslashes; no documented sender relies on that, and we do not
// imitate it).
//
// Unknown keys are ignored, as systemd ignores them, so programs that
// send BUSERROR=, FDNAME=, NOTIFYACCESS= and the like still work. Two
// rules are stricter than systemd's, which logs and skips the offending
// line but acts on the rest:
//
//   - a line without "=" makes the whole datagram invalid;
//   - so does an invalid value for a key this package knows.
//
// The known keys and their valid values:
//
//   - READY=1, RELOADING=1, STOPPING=1 set [Message].Ready, Reloading
//     and Stopping. Each key is independent: a datagram may set more
//     than one, and the caller applies systemd's precedence (STOPPING
//     over the others; READY and RELOADING together mean a reload that
//     is already over). The value 0 is accepted and does nothing:
//     systemd acts only on the exact assignment "READY=1" and silently
//     passes over "READY=0", so a program that says it is not ready yet
//     must not have the rest of its datagram thrown away. Any other
//     value (READY=2, READY=yes) is invalid.
//   - STATUS=text, any UTF-8 text (invalid UTF-8 is invalid; systemd
//     drops such a status with a warning). STATUS= with nothing after
//     it is valid and clears the status. The text is the sender's: it
//     may hold control characters such as escape sequences, so quote it
//     before printing it to a terminal.
//   - WATCHDOG=1 (a keep-alive ping) and WATCHDOG=trigger (the program
//     asks to be treated as if its watchdog had expired); any other
//     value is invalid.
//   - WATCHDOG_USEC=µs changes the watchdog interval (0 turns it off in
//     systemd); EXTEND_TIMEOUT_USEC=µs asks for more time for the start
//     or stop in progress; MONOTONIC_USEC=µs is the CLOCK_MONOTONIC time
//     a RELOADING=1 was sent at (0 reads as absent in [Message]).
//     Values are unsigned decimal integers that fit in 64 bits; values
//     beyond what a time.Duration holds (about 292 years; systemd's
//     "infinity" is 2^64-1) become the largest Duration. systemd's
//     parser also takes a sign, leading blanks and 0x/0o/0b prefixes;
//     sd_notify(3) callers write plain decimal, which is all we take.
//   - ERRNO=n, a decimal errno value 0..4095 (systemd's range; it also
//     takes names such as EIO, which we do not).
//   - MAINPID=n, a decimal pid 1..2^31-1. It is the program's claim
//     that another process is now its main one; the caller decides
//     whether to believe it.
//   - BARRIER=1 is sd_notify_barrier(3): the datagram carries the write
//     end of a pipe, and the sender waits until every copy of it is
//     closed, which tells it that everything it sent before has been
//     read. As in systemd, BARRIER=1 must be the datagram's only
//     assignment (otherwise the datagram is invalid), and 0 is accepted
//     and does nothing, like READY=0.
//
// Where a key appears more than once, its first occurrence counts, as
// in systemd (its lookups return the first match); the others are
// still checked and can make the datagram invalid. [Parse] implements all of this on the datagram's bytes
// alone.
//
// # What Read accepts
//
// Read takes one datagram at a time and refuses it (it never reaches
// the caller as a [Message]) when:
//
//   - it is longer than 4096 bytes ([MaxDatagram]), systemd's limit
//     (PIPE_BUF). Read asks for the real length with MSG_TRUNC and
//     copies no more than the limit. Its buffers are allocated once, by
//     Listen; per datagram it allocates a few bytes of its own, none in
//     proportion to what was sent, plus the Message's Status string or
//     the refusal's error;
//   - its ancillary data was truncated (MSG_CTRUNC): Read has room for
//     the credentials and [MaxFDs] descriptors, and a sender that
//     passes more is refused;
//   - it carries no SCM_CREDENTIALS, or credentials whose pid is 0 (a
//     sender in a pid namespace ours cannot see; systemd refuses these
//     too);
//   - its sender's uid is neither the worker's (given to Listen), our
//     effective uid nor 0 (root);
//   - [Parse] finds it invalid.
//
// Every descriptor that arrives is received close-on-exec
// (MSG_CMSG_CLOEXEC) and closed before Read returns, whatever becomes
// of the datagram: this package has no file descriptor store, so
// FDSTORE=1 and its descriptors are dropped (the key is ignored like
// any unknown key), and closing a barrier's pipe end is what releases
// its sender. Descriptors still queued when the socket is closed are
// released by the kernel.
//
// For a refused datagram Read returns a *[RefusedError], which matches
// [ErrRefused] and the reason's sentinel ([ErrTooLarge],
// [ErrControlTruncated], [ErrNoCredentials], [ErrForeignUser],
// [ErrInvalid]) and says who sent what; the socket stays usable and the
// caller calls Read again. The caller logs these through its own rate
// limit: a hostile sender can make one per datagram. [Socket.Refused]
// counts them.
//
// # Who sent it
//
// The uid check keeps other users out. Whether the sender belongs to
// the worker is the caller's question: [FromTree] reports whether a pid
// is the worker or one of its descendants, from the parent links in
// /proc. The credentials name the sending process as the kernel saw it
// when it sent, with one exception: a sender with CAP_SYS_ADMIN may
// name any pid, and systemd-notify(1), run as root, names its parent
// (the shell script that ran it, which is the service's main process)
// unless $MANAGERPID equals that parent's pid. Without the privilege
// it sends with its own pid.
//
// A sender that has exited by the time the caller looks cannot be
// placed: FromTree reports false for a pid that is gone, exactly as for
// a stranger. A one-shot sender (a script's python3 -c, socat, or
// systemd-notify --no-block) often exits before its datagram is read.
// Since the uid check has already passed, and a process of the same
// user could do far worse to the worker than forge its status, we
// recommend that the caller accept datagrams from the worker's tree and
// from senders that are gone (FromTree false, and kill(pid, 0) failing
// with ESRCH), and refuse those from live processes outside the tree (a
// stray NOTIFY_SOCKET inherited by something else). Ancestry is also lost when a descendant is re-parented (its
// parent exited), and a pid may be reused: the check guards against
// confusion, it is not a security boundary.
package sdnotify
