"""A program that ignores SIGTERM: supervisor has to kill it after stopwaitsecs."""
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
