"""A ZEO client of the several-hosts test: a ZODB app whose storage is a ZEO server on another
host, answering HTTP on its own host's address.

    GET  /state    {"counter", "last_tid", "blobs": {name: text}, "version", "pid"}
    POST /write    one transaction: counter + 1 and a blob named after it

Run by supervisor as `bin/py client.py BUILDOUT_DIR ADDRESS PORT ZEO_HOST:ZEO_PORT`. What ZEO
logs at WARNING and above (a client whose cache is newer than its server says so there) goes
to /run/hosts-events.log, outside the datasets, with the client's start and connection.
"""
import http.server
import json
import logging
import os
import signal
import sys
import time

directory, address, port, zeo = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# The port first: a program that cannot start fails within supervisor's startsecs.
server = http.server.HTTPServer((address, port), None)
NAME = os.path.basename(directory)


def event(what, text=""):
    with open("/run/hosts-events.log", "a") as f:
        f.write("%.6f %s %s %d %s\n" % (time.time(), NAME, what, os.getpid(),
                                        " ".join(text.split())))


class ToEvents(logging.Handler):
    def emit(self, record):
        event("zeo-" + record.levelname.lower(), record.getMessage())


logging.getLogger("ZEO").addHandler(ToEvents(logging.WARNING))
logging.getLogger("ZEO").setLevel(logging.INFO)
event("start")

import transaction  # noqa: E402
import ZEO  # noqa: E402
import ZODB.blob  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402

host, zeo_port = zeo.rsplit(":", 1)
db = ZEO.DB((host, int(zeo_port)), blob_dir=os.path.join(directory, "var", "blobcache"),
            shared_blob_dir=False, wait_timeout=120)
event("connected", db.lastTransaction().hex())


def version():
    with open(os.path.join(directory, "VERSION")) as f:
        return f.read().strip()


def state(root):
    blobs = {}
    for name, blob in sorted(root.get("blobs", {}).items()):
        with blob.open("r") as f:
            blobs[name] = f.read().decode()
    return {"counter": root.get("counter", 0), "last_tid": db.lastTransaction().hex(),
            "blobs": blobs, "version": version(), "pid": os.getpid()}


class Handler(http.server.BaseHTTPRequestHandler):

    def reply(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        conn = db.open()
        try:
            conn.sync()  # what the server has now, not this connection's last view
            self.reply(state(conn.root()))
        finally:
            conn.close()

    def do_POST(self):
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            with tm:
                root = conn.root()
                root["counter"] = root.get("counter", 0) + 1
                if "blobs" not in root:
                    root["blobs"] = PersistentMapping()
                blob = ZODB.blob.Blob()
                with blob.open("w") as f:
                    f.write(("written by %s at %d" % (NAME, root["counter"])).encode())
                root["blobs"]["w%d" % root["counter"]] = blob
            self.reply(state(conn.root()))
        finally:
            conn.close()

    def log_message(self, *args):
        pass


def stop(signum, frame):
    event("stop")
    sys.exit(0)


if __name__ == "__main__":
    server.RequestHandlerClass = Handler
    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
