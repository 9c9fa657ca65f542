#!/usr/bin/env python3
"""An example pairvisor worker in Python: it hashes and upper-cases.

Each application message is a command and its data, separated by one
space; the reply is:

* ``sha256 DATA``: the hex SHA-256 of DATA;
* ``upper DATA``: DATA upper-cased (ASCII letters only, any bytes pass);
* ``pid``: the worker's pid, in decimal;
* ``sleep SECONDS``: ``slept`` after SECONDS (at most 60), unless the
  caller cancels the request first (protocol version 2), which is logged
  and answered with the ``INTERNAL`` error of a cancelled handler;
* anything else: a ``BAD_REQUEST`` error naming the commands.

Run it under a supervisor, which starts two copies and serves them on a
socket::

    supervisor run --workers 2 --socket /tmp/pv.sock -- python3 workers/python/example_worker.py

With ``--handoff`` the supervisor hands each framed client of the socket
to a worker (protocol version 3), which serves its echoes and messages
directly, with this same handler. Pings and echoes are answered by the
library itself. The exit status
says how the channel ended: 0 after the supervisor's SHUTDOWN, 1 when it
ended any other way, 2 when not started by a supervisor.
"""

from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pairvisor  # noqa: E402  (found next to this file)

log = pairvisor.get_logger("example")


MAX_SLEEP = 60.0


def handle(payload: bytes, ctx: pairvisor.RequestContext) -> bytes:
    """Answer one application message (runs in a handler thread)."""
    cmd, _, data = payload.partition(b" ")
    if cmd == b"sha256":
        out = hashlib.sha256(data).hexdigest().encode()
    elif cmd == b"upper":
        out = data.upper()
    elif cmd == b"pid":
        out = str(os.getpid()).encode()
    elif cmd == b"sleep":
        try:
            secs = float(data)
        except ValueError:
            secs = -1.0
        if not 0 <= secs <= MAX_SLEEP:
            raise pairvisor.RemoteError(pairvisor.ErrorCode.BAD_REQUEST, "sleep wants 0 to %g seconds" % MAX_SLEEP)
        log.info("sleeping", extra={"seconds": secs, "request_id": ctx.id})
        if ctx.cancelled.wait(secs):
            log.info("request cancelled", extra={"command": "sleep", "request_id": ctx.id})
            raise pairvisor.Cancelled()
        out = b"slept"
    else:
        raise pairvisor.RemoteError(pairvisor.ErrorCode.BAD_REQUEST, "unknown command %r: want sha256, upper, pid or sleep" % cmd.decode("utf-8", "replace"))
    log.debug("handled", extra={"command": cmd.decode("utf-8", "replace"), "bytes": len(data)})
    return out


def main() -> int:
    """Serve until the supervisor is done with us: 0 after a SHUTDOWN, 1
    when the channel ended otherwise, 2 when not a worker."""
    worker = os.environ.get("PAIRVISOR_WORKER")  # serve() removes it
    try:
        if worker is not None:
            log.info("example worker ready", extra={"worker": worker, "python": sys.version.split()[0]})
        reason = pairvisor.serve(handle, logger=log)
    except pairvisor.NotWorkerError as e:
        print("example_worker: %s (run it under `supervisor run -- python3 %s`)" % (e, sys.argv[0]), file=sys.stderr)
        return 2
    except pairvisor.ChannelClosed as e:
        log.info("example worker done: channel closed without a shutdown request", extra={"reason": e.reason})
        return 1
    log.info("example worker done", extra={"reason": reason})
    return 0


if __name__ == "__main__":
    sys.exit(main())
