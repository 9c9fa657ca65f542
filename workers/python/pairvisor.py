"""pairvisor: workers and clients for pairvisor, in Python.

One file, standard library only, Python 3.9 or later, Linux. Copy it next
to your program. It speaks versions 1 to 3 of the pairvisor wire protocol
(docs/PROTOCOL.md in the pairvisor repository; version 2 adds CANCEL,
version 3 file descriptors passed with frames and the CLIENT request that
hands a socket path's client to a worker) and implements its process
contract, so that `supervisor run -- python3 my_worker.py` supervises a
Python program as it does a Go one.

Worker side::

    import pairvisor

    def handle(payload: bytes, ctx: pairvisor.RequestContext) -> bytes:
        if ctx.cancelled.is_set():   # the caller gave up (CANCEL, version 2)
            raise pairvisor.Cancelled()
        return payload.upper()

    if __name__ == "__main__":
        pairvisor.serve(handle)      # returns after a SHUTDOWN (exit 0);
                                     # raises ChannelClosed otherwise (exit 1)

Client side (a supervisor's socket path)::

    with pairvisor.Client("/run/pv.sock") as c:
        c.ping()
        assert c.echo(b"abc") == b"abc"
        print(c.status()["workers"])

How a connection works (both sides share it, class ``_Conn``):

* The **reader** reads frames one at a time: in the thread that called
  :func:`serve` for a worker, in a daemon thread for a :class:`Client`.
  It answers PING and ECHO itself, hands MESSAGE requests to a bounded
  pool of handler threads, refuses what it does not serve, sets the
  ``cancelled`` event of a handler whose request the peer cancels, and
  routes replies to the calls waiting for them (a reply nobody waits for
  is read and dropped). It never writes to the socket.
* The **writer** thread is the only one that writes. Every frame (our
  hello, pongs, echoes, handler replies, errors, our requests) is queued
  to it and written whole, in order, with non-blocking ``sendmsg`` calls.
  Because the reader never waits for a write, a peer that sends large
  requests and only reads our replies once it has written them cannot
  deadlock against us.
* **Bounds.** What the connection holds on the peer's behalf (request
  payloads given to handlers until their reply is written, and every reply
  queued) is counted against ``max_buffered`` bytes; when the bound is
  reached the reader stops reading, which pushes back on the peer. At
  most ``max_concurrent`` MESSAGE requests run at once; more are refused
  with ``UNAVAILABLE``. Our own requests (``Client.call``) are bounded
  likewise, and their callers wait for room.
* **Stalls are judged on progress.** If the peer takes *no byte* of what
  we write for ``write_timeout`` seconds it is not reading its replies
  and the connection is closed (noticed within twice that), as the Go
  implementation does (``ipc.ConnConfig.WriteTimeout``). A peer that
  takes any byte within ``write_timeout`` keeps its connection, however
  large the reply and however long it has been queued: a client or
  supervisor on a loaded machine reading a megabyte a few kilobytes at a
  time is slow, not stalled. This holds for the channel to the
  supervisor and for handed-over clients alike.
* **Ownership.** The reader owns the socket: it closes it once, after the
  writer thread has ended, when the stream ends (EOF, a protocol
  violation, or a close requested by another thread, which shuts the
  socket down to wake it). Handler threads are daemon threads; a handler
  still running when the connection closes has its ``cancelled`` event
  set and its reply dropped, and cannot keep the process from exiting.
* **Violations.** A frame that breaks the protocol is answered with an
  ERROR with id 0 (code 8, or 5 for a length over a limit), never the
  offending frame's id, and the connection closes.
* **Descriptors** (version 3). A connection that offers version 3 reads
  with ``recvmsg`` and ``MSG_CMSG_CLOEXEC`` from its first read on, notes
  the stream offsets each read with descriptors covered, and gives them
  to the frame with the ``FILES`` flag whose header begins there. Every
  received descriptor has one owner: the handler that takes it
  (:meth:`RequestContext.take_files`), the client thread of a CLIENT
  request, the caller of ``_Conn.call_files``; the connection closes all
  others (pings, echoes, refused requests, errors, violations, the end).
  Descriptors we send are our own duplicates, closed once written or
  dropped.
* **Handed-over clients** (version 3). A CLIENT request on the channel
  starts a thread (at most ``max_clients``) that serves that client's
  connection with a connection of its own, until the client goes away
  (empty reply) or is handed back (its state), in front of a STATUS or
  RELOAD and when a SHUTDOWN arrives on the channel.
"""

from __future__ import annotations

import collections
import datetime
import enum
import errno
import array
import fcntl
import inspect
import json
import logging
import os
import select
import socket
import stat
import struct
import sys
import termios
import threading
import time
import traceback
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    Union,
)

__all__ = [
    "PROTOCOL_VERSION",
    "MIN_PROTOCOL_VERSION",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_PING_PAYLOAD",
    "MAX_HELLO_PAYLOAD",
    "MAX_QUEUED_CANCELS",
    "FLAG_REPLY",
    "FLAG_FILES",
    "MAX_FILES",
    "CLIENT_CONTROL",
    "CLIENT_ESTABLISHED",
    "CLIENT_HERE",
    "MAX_CLIENT_BUFFERED",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_WRITE_TIMEOUT",
    "MessageType",
    "ErrorCode",
    "Header",
    "Hello",
    "ClientState",
    "PairvisorError",
    "ProtocolError",
    "TruncatedFrame",
    "FrameTooLarge",
    "VersionMismatch",
    "RemoteError",
    "Cancelled",
    "ConnectionClosed",
    "ChannelClosed",
    "NotWorkerError",
    "UntrustedPeerError",
    "NoFilesError",
    "encode_header",
    "parse_header",
    "encode_frame",
    "FrameDecoder",
    "encode_hello",
    "parse_hello",
    "negotiate",
    "encode_error",
    "parse_error",
    "encode_client",
    "parse_client",
    "TRACE",
    "HclogFormatter",
    "get_logger",
    "RequestContext",
    "serve",
    "Client",
]

# ---------------------------------------------------------------------------
# Wire format (docs/PROTOCOL.md, "Frame layout").

PROTOCOL_VERSION = 3
"""The highest protocol version this module speaks (3: version 2, which is
version 1 and CANCEL, plus file descriptors and CLIENT). ``serve`` and
``Client`` take ``max_version`` to offer less; version 3 is offered only
by a connection that takes descriptors (``max_files`` > 0)."""
MIN_PROTOCOL_VERSION = 1
"""The lowest protocol version this module speaks."""

HEADER_SIZE = 16
"""Size of every frame header in bytes."""
MAGIC0 = 0xC1
MAGIC1 = 0x50  # 'P'
MAX_PAYLOAD = 16 << 20
"""The protocol's hard limit on a frame's payload (16 MiB)."""
MAX_PING_PAYLOAD = 64
"""A ping carries at most this many opaque bytes; the pong returns them."""
MAX_NAME_LEN = 256
MAX_HELLO_PAYLOAD = 8 + MAX_NAME_LEN
"""A hello payload is 8 fixed bytes and a name of at most 256 bytes."""
MAX_QUEUED_CANCELS = 1024
"""CANCEL frames a connection queues at most; more are dropped (a CANCEL
is advice: the peer's handler then runs to its end)."""
FLAG_REPLY = 0x01
"""Flag bit 0: the frame answers the request with the same id."""
FLAG_FILES = 0x02
"""Flag bit 1 (version 3): file descriptors came with the frame."""
_KNOWN_FLAGS = FLAG_REPLY | FLAG_FILES
MAX_FILES = 16
"""At most this many descriptors go with one frame (version 3)."""
CLIENT_CONTROL = 0x01
"""CLIENT flag: the client may send MESSAGE, RELOAD and SHUTDOWN."""
CLIENT_ESTABLISHED = 0x02
"""CLIENT flag: the hellos have been exchanged."""
CLIENT_HERE = 0x04
"""CLIENT flag (replies only): the client's next request is one only the
supervisor serves (STATUS, RELOAD)."""
_KNOWN_CLIENT_FLAGS = CLIENT_CONTROL | CLIENT_ESTABLISHED | CLIENT_HERE
MAX_CLIENT_BUFFERED = 16 << 10
"""A CLIENT payload carries at most this many bytes already read."""
_CLIENT_FIXED = 34
DEFAULT_MAX_CLIENTS = 256
"""Default bound on handed-over clients a worker serves at once (each
takes a reader thread and a writer thread)."""

DEFAULT_MAX_CONCURRENT = 64
"""Default bound on MESSAGE requests being handled at once."""
DEFAULT_MAX_BUFFERED = 2 * MAX_PAYLOAD + (64 << 10)
"""Default bound on bytes held for the peer: one largest request and its
reply, plus room for pongs and errors (the Go ``DefaultMaxBuffered``)."""
DEFAULT_WRITE_TIMEOUT = 10.0
"""Seconds a frame may wait to be written before the peer counts as
stalled and the connection is closed."""

_HEADER = struct.Struct("<BBBBIQ")
_HELLO_FIXED = struct.Struct("<HHI")
_CODE = struct.Struct("<H")


class MessageType(enum.IntEnum):
    """A frame's message type."""

    HELLO = 1
    PING = 2
    ECHO = 3
    MESSAGE = 4
    SHUTDOWN = 5
    STATUS = 6
    RELOAD = 7
    CANCEL = 8  # version 2 and later; never a reply, never answered
    CLIENT = 9  # version 3: a socket path's client handed to a worker
    ERROR = 15


class ErrorCode(enum.IntEnum):
    """Codes carried by an ERROR frame."""

    BAD_REQUEST = 1
    UNSUPPORTED = 2
    UNAVAILABLE = 3
    INTERNAL = 4
    TOO_LARGE = 5
    SHUTTING_DOWN = 6
    VERSION = 7
    PROTOCOL = 8
    DENIED = 9
    CRASHED = 10


_TYPE_VALUES = frozenset(int(t) for t in MessageType)


def _type_name(t: int) -> str:
    """Return the lower-case name of message type t, or ``type(N)``."""
    if t in _TYPE_VALUES:
        return MessageType(t).name.lower()
    return "type(%d)" % t


# ---------------------------------------------------------------------------
# Errors.


class PairvisorError(Exception):
    """Base class of every error this module raises."""


class ProtocolError(PairvisorError):
    """A malformed or unexpected frame.

    ``code`` is the ERROR code a receiver sends about it (``PROTOCOL``,
    ``TOO_LARGE`` or ``VERSION``); that ERROR always carries id 0 (it is
    about the connection, and the offending frame's id may be one of the
    receiver's own). ``frame_id`` is the offending frame's id where its
    header was readable, for logs. The connection that read it is closed.
    """

    def __init__(self, detail: str, *, code: int = ErrorCode.PROTOCOL, frame_id: int = 0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = int(code)
        self.frame_id = frame_id


class TruncatedFrame(ProtocolError):
    """The stream ended inside a frame. Nothing is sent about it."""


class FrameTooLarge(ProtocolError):
    """A payload length over the receiver's limit (code ``TOO_LARGE``)."""

    def __init__(self, detail: str, *, frame_id: int = 0) -> None:
        super().__init__(detail, code=ErrorCode.TOO_LARGE, frame_id=frame_id)


class VersionMismatch(ProtocolError):
    """The two hellos share no protocol version (code ``VERSION``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=ErrorCode.VERSION, frame_id=0)


class RemoteError(PairvisorError):
    """An ERROR reply from the peer, or one a handler raises to send.

    A handler that raises ``RemoteError(ErrorCode.BAD_REQUEST, "why")``
    answers its request with exactly that error.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = int(code)
        self.message = message

    def __str__(self) -> str:
        return "peer replied with error %d: %s" % (self.code, self.message)


class Cancelled(RemoteError):
    """Raised by a handler whose request was cancelled (see
    :meth:`RequestContext.check`): answers with ``INTERNAL``, as the Go
    implementation answers a handler that returns its context's error.
    The caller has gone and drops the reply."""

    def __init__(self, message: str = "request cancelled") -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class ConnectionClosed(PairvisorError, ConnectionError):
    """The connection is closed; ``reason`` says why (a string)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChannelClosed(ConnectionClosed):
    """Raised by :func:`serve` when the channel ended without a SHUTDOWN:
    EOF, an ERROR with id 0 from the supervisor, a protocol violation, a
    failed hello, a stalled peer. ``reason`` says which; ``__cause__`` is
    the underlying error, if any. The worker must exit with a non-zero
    status (an uncaught exception does): the supervisor did not ask it to
    stop, and its restart policy reads the status."""


class NotWorkerError(PairvisorError):
    """The environment does not describe a worker that a supervisor started.

    Either there is no ``PAIRVISOR_WORKER`` at all, or the variables were
    inherited by mistake: the parent is not the supervisor they name, or
    the channel descriptor is not a socket that supervisor created.
    """


class UntrustedPeerError(PairvisorError):
    """The server a :class:`Client` reached runs as an untrusted user."""


class NoFilesError(PairvisorError):
    """Descriptors cannot go on this connection: it does not speak
    version 3 (or more than :data:`MAX_FILES` were given)."""


# ---------------------------------------------------------------------------
# Frames.


class Header(NamedTuple):
    """A decoded frame header."""

    type: int
    flags: int
    length: int
    id: int

    @property
    def is_reply(self) -> bool:
        """Whether the frame answers an earlier request."""
        return bool(self.flags & FLAG_REPLY)

    @property
    def has_files(self) -> bool:
        """Whether descriptors came with the frame (version 3)."""
        return bool(self.flags & FLAG_FILES)


def encode_header(type: int, flags: int, length: int, id: int) -> bytes:
    """Encode a 16-byte frame header."""
    return _HEADER.pack(MAGIC0, MAGIC1, int(type), flags, length, id)


def parse_header(b: Union[bytes, bytearray, memoryview], max_payload: int = MAX_PAYLOAD) -> Header:
    """Decode and validate the header at the start of b.

    max_payload bounds the accepted length (0 or more than
    :data:`MAX_PAYLOAD` means MAX_PAYLOAD). Raises :class:`TruncatedFrame`
    if b is shorter than a header, :class:`FrameTooLarge` for a length over
    the limit, and :class:`ProtocolError` for wrong magic bytes, an unknown
    type or undefined flag bits. Errors about a header whose magic is right
    name its id (``frame_id``, for logs; the ERROR sent about any of them
    carries id 0). CANCEL (type 8), CLIENT (type 9) and the ``FILES`` flag
    are known here: whether they are allowed depends on the connection's
    version, which the connection checks.
    """
    if len(b) < HEADER_SIZE:
        raise TruncatedFrame("header has %d of %d bytes" % (len(b), HEADER_SIZE))
    m0, m1, t, flags, length, fid = _HEADER.unpack_from(b, 0)
    if m0 != MAGIC0 or m1 != MAGIC1:
        raise ProtocolError("bad frame magic: got %#04x %#04x, want 0xc1 0x50" % (m0, m1))
    if t not in _TYPE_VALUES:
        raise ProtocolError("unknown frame type: type byte %d" % t, frame_id=fid)
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError("undefined frame flags: flags %#04x" % flags, frame_id=fid)
    if max_payload <= 0 or max_payload > MAX_PAYLOAD:
        max_payload = MAX_PAYLOAD
    if length > max_payload:
        raise FrameTooLarge(
            "frame too large: %s payload of %d bytes exceeds the limit of %d" % (_type_name(t), length, max_payload),
            frame_id=fid,
        )
    return Header(t, flags, length, fid)


def encode_frame(type: int, payload: Union[bytes, bytearray, memoryview] = b"", *, id: int = 0, flags: int = 0) -> bytes:
    """Encode a whole frame: header and payload."""
    return encode_header(type, flags, len(payload), id) + bytes(payload)


class FrameDecoder:
    """An incremental decoder of a byte stream into frames.

    Feed it bytes as they come; it returns the complete frames. It checks
    each header before it buffers the payload, so a hostile length never
    makes it hold more than max_payload bytes of one frame. Any error
    leaves the decoder unusable, as it leaves a connection closed.
    The connection code reads sockets directly; this class is for tests
    and simple tools.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._max = max_payload
        self._buf = bytearray()
        self._hdr: Optional[Header] = None
        self._broken = False

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[Tuple[Header, bytes]]:
        """Add data and return the frames completed by it, in order."""
        if self._broken:
            raise ProtocolError("decoder already failed")
        self._buf += data
        out: List[Tuple[Header, bytes]] = []
        try:
            while True:
                if self._hdr is None:
                    if len(self._buf) < HEADER_SIZE:
                        return out
                    self._hdr = parse_header(self._buf[:HEADER_SIZE], self._max)
                    del self._buf[:HEADER_SIZE]
                n = self._hdr.length
                if len(self._buf) < n:
                    return out
                out.append((self._hdr, bytes(self._buf[:n])))
                del self._buf[:n]
                self._hdr = None
        except ProtocolError:
            self._broken = True
            raise

    def close(self) -> None:
        """Declare the end of the stream: raise TruncatedFrame if it ended
        inside a frame."""
        if self._hdr is not None or self._buf:
            self._broken = True
            raise TruncatedFrame("stream ended inside a frame")

    @property
    def pending(self) -> int:
        """Bytes buffered that do not make a complete frame yet."""
        return len(self._buf) + (HEADER_SIZE if self._hdr is not None else 0)


# ---------------------------------------------------------------------------
# Hello, version negotiation and error payloads.


class Hello(NamedTuple):
    """The content of a hello frame."""

    min_version: int
    max_version: int
    pid: int
    name: str


def encode_hello(h: Hello) -> bytes:
    """Encode a hello payload. A name over 256 bytes of UTF-8 is cut at a
    character boundary."""
    name = h.name.encode("utf-8")
    if len(name) > MAX_NAME_LEN:
        name = name[:MAX_NAME_LEN].decode("utf-8", "ignore").encode("utf-8")
    return _HELLO_FIXED.pack(h.min_version, h.max_version, h.pid & 0xFFFFFFFF) + name


def parse_hello(p: Union[bytes, bytearray, memoryview]) -> Hello:
    """Decode a hello payload; raise :class:`ProtocolError` if malformed.

    The payload must be 8 to 264 bytes (:class:`FrameTooLarge`, code
    ``TOO_LARGE``, above; code ``PROTOCOL`` below) and its version range
    must be 1 <= lowest <= highest (code ``PROTOCOL``). A name that is not
    valid UTF-8 is decoded with replacement characters (it is for humans).
    """
    if len(p) > MAX_HELLO_PAYLOAD:
        raise FrameTooLarge("frame too large: hello payload of %d bytes exceeds the limit of %d" % (len(p), MAX_HELLO_PAYLOAD))
    if len(p) < 8:
        raise ProtocolError("malformed payload: hello payload of %d bytes, want 8 to %d" % (len(p), MAX_HELLO_PAYLOAD))
    lo, hi, pid = _HELLO_FIXED.unpack_from(p, 0)
    h = Hello(lo, hi, pid, bytes(p[8:]).decode("utf-8", "replace"))
    if lo == 0 or lo > hi:
        raise ProtocolError("malformed payload: hello version range %d..%d" % (lo, hi))
    return h


def negotiate(ours: Hello, theirs: Hello) -> int:
    """Return the highest version both hellos speak, or raise
    :class:`VersionMismatch`."""
    v = min(ours.max_version, theirs.max_version)
    if v < max(ours.min_version, theirs.min_version):
        raise VersionMismatch(
            "no common protocol version: we speak %d..%d, peer %r speaks %d..%d"
            % (ours.min_version, ours.max_version, theirs.name, theirs.min_version, theirs.max_version)
        )
    return v


def encode_error(code: int, message: str) -> bytes:
    """Encode an ERROR payload: a little-endian uint16 code and UTF-8 text."""
    return _CODE.pack(int(code)) + message.encode("utf-8", "replace")


def parse_error(p: Union[bytes, bytearray, memoryview]) -> RemoteError:
    """Decode an ERROR payload into a :class:`RemoteError`."""
    if len(p) < 2:
        return RemoteError(ErrorCode.PROTOCOL, "malformed error frame")
    (code,) = _CODE.unpack_from(p, 0)
    return RemoteError(code, bytes(p[2:]).decode("utf-8", "replace"))


class ClientState(NamedTuple):
    """The payload of a CLIENT request and of its reply (version 3,
    docs/PROTOCOL.md "Handing clients to workers"): a socket path's client
    and where its stream stands."""

    flags: int = 0  # CLIENT_CONTROL, CLIENT_ESTABLISHED, CLIENT_HERE
    version: int = 0  # the negotiated version if established, else 0
    uid: int = 0
    gid: int = 0
    pid: int = 0
    idle_ms: int = 0  # close the connection after this long without input (0: never)
    next_id: int = 0  # established: the next request id of the server's side
    hello: bytes = b""  # established: the client's hello payload
    buffered: bytes = b""  # bytes read from the connection and not handled yet


_CLIENT_HEAD = struct.Struct("<BBHIIIIQH")


def encode_client(c: ClientState) -> bytes:
    """Encode a CLIENT payload (no checks beyond the field sizes)."""
    return (
        _CLIENT_HEAD.pack(c.flags, c.version, 0, c.uid, c.gid, c.pid, c.idle_ms, c.next_id, len(c.hello))
        + bytes(c.hello)
        + struct.pack("<I", len(c.buffered))
        + bytes(c.buffered)
    )


def parse_client(p: Union[bytes, bytearray, memoryview]) -> ClientState:
    """Decode a CLIENT payload; raise :class:`ProtocolError` (whose detail
    the worker sends back with code ``BAD_REQUEST``) if its lengths do not
    add up, its flags or reserved bytes are unknown, or, established, its
    version is not 1 to 3 or its hello is malformed; or, not established,
    it has a version, a hello, a next id or ``CLIENT_HERE``."""
    p = bytes(p)

    def bad(detail: str) -> ProtocolError:
        return ProtocolError("client payload: " + detail)

    if len(p) < _CLIENT_FIXED:
        raise bad("%d bytes, want at least %d" % (len(p), _CLIENT_FIXED))
    flags, version, reserved, uid, gid, pid, idle, next_id, n = _CLIENT_HEAD.unpack_from(p, 0)
    if flags & ~_KNOWN_CLIENT_FLAGS:
        raise bad("flags %#04x" % flags)
    if reserved:
        raise bad("reserved bytes %#06x" % reserved)
    rest = p[30:]
    if n > len(rest) - 4:
        raise bad("hello of %d bytes in %d" % (n, len(rest)))
    hello, rest = rest[:n], rest[n:]
    (b,) = struct.unpack_from("<I", rest, 0)
    rest = rest[4:]
    if b > MAX_CLIENT_BUFFERED:
        raise bad("%d bytes buffered, at most %d" % (b, MAX_CLIENT_BUFFERED))
    if b != len(rest):
        raise bad("%d bytes buffered, %d follow" % (b, len(rest)))
    c = ClientState(flags, version, uid, gid, pid, idle, next_id, hello, rest)
    if not flags & CLIENT_ESTABLISHED:
        if version or n or next_id or flags & CLIENT_HERE:
            raise bad("not established, yet version %d, a hello of %d bytes, next id %d, flags %#04x" % (version, n, next_id, flags))
        return c
    if not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise bad("version %d" % version)
    try:
        parse_hello(hello)
    except ProtocolError as e:
        raise bad("the client's hello: %s" % e.detail) from None
    return c


# ---------------------------------------------------------------------------
# Logging: hclog JSON lines, which the supervisor relays with their level.

TRACE = 5
"""A log level below DEBUG, for hclog's trace."""
logging.addLevelName(TRACE, "TRACE")
_OFF = logging.CRITICAL + 10

_LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR, "off": _OFF}

# LogRecord attributes that are not fields a caller added with extra=.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _hclog_level(levelno: int) -> str:
    if levelno <= TRACE:
        return "trace"
    if levelno <= logging.DEBUG:
        return "debug"
    if levelno <= logging.INFO:
        return "info"
    if levelno <= logging.WARNING:
        return "warn"
    return "error"


class HclogFormatter(logging.Formatter):
    """Formats records as hclog JSON lines.

    Each line is one JSON object with ``@level`` (trace, debug, info,
    warn, error), ``@message``, ``@timestamp`` (RFC 3339, microseconds),
    ``@module`` (the logger's name) and one key per field passed with
    ``extra=``. An exception becomes the fields ``error`` and
    ``traceback``. The supervisor relays such a line under the worker's
    name, at its level, with the fields prefixed ``w.``.
    """

    def format(self, record: logging.LogRecord) -> str:
        rec: Dict[str, Any] = {
            "@level": _hclog_level(record.levelno),
            "@message": record.getMessage(),
            "@timestamp": datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds"),
        }
        if record.name and record.name != "root":
            rec["@module"] = record.name
        for k, v in record.__dict__.items():
            if k not in _RECORD_ATTRS and not k.startswith("_"):
                rec[k] = v
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            rec["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        if record.stack_info:
            rec["stack"] = record.stack_info
        return json.dumps(rec, default=str, ensure_ascii=False)


def _level_from_env(value: Optional[str]) -> int:
    return _LEVELS.get((value or "").strip().lower(), logging.INFO)


# The supervisor's level, read when the module is imported: serve()
# removes the variable from the environment.
_ENV_LEVEL = _level_from_env(os.environ.get("PAIRVISOR_LOG_LEVEL"))


def get_logger(name: str = "worker", level: Optional[Union[int, str]] = None, stream: Any = None) -> logging.Logger:
    """Return a logger that writes hclog JSON lines to stderr.

    Its level is ``level`` (a ``logging`` level, or one of ``trace``,
    ``debug``, ``info``, ``warn``, ``error``, ``off``) or else the
    supervisor's, from ``PAIRVISOR_LOG_LEVEL`` (info when unset), so the
    worker does not write lines the supervisor would drop. It does not
    propagate to the root logger. Calling it again with the same name
    returns the same logger, set up once.
    """
    log = logging.getLogger(name)
    if isinstance(level, str):
        lv = _level_from_env(level)
    elif level is None:
        lv = _ENV_LEVEL
    else:
        lv = level
    log.setLevel(lv)
    if not any(getattr(h, "_pairvisor", False) for h in log.handlers):
        h = logging.StreamHandler(stream if stream is not None else sys.stderr)
        h.setFormatter(HclogFormatter())
        setattr(h, "_pairvisor", True)
        log.addHandler(h)
    log.propagate = False
    return log


# ---------------------------------------------------------------------------
# Connection internals.

_ECONN_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN)
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_RECV_BUF = 64 << 10
_WRITE_BATCH_BYTES = 256 << 10  # frames coalesced into one sendmsg
_WRITE_BATCH_IOVS = 64
_CLOSE_FLUSH = 1.0  # seconds without progress after which the frames queued at a close are dropped
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # bytes not yet taken by the peer (Linux: SIOCOUTQ)
_JOIN_SLICE = 0.25  # seconds between two looks at a flushing writer's progress
_PAYLOAD_LIKE = (bytes, bytearray, memoryview)


def _byteview(x: Any) -> memoryview:
    """A flat byte view of a bytes-like object (len() is its size)."""
    m = memoryview(x)
    return m if m.format == "B" and m.ndim == 1 else m.cast("B")


class _Stalled(Exception):
    """The peer took no byte of a frame for the stall bound."""


class _Budget:
    """Bytes held, with a bound. Whoever takes bytes waits for room.

    A wait ends with room (True), when the peer has made no progress for
    ``stall`` seconds (False: the peer is not reading), or when the budget
    is closed (ConnectionClosed). Progress is a release, or, with
    ``progress`` (a counter of the bytes the peer has taken from us:
    ``_Writer.taken``), the counter moving: a large reply going out
    slowly releases nothing until its end, but its peer is slow, not
    stalled. The counter is looked at when the wait would end, so a
    stalled peer is noticed within twice ``stall``. A take larger than
    the limit succeeds when nothing else is held.
    """

    def __init__(self, limit: int, progress: Optional[Callable[[], int]] = None) -> None:
        self._limit = limit
        self._progress = progress
        self._cond = threading.Condition(threading.Lock())
        self._held = 0
        self._releases = 0
        self._closed: Optional[str] = None
        self.peak = 0

    def take(self, n: int, stall: float, deadline: Optional[float] = None) -> bool:
        progress = self._progress
        with self._cond:
            seen = self._releases
            moved = progress() if progress is not None else 0
            until = time.monotonic() + stall
            while self._closed is None and self._held and self._held + n > self._limit:
                now = time.monotonic()
                if self._releases != seen:
                    seen, until = self._releases, now + stall
                if now >= until and progress is not None and progress() != moved:
                    moved, until = progress(), now + stall  # slow, not stalled
                end = until if deadline is None else min(until, deadline)
                if now >= end:
                    return False
                self._cond.wait(end - now)
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            self._held += n
            self.peak = max(self.peak, self._held)
            return True

    def try_take(self, n: int) -> bool:
        """Take n bytes if there is room now and the budget is open."""
        with self._cond:
            if self._closed is not None or self._held + n > self._limit:
                return False
            self._held += n
            self.peak = max(self.peak, self._held)
            return True

    def force(self, n: int) -> None:
        """Take n bytes whether or not there is room (n may be negative)."""
        with self._cond:
            self._held += n
            self.peak = max(self.peak, self._held)
            if n < 0:
                self._releases += 1
                self._cond.notify_all()

    def release(self, n: int) -> None:
        if n:
            self.force(-n)

    def close(self, reason: str) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = reason
            self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return self._held


def _close_fds(fds: List[int]) -> None:
    """Close every descriptor in fds and empty the list (its owner's
    last act)."""
    while fds:
        fd = fds.pop()
        try:
            os.close(fd)
        except OSError:
            pass


def _dup_files(files: Iterable[Any]) -> List[int]:
    """Duplicates (close-on-exec) of files: ints or objects with fileno().
    The caller keeps its own; on failure nothing is left open."""
    out: List[int] = []
    try:
        for f in files:
            fd = f if isinstance(f, int) else f.fileno()
            out.append(os.dup(fd))  # os.dup makes the new fd non-inheritable
    except BaseException:
        _close_fds(out)
        raise
    return out


class _Out:
    """A frame queued for the writer. fds, if any, are ours (duplicates),
    sent with the frame's first byte and closed once it is written or
    dropped. A frame has no deadline of its own: the writer gives up on
    the peer only once it has taken no byte for the write timeout,
    however long the frame has been queued (see _Writer)."""

    __slots__ = ("header", "payload", "cost", "budget", "on_sent", "fds")

    def __init__(
        self,
        header: bytes,
        payload: Any,
        cost: int,
        budget: Optional[_Budget],
        on_sent: Optional[Callable[[], None]],
        fds: Optional[List[int]] = None,
    ) -> None:
        self.header = header
        self.payload = payload
        self.cost = cost
        self.budget = budget
        self.on_sent = on_sent
        self.fds = fds

    def release(self) -> None:
        if self.budget is not None:
            self.budget.release(self.cost)
            self.budget = None
        if self.fds:
            _close_fds(self.fds)


class _Writer:
    """The one thread that writes to the socket (see the module doc).

    Stalls are judged on progress, as Go's ipc.Conn judges them: the
    writer waits for room in the socket buffer for as long as the peer
    takes bytes, and gives up (closing the connection: the peer is not
    reading) only once it has taken none for ``write_timeout`` seconds,
    whatever the size of the frame or how long it has been queued. A peer
    that reads a megabyte reply a few kilobytes at a time on a loaded
    machine is slow, not stalled, and gets it whole. Progress is what
    :meth:`taken` counts: the bytes written, less those still in our
    socket's send queue, so the peer's reads are seen even while the
    kernel does not wake the writer (it does so only once most of the
    buffer is free); others watch it too (the budgets' waits, a stopping
    worker handing a client back). A wait looks at it when the stall
    bound would end it, so a peer that stops reading is cut off within
    twice ``write_timeout``. What is queued stays bounded by the
    connection's budgets (max_buffered).

    It ends when the connection's teardown stops it: at once (queued
    frames are dropped) or after flushing what is queued, for as long as
    the peer takes some of it within the flush's stall bound. Every
    queued frame's bytes are released from its budget once it is written
    or dropped, and its descriptors closed. A frame with descriptors
    always starts a sendmsg of its own.
    """

    def __init__(self, conn: "_Conn", sock: socket.socket, write_timeout: float) -> None:
        self._conn = conn
        self._sock = sock
        self._timeout = write_timeout
        self._cond = threading.Condition(threading.Lock())
        self._q: Deque[_Out] = collections.deque()
        self._stop = False
        self._flush: Optional[float] = None  # stopped with a flush: its stall bound
        self._broken = False
        self.sent = 0  # bytes written; the writer thread's alone to change
        self._thread = threading.Thread(target=self._run, name="pairvisor-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def broken(self) -> bool:
        """Whether a write failed or stalled."""
        return self._broken

    def put(
        self,
        header: bytes,
        payload: Any = b"",
        cost: int = 0,
        budget: Optional[_Budget] = None,
        on_sent: Optional[Callable[[], None]] = None,
        fds: Optional[List[int]] = None,
    ) -> bool:
        """Queue a frame; return False (and release cost, close fds) once
        stopped."""
        o = _Out(header, payload, cost, budget, on_sent, fds)
        with self._cond:
            if not self._stop:
                self._q.append(o)
                self._cond.notify()
                return True
        o.release()
        return False

    def stop(self, flush: float = 0.0) -> None:
        """Stop taking frames. With flush > 0, write what is queued first,
        giving up once the peer has taken nothing for flush seconds (or
        write_timeout, if shorter; an earlier flush's bound stands); else
        drop it."""
        with self._cond:
            self._stop = True
            if flush > 0 and self._flush is None:
                self._flush = flush
            self._cond.notify()

    def join(self, stall: float) -> bool:
        """Wait for the thread's end for as long as the peer takes our
        bytes: give up once it has taken none for stall seconds. Return
        whether it has ended."""
        t = self._thread
        if t is threading.current_thread():
            return not t.is_alive()
        seen, last = self.taken(), time.monotonic()
        while t.is_alive():
            now = time.monotonic()
            if self.taken() != seen:
                seen, last = self.taken(), now
            elif now - last >= stall:
                break
            t.join(min(last + stall - now, _JOIN_SLICE))
        return not t.is_alive()

    def taken(self) -> int:
        """Bytes the peer has taken from us: written, less those still in
        the socket's send queue (SIOCOUTQ, which the kernel counts a
        buffer at a time, with overhead: compare two readings, do not
        subtract them). It changes whenever the peer reads or we write.
        Any thread."""
        conn = self._conn
        with conn._fd_lock:  # the descriptor is not closed (and its number reused) under the ioctl
            if conn._fd_closed:
                return self.sent
            try:
                q = array.array("i", [0])
                fcntl.ioctl(self._sock.fileno(), _SIOCOUTQ, q, True)
                return self.sent - q[0]
            except (OSError, ValueError, TypeError):  # closed, or no SIOCOUTQ here
                return self.sent

    def _stall(self) -> float:
        """How long the peer may take no byte before we give up on it."""
        flush = self._flush
        return self._timeout if flush is None else min(self._timeout, flush)

    def _send(self, bufs: List[memoryview], fds: Optional[List[int]]) -> None:
        """Write bufs whole with non-blocking sendmsg calls, waiting for
        room for as long as the peer takes bytes: raise _Stalled once it
        has taken none for the stall bound since the first call or the
        last byte, OSError on failure. fds go with the first byte
        (SCM_RIGHTS): the kernel takes its own reference then, and the
        caller still closes them."""
        fd = self._sock.fileno()
        poller = None
        anc: List[Tuple[int, int, bytes]] = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        last = time.monotonic()  # when the peer was last seen taking bytes (or we began)
        seen = self.taken()
        while bufs:
            try:
                n = self._sock.sendmsg(bufs, anc, socket.MSG_DONTWAIT | _MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                now = time.monotonic()
                left = last + self._stall() - now
                if left <= 0 and self.taken() != seen:
                    seen, last = self.taken(), now  # it reads, slowly: wait on
                    left = self._stall()
                if left <= 0:
                    raise _Stalled() from None
                if poller is None:
                    poller = select.poll()
                    poller.register(fd, select.POLLOUT)
                poller.poll(max(1, min(int(left * 1000) + 1, 1000)))
                continue
            if n > 0:
                anc = []  # the descriptors went with the first byte
                self.sent += n
                seen, last = self.taken(), time.monotonic()
            while n and bufs:
                if n >= len(bufs[0]):
                    n -= len(bufs[0])
                    bufs.pop(0)
                else:
                    bufs[0] = bufs[0][n:]
                    n = 0

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._cond:
                rest = list(self._q)
                self._q.clear()
                self._stop = True
            for o in rest:
                o.release()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._stop:
                    self._cond.wait()
                if not self._q or (self._stop and self._flush is None):
                    return
                batch = [self._q.popleft()]
                size = len(batch[0].header) + len(batch[0].payload)
                while self._q and not self._q[0].fds and len(batch) < _WRITE_BATCH_IOVS // 2 and size < _WRITE_BATCH_BYTES:
                    o = self._q.popleft()
                    batch.append(o)
                    size += len(o.header) + len(o.payload)
                flushing = self._flush is not None
            if not self._broken:
                bufs: List[memoryview] = []
                for o in batch:
                    bufs.append(memoryview(o.header))
                    if len(o.payload):
                        bufs.append(memoryview(o.payload))
                try:
                    self._send(bufs, batch[0].fds)
                except _Stalled:
                    self._broken = True
                    if not flushing:
                        self._conn._abort(
                            "stalled: the peer is not reading: it took no byte of a frame for %gs" % self._timeout, level=logging.WARNING
                        )
                except OSError as e:
                    self._broken = True
                    self._conn._abort("write failed: %s" % e, level=logging.DEBUG)
            for o in batch:
                o.release()
                if o.on_sent is not None and not self._broken:
                    try:
                        o.on_sent()
                    except Exception:  # a bug of ours; keep writing
                        self._conn._log.exception("pairvisor: callback after a write failed")
            if self._broken and flushing:
                return


class _IdleTimeout(Exception):
    """Nothing arrived within the connection's idle timeout."""


class _DetachNow(Exception):
    """A handed-over client's reader stops between two frames (the
    connection goes back to the supervisor)."""

    def __init__(self, here: bool) -> None:
        super().__init__("detach")
        self.here = here


class _FdBatch:
    """Descriptors that came with one read, and the stream offsets
    [start, end) that read covered."""

    __slots__ = ("start", "end", "fds")

    def __init__(self, start: int, end: int, fds: List[int]) -> None:
        self.start = start
        self.end = end
        self.fds = fds


_MAX_UNCLAIMED = 2  # reads whose descriptors a reader holds unclaimed, at most (as Go)


def _fds_of(anc: List[Tuple[int, int, bytes]]) -> List[int]:
    fds: List[int] = []
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[: len(data) - len(data) % a.itemsize])
            fds.extend(a)
    return fds


class _Reader:
    """Buffered reads from the socket, by the reader thread alone.

    With max_files > 0 every read is a recvmsg with room for that many
    descriptors and MSG_CMSG_CLOEXEC (docs/PROTOCOL.md "File
    descriptors"); the descriptors of each read are held, with the stream
    offsets it covered, until a FILES frame whose header begins there
    claims them (read_header sets ``claimed``). The reader owns what is
    unclaimed, and :meth:`close_files` closes it.

    prefix: bytes already read from the socket (a handed-over client's).
    wake_fd: readable when the connection must stop between frames (a
    handed-over client going back): a read for a header then raises
    _DetachNow. idle: seconds without input after which a read raises
    _IdleTimeout (0: never).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_files: int = 0,
        bufsize: int = _RECV_BUF,
        prefix: bytes = b"",
        wake_fd: int = -1,
        idle: float = 0.0,
    ) -> None:
        self._sock = sock
        self._buf = bytearray(max(bufsize, len(prefix), HEADER_SIZE))
        self._view = memoryview(self._buf)
        self._buf[: len(prefix)] = prefix
        self._r = 0
        self._w = len(prefix)
        self._stream = len(prefix)  # bytes taken from the stream so far
        self._max_files = max_files
        self._ancsize = socket.CMSG_SPACE(max_files * array.array("i").itemsize) if max_files > 0 else 0
        self._batches: Deque[_FdBatch] = collections.deque()
        self.files_ok = False  # the FILES flag is allowed (version 3, after the hellos)
        self.claimed: List[int] = []  # the last header's descriptors, until taken
        self._wake = wake_fd
        self._idle = idle
        self._last = time.monotonic()
        self._between = False
        self._pollers: Dict[bool, "select.poll"] = {}

    def _poller(self, wake: bool) -> "select.poll":
        p = self._pollers.get(wake)
        if p is None:
            p = select.poll()
            p.register(self._sock.fileno(), select.POLLIN)
            if wake:
                p.register(self._wake, select.POLLIN)
            self._pollers[wake] = p
        return p

    def _wait(self, deadline: Optional[float]) -> None:
        """Wait until the socket is readable (or raise)."""
        wake = self._between and self._wake >= 0
        if deadline is None and self._idle <= 0 and not wake:
            return
        poller = self._poller(wake)
        while True:
            now = time.monotonic()
            ends = []
            if deadline is not None:
                ends.append(deadline)
            if self._idle > 0:
                ends.append(self._last + self._idle)
            left = (min(ends) - now) if ends else None
            if left is not None and left <= 0:
                if deadline is not None and now >= deadline:
                    raise socket.timeout("no data in time")
                raise _IdleTimeout()
            ready = poller.poll(None if left is None else max(1, int(left * 1000) + 1))
            for fd, _ in ready:
                if fd == self._wake:
                    raise _DetachNow(False)
            if ready:
                return

    def _recv(self, into: memoryview, deadline: Optional[float]) -> int:
        """One read into `into`; 0 at EOF (ECONNRESET counts as EOF: a Unix
        peer that dies with data unread resets the connection)."""
        while True:
            self._wait(deadline)
            try:
                if self._ancsize:
                    n, anc, flags, _ = self._sock.recvmsg_into([into], self._ancsize, socket.MSG_CMSG_CLOEXEC)
                else:
                    n, anc, flags = self._sock.recv_into(into), [], 0
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _ECONN_GONE:
                    return 0
                raise
            if anc:
                self._got_files(_fds_of(anc), flags, n)
            elif flags & socket.MSG_CTRUNC:
                raise ProtocolError("too many descriptors: more than %d came with one frame" % self._max_files, code=ErrorCode.TOO_LARGE)
            if n:
                self._last = time.monotonic()
            self._stream += n
            return n

    def _got_files(self, fds: List[int], flags: int, n: int) -> None:
        """Hold the descriptors of a read of n bytes at self._stream (they
        are ours from here on), or close them and raise."""
        if flags & socket.MSG_CTRUNC or len(fds) > self._max_files:
            # The kernel closed what did not fit: we cannot tell which of
            # the sender's files were lost.
            _close_fds(fds)
            raise ProtocolError("too many descriptors: more than %d came with one frame" % self._max_files, code=ErrorCode.TOO_LARGE)
        if not fds:
            return
        if n == 0 or len(self._batches) >= _MAX_UNCLAIMED:
            _close_fds(fds)
            raise ProtocolError("unexpected descriptors: %d reads' descriptors unclaimed by a frame" % (len(self._batches) + 1))
        self._batches.append(_FdBatch(self._stream, self._stream + n, fds))

    def close_files(self) -> None:
        """Close every descriptor the reader holds (connection's end)."""
        _close_fds(self.claimed)
        while self._batches:
            _close_fds(self._batches.popleft().fds)

    def _fill(self, n: int, deadline: Optional[float]) -> bool:
        """Make n (<= buffer size) bytes available; False at EOF."""
        if self._w - self._r >= n:
            return True
        if self._r == self._w:
            self._r = self._w = 0
        elif self._r + n > len(self._buf):
            k = self._w - self._r
            self._buf[:k] = self._buf[self._r : self._w]
            self._r, self._w = 0, k
        while self._w - self._r < n:
            k = self._recv(self._view[self._w :], deadline)
            if k == 0:
                return False
            self._w += k
        return True

    def peek_header(self, deadline: Optional[float]) -> Optional[bytes]:
        """The next 16 bytes, unread; None if the stream ended first."""
        if not self._fill(HEADER_SIZE, deadline):
            return None
        return bytes(self._view[self._r : self._r + HEADER_SIZE])

    def read_header(self, max_payload: int, deadline: Optional[float] = None) -> Optional[Header]:
        """Read and validate the next header; None at EOF between frames.
        Its descriptors, if it has the FILES flag, are left in
        ``claimed`` for the caller to take (and close)."""
        at = self._stream - (self._w - self._r)  # the header's stream offset
        self._between = True
        try:
            ok = self._fill(HEADER_SIZE, deadline)
        finally:
            self._between = False
        if not ok:
            if self._w == self._r:
                return None
            raise TruncatedFrame("stream ended after %d of %d header bytes" % (self._w - self._r, HEADER_SIZE))
        h = parse_header(self._view[self._r : self._r + HEADER_SIZE], max_payload)
        self._r += HEADER_SIZE
        if self._batches or h.has_files:
            self._claim(h, at)
        return h

    def _claim(self, h: Header, at: int) -> None:
        if h.has_files and not self.files_ok:
            raise ProtocolError("undefined frame flags: flags %#04x (files) below version 3 or before the hellos" % h.flags, frame_id=h.id)
        if h.has_files and h.type in (MessageType.HELLO, MessageType.CANCEL):
            raise ProtocolError("unexpected descriptors: a %s frame with the files flag" % _type_name(h.type), frame_id=h.id)
        if self._batches and self._batches[0].end <= at:
            raise ProtocolError("unexpected descriptors: they came with bytes of which no frame has the files flag")
        if not h.has_files:
            return
        if not self._batches or self._batches[0].start > at:
            raise ProtocolError("missing descriptors: a files frame whose header did not begin within a read that brought descriptors", frame_id=h.id)
        self.claimed = self._batches.popleft().fds

    def take_claimed(self) -> List[int]:
        """The last header's descriptors (the caller owns them)."""
        fds, self.claimed = self.claimed, []
        return fds

    def unread_header(self) -> None:
        """Put back the header just read (a handed-over client going back
        in front of it); nothing of its payload has been read."""
        self._r -= HEADER_SIZE

    def pending(self) -> bytes:
        """Bytes read from the socket and not consumed yet."""
        return bytes(self._view[self._r : self._w])

    def read_payload(self, n: int, deadline: Optional[float] = None) -> bytearray:
        """Read n payload bytes into a new bytearray."""
        p = bytearray(n)
        k = min(n, self._w - self._r)
        p[:k] = self._view[self._r : self._r + k]
        self._r += k
        if k < n:
            pv = memoryview(p)
            while k < n:
                m = self._recv(pv[k:], deadline)
                if m == 0:
                    raise TruncatedFrame("stream ended inside a payload: %d of %d bytes" % (k, n))
                k += m
        return p

    def skip(self, n: int) -> None:
        """Skip n payload bytes without keeping them."""
        while n:
            if self._r == self._w:
                if not self._fill(1, None):
                    raise TruncatedFrame("stream ended inside a payload")
            k = min(n, self._w - self._r)
            self._r += k
            n -= k


class _Pool:
    """A bounded pool of daemon threads that run handler jobs.

    Threads are started as jobs need them, up to ``size``, and end after
    ``idle`` seconds without work or once the pool is closed.
    """

    def __init__(self, size: int, idle: float = 30.0) -> None:
        self._size = size
        self._idle_for = idle
        self._cond = threading.Condition(threading.Lock())
        self._jobs: Deque[Callable[[], None]] = collections.deque()
        self._threads = 0
        self._waiting = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            if len(self._jobs) > self._waiting and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._run, name="pairvisor-handler", daemon=True).start()
            else:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._jobs:
                    if self._closed:
                        break
                    self._waiting += 1
                    woke = self._cond.wait(self._idle_for)
                    self._waiting -= 1
                    if not woke and not self._jobs:
                        break
                    continue
                job = self._jobs.popleft()
                self._cond.release()
                try:
                    job()
                except BaseException:  # jobs handle their own errors; never lose the thread's count
                    pass
                finally:
                    self._cond.acquire()
            self._threads -= 1


class _Pending:
    """A request of ours waiting for its reply."""

    __slots__ = ("type", "event", "reply", "error", "files")

    def __init__(self, type: int) -> None:
        self.type = type
        self.event = threading.Event()
        self.reply: Optional[bytes] = None
        self.error: Optional[BaseException] = None
        self.files: List[int] = []  # the reply's descriptors: the caller's


class RequestContext:
    """What a handler learns about the request it is answering.

    ``id`` is the request's id (the supervisor's, or a handed-over
    client's; for logs). ``cancelled`` is a :class:`threading.Event`, set
    when the caller cancels the request (a CANCEL frame, protocol version
    2 and later) or the connection closes: the reply is dropped by then,
    so a long handler should check it (or wait on it) and give up early,
    e.g. with :meth:`check`. The handler's reply is still sent, exactly
    once.

    Descriptors (protocol version 3): ``files`` are those that came with
    the request (close-on-exec). They belong to the context, which closes
    them when the handler returns, unless the handler takes them with
    :meth:`take_files`; then they are its own to close.
    :meth:`attach_files` sends files with the reply.
    """

    __slots__ = ("id", "cancelled", "_files", "_reply_files", "_version", "_lock", "_callbacks")

    def __init__(self, id: int, files: Optional[List[int]] = None, version: int = 0) -> None:
        self.id = id
        self.cancelled = threading.Event()
        self._files: List[int] = files if files is not None else []
        self._reply_files: List[int] = []
        self._version = version
        self._lock = threading.Lock()
        self._callbacks: List[Callable[[], None]] = []

    @property
    def files(self) -> Tuple[int, ...]:
        """The descriptors that came with the request and are not taken
        yet (valid until the handler returns)."""
        return tuple(self._files)

    def take_files(self) -> List[int]:
        """Take the request's descriptors: the caller owns (and closes)
        them from now on."""
        with self._lock:
            fds, self._files = self._files, []
        return fds

    def attach_files(self, *files: Any) -> None:
        """Send files (ints, or objects with ``fileno()``) with the reply.
        The library sends duplicates, which it closes once sent: the
        caller keeps (and closes) its own. Raises :class:`NoFilesError`
        if the connection does not speak version 3 or the reply would
        carry more than :data:`MAX_FILES`. A reply that is an ERROR
        carries none."""
        if self._version < 3:
            raise NoFilesError("descriptors need protocol version 3; this connection speaks %d" % self._version)
        with self._lock:
            if len(self._reply_files) + len(files) > MAX_FILES:
                raise NoFilesError("a frame carries at most %d descriptors" % MAX_FILES)
            self._reply_files += _dup_files(files)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the request has been cancelled."""
        if self.cancelled.is_set():
            raise Cancelled()

    def _cancel(self) -> None:
        """Set ``cancelled`` and run the callbacks, once."""
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            cb()

    def _on_cancel(self, cb: Callable[[], None]) -> None:
        """Run cb when the request is cancelled (now, if it is)."""
        with self._lock:
            if not self.cancelled.is_set():
                self._callbacks.append(cb)
                return
        cb()

    def _settle_files(self) -> List[int]:
        """After the handler: close the request's descriptors it did not
        take, and return the reply's (the caller's to send or close)."""
        with self._lock:
            fds, self._files = self._files, []
            out, self._reply_files = self._reply_files, []
        _close_fds(fds)
        return out

    def __repr__(self) -> str:
        return "RequestContext(id=%d, cancelled=%s)" % (self.id, self.cancelled.is_set())


Handler = Callable[..., Union[bytes, bytearray, memoryview, None]]
"""A MESSAGE handler: ``handler(payload)`` or ``handler(payload, ctx)``
(ctx a :class:`RequestContext`); the reply's bytes out."""


def _wants_context(handler: Callable[..., Any]) -> bool:
    """Whether handler takes a second positional argument that it needs:
    it can be called with two, and not with one. A handler that can be
    called both ways (a default, ``*args``) or whose signature cannot be
    read is called with the payload alone; ``serve(cancellable=True)``
    says otherwise."""
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(b"")
        return False
    except TypeError:
        pass
    try:
        sig.bind(b"", None)
        return True
    except TypeError:
        return False


_CLIENT_HELLO_HEADER_WAIT = 0.2  # a handed-over client's hello header must be complete by then
_CLIENT_HANDSHAKE = 5.0  # bounds a handed-over client's hello (as Go's worker)
_CLIENT_DETACH_WAIT = 1.0  # a stopping worker's client must be between frames by then, or is closed
_CLIENT_MAX_BUFFERED = DEFAULT_MAX_BUFFERED // 8  # bytes held for one handed-over client


class _Clients:
    """The clients a worker's channel has been handed (CLIENT requests):
    at most ``max`` at once (negative: none), each served by a thread of
    its own, which owns the client's connection from the CLIENT request
    to its reply."""

    def __init__(self, channel: "_Conn", max_clients: int) -> None:
        self._ch = channel
        self.max = max_clients
        self._lock = threading.Lock()
        self.n = 0
        self.draining = False
        self._conns: Set["_Conn"] = set()

    def add(self) -> Optional[Tuple[int, str]]:
        """Count a new client in, or say why not (code, message)."""
        with self._lock:
            if self.max < 0:
                return ErrorCode.UNSUPPORTED, "this worker takes no clients (max_clients < 0)"
            if self.draining:
                return ErrorCode.SHUTTING_DOWN, "worker shutting down"
            if self.n >= self.max:
                return ErrorCode.UNAVAILABLE, "serving %d clients already" % self.n
            self.n += 1
            return None

    def remove(self) -> None:
        with self._lock:
            self.n -= 1

    def drain(self) -> None:
        """The channel's SHUTDOWN came: hand every client back."""
        with self._lock:
            self.draining = True
            conns = list(self._conns)
        for c in conns:
            c.request_detach(_CLIENT_DETACH_WAIT)

    def serve(self, ctx: RequestContext, st: ClientState, fd: int) -> bytes:
        """Serve a handed-over client until it is done (b"") or handed
        back (its state). Owns fd; raises Cancelled if the supervisor
        cancelled the CLIENT request (the connection is shut down)."""
        ch = self._ch
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise
        established = bool(st.flags & CLIENT_ESTABLISHED)
        files = MAX_FILES if established and st.version >= 3 else 0
        try:
            conn = _Conn(
                sock,
                name=ch._name,
                role="front",
                handler=ch._handler,
                handler_ctx=ch._handler_ctx,
                logger=ch._log,
                max_payload=ch._max_payload,
                max_concurrent=ch._max_concurrent,
                max_buffered=_CLIENT_MAX_BUFFERED,
                write_timeout=ch._write_timeout,
                max_version=st.version if established else min(2, ch._max_version),
                max_files=files,
                front=st,
            )
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._conns.add(conn)
            draining = self.draining
        if draining:
            conn.request_detach(_CLIENT_DETACH_WAIT)
        ctx._on_cancel(lambda: conn._abort("the supervisor cancelled the client request"))
        try:
            out = conn.serve_front()
        finally:
            with self._lock:
                self._conns.discard(conn)
        if not out and ctx.cancelled.is_set():
            raise Cancelled("context canceled")
        return out


def _clear_socket_timeouts(sock: socket.socket) -> None:
    """Sets the socket's SO_RCVTIMEO and SO_SNDTIMEO to none (0)."""
    zero = struct.pack("@ll", 0, 0)  # struct timeval
    for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, zero)
        except OSError:
            pass


class _Conn:
    """One end of a framed connection; see the module doc.

    role is "worker" (a worker's channel: serves SHUTDOWN and CLIENT,
    runs the handler for MESSAGE), "client" (answers PING and ECHO,
    refuses everything else) or "front" (a client handed over with a
    CLIENT request, front being its state: served as a socket-path server
    serves it, and handed back in front of STATUS and RELOAD). With
    handler_ctx the handler is called as handler(payload, ctx).
    max_version (1 to 3) is the highest protocol version we offer; 3 only
    with max_files > 0, the descriptors accepted with one frame.
    max_clients bounds a worker's handed-over clients (negative: none).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str,
        role: str,
        handler: Optional[Handler] = None,
        handler_ctx: bool = False,
        logger: Optional[logging.Logger] = None,
        max_payload: int = MAX_PAYLOAD,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        shutdown_linger: float = 1.0,
        max_version: int = PROTOCOL_VERSION,
        max_files: int = 0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        front: Optional[ClientState] = None,
    ) -> None:
        _check_version(max_version)
        if max_payload <= 0 or max_payload > MAX_PAYLOAD:
            max_payload = MAX_PAYLOAD
        if max_concurrent <= 0:
            max_concurrent = DEFAULT_MAX_CONCURRENT
        if max_buffered <= 0:
            max_buffered = DEFAULT_MAX_BUFFERED
        if write_timeout <= 0:
            write_timeout = DEFAULT_WRITE_TIMEOUT
        max_files = min(max(max_files, 0), MAX_FILES)
        if max_version < 3:
            max_files = 0
        if max_files == 0:
            max_version = min(max_version, 2)  # version 3 means "I take descriptors"
        sock.setblocking(True)
        # SO_RCVTIMEO and SO_SNDTIMEO belong to the socket and so to every
        # copy of its descriptor: a previous holder (a Go worker that served
        # a handed-over client) may have left a read timeout, which a
        # blocking read here would take for a dead peer. This Conn uses none.
        _clear_socket_timeouts(sock)
        self._sock = sock
        self._name = name
        self._role = role
        self._handler = handler
        self._handler_ctx = handler_ctx
        self._max_version = max_version
        self._log = logger if logger is not None else logging.getLogger("pairvisor")
        self._max_payload = max_payload
        self._max_concurrent = max_concurrent
        self._write_timeout = write_timeout
        self._linger = shutdown_linger
        self._front = front
        self._wake_r = self._wake_w = -1
        if front is not None:
            self._wake_r, self._wake_w = os.pipe()  # non-inheritable; closed at the end or the hand-back
            try:
                self._reader = _Reader(
                    sock,
                    max_files=max_files,
                    bufsize=MAX_CLIENT_BUFFERED,
                    prefix=bytes(front.buffered),
                    wake_fd=self._wake_r,
                    idle=front.idle_ms / 1000.0,
                )
            except BaseException:  # (MemoryError): the pipe is ours until the Conn exists
                os.close(self._wake_r)
                os.close(self._wake_w)
                raise
        else:
            self._reader = _Reader(sock, max_files=max_files)
        # Held while the socket is closed and while _Writer.taken reads its send
        # queue; taken after self._lock where both are (taken may run under it).
        self._fd_lock = threading.Lock()
        self._fd_closed = False
        self._writer = _Writer(self, sock, write_timeout)
        progress = self._writer.taken  # the peer taking our bytes
        self._held = _Budget(max_buffered, progress)  # bytes held for the peer
        self._outgoing = _Budget(max_buffered, progress)  # our requests queued
        self._cancels = _Budget(MAX_QUEUED_CANCELS * HEADER_SIZE)  # our CANCEL frames queued
        self._pool = _Pool(max_concurrent)
        self._lock = threading.Lock()
        self._idle_cond = threading.Condition(self._lock)  # notified when _inflight drops
        self._pending: Dict[int, _Pending] = {}
        self._next_id = 0
        self._inflight = 0  # requests whose reply is owed and not queued yet (messages, clients)
        self._handlers = 0  # of which MESSAGE requests given to the pool
        # Contexts of the requests with a handler or a client thread: by
        # id on version 2 and later (a CANCEL finds them there; an id in
        # use is a violation), and all of them, to cancel when the
        # connection closes. A context is removed by its thread before
        # its reply is queued.
        self._active: Dict[int, RequestContext] = {}
        self._running: Set[RequestContext] = set()
        self._draining = False  # a SHUTDOWN arrived
        # (id, bytes held, ERROR payload or None) of the SHUTDOWN whose reply is owed
        self._shutdown: Optional[Tuple[int, int, Optional[bytes]]] = None
        self.shutdown_acked = False  # a SHUTDOWN's reply has been queued: the peer asked us to stop
        self._linger_timer: Optional[threading.Timer] = None
        self._reason: Optional[str] = None  # why the connection closed
        self._clients = _Clients(self, max_clients) if role == "worker" else None
        self._detach_req = False  # front: stop between frames and hand the client back
        self._stopping = False  # front: ... because the worker is stopping (no CLIENT_HERE)
        self._detach_timer: Optional[threading.Timer] = None
        self._handed_back: Optional[bytes] = None
        self.peer: Optional[Hello] = None
        self.peer_raw = b""  # the peer's hello payload
        self.version = 0

    # -- life cycle ---------------------------------------------------------

    def hello(self, deadline: Optional[float] = None) -> None:
        """Send our hello and read the peer's (until deadline, if any).
        On failure the connection is torn down and the error raised."""
        self._writer.start()
        ours = Hello(MIN_PROTOCOL_VERSION, self._max_version, os.getpid(), self._name)
        p = encode_hello(ours)
        self._writer.put(encode_header(MessageType.HELLO, 0, len(p), 0), p)
        try:
            self._read_hello(ours, deadline)
        except BaseException as e:
            self._teardown(self._reason or "hello failed: %s" % e)
            raise

    def _read_hello(self, ours: Hello, deadline: Optional[float]) -> None:
        r = self._reader
        try:
            h = r.read_header(self._max_payload, deadline)
            if h is None:
                raise ConnectionClosed(self._reason or "peer closed the connection before its hello")
            if h.type == MessageType.ERROR and h.is_reply:
                raise parse_error(r.read_payload(h.length, deadline))  # the peer refuses us: close without answering
            if h.type != MessageType.HELLO:
                raise ProtocolError("unexpected frame: first frame is %s, want hello" % _type_name(h.type), frame_id=h.id)
            if h.is_reply:
                raise ProtocolError("unexpected frame: hello with the reply flag", frame_id=h.id)
            if h.id != 0:
                raise ProtocolError("unexpected frame: hello with id %d, want 0" % h.id, frame_id=h.id)
            if h.length > MAX_HELLO_PAYLOAD:
                # Sent on the header alone: the payload is not read.
                raise FrameTooLarge("frame too large: hello payload of %d bytes exceeds the limit of %d" % (h.length, MAX_HELLO_PAYLOAD))
            raw = bytes(r.read_payload(h.length, deadline))
            peer = parse_hello(raw)
            self.version = negotiate(ours, peer)
            self.peer = peer
            self.peer_raw = raw
            r.files_ok = self.version >= 3
        except TruncatedFrame:
            raise
        except ProtocolError as e:
            self._violation(e)
            raise
        except socket.timeout:
            raise TimeoutError("no hello from the peer in time") from None

    def _violation(self, e: ProtocolError) -> None:
        """Tell the peer what it did wrong (best effort) before we close,
        in an ERROR with id 0: it is about the connection, and the
        offending frame's id may be one of the peer's own requests'."""
        self._log.log(logging.WARNING if self._role == "worker" else logging.DEBUG, "pairvisor: protocol violation by the peer; closing", extra={"error": e.detail, "code": e.code})
        p = encode_error(e.code, e.detail)
        self._writer.put(encode_header(MessageType.ERROR, FLAG_REPLY, len(p), 0), p)
        self._writer.stop(flush=_CLOSE_FLUSH)
        with self._lock:
            if self._reason is None:
                self._reason = "protocol violation: %s" % e.detail

    def run(self) -> str:
        """Read and handle frames until the stream ends; tear down and
        return why it ended. A handed-over client's connection may end by
        going back to the supervisor instead (``_handed_back``)."""
        reason = "connection closed"
        try:
            reason = self._read_loop()
        except _DetachNow as e:
            back = self._detach(e.here)
            if back is not None:
                self._handed_back = back
                return "handed back to the supervisor"
            reason = "could not hand the client back"
        except _IdleTimeout:
            reason = "idle: nothing arrived for %gs" % self._reader._idle
        except TruncatedFrame as e:
            reason = "truncated frame: %s" % e.detail
        except ProtocolError as e:
            self._violation(e)
            reason = "protocol violation: %s" % e.detail
        except RemoteError as e:
            reason = "peer closed the connection with error %d: %s" % (e.code, e.message)
        except ConnectionClosed as e:
            reason = e.reason
        except OSError as e:
            reason = "read failed: %s" % e
        except BaseException as e:
            self._teardown(self._reason or "reader crashed: %r" % e)
            raise
        reason = self._reason or reason
        self._teardown(reason)
        return reason

    def _read_loop(self) -> str:
        r = self._reader
        while True:
            if self._detach_req:
                raise _DetachNow(False)
            h = r.read_header(self._max_payload)
            if h is None:
                return self._reason or "closed by the peer"
            fds = r.take_claimed()  # ours until a taker empties the list
            try:
                if self._reason is not None:
                    return self._reason
                self._dispatch(h, fds)
            finally:
                _close_fds(fds)

    def _dispatch(self, h: Header, fds: List[int]) -> None:
        if h.type == MessageType.CLIENT and self.version < 3:
            raise ProtocolError("unknown frame type: type byte %d (client) on a version %d connection" % (h.type, self.version), frame_id=h.id)
        if h.is_reply:
            self._on_reply(h, fds)
        elif h.type in (MessageType.HELLO, MessageType.ERROR):
            raise ProtocolError("unexpected frame: %s frame without the reply flag after the handshake" % _type_name(h.type), frame_id=h.id)
        elif h.id == 0:
            raise ProtocolError("unexpected frame: %s request with id 0, which is reserved" % _type_name(h.type))
        elif h.type == MessageType.CANCEL:
            self._on_cancel(h)
        elif h.type == MessageType.PING:
            if h.length > MAX_PING_PAYLOAD:
                # Not a violation: refused on its own id, unread.
                self._refuse(h, ErrorCode.TOO_LARGE, "ping payload of %d bytes exceeds the limit of %d" % (h.length, MAX_PING_PAYLOAD))
            else:
                self._answer_inline(h)
        elif h.type == MessageType.ECHO:
            self._answer_inline(h)
        elif self._role == "front" and h.type in (MessageType.STATUS, MessageType.RELOAD) and not self._draining:
            # The supervisor serves these: the client goes back in front
            # of this request, unread.
            self._reader.unread_header()
            raise _DetachNow(True)
        else:
            self._on_request(h, fds)

    def _on_cancel(self, h: Header) -> None:
        """The peer cancels its request h.id (version 2): tell its handler.
        Unknown ids, and requests answered without a handler, are
        ignored; the request is still answered once."""
        if self.version < 2:
            raise ProtocolError("unknown frame type: type byte %d (cancel) on a version %d connection" % (h.type, self.version), frame_id=h.id)
        if h.length:
            raise ProtocolError("malformed payload: cancel frame with a payload of %d bytes, want none" % h.length, frame_id=h.id)
        with self._lock:
            ctx = self._active.get(h.id)
        if ctx is not None:
            self._log.debug("pairvisor: request cancelled by the peer", extra={"request_id": h.id})
            ctx._cancel()

    def _take(self, n: int) -> None:
        """Hold n more bytes for the peer, waiting for room (back-pressure);
        close the connection if the peer reads nothing meanwhile."""
        if not self._held.take(n, self._write_timeout):
            reason = "stalled: the peer is not reading its replies: %d bytes of them held and none written for %gs" % (
                self._held.held,
                self._write_timeout,
            )
            self._abort(reason, level=logging.WARNING)
            raise ConnectionClosed(reason)

    def _reply(self, type: int, id: int, payload: Any, cost: int, on_sent: Optional[Callable[[], None]] = None, fds: Optional[List[int]] = None) -> None:
        p = _byteview(payload)
        flags = FLAG_REPLY | (FLAG_FILES if fds else 0)
        self._writer.put(encode_header(type, flags, len(p), id), p, cost, self._held, on_sent, fds or None)

    def _answer_inline(self, h: Header) -> None:
        cost = HEADER_SIZE + h.length
        self._take(cost)
        try:
            p = self._reader.read_payload(h.length)
        except BaseException:
            self._held.release(cost)
            raise
        self._reply(h.type, h.id, p, cost)

    def _answer_error(self, id: int, code: int, message: str) -> None:
        """Answer request id (its payload consumed) with an ERROR."""
        p = encode_error(code, message)
        cost = HEADER_SIZE + len(p)
        self._take(cost)
        self._reply(MessageType.ERROR, id, p, cost)

    def _refuse(self, h: Header, code: int, message: str) -> None:
        """Skip request h unread and answer it with an ERROR."""
        self._reader.skip(h.length)
        self._answer_error(h.id, code, message)

    def _on_request(self, h: Header, fds: List[int]) -> None:
        t = h.type
        serves = self._role in ("worker", "front")
        if self._draining:
            self._refuse(h, ErrorCode.SHUTTING_DOWN, "shutting down")
        elif t == MessageType.SHUTDOWN and serves:
            self._reader.skip(h.length)  # empty by the spec; ignored otherwise, as Go does
            cost = 2 * HEADER_SIZE
            self._take(cost)
            err: Optional[bytes] = None
            if self._role == "front":
                # Answered as the supervisor does, after the drain.
                err = self._denied(t) or encode_error(ErrorCode.UNSUPPORTED, "shutdown is not served here")
            with self._lock:
                self._draining = True
                self._shutdown = (h.id, cost, err)
            self._log.debug("shutdown requested")
            if self._clients is not None:
                self._clients.drain()  # they go back before the SHUTDOWN is answered
            self._maybe_drained()
        elif t == MessageType.MESSAGE and serves:
            denied = self._denied(t)
            if denied is not None:
                self._reader.skip(h.length)
                e = parse_error(denied)
                self._answer_error(h.id, e.code, e.message)
                return
            if self._handler is None:
                self._refuse(h, ErrorCode.UNSUPPORTED, "worker has no message handler")
                return
            if fds and not self._handler_ctx:
                self._refuse(h, ErrorCode.UNSUPPORTED, "this worker takes no files with messages (its handler takes no context)")
                return
            with self._lock:
                busy = self._handlers >= self._max_concurrent
                dup = self.version >= 2 and h.id in self._active
            if busy:
                self._refuse(h, ErrorCode.UNAVAILABLE, "more than %d requests in flight" % self._max_concurrent)
                return
            if dup:
                raise ProtocolError("unexpected frame: %s request %d while request %d is in flight" % (_type_name(t), h.id, h.id), frame_id=h.id)
            cost = 2 * HEADER_SIZE + h.length  # the request, and a header for its reply until we know its size
            self._take(cost)
            try:
                payload = bytes(self._reader.read_payload(h.length))
            except BaseException:
                self._held.release(cost)
                raise
            ctx = RequestContext(h.id, fds[:], self.version)
            fds.clear()
            with self._lock:
                self._inflight += 1
                self._handlers += 1
                if self.version >= 2:
                    self._active[h.id] = ctx
                self._running.add(ctx)
            self._pool.submit(lambda: self._handle(ctx, payload, cost))
        elif t == MessageType.CLIENT and self._role == "worker":
            self._on_client(h, fds)
        elif self._role == "worker":
            self._refuse(h, ErrorCode.UNSUPPORTED, "%s is not served by workers" % _type_name(t))
        elif self._role == "front":
            self._refuse(h, ErrorCode.UNSUPPORTED, "%s is not served here" % _type_name(t))
        else:
            self._refuse(h, ErrorCode.UNSUPPORTED, "no handler for %s requests" % _type_name(t))

    def _denied(self, t: int) -> Optional[bytes]:
        """A handed-over client without CLIENT_CONTROL may not send
        requests that change state: the ERROR payload for t, or None."""
        st = self._front
        if st is None or st.flags & CLIENT_CONTROL:
            return None
        return encode_error(
            ErrorCode.DENIED,
            "%s requests are for the server's own uid, root and the control uids and gids; uid %d is none of them" % (_type_name(t), st.uid),
        )

    def _on_client(self, h: Header, fds: List[int]) -> None:
        """A CLIENT request (version 3): serve the client whose connection
        came with it in a thread of its own, or refuse it, closing the
        descriptor without touching the connection."""
        clients = self._clients
        assert clients is not None
        if clients.max < 0:
            self._refuse(h, ErrorCode.UNSUPPORTED, "this worker takes no clients (max_clients < 0)")
            return
        with self._lock:
            dup = h.id in self._active
        if dup:
            raise ProtocolError("unexpected frame: client request %d while request %d is in flight" % (h.id, h.id), frame_id=h.id)
        self._take(h.length)
        try:
            payload = bytes(self._reader.read_payload(h.length))
        finally:
            self._held.release(h.length)
        if len(fds) != 1:
            self._answer_error(h.id, ErrorCode.BAD_REQUEST, "a client request carries one descriptor, this one %d" % len(fds))
            return
        try:
            st = parse_client(payload)
        except ProtocolError as e:
            self._answer_error(h.id, ErrorCode.BAD_REQUEST, e.detail)
            return
        try:
            is_sock = stat.S_ISSOCK(os.fstat(fds[0]).st_mode)
        except OSError:
            is_sock = False
        if not is_sock:
            self._answer_error(h.id, ErrorCode.BAD_REQUEST, "a client request's descriptor is not a socket")
            return
        refused = clients.add()
        if refused is not None:
            self._answer_error(h.id, refused[0], refused[1])
            return
        cost = 2 * HEADER_SIZE  # the reply's header, until we know its size
        try:
            self._take(cost)
        except BaseException:
            clients.remove()
            raise
        fd = fds.pop()  # the client thread's from here on
        ctx = RequestContext(h.id, None, self.version)
        with self._lock:
            self._inflight += 1
            self._active[h.id] = ctx
            self._running.add(ctx)
        try:
            threading.Thread(target=self._serve_client, args=(ctx, st, fd, cost), name="pairvisor-client", daemon=True).start()
        except BaseException:
            os.close(fd)
            clients.remove()
            self._finish_request(ctx, MessageType.ERROR, encode_error(ErrorCode.UNAVAILABLE, "cannot start a thread for the client"), cost, handler=False)

    def _serve_client(self, ctx: RequestContext, st: ClientState, fd: int, cost: int) -> None:
        """A client thread: serve the client, then answer its CLIENT request."""
        assert self._clients is not None
        rtype: int = MessageType.CLIENT
        out: bytes = b""
        try:
            out = self._clients.serve(ctx, st, fd)
        except RemoteError as e:
            rtype, out = MessageType.ERROR, encode_error(e.code, e.message)
        except BaseException as e:
            self._log.error("pairvisor: serving a handed-over client crashed", exc_info=True, extra={"request_id": ctx.id})
            rtype, out = MessageType.ERROR, encode_error(ErrorCode.CRASHED, "serving the client crashed (%s; the worker's log has the details)" % type(e).__name__)
        finally:
            self._clients.remove()
        self._finish_request(ctx, rtype, out, cost, handler=False)

    def _handle(self, ctx: RequestContext, payload: bytes, cost: int) -> None:
        """Run the handler for MESSAGE request ctx.id (a pool thread) and
        queue its reply. cost bytes are held for the request; they are
        settled against the real reply and released once it is written.
        A handler that raises anything but RemoteError has crashed: its
        traceback is logged and the request answered with CRASHED."""
        rtype = MessageType.MESSAGE
        out: Any = b""
        id = ctx.id
        try:
            assert self._handler is not None
            result = self._handler(payload, ctx) if self._handler_ctx else self._handler(payload)
            if result is None:
                result = b""
            if not isinstance(result, _PAYLOAD_LIKE):
                raise TypeError("handler returned %s, want bytes" % type(result).__name__)
            out = _byteview(result)
            if len(out) > self._max_payload:
                rtype = MessageType.ERROR
                out = encode_error(ErrorCode.TOO_LARGE, "reply of %d bytes exceeds the limit of %d" % (len(out), self._max_payload))
        except RemoteError as e:
            rtype, out = MessageType.ERROR, encode_error(e.code, e.message)
        except BaseException as e:
            self._log.error(
                "handler crashed", exc_info=True, extra={"request_id": id, "request_bytes": len(payload)}
            )
            rtype, out = MessageType.ERROR, encode_error(
                ErrorCode.CRASHED, "the message handler crashed (%s; the worker's log has the details)" % type(e).__name__
            )
            if not isinstance(e, Exception):
                self._finish_request(ctx, rtype, out, cost)
                raise
        self._finish_request(ctx, rtype, out, cost)

    def _finish_request(self, ctx: RequestContext, rtype: int, out: Any, cost: int, handler: bool = True) -> None:
        id = ctx.id
        fds = ctx._settle_files()
        if rtype == MessageType.ERROR:
            _close_fds(fds)  # an ERROR carries none
        with self._lock:
            # Out of the table before the reply is queued: the peer may
            # reuse the id as soon as it has the reply.
            if self._active.get(id) is ctx:
                del self._active[id]
            self._running.discard(ctx)
        d = len(_byteview(out))  # the reply's size beyond the header held for it
        self._held.force(d)
        self._reply(rtype, id, out, cost + d, fds=fds)
        with self._lock:
            self._inflight -= 1
            if handler:
                self._handlers -= 1
            self._idle_cond.notify_all()
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        """Queue the SHUTDOWN reply once every earlier request is answered
        (their replies are queued before it, and the writer is FIFO)."""
        with self._lock:
            if self._shutdown is None or self._inflight > 0:
                return
            (id, cost, err), self._shutdown = self._shutdown, None
            if err is None:
                self.shutdown_acked = True
        if err is not None:
            self._held.force(len(err))
            self._reply(MessageType.ERROR, id, err, cost + len(err))
            return
        self._reply(MessageType.SHUTDOWN, id, b"", cost, on_sent=self._start_linger)

    def _start_linger(self) -> None:
        """After the SHUTDOWN reply: the supervisor closes its end; wait
        for that EOF at most shutdown_linger seconds."""
        if self._linger <= 0:
            return
        t = threading.Timer(self._linger, self._abort, args=("no EOF within %gs of the shutdown reply" % self._linger,))
        t.daemon = True
        with self._lock:
            if self._reason is not None:
                return
            self._linger_timer = t
        t.start()

    def _on_reply(self, h: Header, fds: List[int]) -> None:
        r = self._reader
        if h.type in (MessageType.HELLO, MessageType.CANCEL):
            raise ProtocolError("unexpected frame: %s frame with the reply flag" % _type_name(h.type), frame_id=h.id)
        with self._lock:
            pend = self._pending.pop(h.id, None)
        if pend is None:
            if h.type == MessageType.ERROR and h.id == 0:
                raise parse_error(r.read_payload(h.length))  # about the connection: the peer closes
            r.skip(h.length)  # its caller gave up
            return
        if h.type == MessageType.ERROR:
            pend.error = parse_error(r.read_payload(h.length))
        elif h.type != pend.type:
            err = ProtocolError("unexpected frame: %s reply to %s request %d" % (_type_name(h.type), _type_name(pend.type), h.id))
            pend.error = err
            pend.event.set()
            raise err
        else:
            pend.reply = bytes(r.read_payload(h.length))
            pend.files = fds[:]
            fds.clear()
        pend.event.set()

    # -- handed-over clients (role "front") ------------------------------------

    def serve_front(self) -> bytes:
        """Serve a handed-over client (its state in self._front) until the
        connection is over (b"": it is shut down and closed) or handed back
        (the state to reply with: our descriptor is closed, the connection
        not shut down)."""
        st = self._front
        assert st is not None
        try:
            if st.flags & CLIENT_ESTABLISHED:
                self.version = st.version
                self.peer_raw = bytes(st.hello)
                self.peer = parse_hello(self.peer_raw)
                self._next_id = max(st.next_id, 1) - 1  # we send clients no requests; it goes back as it came
                self._reader.files_ok = self.version >= 3
                self._writer.start()
            else:
                self._front_hello()
        except BaseException as e:
            self._teardown(self._reason or "client hello failed: %s" % e)
            return b""
        self._log.debug("pairvisor: serving a handed-over client", extra={"client_uid": st.uid, "client_pid": st.pid, "version": self.version})
        reason = self.run()
        self._log.debug("pairvisor: done with a handed-over client", extra={"client_uid": st.uid, "client_pid": st.pid, "reason": reason})
        return self._handed_back or b""

    def _front_hello(self) -> None:
        """The hello exchange of a client handed over before it (as a
        socket path's server runs it: docs/PROTOCOL.md "Socket paths")."""
        r = self._reader
        self._writer.start()
        problem: Optional[str] = None
        code = ErrorCode.PROTOCOL
        try:
            b = r.peek_header(time.monotonic() + _CLIENT_HELLO_HEADER_WAIT)
        except socket.timeout:
            b = b""
            problem = "no complete hello header within %gs" % _CLIENT_HELLO_HEADER_WAIT
        if b is None:
            raise ConnectionClosed("the client closed the connection before its hello")
        if problem is None:
            m0, m1, t, flags, length, fid = _HEADER.unpack(b)
            if m0 != MAGIC0 or m1 != MAGIC1:
                problem = "bad frame magic %#04x %#04x" % (m0, m1)
            elif t != MessageType.HELLO:
                problem = "first frame is %s" % _type_name(t)
            elif flags:
                problem = "hello with flags %#04x" % flags
            elif fid:
                problem = "hello with id %d" % fid
            elif length > MAX_HELLO_PAYLOAD:
                problem, code = "hello payload of %d bytes exceeds the limit of %d" % (length, MAX_HELLO_PAYLOAD), ErrorCode.TOO_LARGE
            elif length < 8:
                problem = "hello payload of %d bytes, want 8 to %d" % (length, MAX_HELLO_PAYLOAD)
        if problem is not None:
            e = ProtocolError("hello expected: " + problem, code=code)
            self._violation(e)  # in place of our hello
            raise e
        ours = Hello(MIN_PROTOCOL_VERSION, self._max_version, os.getpid(), self._name)
        p = encode_hello(ours)
        self._writer.put(encode_header(MessageType.HELLO, 0, len(p), 0), p)
        self._read_hello(ours, time.monotonic() + _CLIENT_HANDSHAKE)

    def request_detach(self, limit: float) -> None:
        """(Any thread.) The worker is stopping: hand the client back
        between two frames, or, if that has not happened within limit
        seconds, close its connection. The wait goes on, limit seconds at
        a time, for as long as the client takes some of our bytes
        meanwhile (a reply going out slowly is let finish), as Go's
        worker does."""
        with self._lock:
            if self._detach_req or self._reason is not None or self._wake_w < 0:
                return
            self._detach_req = True
            self._stopping = True
            os.write(self._wake_w, b"x")  # under the lock: the pipe closes under it too
            t = self._detach_timer = self._detach_wait(limit)
        t.start()

    def _detach_wait(self, limit: float) -> threading.Timer:
        """A timer for the next limit seconds of a detach's wait (under
        self._lock; the caller starts it)."""
        t = threading.Timer(limit, self._detach_overdue, args=(limit, self._writer.taken()))
        t.daemon = True
        return t

    def _detach_overdue(self, limit: float, seen: int) -> None:
        """(The detach timer.) The client is not back yet: wait on if it
        took some of our bytes since the timer was set (seen), else
        close its connection."""
        with self._lock:
            if self._reason is not None or self._detach_timer is None:
                return
            moving = self._writer.taken() != seen
            if moving:
                t = self._detach_timer = self._detach_wait(limit)
        if moving:
            t.start()
            return
        self._abort("not between two frames within %gs of the worker's shutdown, and taking none of our bytes: closed" % limit)

    def _detach(self, here: bool) -> Optional[bytes]:
        """(The reader, stopped between frames.) Answer every request
        taken in, write the replies and close our descriptor without
        shutting the connection down; return the state to hand back, or
        None if the connection ended meanwhile (then torn down by run)."""
        with self._lock:
            while self._inflight > 0 and self._reason is None:
                self._idle_cond.wait()
            if self._reason is not None:
                return None
        self._writer.stop(flush=self._write_timeout)
        ended = self._writer.join(self._write_timeout + _JOIN_SLICE)  # while the client takes our bytes
        with self._lock:
            if self._reason is not None or not ended or self._writer.broken:
                return None
            self._reason = "handed back to the supervisor"
            with self._fd_lock:
                self._fd_closed = True
                self._sock.close()  # no shutdown: the supervisor serves the connection on
            self._close_wake()
            timer, self._detach_timer = self._detach_timer, None
        if timer is not None:
            timer.cancel()
        self._held.close(self._reason)
        self._outgoing.close(self._reason)
        self._pool.close()
        self._reader.close_files()
        st = self._front
        assert st is not None
        flags = CLIENT_ESTABLISHED | (st.flags & CLIENT_CONTROL)
        if here and not self._stopping:
            flags |= CLIENT_HERE
        return encode_client(
            ClientState(flags, self.version, st.uid, st.gid, st.pid, st.idle_ms, self._next_id + 1, self.peer_raw, self._reader.pending())
        )

    def _close_wake(self) -> None:
        """Close the wake pipe (under self._lock)."""
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _abort(self, reason: str, level: int = logging.DEBUG) -> None:
        """Close the connection from any thread: record why and shut the
        socket down, which ends the reader's wait (it then tears down)."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            if not self._fd_closed:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._idle_cond.notify_all()
        self._log.log(level, "pairvisor: closing the connection", extra={"reason": reason})
        self._held.close(reason)
        self._outgoing.close(reason)

    def _teardown(self, reason: str) -> None:
        """End the connection (reader thread only): fail pending calls,
        stop the writer and the pool, close the socket once and every
        descriptor the connection holds."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            pending, self._pending = self._pending, {}
            timer, self._linger_timer = self._linger_timer, None
            dtimer, self._detach_timer = self._detach_timer, None
            running = list(self._running)
            self._idle_cond.notify_all()
        for t in (timer, dtimer):
            if t is not None:
                t.cancel()
        for ctx in running:  # their replies can no longer be sent
            ctx._cancel()
        for p in pending.values():
            p.error = ConnectionClosed(reason)
            p.event.set()
        self._held.close(reason)
        self._outgoing.close(reason)
        # Frames already queued (replies, a last ERROR) go out while the
        # peer takes some of them at least every _CLOSE_FLUSH seconds: a
        # peer that only half-closed still reads them, one that is gone
        # fails the write at once.
        self._writer.stop(flush=_CLOSE_FLUSH)
        self._writer.join(_CLOSE_FLUSH + _JOIN_SLICE)
        with self._lock:
            if not self._fd_closed:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._writer.join(self._write_timeout)
        self._pool.close()
        self._reader.close_files()
        with self._lock:
            with self._fd_lock:
                self._fd_closed = True
                self._sock.close()
            self._close_wake()

    # -- our requests ---------------------------------------------------------

    def call(self, type: int, payload: Union[bytes, bytearray, memoryview], timeout: Optional[float]) -> bytes:
        """Send a request and wait for its reply (see Client.call).
        Descriptors that come with the reply are closed."""
        reply, fds = self.call_files(type, payload, (), timeout)
        _close_fds(fds)
        return reply

    def call_files(self, type: int, payload: Union[bytes, bytearray, memoryview], files: Iterable[Any], timeout: Optional[float]) -> Tuple[bytes, List[int]]:
        """Send a request with files (ints or objects with fileno(), of
        which duplicates are sent: the caller keeps its own) and wait for
        its reply; return it and the descriptors that came with it (the
        caller's to close). NoFilesError, sending nothing, if files is
        not empty and the connection does not speak version 3."""
        t = int(type)
        if t not in _TYPE_VALUES or t in (MessageType.HELLO, MessageType.ERROR, MessageType.CANCEL):
            raise ValueError("%s is not a request type" % _type_name(t))
        files = list(files)
        if files and self.version < 3:
            raise NoFilesError("descriptors need protocol version 3; this connection speaks %d" % self.version)
        if len(files) > MAX_FILES:
            raise NoFilesError("a frame carries at most %d descriptors, not %d" % (MAX_FILES, len(files)))
        payload = _byteview(payload)
        n = len(payload)
        limit = MAX_PING_PAYLOAD if t == MessageType.PING else self._max_payload
        if n > limit:
            raise FrameTooLarge("frame too large: %s payload of %d bytes exceeds the limit of %d" % (_type_name(t), n, limit))
        deadline = None if timeout is None else time.monotonic() + timeout
        cost = HEADER_SIZE + n
        if not self._outgoing.take(cost, self._write_timeout if timeout is None else timeout, deadline):
            raise TimeoutError("no room to queue the %s request within %gs" % (_type_name(t), timeout or self._write_timeout))
        pend = _Pending(t)
        try:
            fds = _dup_files(files)
        except BaseException:
            self._outgoing.release(cost)
            raise
        with self._lock:
            if self._reason is not None:
                self._outgoing.release(cost)
                _close_fds(fds)
                raise ConnectionClosed(self._reason)
            self._next_id += 1
            id = self._next_id
            self._pending[id] = pend
        self._writer.put(encode_header(t, FLAG_FILES if fds else 0, n, id), payload, cost, self._outgoing, fds=fds or None)
        if not pend.event.wait(timeout):
            with self._lock:
                mine = self._pending.pop(id, None) is not None  # a late reply is read and dropped
            if not pend.event.is_set():
                if mine:
                    self._send_cancel(t, id)
                raise TimeoutError("no reply to %s request %d within %gs" % (_type_name(t), id, timeout or 0))
        if pend.error is not None:
            _close_fds(pend.files)
            raise pend.error
        assert pend.reply is not None
        return pend.reply, pend.files

    def _send_cancel(self, t: int, id: int) -> None:
        """Tell the peer we gave up on our request id (version 2; not for
        PING, which the peer answers without a handler). Best effort: at
        most MAX_QUEUED_CANCELS wait to be written, after the request."""
        if self.version < 2 or t == MessageType.PING or self._reason is not None:
            return
        if self._cancels.try_take(HEADER_SIZE):
            self._writer.put(encode_header(MessageType.CANCEL, 0, 0, id), b"", HEADER_SIZE, self._cancels)


def _check_version(v: int) -> None:
    if not isinstance(v, int) or not MIN_PROTOCOL_VERSION <= v <= PROTOCOL_VERSION:
        raise ValueError("max_version %r: this module speaks versions %d to %d" % (v, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION))


# ---------------------------------------------------------------------------
# Worker side: the process contract and serve().

ENV_WORKER = "PAIRVISOR_WORKER"
ENV_PARENT_PID = "PAIRVISOR_PARENT_PID"
ENV_FD = "PAIRVISOR_FD"
ENV_LOG_LEVEL = "PAIRVISOR_LOG_LEVEL"
CHANNEL_FD = 3


def _channel_fd(value: Optional[str]) -> int:
    try:
        fd = int(value) if value else CHANNEL_FD
    except ValueError:
        return -1
    return fd if fd > 2 else -1


# Mark the channel close-on-exec as soon as the module is imported, before
# the program can start a child that would inherit it (the Go package does
# this in its init). It costs one fcntl, and only in a process the
# environment calls a worker.
if ENV_WORKER in os.environ:
    _fd = _channel_fd(os.environ.get(ENV_FD))
    if _fd > 2:
        try:
            os.set_inheritable(_fd, False)
        except OSError:
            pass


class _WorkerEnv(NamedTuple):
    id: int
    fd: int
    level: int


def _take_env() -> _WorkerEnv:
    """Read and remove the contract's variables and check that a
    supervisor started this process; raise NotWorkerError if not."""
    if ENV_WORKER not in os.environ:
        raise NotWorkerError("not started by a supervisor: %s is not set" % ENV_WORKER)
    id_s = os.environ.get(ENV_WORKER, "")
    ppid_s = os.environ.get(ENV_PARENT_PID, "")
    fd_s = os.environ.get(ENV_FD)
    level = _level_from_env(os.environ.get(ENV_LOG_LEVEL))
    for k in list(os.environ):
        if k.startswith("PAIRVISOR_"):
            del os.environ[k]
    fd = _channel_fd(fd_s)
    if fd < 0:
        raise NotWorkerError("not started by a supervisor: %s=%r is not a descriptor above 2" % (ENV_FD, fd_s))
    try:
        os.set_inheritable(fd, False)
    except OSError:
        pass
    try:
        wid = int(id_s)
    except ValueError:
        wid = 0
    if wid < 1:
        raise NotWorkerError("not started by a supervisor: %s=%r is not a worker id" % (ENV_WORKER, id_s))
    ppid = os.getppid()
    if ppid_s != str(ppid):
        raise NotWorkerError(
            "not started by a supervisor: %s=%r but the parent is pid %d: environment inherited from elsewhere" % (ENV_PARENT_PID, ppid_s, ppid)
        )
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise NotWorkerError("not started by a supervisor: fd %d: %s" % (fd, e)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise NotWorkerError("not started by a supervisor: fd %d is not a socket" % fd)
    return _WorkerEnv(wid, fd, level)


_UCRED = struct.Struct("3i")


def _peer_cred(sock: socket.socket) -> Tuple[int, int, int]:
    """Return the peer's (pid, uid, gid) from SO_PEERCRED."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def serve(
    handler: Optional[Handler],
    *,
    cancellable: Optional[bool] = None,
    name: Optional[str] = None,
    logger: Optional[logging.Logger] = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_payload: int = MAX_PAYLOAD,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    shutdown_linger: float = 1.0,
    max_version: int = PROTOCOL_VERSION,
    max_files: int = MAX_FILES,
    max_clients: int = DEFAULT_MAX_CLIENTS,
) -> str:
    """Serve as a pairvisor worker until the supervisor is done with us.

    Call it once set-up is done (typically from the main thread, which it
    then uses as the connection's reader): its hello tells the supervisor
    that the worker is ready. It first reads the contract
    (``PAIRVISOR_WORKER``, ``PAIRVISOR_PARENT_PID``, ``PAIRVISOR_FD``,
    ``PAIRVISOR_LOG_LEVEL``), removes every ``PAIRVISOR_`` variable from
    ``os.environ`` and marks the channel close-on-exec, so that children
    neither think they are workers nor inherit it, and checks that the
    parent is the supervisor named and that the channel is a socket that
    parent created (``SO_PEERCRED``). If not, it raises
    :class:`NotWorkerError` and leaves the descriptor open and alone.

    Then it answers PING and ECHO itself and runs the handler for each
    MESSAGE in a bounded pool of threads (``max_concurrent``; more are
    refused with ``UNAVAILABLE``): ``handler(payload)``, or
    ``handler(payload, ctx)`` with a :class:`RequestContext` whose
    ``cancelled`` event is set when the supervisor cancels the request
    (protocol version 2) or the channel closes. ``cancellable`` says
    which; by default (None) a handler that can be called with two
    arguments and not with one gets ctx. The handler returns the reply's
    bytes (None for an empty reply); raising :class:`RemoteError` (or
    :class:`Cancelled`) sends that error on purpose; raising anything
    else is a crash: the traceback is logged and the request answered with
    ``CRASHED`` (code 10), and the worker goes on serving. A None handler
    refuses messages with ``UNSUPPORTED``.

    It returns (the reason, a string) after a SHUTDOWN: once it has
    answered every request before it and the SHUTDOWN itself, and the
    supervisor has closed the channel (or ``shutdown_linger`` seconds
    after the reply). The program should then exit with status 0. When
    the channel ends any other way (EOF, an ERROR with id 0, a protocol
    violation, a failed hello), it raises :class:`ChannelClosed`, and the
    program must exit with a non-zero status, which an uncaught exception
    does. Either way it must exit: a worker never outlives its channel.

    Protocol version 3 (offered with ``max_files`` > 0, the default):
    the supervisor may send descriptors with a message (the handler finds
    them in ``ctx.files``, and a message with descriptors for a handler
    that takes no ``ctx`` is refused with ``UNSUPPORTED``); a handler may
    send files with its reply (``ctx.attach_files``). And the supervisor
    of a socket path (``supervisor run --socket PATH --handoff``) may hand
    the worker clients (CLIENT requests): up to ``max_clients`` at once
    (negative: none), each served in a thread of its own, pings and
    echoes by the library and messages by ``handler``, directly, until
    the client goes away or must go back to the supervisor (in front of a
    STATUS or RELOAD, and on SHUTDOWN, before it is answered).

    ``name`` is sent in the hello (default ``worker.N``); ``logger``
    receives the library's own lines (default :func:`get_logger` at the
    supervisor's level); ``max_version`` (1 to 3) is the highest protocol
    version offered; ``max_files`` (0 to 16) the descriptors accepted
    with one frame (0: version 2 at most).
    """
    _check_version(max_version)
    ctx_arg = _wants_context(handler) if cancellable is None and handler is not None else bool(cancellable)
    env = _take_env()
    log = logger if logger is not None else get_logger("worker", env.level)
    sock = socket.socket(fileno=env.fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise NotWorkerError("not started by a supervisor: fd %d is not a Unix stream socket" % env.fd)
        pid, _, _ = _peer_cred(sock)
        if pid != os.getppid():
            raise NotWorkerError(
                "not started by a supervisor: fd %d's peer is pid %d, not the parent %d: socket inherited from elsewhere" % (env.fd, pid, os.getppid())
            )
    except NotWorkerError:
        sock.detach()  # leave the descriptor to the program
        raise
    except OSError as e:
        sock.detach()
        raise NotWorkerError("not started by a supervisor: fd %d: %s" % (env.fd, e)) from None
    conn = _Conn(
        sock,
        name=name if name is not None else "worker.%d" % env.id,
        role="worker",
        handler=handler,
        handler_ctx=ctx_arg,
        logger=log,
        max_payload=max_payload,
        max_concurrent=max_concurrent,
        max_buffered=max_buffered,
        write_timeout=write_timeout,
        shutdown_linger=shutdown_linger,
        max_version=max_version,
        max_files=max_files,
        max_clients=max_clients,
    )
    try:
        conn.hello()
    except (PairvisorError, OSError) as e:
        # The connection is torn down (the socket closed) by now.
        raise ChannelClosed("hello failed: %s" % e) from e
    assert conn.peer is not None
    log.debug("ready", extra={"version": conn.version, "peer": conn.peer.name})
    reason = conn.run()
    if not conn.shutdown_acked:
        log.debug("channel closed without a shutdown request", extra={"reason": reason})
        raise ChannelClosed(reason)
    log.debug("shutdown requested; channel closed", extra={"reason": reason})
    return reason


# ---------------------------------------------------------------------------
# Client side.


def _sockaddr(path: str) -> str:
    """Map "@name" to a Linux abstract socket address."""
    return "\0" + path[1:] if path.startswith("@") else path


class Client:
    """A framed client of a supervisor's socket path (``supervisor serve``
    or ``supervisor run --socket``).

    ``Client(path)`` connects, checks that the server runs as root, as our
    effective uid or as one of ``trust_uids`` (else
    :class:`UntrustedPeerError`, and nothing is sent), sends its hello
    first and reads the server's. ``path`` may be ``@name`` for an abstract
    socket. ``timeout`` bounds the connect and hello and is the default
    bound of every call. Its methods are safe to call from several threads
    at once; requests are multiplexed on the one connection. The server's
    own PING and ECHO requests are answered; others are refused with
    ``UNSUPPORTED``.

    ``max_version`` (1 to 3) is the highest protocol version offered; 3
    only with ``max_files`` > 0 (descriptors taken with one frame; the
    default 0 offers 2). On a version 2 or 3 connection a call that times
    out sends a CANCEL for its request (not for a ping), so that the
    server stops working on it. :meth:`call_files` passes descriptors on
    a version 3 connection.

    Errors: :class:`RemoteError` for an ERROR reply,
    :class:`ConnectionClosed` once the connection has closed,
    ``TimeoutError`` for a call not answered in time (its late reply is
    dropped), :class:`ProtocolError` for a malformed frame from the server.
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 10.0,
        name: str = "client",
        trust_uids: Iterable[int] = (),
        logger: Optional[logging.Logger] = None,
        max_payload: int = MAX_PAYLOAD,
        max_version: int = PROTOCOL_VERSION,
        max_files: int = 0,
    ) -> None:
        _check_version(max_version)
        self.timeout = timeout
        self.path = path
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec, as Python makes every fd
        try:
            self._connect(sock, _sockaddr(path), deadline)
            _, uid, _ = _peer_cred(sock)
            if uid != 0 and uid != os.geteuid() and uid not in set(trust_uids):
                raise UntrustedPeerError("server at %s runs as uid %d, which is neither root, nor ours (%d), nor trusted" % (path, uid, os.geteuid()))
        except BaseException:
            sock.close()
            raise
        self._conn = _Conn(sock, name=name, role="client", logger=logger, max_payload=max_payload, max_version=max_version, max_files=max_files)
        self._conn.hello(deadline)
        self._thread = threading.Thread(target=self._conn.run, name="pairvisor-client-reader", daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(sock: socket.socket, addr: str, deadline: float) -> None:
        sock.setblocking(False)
        while True:
            try:
                sock.connect(addr)
                break
            except BlockingIOError as e:
                # EAGAIN: the server's accept queue is full; a Unix socket's
                # non-blocking connect does not complete later, so retry.
                if e.errno != errno.EAGAIN:
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError("connect %s: the server's accept queue stayed full" % addr.lstrip("\0")) from None
                select.select([], [], [], 0.01)
        sock.setblocking(True)

    @property
    def peer(self) -> Hello:
        """The server's hello."""
        assert self._conn.peer is not None
        return self._conn.peer

    @property
    def version(self) -> int:
        """The negotiated protocol version."""
        return self._conn.version

    def call(self, type: int, payload: Union[bytes, bytearray, memoryview] = b"", timeout: Optional[float] = None) -> bytes:
        """Send a request of ``type`` (a :class:`MessageType` other than
        HELLO, CANCEL and ERROR) and return its reply's payload.
        ``timeout`` defaults to the client's."""
        return self._conn.call(type, payload, self.timeout if timeout is None else timeout)

    def call_files(
        self, type: int, payload: Union[bytes, bytearray, memoryview] = b"", files: Iterable[Any] = (), timeout: Optional[float] = None
    ) -> Tuple[bytes, List[int]]:
        """:meth:`call` with files (ints or objects with ``fileno()``; the
        caller keeps its own) sent with the request, returning the reply
        and the descriptors that came with it (close-on-exec, the
        caller's to close). Raises :class:`NoFilesError`, sending nothing,
        if files is not empty and the connection is not at version 3."""
        return self._conn.call_files(type, payload, files, self.timeout if timeout is None else timeout)

    def ping(self, data: bytes = b"", timeout: Optional[float] = None) -> float:
        """Send a ping (at most 64 bytes of data) and return the round
        trip in seconds. A pong that does not return data raises
        :class:`ProtocolError`."""
        start = time.monotonic()
        got = self.call(MessageType.PING, data, timeout)
        if got != bytes(data):
            raise ProtocolError("pong carried %d bytes, not the %d sent" % (len(got), len(data)))
        return time.monotonic() - start

    def echo(self, data: Union[bytes, bytearray, memoryview], timeout: Optional[float] = None) -> bytes:
        """Send an echo and return what came back."""
        return self.call(MessageType.ECHO, data, timeout)

    def status(self, timeout: Optional[float] = None) -> Any:
        """Ask for the status document and return it parsed from JSON."""
        return json.loads(self.call(MessageType.STATUS, b"", timeout).decode("utf-8"))

    def message(self, data: Union[bytes, bytearray, memoryview], timeout: Optional[float] = None) -> bytes:
        """Send an application message (answered by a worker's handler)."""
        return self.call(MessageType.MESSAGE, data, timeout)

    def close(self) -> None:
        """Close the connection: calls in flight fail with
        :class:`ConnectionClosed`. Idempotent."""
        self._conn._abort("closed by the client")
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
