# A worker that speaks sd_notify (systemd's Type=notify) from Python,
# for the tests of `run --ready notify`. Usage:
#
#   sdnotify.py ready STATUS      READY=1 with STATUS=STATUS, then wait
#   sdnotify.py starve FEEDS FILE READY=1, WATCHDOG=1 FEEDS times spread
#                                 over 1.5 watchdog intervals, then append
#                                 "PID fed FEEDS" to FILE and stop feeding
#   sdnotify.py trigger           READY=1, then WATCHDOG=trigger
#
# Each waits for a signal afterwards; the supervisor ends it.
import os
import signal
import socket
import sys
import time


def notify(msg):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):  # an abstract name
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(addr)
        s.sendall(msg.encode())
    finally:
        s.close()


def main():
    mode = sys.argv[1]
    if mode == "ready":
        notify("READY=1\nSTATUS=" + sys.argv[2])
    elif mode == "starve":
        feeds, path = int(sys.argv[2]), sys.argv[3]
        every = int(os.environ["WATCHDOG_USEC"]) * 1.5 / feeds / 1e6
        notify("READY=1")
        for _ in range(feeds):
            time.sleep(every)
            notify("WATCHDOG=1")
        with open(path, "a") as f:
            f.write("%d fed %d\n" % (os.getpid(), feeds))
    elif mode == "trigger":
        notify("READY=1")
        notify("WATCHDOG=trigger")
    else:
        sys.exit("unknown mode " + mode)
    while True:
        signal.pause()


main()
