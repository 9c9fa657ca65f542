"""Tests of pairvisor.py that need no Go supervisor.

Run with ``python3 -m unittest -v`` in this directory. The worker tests
start real worker processes with a real socketpair as fd 3 and play the
supervisor over it, frame by frame; the client tests run a fake server on
a real socket path. Waits are bounded (WAIT seconds) and never used to
synchronise: every test waits for an event, a frame or an exit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pairvisor as pv  # noqa: E402
from pairvisor import ErrorCode as C  # noqa: E402
from pairvisor import MessageType as T  # noqa: E402

WAIT = 20.0  # bound on any single wait; a healthy run takes a fraction


# ---------------------------------------------------------------------------
# Codec.


class TestCodec(unittest.TestCase):
    def test_golden_session(self) -> None:
        # The byte-by-byte session of docs/PROTOCOL.md (version 2).
        x = lambda s: bytes.fromhex(s.replace(" ", ""))  # noqa: E731
        s_hello = x("c150010012000000 0000000000000000 01000200e8030000 73757065727669736f72")
        w_hello = x("c150010010000000 0000000000000000 01000200e9030000 776f726b65722e31")
        self.assertEqual(pv.encode_frame(T.HELLO, pv.encode_hello(pv.Hello(1, 2, 1000, "supervisor"))), s_hello)
        self.assertEqual(pv.encode_frame(T.HELLO, pv.encode_hello(pv.Hello(1, 2, 1001, "worker.1"))), w_hello)
        self.assertEqual(pv.encode_frame(T.PING, id=1), x("c150020000000000 0100000000000000"))
        self.assertEqual(pv.encode_frame(T.PING, id=1, flags=pv.FLAG_REPLY), x("c150020100000000 0100000000000000"))
        self.assertEqual(pv.encode_frame(T.MESSAGE, b"hi", id=2), x("c150040002000000 0200000000000000 6869"))
        self.assertEqual(pv.encode_frame(T.CANCEL, id=2), x("c150080000000000 0200000000000000"))
        err = x("c1500f0112000000 0200000000000000 0400636f6e746578742063616e63656c6564")
        self.assertEqual(pv.encode_frame(T.ERROR, pv.encode_error(C.INTERNAL, "context canceled"), id=2, flags=pv.FLAG_REPLY), err)
        d = pv.FrameDecoder()
        frames = d.feed(s_hello + w_hello)
        self.assertEqual([pv.parse_hello(p) for _, p in frames], [pv.Hello(1, 2, 1000, "supervisor"), pv.Hello(1, 2, 1001, "worker.1")])
        self.assertEqual(pv.negotiate(*[pv.parse_hello(p) for _, p in frames]), 2)
        self.assertEqual((pv.PROTOCOL_VERSION, pv.MIN_PROTOCOL_VERSION, int(C.CRASHED), int(T.CANCEL), int(T.CLIENT)), (3, 1, 10, 8, 9))

    def test_header_round_trip(self) -> None:
        for t in T:
            for flags in (0, pv.FLAG_REPLY):
                for n, i in ((0, 0), (1, 1), (pv.MAX_PAYLOAD, 2**64 - 1)):
                    h = pv.parse_header(pv.encode_header(t, flags, n, i))
                    self.assertEqual(h, pv.Header(t, flags, n, i))
                    self.assertEqual(h.is_reply, bool(flags))

    def test_header_errors(self) -> None:
        good = pv.encode_header(T.ECHO, 0, 10, 77)
        cases: List[Tuple[bytes, int, type, int, str]] = [
            (b"\xc1P\x02", 0, pv.TruncatedFrame, C.PROTOCOL, "header has 3 of 16"),
            (b"\xc0" + good[1:], 0, pv.ProtocolError, C.PROTOCOL, "bad frame magic"),
            (good[:1] + b"Q" + good[2:], 0, pv.ProtocolError, C.PROTOCOL, "bad frame magic"),
            (good[:2] + b"\x0a" + good[3:], 0, pv.ProtocolError, C.PROTOCOL, "unknown frame type"),
            (good[:2] + b"\x0e" + good[3:], 0, pv.ProtocolError, C.PROTOCOL, "unknown frame type"),
            (good[:2] + b"\x00" + good[3:], 0, pv.ProtocolError, C.PROTOCOL, "unknown frame type"),
            (good[:3] + b"\x04" + good[4:], 0, pv.ProtocolError, C.PROTOCOL, "undefined frame flags"),
            (pv.encode_header(T.ECHO, 0, pv.MAX_PAYLOAD + 1, 77), 0, pv.FrameTooLarge, C.TOO_LARGE, "exceeds the limit of 16777216"),
            (good, 9, pv.FrameTooLarge, C.TOO_LARGE, "exceeds the limit of 9"),
        ]
        for b, limit, cls, code, text in cases:
            with self.subTest(text=text, b=b.hex()):
                with self.assertRaises(cls) as cm:
                    pv.parse_header(b, limit or pv.MAX_PAYLOAD)
                self.assertEqual(cm.exception.code, code)
                self.assertIn(text, str(cm.exception))
                # Errors about a header with good magic name its id.
                if "magic" not in text and "has 3" not in text:
                    self.assertEqual(cm.exception.frame_id, 77)
                else:
                    self.assertEqual(cm.exception.frame_id, 0)
        # A limit above the protocol's is lowered to it.
        with self.assertRaises(pv.FrameTooLarge):
            pv.parse_header(pv.encode_header(T.ECHO, 0, pv.MAX_PAYLOAD + 1, 1), 1 << 30)

    def test_hello(self) -> None:
        h = pv.Hello(1, 3, 2**32 - 1, "wörker")
        self.assertEqual(pv.parse_hello(pv.encode_hello(h)), h)
        # A long name is cut to 256 bytes at a character boundary.
        long = pv.encode_hello(pv.Hello(1, 1, 0, "a" + "é" * 200))
        self.assertLessEqual(len(long), pv.MAX_HELLO_PAYLOAD)
        self.assertEqual(pv.parse_hello(long).name, "a" + "é" * 127)
        for bad, text, code in [
            (b"\x01\x00\x01\x00\x00\x00\x00", "7 bytes", C.PROTOCOL),
            (struct.pack("<HHI", 1, 1, 0) + b"x" * 257, "265 bytes exceeds the limit of 264", C.TOO_LARGE),
            (struct.pack("<HHI", 0, 1, 0), "range 0..1", C.PROTOCOL),
            (struct.pack("<HHI", 3, 2, 0), "range 3..2", C.PROTOCOL),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(pv.ProtocolError) as cm:
                    pv.parse_hello(bad)
                self.assertEqual(cm.exception.code, code)
                self.assertIn(text, str(cm.exception))
        # A name that is not UTF-8 does not fail the hello.
        self.assertEqual(pv.parse_hello(struct.pack("<HHI", 1, 1, 0) + b"\xff").name, "\ufffd")

    def test_negotiate(self) -> None:
        ours = pv.Hello(1, 1, 0, "us")
        self.assertEqual(pv.negotiate(ours, pv.Hello(1, 5, 0, "p")), 1)
        self.assertEqual(pv.negotiate(pv.Hello(1, 4, 0, "us"), pv.Hello(2, 3, 0, "p")), 3)
        with self.assertRaises(pv.VersionMismatch) as cm:
            pv.negotiate(ours, pv.Hello(2, 3, 0, "future"))
        self.assertEqual((cm.exception.code, cm.exception.frame_id), (C.VERSION, 0))
        self.assertIn("'future' speaks 2..3", str(cm.exception))

    def test_error_payload(self) -> None:
        e = pv.parse_error(pv.encode_error(C.DENIED, "nope ✗"))
        self.assertEqual((e.code, e.message), (9, "nope ✗"))
        self.assertEqual(str(e), "peer replied with error 9: nope ✗")
        e = pv.parse_error(b"\x01")
        self.assertEqual((e.code, e.message), (C.PROTOCOL, "malformed error frame"))

    def test_decoder_split_anywhere(self) -> None:
        rng = random.Random(1)
        frames = []
        for i in range(200):
            t = rng.choice(list(T))
            p = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 5, 300, 5000])))
            frames.append((pv.Header(t, rng.choice([0, 1]), len(p), rng.getrandbits(64)), p))
        stream = b"".join(pv.encode_frame(h.type, p, id=h.id, flags=h.flags) for h, p in frames)
        for _ in range(5):
            d = pv.FrameDecoder()
            got: List[Tuple[pv.Header, bytes]] = []
            i = 0
            while i < len(stream):
                n = rng.choice([1, 2, 15, 16, 17, 1000, 70000])
                got += d.feed(stream[i : i + n])
                i += n
            d.close()
            self.assertEqual(got, frames)
        d = pv.FrameDecoder()
        d.feed(stream[:20])
        with self.assertRaises(pv.TruncatedFrame):
            d.close()

    def test_decoder_fuzz(self) -> None:
        # Random and mutated input: the decoder yields frames or raises a
        # ProtocolError, never anything else, and never buffers more than
        # one frame's worth under the limit.
        rng = random.Random(2)
        seed = b"".join(pv.encode_frame(t, b"x" * rng.randrange(40), id=rng.randrange(9)) for t in T)
        limit = 64
        for it in range(4000):
            b = bytearray(seed)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            if it % 3 == 0:
                b = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(64)))
            d = pv.FrameDecoder(max_payload=limit)
            try:
                for h, p in d.feed(bytes(b)):
                    self.assertEqual(len(p), h.length)
                    self.assertLessEqual(h.length, limit)
                    self.assertIn(h.type, set(int(t) for t in T))
                self.assertLessEqual(d.pending, pv.HEADER_SIZE + limit)
            except pv.ProtocolError:
                pass
            for parse in (pv.parse_hello, pv.parse_error):
                try:
                    parse(bytes(b[: rng.randrange(len(b) + 1)]))
                except pv.ProtocolError:
                    pass


# ---------------------------------------------------------------------------
# Logging.


class TestLogging(unittest.TestCase):
    def test_hclog_json(self) -> None:
        rec = logging.LogRecord("example", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
        rec.bytes = 5  # type: ignore[attr-defined]  # as extra= sets it
        rec.obj = {"a": [1, 2]}  # type: ignore[attr-defined]
        line = pv.HclogFormatter().format(rec)
        self.assertNotIn("\n", line)
        d = json.loads(line)
        self.assertEqual(d["@level"], "warn")
        self.assertEqual(d["@message"], "hello there")
        self.assertEqual(d["@module"], "example")
        self.assertEqual((d["bytes"], d["obj"]), (5, {"a": [1, 2]}))
        self.assertRegex(d["@timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$")
        try:
            raise KeyError("k")
        except KeyError:
            rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed\nbadly", (), sys.exc_info())
        d = json.loads(pv.HclogFormatter().format(rec))
        self.assertEqual((d["@level"], d["@message"], d["error"]), ("error", "failed\nbadly", "KeyError: 'k'"))
        self.assertIn("Traceback (most recent call last)", d["traceback"])
        levels = {pv.TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info", logging.ERROR: "error", logging.CRITICAL: "error"}
        for lv, name in levels.items():
            r = logging.LogRecord("x", lv, __file__, 1, "m", (), None)
            self.assertEqual(json.loads(pv.HclogFormatter().format(r))["@level"], name)

    def test_get_logger_levels(self) -> None:
        import io

        for word, shown in [("trace", ["trace", "debug", "info"]), ("info", ["info"]), ("WARN", []), ("off", []), ("bogus", ["info"])]:
            with self.subTest(level=word):
                buf = io.StringIO()
                log = pv.get_logger("test.levels." + word, word, stream=buf)
                log.log(pv.TRACE, "t")
                log.debug("d")
                log.info("i")
                got = [json.loads(x)["@level"] for x in buf.getvalue().splitlines()]
                self.assertEqual(got, shown)
                self.assertFalse(log.propagate)
                # Set up once: a second call adds no second handler.
                pv.get_logger("test.levels." + word, word, stream=buf)
                log.info("again")
                self.assertEqual(len(buf.getvalue().splitlines()), len(shown) + (0 if word in ("WARN", "off") else 1))


# ---------------------------------------------------------------------------
# A supervisor's end of a worker's channel, played frame by frame.

WORKER_SCRIPT = r"""
import os, sys
n = int(os.environ.pop("TEST_CHANNEL", "-1"))
if n >= 0 and n != 3:
    os.dup2(n, 3)   # fd 3, inheritable, as a supervisor hands it over
    os.close(n)
import fcntl, json, subprocess, threading, time
import pairvisor as pv

release_fd = int(os.environ.get("TEST_RELEASE_FD", "-1"))
barrier = threading.Barrier(int(os.environ.get("TEST_BARRIER", "1")), timeout=20)

def handle(p, ctx):
    cmd, _, arg = p.partition(b" ")
    if cmd == b"upper":
        return arg.upper()
    if cmd == b"boom":
        raise ValueError("boom")
    if cmd == b"remote":
        raise pv.RemoteError(pv.ErrorCode.BAD_REQUEST, "bad " + arg.decode())
    if cmd == b"internal":
        raise pv.RemoteError(pv.ErrorCode.INTERNAL, "on purpose")
    if cmd == b"str":
        return "text"
    if cmd == b"none":
        return None
    if cmd == b"big":
        return bytearray(b"z" * int(arg))
    if cmd == b"block":
        os.read(release_fd, 1)
        return b"released " + arg
    if cmd == b"barrier":
        barrier.wait()
        return b"met " + arg
    if cmd == b"ctx":
        return repr(ctx).encode()
    if cmd == b"wait_cancel":
        # Waits for the cancel (bounded), then says so on stdout and
        # answers as a cancelled handler does.
        got = ctx.cancelled.wait(20)
        print("handler %d cancelled: %s" % (ctx.id, got), flush=True)
        ctx.check()
        return b"never cancelled"
    if cmd == b"env":
        flags = fcntl.fcntl(3, fcntl.F_GETFD)
        return json.dumps({
            "pairvisor_vars": sorted(k for k in os.environ if k.startswith("PAIRVISOR_")),
            "fd3_inheritable": os.get_inheritable(3),
            "fd3_cloexec": bool(flags & fcntl.FD_CLOEXEC),
        }).encode()
    raise KeyError(cmd)

handlers = {
    "ctx": handle,                                  # detected: takes ctx
    "plain": lambda p: handle(p, pv.RequestContext(0)),  # detected: payload only
    "varargs": lambda *a: handle(a[0], a[1]),       # ambiguous: needs cancellable=True
    "none": None,
}
handler = handlers[os.environ.get("TEST_HANDLER", "ctx")]
kwargs = json.loads(os.environ.get("TEST_SERVE_KWARGS", "{}"))
if os.environ.get("TEST_UNCAUGHT"):
    print("serve returned: " + pv.serve(handler, **kwargs), flush=True)   # ChannelClosed escapes
    sys.exit(0)
try:
    reason = pv.serve(handler, **kwargs)
except pv.NotWorkerError as e:
    try:
        os.fstat(3)
        fd3 = "open"
    except OSError:
        fd3 = "closed"
    left = sorted(k for k in os.environ if k.startswith("PAIRVISOR_"))
    print("not a worker: %s | fd3 %s | vars %s" % (e, fd3, left), flush=True)
    sys.exit(3)
except pv.ChannelClosed as e:
    print("channel closed: %s" % e.reason, flush=True)
    sys.exit(1)
print("serve returned: " + reason, flush=True)
"""


class Peer:
    """The test's end of a connection: raw frames, bounded waits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.dec = pv.FrameDecoder()
        self.frames: List[Tuple[pv.Header, bytes]] = []
        self.eof = False

    def send(self, t: int, payload: bytes = b"", id: int = 0, flags: int = 0) -> None:
        self.sock.sendall(pv.encode_frame(t, payload, id=id, flags=flags))

    def hello(self, lo: int = 1, hi: int = 2, name: str = "supervisor") -> None:
        self.send(T.HELLO, pv.encode_hello(pv.Hello(lo, hi, os.getpid(), name)))

    def _more(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for the worker")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise AssertionError("timed out waiting for the worker")
        try:
            b = self.sock.recv(1 << 20)
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
            return
        self.frames += self.dec.feed(b)

    def recv(self, timeout: float = WAIT) -> Tuple[pv.Header, bytes]:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.eof:
                raise AssertionError("EOF instead of a frame")
            self._more(deadline)
        return self.frames.pop(0)

    def expect_eof(self, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._more(deadline)
        self.dec.close()

    def expect_none_before_pong(self, id: int = 999) -> None:
        """Ping with id and check that its pong is the next frame: nothing
        else (an error, a second reply) was sent before it."""
        self.send(T.PING, b"sync", id)
        h, p = self.recv()
        if (h.type, h.flags, h.id, p) != (T.PING, pv.FLAG_REPLY, id, b"sync"):
            raise AssertionError("want the pong for %d, got %s %r" % (id, h, p[:100]))

    def call(self, t: int, payload: bytes = b"", id: int = 1) -> Tuple[pv.Header, bytes]:
        self.send(t, payload, id)
        h, p = self.recv()
        assert h.id == id, "reply %s to id %d" % (h, id)
        return h, p

    def expect_error(self, id: int, code: int, text: str = "") -> str:
        h, p = self.recv()
        if h.type != T.ERROR or not h.is_reply or h.id != id:
            raise AssertionError("want error %d for id %d, got %s %r" % (code, id, h, p[:100]))
        e = pv.parse_error(p)
        if e.code != code or text not in e.message:
            raise AssertionError("want error %d %r, got %d %r" % (code, text, e.code, e.message))
        return e.message


class WorkerProc:
    """A worker process started as a supervisor starts one."""

    def __init__(
        self,
        tc: unittest.TestCase,
        env: Optional[Dict[str, str]] = None,
        kwargs: Optional[Dict[str, Any]] = None,
        channel: Optional[socket.socket] = None,
        hello: bool = True,
        peer_max: int = 2,
    ) -> None:
        self.tc = tc
        self.release_r, self.release_w = (_high_fd(fd) for fd in os.pipe())
        ours: Optional[socket.socket] = None
        if channel is None:
            ours, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = socket.socket(fileno=_high_fd(channel.detach()))
        e = {k: v for k, v in os.environ.items() if not k.startswith("PAIRVISOR_")}
        e.update(
            PAIRVISOR_WORKER="1",
            PAIRVISOR_PARENT_PID=str(os.getpid()),
            PAIRVISOR_FD="3",
            PAIRVISOR_LOG_LEVEL="debug",
            PYTHONPATH=HERE,
            PYTHONDONTWRITEBYTECODE="1",
            TEST_CHANNEL=str(channel.fileno()),
            TEST_RELEASE_FD=str(self.release_r),
            TEST_SERVE_KWARGS=json.dumps(kwargs or {}),
        )
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT],
            env=e,
            pass_fds=(channel.fileno(), self.release_r),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        channel.close()
        os.close(self.release_r)
        self.peer = Peer(ours) if ours is not None else None
        self._out: Optional[Tuple[str, str]] = None
        tc.addCleanup(self.cleanup)
        if hello and self.peer is not None:
            h, p = self.peer.recv()
            self.tc.assertEqual((h.type, h.flags, h.id), (T.HELLO, 0, 0))
            self.hello_from_worker = pv.parse_hello(p)
            self.peer.hello(hi=peer_max)

    def release(self, n: int = 1) -> None:
        os.write(self.release_w, b"x" * n)

    def wait(self, code: int = 0) -> Tuple[str, str]:
        """Wait for the exit; check its status; return stdout, stderr."""
        try:
            out, err = self.proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("worker did not exit\nstdout:\n%s\nstderr:\n%s" % (out.decode(), err.decode()))
        self._out = (out.decode(), err.decode())
        self.tc.assertEqual(self.proc.returncode, code, "exit status\nstdout:\n%s\nstderr:\n%s" % self._out)
        return self._out

    def close_and_wait(self) -> str:
        """Close our end without a SHUTDOWN: the worker exits 1."""
        assert self.peer is not None
        self.peer.sock.close()
        out, _ = self.wait(1)
        return out

    def ready_version(self) -> int:
        """The version of the worker's "ready" log line (after wait)."""
        _, err = self._out or ("", "")
        for x in err.splitlines():
            if x.startswith("{") and json.loads(x)["@message"] == "ready":
                return int(json.loads(x)["version"])
        raise AssertionError("no ready line in\n" + err)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        elif self._out is None:
            self.proc.communicate()
        os.close(self.release_w)
        if self.peer is not None:
            self.peer.sock.close()


def _high_fd(fd: int) -> int:
    """Move fd to a number above 9, so that the worker's dup2 to fd 3
    cannot clobber it (nor it fd 3)."""
    import fcntl

    n = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return n


def _echo_sizes() -> List[int]:
    return [0, 1, 64 << 10, 1 << 20]


class TestWorker(unittest.TestCase):
    def test_hello_ping_echo_message(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        self.assertEqual(w.hello_from_worker, pv.Hello(1, 3, w.proc.pid, "worker.1"))
        for i, p in enumerate([b"", b"x", b"p" * 64]):
            h, got = w.peer.call(T.PING, p, id=10 + i)
            self.assertEqual((h.type, h.flags, got), (T.PING, pv.FLAG_REPLY, p))
        rng = random.Random(3)
        for n in _echo_sizes():
            p = bytes(rng.getrandbits(8) for _ in range(min(n, 4096))) * max(1, n // 4096)
            p = p[:n]
            h, got = w.peer.call(T.ECHO, p, id=100 + n)
            self.assertEqual((h.type, h.flags), (T.ECHO, pv.FLAG_REPLY))
            self.assertTrue(got == p, "echo of %d bytes came back as %d bytes" % (n, len(got)))
        h, got = w.peer.call(T.MESSAGE, b"upper hello", id=7)
        self.assertEqual((h.type, h.flags, got), (T.MESSAGE, pv.FLAG_REPLY, b"HELLO"))
        h, got = w.peer.call(T.MESSAGE, b"none", id=8)
        self.assertEqual((h.type, got), (T.MESSAGE, b""))
        h, got = w.peer.call(T.MESSAGE, b"big %d" % (3 << 20), id=9)
        self.assertEqual(got, b"z" * (3 << 20))
        h, got = w.peer.call(T.MESSAGE, b"ctx", id=10)
        self.assertEqual(got, b"RequestContext(id=10, cancelled=False)")
        # EOF without a SHUTDOWN: serve raises ChannelClosed, exit 1.
        self.assertIn("channel closed: closed by the peer", w.close_and_wait())
        self.assertEqual(w.ready_version(), 2)

    def test_env_removed_and_channel_cloexec(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        _, p = w.peer.call(T.MESSAGE, b"env")
        self.assertEqual(json.loads(p), {"pairvisor_vars": [], "fd3_inheritable": False, "fd3_cloexec": True})
        w.close_and_wait()

    def test_handler_errors(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        # A handler that raises is a crash (code 10); RemoteError, even
        # with code 4, is an answer on purpose.
        w.peer.send(T.MESSAGE, b"boom", 1)
        self.assertEqual(w.peer.expect_error(1, C.CRASHED, "crashed"), "the message handler crashed (ValueError; the worker's log has the details)")
        w.peer.send(T.MESSAGE, b"remote x", 2)
        w.peer.expect_error(2, C.BAD_REQUEST, "bad x")
        w.peer.send(T.MESSAGE, b"str", 3)
        w.peer.expect_error(3, C.CRASHED, "TypeError")
        w.peer.send(T.MESSAGE, b"internal", 7)
        w.peer.expect_error(7, C.INTERNAL, "on purpose")
        w.peer.send(T.STATUS, b"", 4)
        w.peer.expect_error(4, C.UNSUPPORTED, "status is not served by workers")
        w.peer.send(T.RELOAD, b"", 5)
        w.peer.expect_error(5, C.UNSUPPORTED, "reload is not served by workers")
        # Still serving.
        h, _ = w.peer.call(T.PING, b"", 6)
        self.assertEqual(h.type, T.PING)
        w.close_and_wait()
        _, err = w._out or ("", "")
        failures = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"handler crashed"' in x]
        self.assertEqual(len(failures), 2, err)
        self.assertIn("TypeError: handler returned str, want bytes", failures[1]["traceback"])
        self.assertEqual(failures[0]["@level"], "error")
        self.assertEqual(failures[0]["request_id"], 1)
        self.assertRegex(failures[0]["traceback"], r'(?s)^Traceback.*, in handle\n.*ValueError: boom\n$')

    def test_no_handler(self) -> None:
        # serve(None): messages are refused, pings and echoes answered.
        # No PAIRVISOR_FD: fd 3 by default.
        ours, theirs = socket.socketpair()
        e = {k: v for k, v in os.environ.items() if not k.startswith("PAIRVISOR_")}
        e.update(PAIRVISOR_WORKER="2", PAIRVISOR_PARENT_PID=str(os.getpid()), PYTHONPATH=HERE, TEST_CHANNEL=str(theirs.fileno()), PYTHONDONTWRITEBYTECODE="1", TEST_HANDLER="none")
        proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], env=e, pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        theirs.close()
        try:
            peer = Peer(ours)
            h, p = peer.recv()
            self.assertEqual(pv.parse_hello(p).name, "worker.2")
            peer.hello()
            peer.send(T.MESSAGE, b"upper x", 1)
            peer.expect_error(1, C.UNSUPPORTED, "worker has no message handler")
            self.assertEqual(peer.call(T.ECHO, b"e", 2)[1], b"e")
            ours.close()
            out, err = proc.communicate(timeout=WAIT)
            self.assertEqual(proc.returncode, 1, err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            ours.close()

    def test_handlers_run_concurrently(self) -> None:
        n = 12
        w = WorkerProc(self, env={"TEST_BARRIER": str(n)})
        assert w.peer is not None
        # n messages that each wait until all n are running: only a
        # worker that runs them at once answers.
        for i in range(n):
            w.peer.send(T.MESSAGE, b"barrier %d" % i, 100 + i)
        # A ping is answered while a message is blocked, too.
        w.peer.send(T.MESSAGE, b"block a", 1)
        w.peer.send(T.PING, b"", 2)
        got = {}
        while len(got) < n + 1:
            h, p = w.peer.recv()
            got[h.id] = (h.type, p)
        self.assertEqual(got[2], (T.PING, b""))
        for i in range(n):
            self.assertEqual(got[100 + i], (T.MESSAGE, b"met %d" % i))
        self.assertNotIn(1, got)
        w.release()
        self.assertEqual(w.peer.recv()[1], b"released a")
        w.close_and_wait()

    def test_max_concurrent(self) -> None:
        w = WorkerProc(self, kwargs={"max_concurrent": 2})
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"block 1", 1)
        w.peer.send(T.MESSAGE, b"block 2", 2)
        w.peer.send(T.MESSAGE, b"upper x", 3)
        w.peer.expect_error(3, C.UNAVAILABLE, "more than 2 requests in flight")
        self.assertEqual(w.peer.call(T.ECHO, b"still", 4)[1], b"still")
        w.release(2)
        got = sorted([w.peer.recv()[1], w.peer.recv()[1]])
        self.assertEqual(got, [b"released 1", b"released 2"])
        # Slots are free again.
        self.assertEqual(w.peer.call(T.MESSAGE, b"upper y", 5)[1], b"Y")
        w.close_and_wait()

    def test_shutdown_drains_in_order(self) -> None:
        w = WorkerProc(self, kwargs={"shutdown_linger": 30})
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"block first", 1)
        w.peer.send(T.SHUTDOWN, b"", 2)
        w.peer.send(T.MESSAGE, b"upper late", 3)
        w.peer.expect_error(3, C.SHUTTING_DOWN, "shutting down")
        w.peer.send(T.STATUS, b"", 4)
        w.peer.expect_error(4, C.SHUTTING_DOWN)
        # Pings and echoes are still answered, and the shutdown reply has
        # not come: the message before it is still running.
        self.assertEqual(w.peer.call(T.PING, b"p", 5), (pv.Header(T.PING, 1, 1, 5), b"p"))
        self.assertEqual(w.peer.call(T.ECHO, b"e", 6)[1], b"e")
        w.release()
        h1, p1 = w.peer.recv()
        h2, p2 = w.peer.recv()
        self.assertEqual((h1.type, h1.id, p1), (T.MESSAGE, 1, b"released first"))
        self.assertEqual((h2.type, h2.flags, h2.id, p2), (T.SHUTDOWN, pv.FLAG_REPLY, 2, b""))
        # A SHUTDOWN answered, then EOF: serve returns, exit 0.
        w.peer.sock.close()
        out, _ = w.wait(0)
        self.assertIn("serve returned: closed by the peer", out)

    def test_shutdown_linger(self) -> None:
        # A supervisor that never closes after the shutdown reply: the
        # worker stops waiting after shutdown_linger.
        w = WorkerProc(self, kwargs={"shutdown_linger": 0.2})
        assert w.peer is not None
        self.assertEqual(w.peer.call(T.SHUTDOWN, b"", 1)[0].type, T.SHUTDOWN)
        w.peer.expect_eof()
        out, _ = w.wait(0)
        self.assertIn("no EOF within 0.2s of the shutdown reply", out)

    def test_eof_exits_with_handler_running(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"block forever", 1)
        self.assertEqual(w.peer.call(T.PING, b"", 2)[0].type, T.PING)  # the message has been taken in
        self.assertIn("channel closed: closed by the peer", w.close_and_wait())

    def test_eof_during_shutdown_drain_is_not_a_shutdown(self) -> None:
        # The SHUTDOWN arrived but was not answered yet (a message before
        # it still runs) when the channel ended: not a graceful stop.
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"block forever", 1)
        w.peer.send(T.SHUTDOWN, b"", 2)
        w.peer.send(T.MESSAGE, b"upper late", 3)
        w.peer.expect_error(3, C.SHUTTING_DOWN)
        self.assertIn("channel closed: closed by the peer", w.close_and_wait())

    def test_uncaught_channel_closed_exits_non_zero(self) -> None:
        # A program that just calls serve() gets the exit status right:
        # ChannelClosed escapes (status 1); after a SHUTDOWN serve returns.
        w = WorkerProc(self, env={"TEST_UNCAUGHT": "1"})
        assert w.peer is not None
        w.peer.sock.close()
        _, err = w.wait(1)
        self.assertIn("pairvisor.ChannelClosed: closed by the peer", err)
        w = WorkerProc(self, env={"TEST_UNCAUGHT": "1"})
        assert w.peer is not None
        self.assertEqual(w.peer.call(T.SHUTDOWN, b"", 1)[0].type, T.SHUTDOWN)
        w.peer.sock.close()
        out, _ = w.wait(0)
        self.assertIn("serve returned: closed by the peer", out)

    def test_eof_before_hello(self) -> None:
        w = WorkerProc(self, hello=False)
        assert w.peer is not None
        h, _ = w.peer.recv()
        self.assertEqual(h.type, T.HELLO)  # sent without waiting for ours
        w.peer.sock.close()
        out, _ = w.wait(1)  # serve raised ChannelClosed: no hello exchange
        self.assertIn("channel closed: hello failed: peer closed the connection before its hello", out)

    def test_protocol_violations(self) -> None:
        hello = lambda lo, hi: pv.encode_hello(pv.Hello(lo, hi, 0, "s"))  # noqa: E731
        # name, peer's max version (0: no hello first), bytes sent, code, text
        cases: List[Tuple[str, int, bytes, int, str]] = [
            ("first frame not hello", 0, pv.encode_frame(T.PING, id=5), C.PROTOCOL, "first frame is ping, want hello"),
            ("cancel as first frame", 0, pv.encode_frame(T.CANCEL, id=5), C.PROTOCOL, "first frame is cancel, want hello"),
            ("error request as first frame", 0, pv.encode_frame(T.ERROR, pv.encode_error(1, "x"), id=0), C.PROTOCOL, "first frame is error"),
            ("hello with the reply flag", 0, pv.encode_frame(T.HELLO, hello(1, 2), flags=1), C.PROTOCOL, "hello with the reply flag"),
            ("hello with an id", 0, pv.encode_frame(T.HELLO, hello(1, 2), id=3), C.PROTOCOL, "hello with id 3, want 0"),
            ("version mismatch", 0, pv.encode_frame(T.HELLO, hello(4, 5)), C.VERSION, "no common protocol version"),
            ("hello too long", 0, pv.encode_header(T.HELLO, 0, 265, 0), C.TOO_LARGE, "hello payload of 265 bytes exceeds the limit of 264"),
            ("hello too short", 0, pv.encode_frame(T.HELLO, b"\x01\x00\x01\x00"), C.PROTOCOL, "hello payload of 4 bytes"),
            ("hello lowest above highest", 0, pv.encode_frame(T.HELLO, hello(2, 1)), C.PROTOCOL, "hello version range 2..1"),
            ("hello lowest 0", 0, pv.encode_frame(T.HELLO, hello(0, 2)), C.PROTOCOL, "hello version range 0..2"),
            ("second hello", 2, pv.encode_frame(T.HELLO, hello(1, 1), id=3), C.PROTOCOL, "hello frame without the reply flag after the handshake"),
            ("hello reply", 2, pv.encode_frame(T.HELLO, hello(1, 1), id=3, flags=1), C.PROTOCOL, "hello frame with the reply flag"),
            ("error request", 2, pv.encode_frame(T.ERROR, pv.encode_error(1, "x"), id=4), C.PROTOCOL, "error frame without the reply flag"),
            ("bad magic", 2, b"\xc1Q" + pv.encode_frame(T.PING, id=6)[2:], C.PROTOCOL, "bad frame magic"),
            ("unknown type", 2, pv.encode_header(10, 0, 0, 7), C.PROTOCOL, "unknown frame type: type byte 10"),
            ("client below version 3", 2, pv.encode_header(T.CLIENT, 0, 0, 7), C.PROTOCOL, "type byte 9 (client) on a version 2 connection"),
            ("undefined flags", 3, pv.encode_header(T.PING, 4, 0, 8), C.PROTOCOL, "undefined frame flags"),
            ("files flag below version 3", 2, pv.encode_header(T.PING, 2, 0, 8), C.PROTOCOL, "undefined frame flags: flags 0x02 (files) below version 3"),
            ("files flag without descriptors", 3, pv.encode_header(T.PING, 2, 0, 8), C.PROTOCOL, "missing descriptors"),
            ("files flag on a cancel", 3, pv.encode_header(T.CANCEL, 2, 0, 8), C.PROTOCOL, "a cancel frame with the files flag"),
            ("frame over the limit", 2, pv.encode_header(T.ECHO, 0, (1 << 20) + 1, 10), C.TOO_LARGE, "exceeds the limit of 1048576"),
            ("ping with id 0", 2, pv.encode_frame(T.PING, id=0), C.PROTOCOL, "ping request with id 0, which is reserved"),
            ("message with id 0", 2, pv.encode_frame(T.MESSAGE, b"upper x", id=0), C.PROTOCOL, "message request with id 0"),
            ("cancel with id 0", 2, pv.encode_frame(T.CANCEL, id=0), C.PROTOCOL, "cancel request with id 0"),
            ("cancel with a payload", 2, pv.encode_frame(T.CANCEL, b"x", id=5), C.PROTOCOL, "cancel frame with a payload of 1 bytes"),
            ("cancel with the reply flag", 2, pv.encode_frame(T.CANCEL, id=5, flags=1), C.PROTOCOL, "cancel frame with the reply flag"),
            ("cancel on version 1", 1, pv.encode_frame(T.CANCEL, id=5), C.PROTOCOL, "type byte 8 (cancel) on a version 1 connection"),
            ("id in use (version 2)", 2, pv.encode_frame(T.MESSAGE, b"block a", id=5) + pv.encode_frame(T.MESSAGE, b"upper b", id=5), C.PROTOCOL, "message request 5 while request 5 is in flight"),
        ]
        for name, peer_max, data, code, text in cases:
            with self.subTest(name):
                w = WorkerProc(self, kwargs={"max_payload": 1 << 20}, hello=False)
                assert w.peer is not None
                self.assertEqual(w.peer.recv()[0].type, T.HELLO)
                if peer_max:
                    w.peer.hello(hi=peer_max)
                w.peer.sock.sendall(data)
                # Always id 0: the offending frame's id may be one of ours.
                w.peer.expect_error(0, code, text)
                w.peer.expect_eof()  # the worker closes; it never resynchronises
                out, _ = w.wait(1)  # and exits non-zero: no SHUTDOWN
                self.assertIn("hello failed" if not peer_max else "protocol violation", out)

    def test_same_id_again_after_its_reply(self) -> None:
        # Version 2 forbids an id in use by a request with the handler;
        # once answered, the id may be used again; on version 1 the worker
        # does not check.
        for peer_max in (1, 2):
            with self.subTest(version=peer_max):
                w = WorkerProc(self, peer_max=peer_max)
                assert w.peer is not None
                self.assertEqual(w.peer.call(T.MESSAGE, b"upper a", 5)[1], b"A")
                self.assertEqual(w.peer.call(T.MESSAGE, b"upper b", 5)[1], b"B")
                if peer_max == 1:
                    w.peer.send(T.MESSAGE, b"block x", 6)
                    w.peer.send(T.MESSAGE, b"upper y", 6)
                    self.assertEqual(w.peer.recv(), (pv.Header(T.MESSAGE, 1, 1, 6), b"Y"))
                w.close_and_wait()

    def test_oversize_ping_refused_on_its_id(self) -> None:
        # Not a violation: code 5 on the ping's own id, payload skipped,
        # and the connection goes on.
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.send(T.PING, b"x" * 65, 9)
        w.peer.expect_error(9, C.TOO_LARGE, "ping payload of 65 bytes exceeds the limit of 64")
        w.peer.send(T.PING, b"y" * 70000, 10)
        w.peer.expect_error(10, C.TOO_LARGE, "ping payload of 70000 bytes")
        self.assertEqual(w.peer.call(T.PING, b"z" * 64, 11), (pv.Header(T.PING, 1, 64, 11), b"z" * 64))
        w.close_and_wait()

    def test_cancel(self) -> None:
        # Version 2: a CANCEL sets the handler's ctx.cancelled; the
        # request is still answered exactly once (here with the error a
        # cancelled handler raises). Unknown ids, ids answered already and
        # requests answered inline are ignored.
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.send(T.CANCEL, b"", 12345)
        w.peer.send(T.MESSAGE, b"wait_cancel", 5)
        w.peer.send(T.CANCEL, b"", 5)
        w.peer.expect_error(5, C.INTERNAL, "request cancelled")
        w.peer.send(T.CANCEL, b"", 5)  # answered already
        self.assertEqual(w.peer.call(T.ECHO, b"e", 6)[1], b"e")
        w.peer.send(T.CANCEL, b"", 6)  # answered inline
        w.peer.expect_none_before_pong(7)
        # The id may be used again once answered.
        self.assertEqual(w.peer.call(T.MESSAGE, b"upper again", 5)[1], b"AGAIN")
        w.peer.expect_none_before_pong(8)
        out = w.close_and_wait()
        self.assertIn("handler 5 cancelled: True", out)

    def test_cancel_of_a_blocked_handler_and_close(self) -> None:
        # A handler that ignores the cancel answers in its own time, once;
        # a handler still running when the channel closes is told too.
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"block a", 1)
        w.peer.send(T.CANCEL, b"", 1)
        w.peer.expect_none_before_pong(2)
        w.release()
        self.assertEqual(w.peer.recv(), (pv.Header(T.MESSAGE, 1, 10, 1), b"released a"))
        w.peer.expect_none_before_pong(3)
        w.peer.send(T.MESSAGE, b"wait_cancel", 4)
        w.peer.expect_none_before_pong(5)  # the message is with its handler
        out = w.close_and_wait()
        # The handler may or may not print before the process exits; if
        # it does, it was cancelled by the close.
        self.assertNotIn("handler 4 cancelled: False", out)

    def test_mixed_versions(self) -> None:
        # A version 1 supervisor and a version 2 worker speak version 1:
        # CANCEL is unknown there (see test_protocol_violations), the rest
        # works. A worker held to version 1 says so in its hello.
        w = WorkerProc(self, peer_max=1)
        assert w.peer is not None
        self.assertEqual(w.peer.call(T.MESSAGE, b"upper v1", 1)[1], b"V1")
        w.close_and_wait()
        self.assertEqual(w.ready_version(), 1)
        w = WorkerProc(self, kwargs={"max_version": 1})
        assert w.peer is not None
        self.assertEqual(w.hello_from_worker, pv.Hello(1, 1, w.proc.pid, "worker.1"))
        self.assertEqual(w.peer.call(T.MESSAGE, b"ctx", 1)[1], b"RequestContext(id=1, cancelled=False)")
        w.peer.send(T.CANCEL, b"", 1)
        w.peer.expect_error(0, C.PROTOCOL, "type byte 8 (cancel) on a version 1 connection")
        w.peer.expect_eof()
        w.wait(1)
        self.assertEqual(w.ready_version(), 1)
        with self.assertRaises(ValueError):
            pv.serve(None, max_version=4)  # checked before the environment

    def test_handler_signatures(self) -> None:
        # A one-argument handler works unchanged; one that can be called
        # either way gets ctx only when serve(cancellable=True) says so.
        w = WorkerProc(self, env={"TEST_HANDLER": "plain"})
        assert w.peer is not None
        self.assertEqual(w.peer.call(T.MESSAGE, b"upper one", 1)[1], b"ONE")
        w.close_and_wait()
        w = WorkerProc(self, env={"TEST_HANDLER": "varargs"}, kwargs={"cancellable": True})
        assert w.peer is not None
        self.assertEqual(w.peer.call(T.MESSAGE, b"ctx", 7)[1], b"RequestContext(id=7, cancelled=False)")
        w.close_and_wait()
        w = WorkerProc(self, env={"TEST_HANDLER": "varargs"})  # called with the payload alone: a crash
        assert w.peer is not None
        w.peer.send(T.MESSAGE, b"ctx", 8)
        w.peer.expect_error(8, C.CRASHED, "IndexError")
        w.close_and_wait()

    def test_wants_context(self) -> None:
        import functools

        def two(p: bytes, ctx: pv.RequestContext) -> bytes:
            return p

        def default(p: bytes, ctx: Any = None) -> bytes:
            return p

        class Two:
            def __call__(self, p: bytes, ctx: Any) -> bytes:
                return p

            def method(self, p: bytes, ctx: Any) -> bytes:
                return p

        for h, want in [
            (lambda p: p, False),
            (two, True),
            (default, False),
            (lambda *a: a[0], False),
            (lambda p, ctx, extra: p, False),
            (Two(), True),
            (Two().method, True),
            (functools.partial(lambda x, p, ctx: p, 1), True),
            (functools.partial(two, ctx=None), False),
            (bytes.upper, False),
            (len, False),
        ]:
            with self.subTest(h=h):
                self.assertEqual(pv._wants_context(h), want)

    def test_replies_to_nothing_and_connection_errors(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        # A reply whose caller is gone is read and dropped, whatever its
        # type, ERROR included, and id 0 too unless it is an ERROR.
        w.peer.send(T.ECHO, b"late" * 1000, id=99, flags=pv.FLAG_REPLY)
        w.peer.send(T.ERROR, pv.encode_error(3, "late"), id=98, flags=pv.FLAG_REPLY)
        w.peer.send(T.MESSAGE, b"", id=97, flags=pv.FLAG_REPLY)
        w.peer.send(T.PING, b"", id=0, flags=pv.FLAG_REPLY)
        w.peer.expect_none_before_pong(1)
        # An ERROR with id 0 is about the connection: the worker closes
        # without answering, and exits non-zero.
        w.peer.send(T.ERROR, pv.encode_error(C.PROTOCOL, "you are wrong"), id=0, flags=pv.FLAG_REPLY)
        w.peer.expect_eof()
        self.assertEqual(w.peer.frames, [])
        out, _ = w.wait(1)
        self.assertIn("error 8: you are wrong", out)

    def test_truncated_frame(self) -> None:
        w = WorkerProc(self)
        assert w.peer is not None
        w.peer.sock.sendall(pv.encode_header(T.ECHO, 0, 100, 1) + b"only part")
        w.peer.sock.shutdown(socket.SHUT_WR)
        w.peer.expect_eof()
        self.assertEqual(w.peer.frames, [])  # nothing is sent about it
        out, _ = w.wait(1)
        self.assertIn("channel closed: truncated frame", out)

    def test_large_echoes_both_ways(self) -> None:
        # The peer writes 40 MiB of echo requests from one thread while
        # another reads the replies: the worker keeps reading while it
        # writes, and what it holds stays bounded.
        w = WorkerProc(self, kwargs={"max_buffered": 4 << 20})
        assert w.peer is not None
        n, size = 40, 1 << 20
        payloads = [bytes([i]) * size for i in range(n)]
        errors: List[BaseException] = []

        def send() -> None:
            try:
                for i, p in enumerate(payloads):
                    w.peer.send(T.ECHO, p, 1000 + i)  # type: ignore[union-attr]
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=send)
        t.start()
        for i in range(n):
            h, p = w.peer.recv()
            self.assertEqual((h.type, h.id), (T.ECHO, 1000 + i))
            self.assertTrue(p == payloads[i])
        t.join(WAIT)
        self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        w.close_and_wait()

    def test_peer_that_does_not_read_is_dropped(self) -> None:
        w = WorkerProc(self, kwargs={"max_buffered": 1 << 20, "write_timeout": 0.5})
        assert w.peer is not None
        w.peer.sock.settimeout(WAIT)
        try:
            for i in range(1000):  # far more than both socket buffers and the bound
                w.peer.send(T.ECHO, b"x" * (256 << 10), i + 1)
            self.fail("the worker kept reading from a peer that reads nothing")
        except OSError as e:
            self.assertIn(e.errno, (errno.EPIPE, errno.ECONNRESET), e)
        out, _ = w.wait(1)
        self.assertIn("channel closed: stalled", out)


class InProcessWorker:
    """The worker side of a connection run in this process, over a
    socketpair, without the process contract: for tests that look inside
    or need many sessions."""

    def __init__(self, **kw: Any) -> None:
        self.peer_sock, theirs = socket.socketpair()
        handler = kw.pop("handler", lambda p: p[::-1])
        self.log = logging.getLogger("pairvisor.test.inprocess")
        self.log.propagate = False
        self.log.addHandler(logging.NullHandler())
        self.conn = pv._Conn(theirs, name="worker.9", role="worker", handler=handler, logger=self.log, **kw)
        self.reason: Optional[str] = None
        self.crash: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.hello()
            self.reason = self.conn.run()
        except (pv.ProtocolError, pv.RemoteError, pv.ConnectionClosed) as e:
            self.reason = "hello failed: %s" % e
        except BaseException as e:  # anything else is a bug
            self.crash = e

    def join(self, tc: unittest.TestCase) -> None:
        self.thread.join(WAIT)
        tc.assertFalse(self.thread.is_alive(), "the connection did not end")
        if self.crash is not None:
            raise self.crash
        self.peer_sock.close()


class TestStreamFuzz(unittest.TestCase):
    """Mutated frame streams against a live connection: it answers with
    well-formed frames or closes, and never crashes or hangs. Set
    PAIRVISOR_FUZZ_SECONDS to run it longer."""

    def test_stream_fuzz(self) -> None:
        rng = random.Random(int(os.environ.get("PAIRVISOR_FUZZ_SEED", "4")))
        hellos = [pv.encode_frame(T.HELLO, pv.encode_hello(pv.Hello(1, v, 1, "fuzz"))) for v in (1, 2, 3, 3)]
        client = pv.encode_client(pv.ClientState(pv.CLIENT_ESTABLISHED, 2, 0, 0, 0, 0, 1, pv.encode_hello(pv.Hello(1, 2, 1, "c")), b""))
        valid = [
            pv.encode_frame(T.CANCEL, id=3),
            pv.encode_frame(T.CANCEL, id=99),
            pv.encode_frame(T.PING, b"q" * 65, id=8),
            pv.encode_frame(T.PING, id=0),
            pv.encode_frame(T.PING, b"p", id=1),
            pv.encode_frame(T.ECHO, b"echo" * 50, id=2),
            pv.encode_frame(T.MESSAGE, b"abc", id=3),
            pv.encode_frame(T.STATUS, id=4),
            pv.encode_frame(T.SHUTDOWN, id=5),
            pv.encode_frame(T.ECHO, b"r", id=6, flags=pv.FLAG_REPLY),
            pv.encode_frame(T.ERROR, pv.encode_error(2, "x"), id=7, flags=pv.FLAG_REPLY),
            pv.encode_frame(T.CLIENT, client, id=11),
            pv.encode_frame(T.CLIENT, client[:20], id=12, flags=pv.FLAG_FILES),
            pv.encode_frame(T.ECHO, b"files", id=13, flags=pv.FLAG_FILES),
            pv.encode_frame(T.PING, b"", id=14, flags=pv.FLAG_FILES),
        ]
        leak_r, leak_w = os.pipe()  # its write end goes with some frames: every copy must be closed
        seconds = float(os.environ.get("PAIRVISOR_FUZZ_SECONDS", "0"))
        end = time.monotonic() + seconds
        runs = 0
        while runs < 150 or time.monotonic() < end:
            runs += 1
            stream = bytearray(b"".join(rng.choice(valid) for _ in range(rng.randrange(1, 12))))
            for _ in range(rng.randrange(0, 4)):
                stream[rng.randrange(len(stream))] = rng.getrandbits(8)
            if rng.random() < 0.2:
                del stream[rng.randrange(len(stream)) :]
            w = InProcessWorker(max_payload=4096, shutdown_linger=0.05, max_files=rng.choice((0, 1, 16)))
            data = (bytes(stream) if rng.random() < 0.1 else rng.choice(hellos)) + bytes(stream)
            # The stream in up to 3 writes, some with descriptors.
            cuts = sorted(rng.randrange(len(data) + 1) for _ in range(2))
            try:
                for part in (data[: cuts[0]], data[cuts[0] : cuts[1]], data[cuts[1] :]):
                    if part and rng.random() < 0.3:
                        socket.send_fds(w.peer_sock, [part], [leak_w] * rng.randrange(1, 4))
                    elif part:
                        w.peer_sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker closed on a violation already
            w.peer_sock.shutdown(socket.SHUT_WR)
            dec = pv.FrameDecoder()
            w.peer_sock.settimeout(WAIT)
            frames = []
            while True:
                try:
                    b = w.peer_sock.recv(65536)
                except ConnectionResetError:  # it closed with our bytes unread: after what it wrote
                    b = b""
                if not b:
                    break
                frames += dec.feed(b)  # raises if the worker wrote a bad frame
            dec.close()
            w.join(self)
            self.assertEqual(frames[0][0].type, T.HELLO)
            for h, p in frames[1:]:
                self.assertTrue(h.is_reply, h)
                if h.type == T.ERROR:
                    e = pv.parse_error(p)
                    self.assertIn(e.code, set(int(c) for c in C))
                    if e.code in (C.PROTOCOL, C.VERSION):
                        self.assertEqual(h.id, 0, e)  # about the connection, never a frame's id
            # Every byte held is given back, once handlers still running
            # at the close have returned.
            deadline = time.monotonic() + WAIT
            while w.conn._held.held != 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            self.assertEqual(w.conn._held.held, 0)
        os.close(leak_w)
        self.assertTrue(_all_closed(leak_r), "a descriptor sent with the fuzzed streams was kept")

    def test_bound_holds(self) -> None:
        # 24 MiB of echo requests to a connection bound to 2 MiB, from a
        # peer that reads nothing until it has written them all (in a
        # thread): the connection stops reading while it holds 2 MiB
        # (plus one frame), then everything comes back.
        w = InProcessWorker(max_buffered=2 << 20)
        w.peer_sock.sendall(pv.encode_frame(T.HELLO, pv.encode_hello(pv.Hello(1, 1, 1, "test"))))
        size, n = 1 << 20, 24
        t = threading.Thread(target=lambda: [w.peer_sock.sendall(pv.encode_frame(T.ECHO, bytes([i]) * size, id=i + 1)) for i in range(n)])
        t.start()
        dec = pv.FrameDecoder()
        w.peer_sock.settimeout(WAIT)
        frames: List[Tuple[pv.Header, bytes]] = []
        while len(frames) < n + 1:
            frames += dec.feed(w.peer_sock.recv(1 << 20))
        t.join(WAIT)
        self.assertEqual([(h.id, p[:1], len(p)) for h, p in frames[1:]], [(i + 1, bytes([i]), size) for i in range(n)])
        self.assertLessEqual(w.conn._held.peak, (2 << 20) + pv.HEADER_SIZE + size)
        w.peer_sock.shutdown(socket.SHUT_WR)
        w.join(self)
        self.assertEqual(w.reason, "closed by the peer")


class TestCancelInProcess(unittest.TestCase):
    def test_cancel_and_close_set_the_event(self) -> None:
        started: "queue.Queue[pv.RequestContext]" = queue.Queue()

        def handler(p: bytes, ctx: pv.RequestContext) -> bytes:
            started.put(ctx)
            if not ctx.cancelled.wait(WAIT):
                return b"not cancelled"
            if p == b"check":
                ctx.check()
            return b"saw the cancel"

        w = InProcessWorker(handler=handler, handler_ctx=True)
        peer = Peer(w.peer_sock)
        self.assertEqual(peer.recv()[0].type, T.HELLO)
        peer.hello()
        peer.send(T.MESSAGE, b"check", 1)
        ctx = started.get(timeout=WAIT)
        self.assertEqual((ctx.id, ctx.cancelled.is_set()), (1, False))
        peer.send(T.CANCEL, b"", 1)
        peer.expect_error(1, C.INTERNAL, "request cancelled")
        peer.send(T.MESSAGE, b"plain", 2)
        ctx = started.get(timeout=WAIT)
        peer.send(T.CANCEL, b"", 2)
        self.assertEqual(peer.recv(), (pv.Header(T.MESSAGE, 1, 14, 2), b"saw the cancel"))
        peer.expect_none_before_pong()
        # A handler running when the connection closes is told.
        peer.send(T.MESSAGE, b"plain", 3)
        ctx = started.get(timeout=WAIT)
        self.assertFalse(ctx.cancelled.is_set())
        w.peer_sock.shutdown(socket.SHUT_WR)
        self.assertTrue(ctx.cancelled.wait(WAIT))
        w.join(self)
        self.assertEqual(w.reason, "closed by the peer")
        self.assertFalse(w.conn.shutdown_acked)


class TestNotWorker(unittest.TestCase):
    def run_script(self, env: Dict[str, str], channel_fd: Optional[int]) -> str:
        e = {k: v for k, v in os.environ.items() if not k.startswith("PAIRVISOR_")}
        e.update(PYTHONPATH=HERE, PYTHONDONTWRITEBYTECODE="1")
        e.update(env)
        fds: Tuple[int, ...] = ()
        if channel_fd is not None:
            e["TEST_CHANNEL"] = str(channel_fd)
            fds = (channel_fd,)
        p = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], env=e, pass_fds=fds, capture_output=True, timeout=WAIT)
        self.assertEqual(p.returncode, 3, p.stderr.decode())
        return p.stdout.decode()

    def contract(self, **kw: str) -> Dict[str, str]:
        env = {"PAIRVISOR_WORKER": "1", "PAIRVISOR_PARENT_PID": str(os.getpid()), "PAIRVISOR_FD": "3", "PAIRVISOR_LOG_LEVEL": "info"}
        env.update(kw)
        return env

    def test_refusals(self) -> None:
        a, b = socket.socketpair()
        r, wfd = os.pipe()
        try:
            # A socketpair made by another process: its SO_PEERCRED names
            # that process, not our parent.
            foreign = _foreign_socketpair_end()
            cases = [
                ("no variable", {}, b.fileno(), "PAIRVISOR_WORKER is not set"),
                ("bad id", self.contract(PAIRVISOR_WORKER="0"), b.fileno(), "is not a worker id"),
                ("wrong parent", self.contract(PAIRVISOR_PARENT_PID="1"), b.fileno(), "but the parent is pid"),
                ("not a socket", self.contract(), r, "fd 3 is not a socket"),
                ("nothing on fd 3", self.contract(), None, "fd 3"),
                ("bad fd variable", self.contract(PAIRVISOR_FD="x"), b.fileno(), "PAIRVISOR_FD='x'"),
                ("foreign socket", self.contract(), foreign.fileno(), "peer is pid"),
            ]
            for name, env, fd, text in cases:
                with self.subTest(name):
                    out = self.run_script(env, fd)
                    self.assertIn(text, out)
                    self.assertIn("vars []", out)  # removed in every case
                    if fd is not None:
                        self.assertIn("fd3 open", out)  # left alone
            foreign.close()
        finally:
            a.close()
            b.close()
            os.close(r)
            os.close(wfd)


def _foreign_socketpair_end() -> socket.socket:
    """Return one end of a socketpair created by another process."""
    ours, theirs = socket.socketpair()
    code = "import socket,sys; s=socket.socket(fileno=int(sys.argv[1])); a,b=socket.socketpair(); socket.send_fds(s,[b'x'],[a.fileno()]); s.recv(1)"
    if not hasattr(socket, "send_fds"):  # Python 3.9 has it; keep a clear failure otherwise
        raise unittest.SkipTest("socket.send_fds missing")
    p = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        ours.settimeout(WAIT)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        ours.close()  # lets the maker exit
        p.wait(WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return socket.socket(fileno=fds[0])


# ---------------------------------------------------------------------------
# Client, against a fake server on a real socket path.


class FakeServer:
    """A server on a socket path that speaks raw frames, one connection."""

    def __init__(self, tc: unittest.TestCase, path: Optional[str] = None, hello: Optional[pv.Hello] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="pvpy")
        tc.addCleanup(lambda: (os.path.exists(self.path) and os.unlink(self.path), os.rmdir(self.dir)))
        self.path = path or os.path.join(self.dir, "s")
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(pv._sockaddr(self.path))
        self.lsock.listen(4)
        tc.addCleanup(self.lsock.close)
        self.hello = hello or pv.Hello(1, 1, os.getpid(), "fake-server")
        self.conn: Optional[Peer] = None
        self.first_byte = b""
        self.client_hello: Optional[pv.Hello] = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        tc.addCleanup(self.close)

    def _accept(self) -> None:
        s, _ = self.lsock.accept()
        self.conn = Peer(s)
        h, p = self.conn.recv()
        self.first_byte = pv.encode_header(h.type, h.flags, h.length, h.id)[:1]
        self.client_hello_header = h
        self.client_hello = pv.parse_hello(p)
        self.conn.send(T.HELLO, pv.encode_hello(self.hello))
        self.ready.set()

    def peer(self) -> Peer:
        self.ready.wait(WAIT)
        assert self.conn is not None
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.sock.close()


class TestClient(unittest.TestCase):
    def serve_in_thread(self, peer: Peer, n: int, answer: Any) -> threading.Thread:
        def run() -> None:
            for _ in range(n):
                h, p = peer.recv()
                answer(peer, h, p)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def test_calls(self) -> None:
        srv = FakeServer(self)

        def answer(peer: Peer, h: pv.Header, p: bytes) -> None:
            if h.type == T.STATUS:
                peer.send(T.STATUS, b'{"mode": "fake", "workers": []}', h.id, pv.FLAG_REPLY)
            elif h.type == T.MESSAGE:
                peer.send(T.ERROR, pv.encode_error(C.DENIED, "not you"), h.id, pv.FLAG_REPLY)
            else:
                peer.send(h.type, p, h.id, pv.FLAG_REPLY)

        with pv.Client(srv.path, timeout=WAIT) as c:
            self.assertEqual(srv.first_byte, b"\xc1")
            assert srv.client_hello is not None
            self.assertEqual(srv.client_hello, pv.Hello(1, 2, os.getpid(), "client"))
            self.assertEqual((c.peer.name, c.version), ("fake-server", 1))
            t = self.serve_in_thread(srv.peer(), 8, answer)
            self.assertGreaterEqual(c.ping(), 0)
            c.ping(b"x" * 64)
            for n in _echo_sizes():
                p = os.urandom(n)
                self.assertTrue(c.echo(p) == p)
            self.assertEqual(c.status(), {"mode": "fake", "workers": []})
            with self.assertRaises(pv.RemoteError) as cm:
                c.message(b"m")
            self.assertEqual((cm.exception.code, cm.exception.message), (C.DENIED, "not you"))
            t.join(WAIT)
            self.assertFalse(t.is_alive())
            # Requests from the server: pings and echoes are answered,
            # the rest refused.
            peer = srv.peer()
            self.assertEqual(peer.call(T.PING, b"sp", 41), (pv.Header(T.PING, 1, 2, 41), b"sp"))
            self.assertEqual(peer.call(T.ECHO, b"se", 42)[1], b"se")
            peer.send(T.MESSAGE, b"m", 43)
            peer.expect_error(43, C.UNSUPPORTED, "no handler for message requests")
            peer.send(T.SHUTDOWN, b"", 44)
            peer.expect_error(44, C.UNSUPPORTED)
            with self.assertRaises(pv.FrameTooLarge):
                c.ping(b"x" * 65)
            with self.assertRaises(ValueError):
                c.call(T.HELLO)
            with self.assertRaises(ValueError):
                c.call(T.CANCEL)
        srv.peer().expect_eof()

    def test_concurrent_calls_out_of_order(self) -> None:
        srv = FakeServer(self)
        n = 16
        with pv.Client(srv.path, timeout=WAIT) as c:
            results: Dict[int, bytes] = {}
            lock = threading.Lock()

            def one(i: int) -> None:
                r = c.echo(b"%d" % i)
                with lock:
                    results[i] = r

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            peer = srv.peer()
            reqs = [peer.recv() for _ in range(n)]  # all in flight at once
            self.assertEqual(len({h.id for h, _ in reqs}), n)
            for h, p in reversed(reqs):
                peer.send(T.ECHO, p, h.id, pv.FLAG_REPLY)
            for t in threads:
                t.join(WAIT)
            self.assertEqual(results, {i: b"%d" % i for i in range(n)})

    def test_timeout_then_late_reply_dropped(self) -> None:
        srv = FakeServer(self)
        with pv.Client(srv.path, timeout=WAIT) as c:
            peer = srv.peer()
            with self.assertRaises(TimeoutError):
                c.echo(b"slow", timeout=0.05)
            h, p = peer.recv()
            peer.send(T.ECHO, p, h.id, pv.FLAG_REPLY)  # too late: dropped
            t = self.serve_in_thread(peer, 1, lambda pr, h, p: pr.send(h.type, p, h.id, pv.FLAG_REPLY))
            self.assertEqual(c.echo(b"next"), b"next")
            t.join(WAIT)

    def test_timeout_sends_cancel_on_version_2(self) -> None:
        srv = FakeServer(self, hello=pv.Hello(1, 2, os.getpid(), "fake-v2"))
        with pv.Client(srv.path, timeout=WAIT) as c:
            self.assertEqual(c.version, 2)
            peer = srv.peer()
            with self.assertRaises(TimeoutError):
                c.message(b"slow", timeout=0.05)
            h, _ = peer.recv()
            self.assertEqual((h.type, h.flags), (T.MESSAGE, 0))
            # The CANCEL follows the request, with its id and nothing else.
            self.assertEqual(peer.recv(), (pv.Header(T.CANCEL, 0, 0, h.id), b""))
            peer.send(T.ERROR, pv.encode_error(C.INTERNAL, "context canceled"), h.id, pv.FLAG_REPLY)  # dropped
            # No CANCEL for a ping.
            with self.assertRaises(TimeoutError):
                c.ping(timeout=0.05)
            hp, _ = peer.recv()
            self.assertEqual(hp.type, T.PING)
            t = self.serve_in_thread(peer, 1, lambda pr, h, p: pr.send(h.type, p, h.id, pv.FLAG_REPLY))
            self.assertEqual(c.echo(b"next"), b"next")  # the next frame was the echo, not a cancel
            t.join(WAIT)
            # A CANCEL from the server (the client runs no handlers) is
            # ignored; one on a reply is a violation.
            peer.send(T.CANCEL, b"", 77)
            self.assertEqual(peer.call(T.PING, b"p", 78)[1], b"p")

    def test_client_held_to_version_1(self) -> None:
        srv = FakeServer(self, hello=pv.Hello(1, 2, os.getpid(), "fake-v2"))
        with pv.Client(srv.path, timeout=WAIT, max_version=1) as c:
            self.assertEqual(srv.client_hello, pv.Hello(1, 1, os.getpid(), "client"))
            self.assertEqual(c.version, 1)
            peer = srv.peer()
            with self.assertRaises(TimeoutError):
                c.message(b"slow", timeout=0.05)
            h, _ = peer.recv()
            t = self.serve_in_thread(peer, 1, lambda pr, h, p: pr.send(h.type, p, h.id, pv.FLAG_REPLY))
            self.assertEqual(c.echo(b"next"), b"next")  # no CANCEL on version 1
            t.join(WAIT)
            peer.send(T.CANCEL, b"", 5)
            peer.expect_error(0, C.PROTOCOL, "type byte 8 (cancel) on a version 1 connection")
            peer.expect_eof()
        with self.assertRaises(ValueError):
            pv.Client(srv.path, max_version=0)

    def test_violation_error_has_id_0(self) -> None:
        # The client's ERROR about a reply it cannot take carries id 0,
        # not the reply's id (which is one of the client's own).
        srv = FakeServer(self)
        with pv.Client(srv.path, timeout=WAIT) as c:
            peer = srv.peer()
            t = self.serve_in_thread(peer, 1, lambda pr, h, p: pr.send(T.HELLO, b"", h.id, pv.FLAG_REPLY))
            with self.assertRaises(pv.ConnectionClosed):  # the call fails as the connection closes
                c.echo(b"x")
            t.join(WAIT)
            peer.expect_error(0, C.PROTOCOL, "hello frame with the reply flag")
            peer.expect_eof()

    def test_server_closes(self) -> None:
        srv = FakeServer(self)
        with pv.Client(srv.path, timeout=WAIT) as c:
            peer = srv.peer()
            done: List[BaseException] = []

            def call() -> None:
                try:
                    c.echo(b"never answered")
                except BaseException as e:
                    done.append(e)

            t = threading.Thread(target=call)
            t.start()
            peer.recv()
            peer.sock.close()
            t.join(WAIT)
            self.assertEqual(len(done), 1)
            self.assertIsInstance(done[0], pv.ConnectionClosed)
            with self.assertRaises(pv.ConnectionClosed):
                c.ping()

    def test_wrong_reply_type_closes(self) -> None:
        srv = FakeServer(self)
        with pv.Client(srv.path, timeout=WAIT) as c:
            peer = srv.peer()
            t = self.serve_in_thread(peer, 1, lambda pr, h, p: pr.send(T.STATUS, b"{}", h.id, pv.FLAG_REPLY))
            with self.assertRaises(pv.ProtocolError):
                c.echo(b"x")
            t.join(WAIT)
            peer.expect_error(0, C.PROTOCOL, "status reply to echo request")
            peer.expect_eof()

    def test_version_mismatch(self) -> None:
        srv = FakeServer(self, hello=pv.Hello(3, 3, 0, "future"))
        with self.assertRaises(pv.VersionMismatch):
            pv.Client(srv.path, timeout=WAIT)
        peer = srv.peer()
        peer.expect_error(0, C.VERSION, "no common protocol version")
        peer.expect_eof()

    def test_abstract_socket(self) -> None:
        srv = FakeServer(self, path="@pvpy-test-%d-%d" % (os.getpid(), time.monotonic_ns()))
        with pv.Client(srv.path, timeout=WAIT) as c:
            self.assertEqual(c.peer.name, "fake-server")

    @unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/bin/python3"), "needs root to run a server as another uid, and a python3 it may run")
    def test_untrusted_server(self) -> None:
        # A server running as nobody: refused before anything is sent,
        # unless its uid is trusted.
        d = tempfile.mkdtemp(prefix="pvpy")
        os.chmod(d, 0o777)
        path = os.path.join(d, "s")
        code = (
            "import socket,sys\n"
            "l=socket.socket(socket.AF_UNIX); l.bind(sys.argv[1]); l.listen(2); print('up', flush=True)\n"
            "for _ in range(2):\n"
            "    s,_=l.accept(); s.settimeout(20)\n"
            "    b=s.recv(16)\n"
            "    print(len(b), flush=True)\n"
            "    if b: s.sendall(bytes.fromhex('c1500100100000000000000000000000') + b'\\x01\\x00\\x01\\x00\\x00\\x00\\x00\\x00' + b'nobody!!')\n"
            "    s.recv(1)\n"
        )
        p = subprocess.Popen(["/usr/bin/python3", "-c", code, path], user=65534, group=65534, stdout=subprocess.PIPE, env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "")})
        try:
            assert p.stdout is not None
            self.assertEqual(p.stdout.readline(), b"up\n")
            with self.assertRaises(pv.UntrustedPeerError) as cm:
                pv.Client(path, timeout=WAIT)
            self.assertIn("uid 65534", str(cm.exception))
            self.assertEqual(p.stdout.readline(), b"0\n")  # it got nothing
            with pv.Client(path, timeout=WAIT, trust_uids=[65534]) as c:
                self.assertEqual(c.peer.name, "nobody!!")
            self.assertEqual(p.stdout.readline(), b"16\n")
            p.wait(WAIT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
            if os.path.exists(path):
                os.unlink(path)
            os.rmdir(d)


# ---------------------------------------------------------------------------
# Version 3: descriptors with frames, in process, over real socketpairs.


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for(what: str, cond: Any, timeout: float = WAIT) -> None:
    """Poll cond (a bounded wait on a condition, not a sleep to
    synchronise) until it holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.002)


def _all_closed(r: int, timeout: float = WAIT) -> bool:
    """Whether every copy of the write end of the pipe whose read end is
    r has been closed: the read then sees EOF. Closes r."""
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        return bool(ready) and os.read(r, 1) == b""
    finally:
        os.close(r)


class _FdLeakCheck(unittest.TestCase):
    """Counts this process's descriptors before a test and checks, after
    its cleanups, that the count is back (the library's threads may
    close theirs a moment after the connection ends: a bounded wait)."""

    def setUp(self) -> None:
        self.fds_before = _open_fds()
        self.addCleanup(self._check_fds)

    def _check_fds(self) -> None:
        try:
            _wait_for("the descriptor count to return to %d" % self.fds_before, lambda: _open_fds() <= self.fds_before)
        except AssertionError:
            self.fail("descriptors leaked: %d open, %d before: %s" % (_open_fds(), self.fds_before, sorted(os.listdir("/proc/self/fd"))))


class InProcessClient:
    """The client side of a connection run in this process (role
    "client"), its reader in a thread."""

    def __init__(self, sock: socket.socket, **kw: Any) -> None:
        log = logging.getLogger("pairvisor.test.inprocess")
        self.conn = pv._Conn(sock, name="client", role="client", logger=log, **kw)
        self.conn.hello(time.monotonic() + WAIT)
        self.thread = threading.Thread(target=self.conn.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.conn._abort("closed by the test")
        self.thread.join(WAIT)


def _fd_handler(p: bytes, ctx: pv.RequestContext) -> bytes:
    """Reads what comes through the request's descriptors (pipes), and
    answers with a pipe of its own when asked to."""
    cmd, _, arg = p.partition(b" ")
    if cmd == b"read":
        out = []
        for fd in ctx.files:  # left to the context, which closes them
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            out.append(os.read(fd, 100) + (b"+cloexec" if flags & fcntl.FD_CLOEXEC else b"-inheritable"))
        return b",".join(out)
    if cmd == b"take":
        fds = ctx.take_files()  # ours now
        for fd in fds:
            os.close(fd)
        return b"took %d" % len(fds)
    if cmd == b"attach":
        r, w = os.pipe()
        os.write(w, arg)
        os.close(w)
        ctx.attach_files(r)  # a duplicate goes; ours is ours to close
        os.close(r)
        return b"attached"
    if cmd == b"attach17":
        r, w = os.pipe()
        try:
            ctx.attach_files(*([r] * 17))
        except pv.NoFilesError as e:
            return str(e).encode()
        finally:
            os.close(r)
            os.close(w)
        return b"attached 17?"
    if cmd == b"fail":
        r, w = os.pipe()
        ctx.attach_files(w)
        os.close(w)
        os.close(r)
        raise pv.RemoteError(C.BAD_REQUEST, "failed with a file attached")
    return b"no files"


import fcntl  # noqa: E402


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe holding data (its write end closed)."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


class TestFiles(_FdLeakCheck):
    def test_round_trip(self) -> None:
        w = InProcessWorker(handler=_fd_handler, handler_ctx=True, max_files=16)
        c = InProcessClient(w.peer_sock, max_files=16)
        _wait_for("the worker's side of the hellos", lambda: w.conn.version)
        self.assertEqual((c.conn.version, w.conn.version), (3, 3))
        rs = [_pipe_with(b"file%d" % i) for i in range(16)]
        reply, got = c.conn.call_files(T.MESSAGE, b"read", rs, WAIT)
        self.assertEqual(reply, b",".join(b"file%d+cloexec" % i for i in range(16)))
        self.assertEqual(got, [])
        # The sender keeps its own: still open, and the receiver's copies
        # were closed by the context (checked by the fd count at the end).
        for r in rs:
            os.fstat(r)
            os.close(r)
        self.assertEqual(c.conn.call_files(T.MESSAGE, b"take", [_r := _pipe_with(b"x")], WAIT), (b"took 1", []))
        os.close(_r)
        reply, got = c.conn.call_files(T.MESSAGE, b"attach from the handler", [], WAIT)
        self.assertEqual((reply, len(got)), (b"attached", 1))
        self.assertTrue(fcntl.fcntl(got[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        self.assertEqual(os.read(got[0], 100), b"from the handler")
        os.close(got[0])
        # call() closes a reply's descriptors; an ERROR carries none.
        self.assertEqual(c.conn.call(T.MESSAGE, b"attach dropped", WAIT), b"attached")
        with self.assertRaises(pv.RemoteError) as cm:
            c.conn.call_files(T.MESSAGE, b"fail", [], WAIT)
        self.assertEqual(cm.exception.code, C.BAD_REQUEST)
        self.assertIn(b"at most 16", c.conn.call(T.MESSAGE, b"attach17", WAIT))
        with self.assertRaises(pv.NoFilesError):
            c.conn.call_files(T.ECHO, b"", [0] * 17, WAIT)
        # Echo and ping with descriptors: answered, descriptors closed.
        r, wfd = os.pipe()
        self.assertEqual(c.conn.call_files(T.ECHO, b"e", [wfd], WAIT), (b"e", []))
        self.assertEqual(c.conn.call_files(T.PING, b"p", [wfd, wfd], WAIT), (b"p", []))
        os.close(wfd)
        self.assertTrue(_all_closed(r), "the worker kept a copy of a pipe sent with an echo or ping")
        c.close()
        w.join(self)

    def test_version_2_peer_gets_no_files(self) -> None:
        w = InProcessWorker(handler=_fd_handler, handler_ctx=True, max_files=16)
        c = InProcessClient(w.peer_sock, max_files=0)  # offers 2 at most: it cannot take descriptors
        _wait_for("the worker's side of the hellos", lambda: w.conn.version)
        self.assertEqual((c.conn.version, w.conn.version), (2, 2))
        with self.assertRaises(pv.NoFilesError):
            c.conn.call_files(T.ECHO, b"", [0], WAIT)
        self.assertIn(b"version 3", c.conn.call(T.MESSAGE, b"attach17", WAIT))
        c.close()
        w.join(self)

    def _raw_v3(self, **kw: Any) -> Tuple[InProcessWorker, Peer]:
        w = InProcessWorker(**kw)
        peer = Peer(w.peer_sock)
        h, p = peer.recv()
        self.assertEqual((h.type, pv.parse_hello(p).max_version), (T.HELLO, 3 if kw.get("max_files") else 2))
        peer.hello(hi=3)
        return w, peer

    def test_refused_frames_close_their_files(self) -> None:
        # A handler that takes no ctx: a message with files is refused;
        # pings, echoes, refused requests and errors close what came.
        w, peer = self._raw_v3(handler=lambda p: p.upper(), max_files=16)
        r, wfd = os.pipe()
        frames = [
            (pv.encode_frame(T.PING, b"p", id=1, flags=pv.FLAG_FILES), lambda: peer.recv() == (pv.Header(T.PING, 1, 1, 1), b"p")),
            (pv.encode_frame(T.ECHO, b"e", id=2, flags=pv.FLAG_FILES), lambda: peer.recv() == (pv.Header(T.ECHO, 1, 1, 2), b"e")),
            (pv.encode_frame(T.MESSAGE, b"m", id=3, flags=pv.FLAG_FILES), lambda: bool(peer.expect_error(3, C.UNSUPPORTED, "takes no files"))),
            (pv.encode_frame(T.STATUS, id=4, flags=pv.FLAG_FILES), lambda: bool(peer.expect_error(4, C.UNSUPPORTED))),
            (pv.encode_frame(T.ERROR, pv.encode_error(1, "x"), id=77, flags=pv.FLAG_FILES | pv.FLAG_REPLY), lambda: True),
            (pv.encode_frame(T.ECHO, b"r", id=78, flags=pv.FLAG_FILES | pv.FLAG_REPLY), lambda: True),
        ]
        for data, check in frames:
            socket.send_fds(peer.sock, [data], [wfd, wfd, wfd])
            self.assertTrue(check(), data[:16].hex())
        peer.expect_none_before_pong()
        self.assertEqual(peer.call(T.MESSAGE, b"still served", 9)[1], b"STILL SERVED")
        os.close(wfd)
        self.assertTrue(_all_closed(r), "the worker kept a descriptor of a refused frame")
        w.peer_sock.shutdown(socket.SHUT_WR)
        peer.expect_eof()
        w.join(self)

    def test_violations_close_files(self) -> None:
        x = lambda t, i, f: pv.encode_frame(t, b"v", id=i, flags=f)  # noqa: E731
        cases = [
            # name, max_files, [(bytes, with descriptors)], code, text
            ("too many (MSG_CTRUNC)", 2, [(x(T.ECHO, 1, pv.FLAG_FILES), 3)], C.TOO_LARGE, "too many descriptors"),
            ("too many (fit the buffer's padding)", 1, [(x(T.ECHO, 1, pv.FLAG_FILES), 2)], C.TOO_LARGE, "too many descriptors"),
            ("files flag, none came", 16, [(x(T.ECHO, 1, pv.FLAG_FILES), 0)], C.PROTOCOL, "missing descriptors"),
            ("descriptors without the flag", 16, [(x(T.ECHO, 1, 0), 1), (x(T.ECHO, 2, 0), 0)], C.PROTOCOL, "unexpected descriptors"),
            ("on a cancel", 16, [(pv.encode_frame(T.CANCEL, id=1, flags=pv.FLAG_FILES), 1)], C.PROTOCOL, "cancel frame with the files flag"),
        ]
        for name, max_files, sends, code, text in cases:
            with self.subTest(name):
                w, peer = self._raw_v3(max_files=max_files)
                r, wfd = os.pipe()
                for data, n in sends:
                    if n:
                        socket.send_fds(peer.sock, [data], [wfd] * n)
                    else:
                        peer.sock.sendall(data)
                    if len(sends) > 1 and data is sends[0][0]:
                        self.assertEqual(peer.recv()[0].id, 1)  # the first echo is answered
                peer.expect_error(0, code, text)
                peer.expect_eof()
                os.close(wfd)
                self.assertTrue(_all_closed(r), "a descriptor outlived the connection")
                w.join(self)

    def test_files_below_version_3(self) -> None:
        w = InProcessWorker(max_files=16)
        peer = Peer(w.peer_sock)
        peer.recv()
        peer.hello(hi=2)
        r, wfd = os.pipe()
        socket.send_fds(peer.sock, [pv.encode_frame(T.ECHO, b"v", id=1, flags=pv.FLAG_FILES)], [wfd])
        peer.expect_error(0, C.PROTOCOL, "(files) below version 3")
        peer.expect_eof()
        os.close(wfd)
        self.assertTrue(_all_closed(r))
        w.join(self)


# ---------------------------------------------------------------------------
# Version 3: clients handed over with CLIENT requests, in process.


def _client_hello(name: str = "client", hi: int = 2) -> bytes:
    return pv.encode_hello(pv.Hello(1, hi, os.getpid(), name))


class Handoff:
    """A worker's channel (in process) with the test as its supervisor at
    version 3, and socketpairs as clients of the supervisor's socket."""

    def __init__(self, tc: unittest.TestCase, **kw: Any) -> None:
        self.tc = tc
        self.release = threading.Event()

        def handler(p: bytes, ctx: pv.RequestContext) -> bytes:
            if p == b"block":
                self.release.wait(WAIT)
                return b"unblocked"
            if p == b"pid":
                return str(os.getpid()).encode()
            return p.upper()

        kw.setdefault("max_files", 16)
        self.w = InProcessWorker(handler=handler, handler_ctx=True, shutdown_linger=0.05, **kw)
        self.sup = Peer(self.w.peer_sock)
        h, p = self.sup.recv()
        tc.assertEqual(pv.parse_hello(p).max_version, 3)
        self.sup.hello(hi=3)
        self.next = 100

    def hand(self, state: pv.ClientState, nfds: int = 1, sock: Optional[socket.socket] = None) -> Tuple[int, Optional[socket.socket], socket.socket]:
        """Send a CLIENT request: (its id, the client's end, our copy of
        the server's end, as the supervisor keeps one)."""
        cli = None
        if sock is None:
            cli, sock = socket.socketpair()
        self.next += 1
        fds = [sock.fileno()] * nfds
        data = pv.encode_frame(T.CLIENT, pv.encode_client(state), id=self.next, flags=pv.FLAG_FILES if nfds else 0)
        if nfds:
            socket.send_fds(self.sup.sock, [data], fds)
        else:
            self.sup.sock.sendall(data)
        return self.next, cli, sock

    def reply(self, id: int) -> Tuple[pv.Header, bytes]:
        h, p = self.sup.recv()
        self.tc.assertEqual((h.id, h.is_reply), (id, True), (h, p[:60]))
        return h, p

    def close(self) -> None:
        self.release.set()
        self.w.peer_sock.shutdown(socket.SHUT_WR)
        self.w.join(self.tc)


def _established(flags: int = pv.CLIENT_CONTROL, buffered: bytes = b"", idle_ms: int = 0, version: int = 2) -> pv.ClientState:
    return pv.ClientState(pv.CLIENT_ESTABLISHED | flags, version, os.getuid(), os.getgid(), os.getpid(), idle_ms, 7, _client_hello(), buffered)


class TestClientState(unittest.TestCase):
    def test_codec(self) -> None:
        st = _established(buffered=b"\xc1P" * 10)
        self.assertEqual(pv.parse_client(pv.encode_client(st)), st)
        fresh = pv.ClientState(0, 0, 1, 2, 3, 4, 0, b"", b"\xc1P\x01")
        self.assertEqual(pv.parse_client(pv.encode_client(fresh)), fresh)
        bad = [
            (b"\x00" * 33, "33 bytes"),
            (pv.encode_client(fresh._replace(flags=8)), "flags"),
            (pv.encode_client(fresh)[:2] + b"\x01\x00" + pv.encode_client(fresh)[4:], "reserved"),
            (pv.encode_client(fresh._replace(version=2)), "not established"),
            (pv.encode_client(fresh._replace(flags=pv.CLIENT_HERE)), "not established"),
            (pv.encode_client(st._replace(version=4)), "version 4"),
            (pv.encode_client(st._replace(hello=b"\x00" * 8)), "the client's hello"),
            (pv.encode_client(fresh._replace(buffered=b"x" * (16 << 10 | 1))), "at most 16384"),
            (pv.encode_client(fresh)[:-1], "follow"),
            (pv.encode_client(fresh) + b"x", "follow"),
        ]
        for p, text in bad:
            with self.subTest(text):
                with self.assertRaises(pv.ProtocolError) as cm:
                    pv.parse_client(p)
                self.assertIn(text, cm.exception.detail)
        rng = random.Random(3)
        good = pv.encode_client(st)
        for _ in range(2000):  # mutations never crash the decoder
            b = bytearray(good[: rng.randrange(len(good) + 1)])
            for _ in range(rng.randrange(4)):
                if b:
                    b[rng.randrange(len(b))] = rng.getrandbits(8)
            try:
                pv.parse_client(bytes(b))
            except pv.ProtocolError:
                pass


class TestHandoff(_FdLeakCheck):
    def test_established_served_then_handed_back_at_status(self) -> None:
        hf = Handoff(self)
        first = pv.encode_frame(T.ECHO, b"read by the supervisor", id=1)
        id, cli, srv = hf.hand(_established(buffered=first[:20]))
        assert cli is not None
        peer = Peer(cli)
        cli.sendall(first[20:])
        self.assertEqual(peer.recv(), (pv.Header(T.ECHO, 1, 22, 1), b"read by the supervisor"))
        self.assertEqual(peer.call(T.PING, b"p", 2)[1], b"p")
        big = os.urandom(1 << 20)
        self.assertEqual(peer.call(T.ECHO, big, 3)[1], big)
        self.assertEqual(peer.call(T.MESSAGE, b"upper", 4)[1], b"UPPER")
        self.assertEqual(peer.call(T.MESSAGE, b"pid", 5)[1], str(os.getpid()).encode())
        peer.send(T.SHUTDOWN, b"", 6)
        peer.expect_error(6, C.UNSUPPORTED, "shutdown is not served here")
        peer.send(T.MESSAGE, b"after shutdown", 7)
        peer.expect_error(7, C.SHUTTING_DOWN)
        # STATUS: the client goes back, the STATUS and what follows it
        # unread, in the state.
        status = pv.encode_frame(T.STATUS, id=8) + pv.encode_frame(T.PING, id=9)
        id2, cli2, srv2 = hf.hand(_established())
        assert cli2 is not None
        cli2.sendall(pv.encode_frame(T.ECHO, b"x", id=1) + status)
        h, p = hf.reply(id2)
        self.assertEqual(h.type, T.CLIENT)
        st = pv.parse_client(p)
        self.assertEqual(st, _established(pv.CLIENT_CONTROL | pv.CLIENT_HERE, status)._replace(next_id=7), st)
        self.assertEqual(Peer(cli2).recv(), (pv.Header(T.ECHO, 1, 1, 1), b"x"))
        # Not shut down: the supervisor's copy reads what comes next.
        cli2.sendall(b"more")
        srv2.settimeout(WAIT)
        self.assertEqual(srv2.recv(10), b"more")
        cli2.close()
        srv2.close()
        # The first client closes: an empty reply; the worker shut the
        # connection down (our copy of it sees EOF too).
        cli.close()
        h, p = hf.reply(id)
        self.assertEqual((h.type, p), (T.CLIENT, b""))
        srv.settimeout(WAIT)
        self.assertEqual(srv.recv(10), b"")
        srv.close()
        hf.close()

    def test_not_established_hello(self) -> None:
        hf = Handoff(self)
        hello = pv.encode_frame(T.HELLO, _client_hello(hi=3))
        fresh = pv.ClientState(0, 0, os.getuid(), os.getgid(), os.getpid(), 0, 0, b"", hello[:5])
        id, cli, srv = hf.hand(fresh)
        assert cli is not None
        srv.close()
        peer = Peer(cli)
        cli.sendall(hello[5:])
        h, p = peer.recv()
        self.assertEqual((h.type, pv.parse_hello(p).max_version, pv.parse_hello(p).name), (T.HELLO, 2, "worker.9"))
        self.assertEqual(peer.call(T.ECHO, b"hi", 1)[1], b"hi")
        cli.shutdown(socket.SHUT_WR)
        peer.expect_eof()
        self.assertEqual(hf.reply(id), (pv.Header(T.CLIENT, 1, 0, id), b""))
        cli.close()
        # A first header that is no hello: "hello expected", in place of ours.
        for first, code, text in [
            (pv.encode_header(T.PING, 0, 0, 1), C.PROTOCOL, "hello expected: first frame is ping"),
            (pv.encode_header(T.HELLO, 0, 300, 0), C.TOO_LARGE, "hello expected: hello payload of 300 bytes"),
            (b"\xc1P", C.PROTOCOL, "hello expected: no complete hello header"),
        ]:
            with self.subTest(text):
                id, cli, srv = hf.hand(fresh._replace(buffered=first))
                assert cli is not None
                srv.close()
                peer = Peer(cli)
                peer.expect_error(0, code, text)
                peer.expect_eof()
                self.assertEqual(hf.reply(id), (pv.Header(T.CLIENT, 1, 0, id), b""))
                cli.close()
        hf.close()

    def test_rights(self) -> None:
        hf = Handoff(self)
        id, cli, srv = hf.hand(_established(flags=0))
        assert cli is not None
        srv.close()
        peer = Peer(cli)
        self.assertEqual(peer.call(T.ECHO, b"e", 1)[1], b"e")
        peer.send(T.MESSAGE, b"m", 2)
        peer.expect_error(2, C.DENIED, "message requests are for the server's own uid")
        peer.send(T.SHUTDOWN, b"", 3)
        peer.expect_error(3, C.DENIED, "shutdown requests")
        cli.close()
        self.assertEqual(hf.reply(id)[1], b"")
        hf.close()

    def test_shutdown_hands_clients_back_first(self) -> None:
        hf = Handoff(self)
        a, cli_a, srv_a = hf.hand(_established())
        b, cli_b, srv_b = hf.hand(_established(version=3))
        assert cli_a is not None and cli_b is not None
        pa, pb = Peer(cli_a), Peer(cli_b)
        self.assertEqual(pa.call(T.ECHO, b"a", 1)[1], b"a")
        self.assertEqual(pb.call(T.ECHO, b"b", 1)[1], b"b")
        pa.send(T.MESSAGE, b"block", 2)  # with the handler when the shutdown comes
        _wait_for("the blocked message with the handler", lambda: hf.w.conn._clients is not None and any(c._handlers for c in hf.w.conn._clients._conns))
        hf.sup.send(T.SHUTDOWN, b"", 50)
        h, p = hf.reply(b)  # the idle client goes back at once, without HERE
        self.assertEqual(pv.parse_client(p), _established(version=3)._replace(next_id=7))
        hf.sup.send(T.CLIENT, pv.encode_client(_established()), id=51)  # none taken any more
        hf.sup.expect_error(51, C.SHUTTING_DOWN)
        hf.release.set()
        self.assertEqual(pa.recv(), (pv.Header(T.MESSAGE, 1, 9, 2), b"unblocked"))
        h, p = hf.reply(a)
        self.assertEqual(pv.parse_client(p).flags, pv.CLIENT_ESTABLISHED | pv.CLIENT_CONTROL)
        self.assertEqual(hf.sup.recv(), (pv.Header(T.SHUTDOWN, 1, 0, 50), b""))
        hf.w.peer_sock.shutdown(socket.SHUT_WR)
        hf.w.join(self)
        self.assertTrue(hf.w.conn.shutdown_acked)
        for s in (cli_a, cli_b, srv_a, srv_b):
            s.close()

    def test_stuck_client_is_closed_at_shutdown(self) -> None:
        # A client in the middle of a frame when the shutdown comes is not
        # between frames within 1 s: its connection is closed instead.
        hf = Handoff(self)
        id, cli, srv = hf.hand(_established())
        assert cli is not None
        srv.close()
        cli.sendall(pv.encode_header(T.ECHO, 0, 100, 1) + b"half")
        clients = hf.w.conn._clients
        assert clients is not None
        _wait_for("the worker reading the echo's payload", lambda: any(c._reader._stream >= 20 for c in list(clients._conns)))
        hf.sup.send(T.SHUTDOWN, b"", 50)
        self.assertEqual(hf.reply(id), (pv.Header(T.CLIENT, 1, 0, id), b""))
        self.assertEqual(hf.sup.recv()[0].type, T.SHUTDOWN)
        Peer(cli).expect_eof()
        cli.close()
        hf.close()

    def test_idle_and_cancel(self) -> None:
        hf = Handoff(self)
        id, cli, srv = hf.hand(_established(idle_ms=50))
        assert cli is not None
        srv.close()
        self.assertEqual(hf.reply(id)[1], b"")
        Peer(cli).expect_eof()
        cli.close()
        id, cli, srv = hf.hand(_established())
        assert cli is not None
        srv.close()
        self.assertEqual(Peer(cli).call(T.PING, b"", 1)[1], b"")
        hf.sup.send(T.CANCEL, b"", id)
        hf.sup.expect_error(id, C.INTERNAL, "context canceled")
        Peer(cli).expect_eof()
        cli.close()
        hf.close()

    def test_refusals(self) -> None:
        hf = Handoff(self, max_clients=1)
        r, wfd = os.pipe()
        for name, state, fds, code, text in [
            ("no descriptor", pv.encode_client(_established()), [], C.BAD_REQUEST, "carries one descriptor, this one 0"),
            ("two descriptors", pv.encode_client(_established()), [wfd, wfd], C.BAD_REQUEST, "this one 2"),
            ("malformed", b"\x00" * 10, [wfd], C.BAD_REQUEST, "client payload: 10 bytes"),
            ("not a socket", pv.encode_client(_established()), [wfd], C.BAD_REQUEST, "not a socket"),
        ]:
            with self.subTest(name):
                hf.next += 1
                data = pv.encode_frame(T.CLIENT, state, id=hf.next, flags=pv.FLAG_FILES if fds else 0)
                socket.send_fds(hf.sup.sock, [data], fds) if fds else hf.sup.sock.sendall(data)
                hf.sup.expect_error(hf.next, code, text)
        os.close(wfd)
        self.assertTrue(_all_closed(r), "a refused CLIENT's descriptor was kept")
        id, cli, srv = hf.hand(_established())
        id2, cli2, srv2 = hf.hand(_established())  # max_clients=1: no room
        hf.sup.expect_error(id2, C.UNAVAILABLE, "serving 1 clients already")
        assert cli is not None and cli2 is not None
        cli2.sendall(b"x")  # the worker never touched the refused connection
        srv2.settimeout(WAIT)
        self.assertEqual(srv2.recv(1), b"x")
        for s in (cli, cli2, srv, srv2):
            s.close()
        self.assertEqual(hf.reply(id)[1], b"")
        hf.close()
        hf = Handoff(self, max_clients=-1)
        id, cli, srv = hf.hand(_established())
        hf.sup.expect_error(id, C.UNSUPPORTED, "takes no clients")
        assert cli is not None
        cli.close()
        srv.close()
        hf.close()



if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------------------
# Write stalls are judged on progress: a peer that reads slowly keeps its
# connection, one that stops reading is cut off.

SLOW_CHUNK = 16 << 10  # a slow reader takes this much ...
SLOW_PACE = 0.02  # ... every this many seconds (its pacing is the point of the tests)
BIG = 1 << 20  # a reply that takes a slow reader 64 reads, 1.3 s, over four write timeouts
STALL = 0.3  # the write timeout of these tests


def _read_slowly(sock: socket.socket, n: int) -> Tuple[bytes, int]:
    """Read n bytes SLOW_CHUNK at a time, pausing SLOW_PACE after each
    read (the pace of a reader on a loaded machine); stop early at EOF.
    Return what was read and the number of reads."""
    sock.settimeout(WAIT)
    got = bytearray()
    reads = 0
    while len(got) < n:
        try:
            b = sock.recv(min(SLOW_CHUNK, n - len(got)))
        except ConnectionResetError:
            b = b""
        if not b:
            break
        got += b
        reads += 1
        time.sleep(SLOW_PACE)  # the reader's pacing, not a synchronisation
    return bytes(got), reads


def _read_to_eof(sock: socket.socket) -> int:
    """Read until EOF (within WAIT seconds); return the bytes read."""
    sock.settimeout(WAIT)
    n = 0
    while True:
        try:
            b = sock.recv(1 << 20)
        except ConnectionResetError:
            return n
        if not b:
            return n
        n += len(b)


def _big_reply(p: bytes, ctx: pv.RequestContext) -> bytes:
    return p.upper() if p != b"big" else b"R" * BIG


class TestWriteStall(_FdLeakCheck):
    def _channel(self, **kw: Any) -> Tuple[InProcessWorker, Peer]:
        w = InProcessWorker(handler=_big_reply, handler_ctx=True, write_timeout=STALL, **kw)
        peer = Peer(w.peer_sock)
        h, _ = peer.recv()
        self.assertEqual(h.type, T.HELLO)
        peer.hello()
        self.addCleanup(w.peer_sock.close)
        return w, peer

    def test_slow_supervisor_gets_a_large_reply_whole(self) -> None:
        # The supervisor's end reads the 1 MiB reply 16 KiB every 20 ms:
        # over 1 s, while the write timeout is 0.3 s. Behind the reply a
        # ping waits for room (max_buffered is far below the reply), and
        # the budget's wait is judged on progress too.
        w, peer = self._channel(max_buffered=64 << 10)
        peer.send(T.MESSAGE, b"big", 1)
        _wait_for("the reply held", lambda: w.conn._held.held >= BIG)
        peer.send(T.PING, b"behind", 2)  # queued behind the reply, once there is room
        frame, reads = _read_slowly(peer.sock, HEADER + BIG)
        self.assertEqual(len(frame), HEADER + BIG, "cut off after %d bytes: %s" % (len(frame), w.conn._reason))
        self.assertGreaterEqual(reads, BIG // SLOW_CHUNK)  # the reader was slow throughout
        self.assertEqual(pv.parse_header(frame[:HEADER]), pv.Header(T.MESSAGE, pv.FLAG_REPLY, BIG, 1))
        self.assertTrue(frame[HEADER:] == b"R" * BIG)
        self.assertEqual(peer.recv(), (pv.Header(T.PING, pv.FLAG_REPLY, 6, 2), b"behind"))
        self.assertEqual(peer.call(T.ECHO, b"still open", 3)[1], b"still open")
        self.assertIsNone(w.conn._reason)
        w.peer_sock.shutdown(socket.SHUT_WR)
        w.join(self)
        self.assertNotIn("stalled", w.reason or "")

    def test_supervisor_that_stops_reading_is_cut_off(self) -> None:
        w, peer = self._channel()
        peer.send(T.MESSAGE, b"big", 1)
        w.thread.join(10.0)  # the outer bound; the verdict is due within 2 x 0.3 s
        self.assertFalse(w.thread.is_alive(), "a supervisor that reads nothing kept its connection")
        self.assertIn("stalled", w.reason or "")
        self.assertLess(_read_to_eof(peer.sock), HEADER + BIG)  # the reply was cut, not finished
        w.join(self)

    def _client(self) -> Tuple[Handoff, int, socket.socket, socket.socket]:
        hf = Handoff(self, write_timeout=STALL)
        id, cli, srv = hf.hand(_established())
        assert cli is not None
        srv.close()  # the supervisor's copy: not needed here
        return hf, id, cli, srv

    def test_slow_client_gets_a_large_reply_whole(self) -> None:
        hf, id, cli, _ = self._client()
        cli.sendall(pv.encode_frame(T.MESSAGE, b"x" * BIG, id=1))
        frame, reads = _read_slowly(cli, HEADER + BIG)
        self.assertEqual(len(frame), HEADER + BIG, "cut off after %d bytes" % len(frame))
        self.assertGreaterEqual(reads, BIG // SLOW_CHUNK)
        self.assertEqual(pv.parse_header(frame[:HEADER]), pv.Header(T.MESSAGE, pv.FLAG_REPLY, BIG, 1))
        self.assertTrue(frame[HEADER:] == b"X" * BIG)
        self.assertEqual(Peer(cli).call(T.PING, b"p", 2)[1], b"p")
        cli.close()
        self.assertEqual(hf.reply(id), (pv.Header(T.CLIENT, 1, 0, id), b""))  # done, not stalled
        hf.close()

    def test_client_that_stops_reading_is_cut_off(self) -> None:
        hf, id, cli, _ = self._client()
        cli.sendall(pv.encode_frame(T.MESSAGE, b"x" * BIG, id=1))
        # The outer bound is Peer's WAIT; the verdict is due within 2 x 0.3 s.
        self.assertEqual(hf.reply(id), (pv.Header(T.CLIENT, 1, 0, id), b""))
        self.assertLess(_read_to_eof(cli), HEADER + BIG)
        cli.close()
        hf.close()

    def test_slow_client_is_handed_back_after_its_reply_at_shutdown(self) -> None:
        # The worker stops while a client reads a 1 MiB reply slowly: the
        # hand-back waits (1 s at a time) while the client takes bytes,
        # and the client goes back with the reply whole.
        hf, id, cli, _ = self._client()
        cli.sendall(pv.encode_frame(T.MESSAGE, b"x" * BIG, id=1))
        clients = hf.w.conn._clients
        assert clients is not None
        _wait_for("the reply going out", lambda: any(c._writer.sent > HEADER for c in list(clients._conns)))
        hf.sup.send(T.SHUTDOWN, b"", 50)
        frame, reads = _read_slowly(cli, HEADER + BIG)
        self.assertEqual(len(frame), HEADER + BIG, "cut off after %d bytes" % len(frame))
        self.assertGreaterEqual(reads, BIG // SLOW_CHUNK)
        h, p = hf.reply(id)
        self.assertEqual(pv.parse_client(p).flags, pv.CLIENT_ESTABLISHED | pv.CLIENT_CONTROL)  # handed back, not closed
        self.assertEqual(hf.sup.recv(), (pv.Header(T.SHUTDOWN, 1, 0, 50), b""))
        cli.close()
        hf.close()


HEADER = pv.HEADER_SIZE


class TestSocketTimeouts(unittest.TestCase):
    """A Conn clears the socket's send and receive timeouts, which every
    copy of the descriptor shares: a handed-over client's socket may come
    with the 100 ms read timeout a Go worker's detachable Conn set."""

    def test_conn_clears_timeouts(self) -> None:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        tick = struct.pack("@ll", 0, 100000)
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            theirs.setsockopt(socket.SOL_SOCKET, opt, tick)
        copy = socket.socket(fileno=os.dup(theirs.fileno()))  # another holder's copy
        self.addCleanup(copy.close)
        log = logging.getLogger("pairvisor.test.timeouts")
        log.propagate = False
        log.addHandler(logging.NullHandler())
        conn = pv._Conn(theirs, name="worker.9", role="worker", handler=lambda p: p, logger=log)
        self.addCleanup(theirs.close)
        del conn
        size = struct.calcsize("@ll")
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.assertEqual(struct.unpack("@ll", copy.getsockopt(socket.SOL_SOCKET, opt, size)), (0, 0))
