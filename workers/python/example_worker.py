#!/usr/bin/env python3
"""An example pairvisor worker in Python: it hashes and upper-cases.

Each application message is a command and its data, separated by one
space; the reply is:

* ``sha256 DATA``: the hex SHA-256 of DATA;
* ``upper DATA``: DATA upper-cased (ASCII letters only, any bytes pass);
* ``pid``: the worker's pid, in decimal;
* anything else: a ``BAD_REQUEST`` error naming the commands.

Run it under a supervisor, which starts two copies and serves them on a
socket::

    supervisor run --workers 2 --socket /tmp/pv.sock -- python3 workers/python/example_worker.py

Pings and echoes are answered by the library itself.
"""

from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pairvisor  # noqa: E402  (found next to this file)

log = pairvisor.get_logger("example")


def handle(payload: bytes) -> bytes:
    """Answer one application message (runs in a handler thread)."""
    cmd, _, data = payload.partition(b" ")
    if cmd == b"sha256":
        out = hashlib.sha256(data).hexdigest().encode()
    elif cmd == b"upper":
        out = data.upper()
    elif cmd == b"pid":
        out = str(os.getpid()).encode()
    else:
        raise pairvisor.RemoteError(pairvisor.ErrorCode.BAD_REQUEST, "unknown command %r: want sha256, upper or pid" % cmd.decode("utf-8", "replace"))
    log.debug("handled", extra={"command": cmd.decode("utf-8", "replace"), "bytes": len(data)})
    return out


def main() -> int:
    """Serve until the supervisor is done with us; 2 when not a worker."""
    worker = os.environ.get("PAIRVISOR_WORKER")  # serve() removes it
    try:
        if worker is not None:
            log.info("example worker ready", extra={"worker": worker, "python": sys.version.split()[0]})
        reason = pairvisor.serve(handle, logger=log)
    except pairvisor.NotWorkerError as e:
        print("example_worker: %s (run it under `supervisor run -- python3 %s`)" % (e, sys.argv[0]), file=sys.stderr)
        return 2
    log.info("example worker done", extra={"reason": reason})
    return 0


if __name__ == "__main__":
    sys.exit(main())
