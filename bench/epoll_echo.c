// epoll_echo: the machine's limit for a socket-path echo server.
//
// A small C server on a Unix socket path that speaks just enough of
// pairvisor's framing (docs/PROTOCOL.md) for `supervisor bench --socket`
// to load it like `supervisor serve` or `supervisor run --socket`: it
// sends its hello on connect (versions 1-2), ignores the client's hello,
// cancels and replies, and answers every other request with a frame of
// the same type and id, the REPLY flag set and the request's payload
// (so PING and ECHO are answered as the protocol says). It does nothing
// else: no limits, no checks beyond the magic bytes and the 16 MiB
// payload bound, no credentials.
//
// THREADS threads (default: the online CPUs) each run their own epoll
// loop, level-triggered; the listening socket is in every loop with
// EPOLLEXCLUSIVE, and a connection stays with the thread that accepted
// it. A reply is written straight from the read buffer (writev of the
// header and the payload); while it is not all written the connection
// waits for EPOLLOUT and reads nothing more. Buffers grow to the largest
// frame seen (at most 16 MiB + 16 bytes).
//
//   epoll_echo PATH [THREADS]
//
// It removes PATH first, prints "ready PATH" on stdout once it listens,
// and runs until SIGINT or SIGTERM, then removes PATH.
//
// Build: gcc -std=c11 -O2 -Wall -Wextra -pthread -o bench/bin/epoll_echo bench/epoll_echo.c
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define HDR 16
#define MAX_PAYLOAD (16u << 20)
#define MIN_BUF (64u << 10)
#define TYPE_HELLO 1
#define TYPE_CANCEL 8
#define FLAG_REPLY 1

struct conn {
	int fd;
	uint8_t *buf;        // read buffer: buf[0:len) read, not yet consumed
	size_t cap, len;
	uint8_t hdr[HDR];    // the reply header being written
	size_t hoff;         // header bytes written
	size_t plen, poff;   // the reply payload is buf[HDR:HDR+plen); poff written
	int writing;         // a reply is being written: wait for EPOLLOUT
};

static int lfd = -1;
static const char *path;
static volatile sig_atomic_t stop;

static void die(const char *what) {
	perror(what);
	exit(1);
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void conn_close(int ep, struct conn *c) {
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->buf);
	free(c);
}

static void set_events(int ep, struct conn *c, uint32_t ev) {
	struct epoll_event e = {.events = ev, .data.ptr = c};
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

// consume drops the frame at the front of the buffer.
static void consume(struct conn *c, size_t n) {
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

// flush writes the pending reply. It returns 1 once it is all written,
// 0 if the socket is full, -1 on error.
static int flush(struct conn *c) {
	while (c->hoff < HDR || c->poff < c->plen) {
		struct iovec iov[2];
		int n = 0;
		if (c->hoff < HDR) {
			iov[n].iov_base = c->hdr + c->hoff;
			iov[n++].iov_len = HDR - c->hoff;
		}
		if (c->poff < c->plen) {
			iov[n].iov_base = c->buf + HDR + c->poff;
			iov[n++].iov_len = c->plen - c->poff;
		}
		ssize_t w = writev(c->fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -1;
		}
		size_t h = HDR - c->hoff < (size_t)w ? HDR - c->hoff : (size_t)w;
		c->hoff += h;
		c->poff += (size_t)w - h;
	}
	consume(c, HDR + c->plen);
	c->writing = 0;
	return 1;
}

// serve answers the complete frames in the buffer. It returns 1 when it
// has answered all it can, 0 when a reply waits for EPOLLOUT, -1 when
// the connection must close.
static int serve(struct conn *c) {
	while (c->len >= HDR) {
		const uint8_t *h = c->buf;
		if (h[0] != 0xC1 || h[1] != 'P')
			return -1;
		uint32_t n = le32(h + 4);
		if (n > MAX_PAYLOAD)
			return -1;
		if (c->len < HDR + (size_t)n) {
			if (c->cap < HDR + (size_t)n) {
				uint8_t *b = realloc(c->buf, HDR + (size_t)n);
				if (!b)
					return -1;
				c->buf = b;
				c->cap = HDR + (size_t)n;
			}
			return 1;
		}
		if (h[2] == TYPE_HELLO || h[2] == TYPE_CANCEL || (h[3] & FLAG_REPLY)) {
			consume(c, HDR + n);
			continue;
		}
		memcpy(c->hdr, h, HDR);
		c->hdr[3] |= FLAG_REPLY;
		c->hoff = c->poff = 0;
		c->plen = n;
		c->writing = 1;
		int r = flush(c);
		if (r <= 0)
			return r;
	}
	return 1;
}

// readable reads what the socket has and answers it.
static int readable(struct conn *c) {
	for (;;) {
		if (c->len == c->cap) {
			size_t ncap = c->cap * 2;
			uint8_t *b = realloc(c->buf, ncap);
			if (!b)
				return -1;
			c->buf = b;
			c->cap = ncap;
		}
		ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
		if (r == 0)
			return -1;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 1 : -1;
		}
		c->len += (size_t)r;
		int s = serve(c);
		if (s <= 0)
			return s;
	}
}

static void accept_all(int ep) {
	static const uint8_t name[] = "epoll-echo";
	uint8_t hello[HDR + 8 + sizeof name - 1] = {0xC1, 'P', TYPE_HELLO, 0};
	uint32_t plen = 8 + sizeof name - 1, pid = (uint32_t)getpid();
	memcpy(hello + 4, &plen, 4); // little endian: x86 and arm64
	hello[HDR] = 1, hello[HDR + 2] = 2;
	memcpy(hello + HDR + 4, &pid, 4);
	memcpy(hello + HDR + 8, name, sizeof name - 1);
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return; // EAGAIN: another thread took it, or none left
		}
		struct conn *c = calloc(1, sizeof *c);
		if (!c || !(c->buf = malloc(MIN_BUF)) || write(fd, hello, sizeof hello) != (ssize_t)sizeof hello) {
			if (c)
				free(c->buf);
			free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->cap = MIN_BUF;
		struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			free(c->buf);
			free(c);
			close(fd);
		}
	}
}

static void *loop(void *arg) {
	(void)arg;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event le = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le) < 0)
		die("epoll_ctl listen");
	struct epoll_event evs[256];
	while (!stop) {
		int n = epoll_wait(ep, evs, 256, 200);
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (!c) {
				accept_all(ep);
				continue;
			}
			int r;
			if (c->writing) {
				r = flush(c);
				if (r > 0)
					r = serve(c); // frames that came meanwhile
				if (r > 0)
					r = readable(c);
			} else {
				r = readable(c);
			}
			if (r < 0)
				conn_close(ep, c);
			else
				set_events(ep, c, c->writing ? EPOLLOUT : EPOLLIN);
		}
	}
	return NULL;
}

static void on_signal(int sig) {
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv) {
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s PATH [THREADS]\n", argv[0]);
		return 2;
	}
	path = argv[1];
	long threads = argc == 3 ? atol(argv[2]) : sysconf(_SC_NPROCESSORS_ONLN);
	if (threads < 1 || threads > 256) {
		fprintf(stderr, "epoll_echo: THREADS must be 1 to 256\n");
		return 2;
	}
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof a.sun_path) {
		fprintf(stderr, "epoll_echo: path too long\n");
		return 2;
	}
	strcpy(a.sun_path, path);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	unlink(path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket");
	if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0)
		die("bind");
	if (listen(lfd, 4096) < 0)
		die("listen");
	printf("ready %s\n", path);
	fflush(stdout);
	pthread_t t[256];
	for (long i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, loop, NULL) != 0)
			die("pthread_create");
	for (long i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	unlink(path);
	return 0;
}
