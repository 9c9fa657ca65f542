#!/usr/bin/env python3
"""An HTTP server written for systemd socket activation, knowing nothing
of pairvisor: it takes its listening socket as sd_listen_fds(3) says
(LISTEN_PID must be its own pid, LISTEN_FDS counts the descriptors from
fd 3, LISTEN_FDNAMES names them), tells NOTIFY_SOCKET "READY=1" as
sd_notify(3) does once it serves, and on SIGTERM or SIGINT stops
gracefully: it stops accepting, answers each request still arriving on
an open connection with "Connection: close" so that keep-alive clients
move to another process between two requests, waits for its connections
to close (at most DRAIN seconds) and exits.

Usage: sdhttp.py [NAME [DRAIN]]   (NAME: the listener to serve, "http")

GET /?sleep=SECONDS waits before answering; the answer is "pid PID NAME".
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SD_LISTEN_FDS_START = 3


def listen_fds():
    """sd_listen_fds_with_names(unset_environment=1): [(fd, name)]."""
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return []
        n = int(os.environ["LISTEN_FDS"])
    except (KeyError, ValueError):
        return []
    names = os.environ.get("LISTEN_FDNAMES")
    names = names.split(":") if names is not None else ["unknown"] * n
    for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)
    if len(names) != n:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in fds:
        os.set_inheritable(fd, False)
    return list(zip(fds, names))


def sd_notify(state):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock, name):
        self.address_family = sock.family
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.listener_name = name
        self.draining = False
        self.conns = 0
        self.cond = threading.Condition()

    def server_bind(self):  # the socket is bound already
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        if self.server.address_family != socket.AF_UNIX:
            # The headers and the body are written apart: no Nagle delay.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        with self.server.cond:
            self.server.conns += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.cond:
                self.server.conns -= 1
                self.server.cond.notify_all()

    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        if "sleep" in q:
            time.sleep(min(float(q["sleep"][0]), 10))
        body = ("pid %d %s\n" % (os.getpid(), self.server.listener_name)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        if self.server.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    want = sys.argv[1] if len(sys.argv) > 1 else "http"
    drain = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    fds = dict((name, fd) for fd, name in listen_fds())
    if want not in fds:
        sys.exit("sdhttp: no listener named %r in LISTEN_FDNAMES (got %r)" % (want, sorted(fds)))
    # The signals are taken by sigwait below, in this thread only.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    srv = Server(socket.socket(fileno=fds[want]), want)
    serving = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    sd_notify("READY=1")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sd_notify("STOPPING=1")
    srv.draining = True
    srv.shutdown()  # no more accepts here; the socket stays open for the others
    deadline = time.monotonic() + drain
    with srv.cond:
        while srv.conns > 0 and time.monotonic() < deadline:
            srv.cond.wait(deadline - time.monotonic())
    serving.join()
    sys.exit(0)


if __name__ == "__main__":
    main()
