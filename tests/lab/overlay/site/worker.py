"""The test site's other programs: keep a log file open in var/log and write to it.

Run as `bin/py worker.py BUILDOUT_DIR [NAME]`; NAME (default worker) is how it signs its
lines and the start/stop events the tests read from /run/site-events.log.
"""
import os
import signal
import sys
import time

directory = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else "worker"


def event(what):
    with open("/run/site-events.log", "a") as f:
        f.write("%s %s %d\n" % (what, name, os.getpid()))


def stop(signum, frame):
    event("stop")
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
event("start")
with open(os.path.join(directory, "var", "log", name + ".log"), "a") as log:
    while True:
        log.write("%s %s %d alive\n" % (time.strftime("%H:%M:%S"), name, os.getpid()))
        log.flush()
        time.sleep(1)
