"""The test site's application: a ZODB app (FileStorage + blobs) answering HTTP on 127.0.0.1.

    GET  /state              {"counter", "last_tid", "blobs": {name: text}, "version"}
    POST /write?blob=NAME[&user=U&note=D]
                             one transaction: counter + 1 and a new blob NAME, by user U
                             with description D (as Zope records them)

Run by supervisor as `bin/py app.py BUILDOUT_DIR PORT`; its Data.fs and blobs live on datasets
of their own, as a production site's would.
"""
import http.server
import json
import os
import signal
import sys
import urllib.parse

# The port first: a program that cannot start fails within supervisor's startsecs.
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), None)


def event(what):
    # Outside the datasets: the tests read the order in which programs started and stopped.
    with open("/run/site-events.log", "a") as f:
        f.write("%s app %d\n" % (what, os.getpid()))


event("start")

import transaction  # noqa: E402
import ZODB
import ZODB.blob
import ZODB.FileStorage
from persistent.mapping import PersistentMapping


directory, port = sys.argv[1], int(sys.argv[2])
storage = ZODB.FileStorage.FileStorage(
    os.path.join(directory, "var", "filestorage", "Data.fs"),
    blob_dir=os.path.join(directory, "var", "blobstorage"))
db = ZODB.DB(storage)


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
            self.reply(state(conn.root()))
        finally:
            conn.close()

    def do_POST(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            with tm as txn:
                if "user" in query:
                    txn.setUser(query["user"][0], "/Plone")
                if "note" in query:
                    txn.note(query["note"][0])
                root = conn.root()
                root["counter"] = root.get("counter", 0) + 1
                if "blobs" not in root:
                    root["blobs"] = PersistentMapping()
                for name in query.get("blob", []):
                    blob = ZODB.blob.Blob()
                    with blob.open("w") as f:
                        f.write(("blob %s at %d" % (name, root["counter"])).encode())
                    root["blobs"][name] = blob
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
