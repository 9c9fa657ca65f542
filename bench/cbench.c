/*
 * cbench: the C baseline for pairvisor's IPC benchmarks.
 *
 * It measures the physical limit of this machine for what pairvisor does
 * between a supervisor and its workers, the same way as the reference
 * measurements in docs/BASELINES.md: fork + socketpair(AF_UNIX, SOCK_STREAM),
 * blocking read/write, a monotonic clock, nearest-rank percentiles and
 * page-aligned message buffers.
 *
 * Usage:
 *   cbench ping N WARM          WARM untimed, then N timed 4-byte "ping" ->
 *                               4-byte "pong" round trips over a socketpair
 *   cbench ping-uds N WARM DIR  the same over a path Unix socket: the child
 *                               listens on DIR/cbench.sock, the parent connects
 *   cbench echo SIZE SECONDS    echo SIZE bytes, one message in flight;
 *                               doubling warm-up, then ~SECONDS timed
 *   cbench spawn N              N x (socketpair + fork + exec of this binary
 *                               until the first pong); median
 *   cbench all                  everything, with the defaults below
 *   cbench child-pong           internal: the exec'd child of "spawn" (fd 3)
 *
 * "all" defaults, overridable from the environment (e.g. for a smoke run):
 *   CBENCH_PINGS=200000  CBENCH_WARM=10000  CBENCH_SECONDS=1  CBENCH_SPAWNS=200
 *   CBENCH_DIR           directory for ping-uds' socket (default: a fresh
 *                        mkdtemp directory under $TMPDIR or /tmp, removed after)
 * Every command (not only "all") also reads:
 *   CBENCH_SNDBUF=N      ask for a send buffer (SO_SNDBUF) of N bytes on both
 *                        ends of each socketpair, as pairvisor's Socketpair
 *                        does (256 KiB); unset or 0: the kernel's default
 *   Echo sizes are 64, 4096, 65536 and 1048576 bytes.
 *
 * Output format (stable; bench/compare.sh parses it, Go code will too).
 * One line per measurement: a name, then space-separated key=value pairs.
 * Lines starting with '#' are comments. Parsers must look keys up by name
 * and ignore keys they do not know (keys may be added, never renamed):
 *
 *   # cbench all pings=200000 warm=10000 seconds=1 spawns=200
 *   ping p50_us=15.21 p99_us=32.30 p999_us=60.12 mean_us=16.20 n=200000 warm=10000
 *   ping_uds p50_us=15.90 p99_us=37.90 p999_us=70.03 mean_us=17.10 n=200000 warm=10000
 *   echo size=64 round_trips_per_s=57149 mb_per_s=3.66 round_trips=57300 seconds=1.003
 *   echo size=4096 ...   (one echo line per size)
 *   spawn p50_us=678.10 n=200
 *
 * Units: *_us are microseconds per round trip (or per spawn); mb_per_s is
 * payload bytes one way per second with MB = 10^6 B; round_trips_per_s is
 * complete write+read-back round trips per second. The single-measurement
 * commands print the same lines. The Go side ("supervisor bench --json")
 * uses the same names: ping.p50_us, ping.p99_us, ping.mean_us,
 * ping_uds.p50_us, ping_uds.p99_us, echo[{size, round_trips_per_s,
 * mb_per_s}], spawn_ready_us.p50 (= the "spawn p50_us" line here).
 *
 * Method:
 *  - Parent and child speak the reference protocol: a 16-byte command
 *    {u32 op, u32 size, u64 count} (native byte order), then "count" round
 *    trips. The child serves commands until EOF, then exits; the parent reaps it.
 *  - ping: one CLOCK_MONOTONIC pair per round trip (write "ping", read
 *    "pong"); percentiles are nearest-rank (p = sorted[ceil(q*N) - 1]).
 *  - echo: the parent writes SIZE bytes, the child reads all SIZE and writes
 *    them back, the parent reads all SIZE. Batches of 1, 2, 4, ... round trips
 *    warm up until one batch takes >= SECONDS/10; then batches of that size
 *    are timed until they add up to >= SECONDS (round_trips and seconds in
 *    the output are the timed totals). Every reply is checked against the
 *    request with memcmp inside the clock, as `supervisor bench` checks
 *    every echo with bytes.Equal. Buffers are
 *    aligned_alloc(4096, ...): page alignment matters for large copies.
 *  - spawn: the clock starts before socketpair() and stops when the pong has
 *    been read; the parent then closes its end, the child sees EOF and exits,
 *    and is reaped. The median is the nearest-rank p50.
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -o bench/bin/cbench bench/cbench.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { OP_PING = 1, OP_ECHO = 2 };

struct cmd {
	uint32_t op;
	uint32_t size;
	uint64_t count;
};
_Static_assert(sizeof(struct cmd) == 16, "the command is 16 bytes on the wire");

enum { PAGE = 4096, SPAWN_FD = 3 };
static const uint32_t echo_sizes[] = { 64, 4096, 65536, 1048576 };

/* ---------- small helpers ---------- */

static void fail_errno(const char *what)
{
	fprintf(stderr, "cbench: %s: %s\n", what, strerror(errno));
}

static void fail_msg(const char *what)
{
	fprintf(stderr, "cbench: %s\n", what);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		fail_errno("clock_gettime");
		exit(1);
	}
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads exactly len bytes, retrying short reads and EINTR.
 * Returns 1 when done, 0 on EOF before the first byte, -1 on error
 * (EOF in the middle of a message counts as an error, errno = EPIPE). */
static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t done = 0;
	while (done < len) {
		ssize_t r = read(fd, p + done, len - done);
		if (r > 0) {
			done += (size_t)r;
		} else if (r == 0) {
			if (done == 0)
				return 0;
			errno = EPIPE;
			return -1;
		} else if (errno != EINTR) {
			return -1;
		}
	}
	return 1;
}

/* Writes exactly len bytes, retrying short writes and EINTR. 0 or -1. */
static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	size_t done = 0;
	while (done < len) {
		ssize_t w = write(fd, p + done, len - done);
		if (w >= 0)
			done += (size_t)w;
		else if (errno != EINTR)
			return -1;
	}
	return 0;
}

/* read_full where EOF is an error too; reports failures. 0 or -1. */
static int recv_exact(int fd, void *buf, size_t len, const char *what)
{
	int r = read_full(fd, buf, len);
	if (r == 1)
		return 0;
	if (r == 0)
		errno = EPIPE; /* the peer closed the connection */
	fail_errno(what);
	return -1;
}

static int send_exact(int fd, const void *buf, size_t len, const char *what)
{
	if (write_full(fd, buf, len) == 0)
		return 0;
	fail_errno(what);
	return -1;
}

static int close_checked(int fd)
{
	/* On Linux the fd is gone even when close fails; never retry. */
	if (close(fd) == 0)
		return 0;
	fail_errno("close");
	return -1;
}

/* Waits for pid and checks that it exited with status 0. 0 or -1. */
static int reap(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			fail_errno("waitpid");
			return -1;
		}
	}
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return 0;
	if (WIFEXITED(st))
		fprintf(stderr, "cbench: child %d exited with status %d\n", (int)pid, WEXITSTATUS(st));
	else
		fprintf(stderr, "cbench: child %d killed by signal %d\n", (int)pid, WTERMSIG(st));
	return -1;
}

static void *page_alloc(size_t size)
{
	size_t rounded = (size + PAGE - 1) / PAGE * PAGE; /* C11 wants a multiple */
	void *p = aligned_alloc(PAGE, rounded ? rounded : PAGE);
	if (p == NULL)
		fail_errno("aligned_alloc");
	return p;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted[0..n-1], q in thousandths (500 = p50). */
static uint64_t rank_permille(const uint64_t *sorted, size_t n, unsigned q)
{
	size_t rank = (size_t)(((uint64_t)q * n + 999) / 1000);
	if (rank < 1)
		rank = 1;
	return sorted[rank - 1];
}

/* ---------- the worker side ---------- */

/* Serves commands on fd until EOF. Returns the exit status for the child. */
static int serve(int fd)
{
	struct cmd c;
	unsigned char *buf = NULL;
	size_t cap = 0;
	int r;

	while ((r = read_full(fd, &c, sizeof c)) == 1) {
		if (c.op == OP_PING) {
			for (uint64_t i = 0; i < c.count; i++) {
				char msg[4];
				if (recv_exact(fd, msg, 4, "worker: read ping") != 0)
					goto fail;
				if (memcmp(msg, "ping", 4) != 0) {
					fail_msg("worker: expected \"ping\"");
					goto fail;
				}
				if (send_exact(fd, "pong", 4, "worker: write pong") != 0)
					goto fail;
			}
		} else if (c.op == OP_ECHO) {
			if (c.size > cap) {
				free(buf);
				cap = c.size;
				if ((buf = page_alloc(cap)) == NULL)
					goto fail;
			}
			for (uint64_t i = 0; i < c.count; i++) {
				if (recv_exact(fd, buf, c.size, "worker: read echo") != 0 ||
				    send_exact(fd, buf, c.size, "worker: write echo") != 0)
					goto fail;
			}
		} else {
			fprintf(stderr, "cbench: worker: unknown op %" PRIu32 "\n", c.op);
			goto fail;
		}
	}
	if (r < 0) {
		fail_errno("worker: read command");
		goto fail;
	}
	free(buf);
	return 0;
fail:
	free(buf);
	return 1;
}

/* A forked worker and the parent's end of its connection. */
struct worker {
	pid_t pid;
	int fd;
};

/* CBENCH_SNDBUF: the send buffer (SO_SNDBUF) asked for on both ends of
 * every socketpair; 0 (the default) leaves the kernel's default. */
static int sndbuf;

/* Forks a worker that serves over a socketpair. 0 or -1. */
static int start_worker_socketpair(struct worker *w)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		fail_errno("socketpair");
		return -1;
	}
	if (sndbuf > 0)
		for (int i = 0; i < 2; i++)
			if (setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) != 0) {
				fail_errno("setsockopt SO_SNDBUF");
				close(sv[0]);
				close(sv[1]);
				return -1;
			}
	fflush(NULL); /* nothing buffered may be written twice */
	pid_t pid = fork();
	if (pid < 0) {
		fail_errno("fork");
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		int st = serve(sv[1]);
		if (close(sv[1]) != 0)
			st = 1;
		_exit(st);
	}
	w->pid = pid;
	w->fd = sv[0];
	if (close_checked(sv[1]) != 0)
		return -1; /* caller stops the worker */
	return 0;
}

/* connect(), finishing the connection properly if a signal interrupts it. */
static int connect_unix(int fd, const struct sockaddr_un *addr)
{
	if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
		return 0;
	if (errno != EINTR)
		return -1;
	/* The connection goes on in the background: wait, then fetch its result. */
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int r;
	while ((r = poll(&p, 1, -1)) < 0 && errno == EINTR)
		;
	if (r < 0)
		return -1;
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* The child of start_worker_uds: listen, report readiness, accept, serve. */
static int uds_child(const struct sockaddr_un *addr, int ready_fd)
{
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		fail_errno("worker: socket");
		return 1;
	}
	if (bind(lfd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
		fail_errno("worker: bind");
		close(lfd);
		return 1;
	}
	/* From here on the file exists; the parent unlinks it if we do not. */
	if (listen(lfd, 1) != 0 || write_full(ready_fd, "r", 1) != 0) {
		fail_errno("worker: listen/ready");
		unlink(addr->sun_path);
		close(lfd);
		return 1;
	}
	close(ready_fd);
	int cfd;
	while ((cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0 && errno == EINTR)
		;
	int st = 1;
	if (cfd < 0)
		fail_errno("worker: accept");
	if (unlink(addr->sun_path) != 0)
		fail_errno("worker: unlink socket");
	if (close(lfd) != 0)
		fail_errno("worker: close listener");
	if (cfd >= 0) {
		st = serve(cfd);
		if (close(cfd) != 0)
			st = 1;
	}
	return st;
}

/* Forks a worker listening on addr and connects to it. 0 or -1. On failure
 * w->pid may still be set (the caller stops the worker). *bound is set once
 * the worker has created the socket file (and so it is ours to remove). */
static int start_worker_uds(struct worker *w, const struct sockaddr_un *addr, int *bound)
{
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) != 0) {
		fail_errno("pipe2");
		return -1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fail_errno("fork");
		close(ready[0]);
		close(ready[1]);
		return -1;
	}
	if (pid == 0) {
		close(ready[0]);
		_exit(uds_child(addr, ready[1]));
	}
	w->pid = pid;
	close_checked(ready[1]);
	char c;
	int r = read_full(ready[0], &c, 1);
	close_checked(ready[0]);
	if (r != 1) {
		fail_msg("worker did not start listening");
		return -1;
	}
	*bound = 1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fail_errno("socket");
		kill(pid, SIGTERM); /* it is blocked in accept() */
		return -1;
	}
	if (connect_unix(fd, addr) != 0) {
		fail_errno("connect");
		close(fd);
		kill(pid, SIGTERM);
		return -1;
	}
	w->fd = fd;
	return 0;
}

/* Closes the parent's end (the worker sees EOF and exits) and reaps. */
static int stop_worker(struct worker *w)
{
	int rc = 0;
	if (w->fd >= 0 && close_checked(w->fd) != 0)
		rc = -1;
	w->fd = -1;
	if (w->pid > 0 && reap(w->pid) != 0)
		rc = -1;
	w->pid = -1;
	return rc;
}

/* ---------- ping / pong ---------- */

static int send_cmd(int fd, uint32_t op, uint32_t size, uint64_t count)
{
	struct cmd c = { .op = op, .size = size, .count = count };
	return send_exact(fd, &c, sizeof c, "write command");
}

/* WARM untimed and N timed round trips on fd; prints one result line. */
static int ping_pong(int fd, const char *name, uint64_t n, uint64_t warm)
{
	uint64_t *ns = malloc(n * sizeof *ns);
	char pong[4];
	int rc = -1;

	if (ns == NULL) {
		fail_errno("malloc");
		return -1;
	}
	if (warm > 0) {
		if (send_cmd(fd, OP_PING, 4, warm) != 0)
			goto out;
		for (uint64_t i = 0; i < warm; i++) {
			if (send_exact(fd, "ping", 4, "write ping") != 0 ||
			    recv_exact(fd, pong, 4, "read pong") != 0)
				goto out;
		}
	}
	if (send_cmd(fd, OP_PING, 4, n) != 0)
		goto out;
	uint64_t sum = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		if (send_exact(fd, "ping", 4, "write ping") != 0 ||
		    recv_exact(fd, pong, 4, "read pong") != 0)
			goto out;
		uint64_t t1 = now_ns();
		ns[i] = t1 - t0;
		sum += ns[i];
	}
	if (memcmp(pong, "pong", 4) != 0) {
		fail_msg("expected \"pong\"");
		goto out;
	}
	qsort(ns, n, sizeof *ns, cmp_u64);
	printf("%s p50_us=%.2f p99_us=%.2f p999_us=%.2f mean_us=%.2f n=%" PRIu64 " warm=%" PRIu64 "\n",
	       name, (double)rank_permille(ns, n, 500) / 1e3, (double)rank_permille(ns, n, 990) / 1e3,
	       (double)rank_permille(ns, n, 999) / 1e3, (double)sum / (double)n / 1e3, n, warm);
	fflush(stdout);
	rc = 0;
out:
	free(ns);
	return rc;
}

static int bench_ping(uint64_t n, uint64_t warm)
{
	struct worker w = { .pid = -1, .fd = -1 };
	int rc = start_worker_socketpair(&w);
	if (rc == 0)
		rc = ping_pong(w.fd, "ping", n, warm);
	if (stop_worker(&w) != 0)
		rc = -1;
	return rc;
}

static int bench_ping_uds(uint64_t n, uint64_t warm, const char *dir)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int len = snprintf(addr.sun_path, sizeof addr.sun_path, "%s/cbench.sock", dir);
	if (len < 0 || (size_t)len >= sizeof addr.sun_path) {
		fail_msg("socket path too long for sun_path");
		return -1;
	}
	struct worker w = { .pid = -1, .fd = -1 };
	int bound = 0;
	int rc = start_worker_uds(&w, &addr, &bound);
	if (rc == 0)
		rc = ping_pong(w.fd, "ping_uds", n, warm);
	if (stop_worker(&w) != 0)
		rc = -1;
	/* The worker unlinks the socket after accept(); make sure it is gone. */
	if (bound && unlink(addr.sun_path) != 0 && errno != ENOENT) {
		fail_errno("unlink socket");
		rc = -1;
	}
	return rc;
}

/* ---------- echo throughput ---------- */

/* count echo round trips of size bytes; *secs = time taken. 0 or -1.
 * The command write is outside the clock; the memcmp of each reply is
 * inside it. */
static int echo_batch(int fd, uint32_t size, uint64_t count, const unsigned char *out,
		      unsigned char *in, double *secs)
{
	memset(in, 0, size); /* so that a reply that never arrived cannot pass */
	if (send_cmd(fd, OP_ECHO, size, count) != 0)
		return -1;
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < count; i++) {
		if (send_exact(fd, out, size, "write echo") != 0 ||
		    recv_exact(fd, in, size, "read echo") != 0)
			return -1;
		/* Every reply is checked, inside the clock, as `supervisor
		 * bench` does: both sides do the same work. */
		if (memcmp(in, out, size) != 0) {
			fail_msg("echo reply differs from the request");
			return -1;
		}
	}
	uint64_t t1 = now_ns();
	*secs = (double)(t1 - t0) / 1e9;
	return 0;
}

static int bench_echo(uint32_t size, double seconds)
{
	struct worker w = { .pid = -1, .fd = -1 };
	unsigned char *out = page_alloc(size), *in = page_alloc(size);
	int rc = -1;

	if (out == NULL || in == NULL)
		goto out;
	for (uint32_t i = 0; i < size; i++)
		out[i] = (unsigned char)(i * 131u + 17u); /* never all zero */
	if (start_worker_socketpair(&w) != 0)
		goto out;

	/* Warm-up and calibration: double until one batch takes SECONDS/10. */
	uint64_t n = 1;
	double secs;
	for (;;) {
		if (echo_batch(w.fd, size, n, out, in, &secs) != 0)
			goto out;
		if (secs >= seconds / 10 || n >= (UINT64_C(1) << 40))
			break;
		n *= 2;
	}
	/* Timed: batches of that size until SECONDS have been spent in them,
	 * so a stall during calibration cannot shorten the measurement. */
	uint64_t timed = 0;
	double total = 0;
	while (total < seconds) {
		if (echo_batch(w.fd, size, n, out, in, &secs) != 0)
			goto out;
		timed += n;
		total += secs;
	}
	double rate = (double)timed / total;
	printf("echo size=%" PRIu32 " round_trips_per_s=%.0f mb_per_s=%.2f round_trips=%" PRIu64
	       " seconds=%.3f\n",
	       size, rate, rate * size / 1e6, timed, total);
	fflush(stdout);
	rc = 0;
out:
	if (stop_worker(&w) != 0)
		rc = -1;
	free(out);
	free(in);
	return rc;
}

/* ---------- spawn ---------- */

/* The exec'd child: answer one ping on fd 3, then wait for EOF and exit. */
static int child_pong(void)
{
	char buf[4];
	if (recv_exact(SPAWN_FD, buf, 4, "child-pong: read ping") != 0)
		return 1;
	if (memcmp(buf, "ping", 4) != 0) {
		fail_msg("child-pong: expected \"ping\"");
		return 1;
	}
	if (send_exact(SPAWN_FD, "pong", 4, "child-pong: write pong") != 0)
		return 1;
	int r;
	while ((r = read_full(SPAWN_FD, buf, 1)) == 1)
		; /* anything more is ignored; EOF means the parent is done */
	if (r < 0) {
		fail_errno("child-pong: read");
		return 1;
	}
	return close(SPAWN_FD) == 0 ? 0 : 1;
}

/* One spawn: socketpair + fork + exec(self child-pong) -> first pong. */
static int spawn_once(uint64_t *ns)
{
	static const char err_dup[] = "cbench: spawn child: dup2/fcntl failed\n";
	static const char err_exec[] = "cbench: spawn child: exec /proc/self/exe failed\n";
	int sv[2];

	fflush(NULL);
	uint64_t t0 = now_ns();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		fail_errno("socketpair");
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		fail_errno("fork");
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls between fork and exec. dup2 clears
		 * FD_CLOEXEC on fd 3, unless the end is fd 3 already. */
		int ok = sv[1] == SPAWN_FD ? fcntl(SPAWN_FD, F_SETFD, 0) == 0
					   : dup2(sv[1], SPAWN_FD) == SPAWN_FD;
		if (!ok) {
			(void)!write(2, err_dup, sizeof err_dup - 1);
			_exit(127);
		}
		execl("/proc/self/exe", "cbench", "child-pong", (char *)NULL);
		(void)!write(2, err_exec, sizeof err_exec - 1);
		_exit(127);
	}
	int rc = close_checked(sv[1]);
	char pong[4];
	if (rc == 0 && (send_exact(sv[0], "ping", 4, "spawn: write ping") != 0 ||
			recv_exact(sv[0], pong, 4, "spawn: read pong") != 0))
		rc = -1;
	uint64_t t1 = now_ns();
	if (rc == 0 && memcmp(pong, "pong", 4) != 0) {
		fail_msg("spawn: expected \"pong\"");
		rc = -1;
	}
	*ns = t1 - t0;
	if (close_checked(sv[0]) != 0) /* EOF tells the child to exit */
		rc = -1;
	if (reap(pid) != 0)
		rc = -1;
	return rc;
}

static int bench_spawn(uint64_t n)
{
	uint64_t *ns = malloc(n * sizeof *ns);
	if (ns == NULL) {
		fail_errno("malloc");
		return -1;
	}
	for (uint64_t i = 0; i < n; i++) {
		if (spawn_once(&ns[i]) != 0) {
			free(ns);
			return -1;
		}
	}
	qsort(ns, n, sizeof *ns, cmp_u64);
	printf("spawn p50_us=%.2f n=%" PRIu64 "\n", (double)rank_permille(ns, n, 500) / 1e3, n);
	fflush(stdout);
	free(ns);
	return 0;
}

/* ---------- command line ---------- */

static int parse_u64(const char *s, const char *what, uint64_t min, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min) {
		fprintf(stderr, "cbench: bad %s %s (want an integer >= %" PRIu64 ")\n", what, s, min);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_secs(const char *s, const char *what, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v > 0 && v <= 3600)) {
		fprintf(stderr, "cbench: bad %s %s (want seconds, 0 < s <= 3600)\n", what, s);
		return -1;
	}
	*out = v;
	return 0;
}

/* Environment override: leaves *out alone when the variable is unset. */
static int env_u64(const char *name, uint64_t min, uint64_t *out)
{
	const char *s = getenv(name);
	return s == NULL || *s == '\0' ? 0 : parse_u64(s, name, min, out);
}

static int bench_all(void)
{
	uint64_t pings = 200000, warm = 10000, spawns = 200;
	double seconds = 1.0;
	const char *s = getenv("CBENCH_SECONDS");
	if (env_u64("CBENCH_PINGS", 1, &pings) != 0 || env_u64("CBENCH_WARM", 0, &warm) != 0 ||
	    env_u64("CBENCH_SPAWNS", 1, &spawns) != 0 ||
	    (s != NULL && *s != '\0' && parse_secs(s, "CBENCH_SECONDS", &seconds) != 0))
		return 2;

	printf("# cbench all pings=%" PRIu64 " warm=%" PRIu64 " seconds=%g spawns=%" PRIu64 "\n",
	       pings, warm, seconds, spawns);
	if (bench_ping(pings, warm) != 0)
		return 1;

	const char *dir = getenv("CBENCH_DIR");
	char tmpl[4096] = "";
	if (dir == NULL || *dir == '\0') {
		const char *tmp = getenv("TMPDIR");
		int len = snprintf(tmpl, sizeof tmpl, "%s/cbench.XXXXXX",
				   tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
		if (len < 0 || (size_t)len >= sizeof tmpl) {
			fail_msg("TMPDIR too long");
			return 1;
		}
		if ((dir = mkdtemp(tmpl)) == NULL) {
			fail_errno("mkdtemp");
			return 1;
		}
	}
	int rc = bench_ping_uds(pings, warm, dir);
	if (tmpl[0] != '\0' && rmdir(tmpl) != 0) {
		fail_errno("rmdir");
		rc = -1;
	}
	if (rc != 0)
		return 1;

	for (size_t i = 0; i < sizeof echo_sizes / sizeof echo_sizes[0]; i++)
		if (bench_echo(echo_sizes[i], seconds) != 0)
			return 1;
	return bench_spawn(spawns) == 0 ? 0 : 1;
}

static int usage(void)
{
	fputs("usage: cbench ping N WARM\n"
	      "       cbench ping-uds N WARM DIR\n"
	      "       cbench echo SIZE SECONDS\n"
	      "       cbench spawn N\n"
	      "       cbench all   (env: CBENCH_PINGS CBENCH_WARM CBENCH_SECONDS CBENCH_SPAWNS CBENCH_DIR)\n"
	      "       (every command: env CBENCH_SNDBUF)\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	uint64_t n, warm, size;
	double secs;

	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	if (strcmp(cmd, "child-pong") == 0 && argc == 2)
		return child_pong();

	uint64_t buf = 0;
	if (env_u64("CBENCH_SNDBUF", 0, &buf) != 0)
		return 2;
	if (buf > (UINT64_C(1) << 30)) {
		fail_msg("CBENCH_SNDBUF must be at most 1 GiB");
		return 2;
	}
	sndbuf = (int)buf;

	/* A dead peer must show up as EPIPE from write(), not kill us. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		fail_errno("signal");
		return 1;
	}
	if (strcmp(cmd, "ping") == 0 && argc == 4) {
		if (parse_u64(argv[2], "N", 1, &n) || parse_u64(argv[3], "WARM", 0, &warm))
			return 2;
		return bench_ping(n, warm) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "ping-uds") == 0 && argc == 5) {
		if (parse_u64(argv[2], "N", 1, &n) || parse_u64(argv[3], "WARM", 0, &warm))
			return 2;
		return bench_ping_uds(n, warm, argv[4]) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "echo") == 0 && argc == 4) {
		if (parse_u64(argv[2], "SIZE", 1, &size) || parse_secs(argv[3], "SECONDS", &secs))
			return 2;
		if (size > (UINT64_C(1) << 30)) {
			fail_msg("SIZE must be at most 1 GiB");
			return 2;
		}
		return bench_echo((uint32_t)size, secs) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "spawn") == 0 && argc == 3) {
		if (parse_u64(argv[2], "N", 1, &n))
			return 2;
		return bench_spawn(n) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "all") == 0 && argc == 2)
		return bench_all();
	return usage();
}
