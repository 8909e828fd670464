"""The test site's second program: keeps a log file open in var/log and writes to it."""
import os
import sys
import time

directory = sys.argv[1]
with open(os.path.join(directory, "var", "log", "worker.log"), "a") as log:
    while True:
        log.write("%s worker %d alive\n" % (time.strftime("%H:%M:%S"), os.getpid()))
        log.flush()
        time.sleep(1)
