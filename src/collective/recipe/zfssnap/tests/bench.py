"""The benchmark (make bench): how long a release's safety net costs, against repozo.

Runs in the lab guest on the test site with a Data.fs grown to BENCH_DATAFS_MB (default 1000)
megabytes: times bin/snapshot, bin/rollback (wall clock and the downtime it reports) and
bin/cleanup, and, for the same Data.fs, a repozo full backup and the restore a rollback
replaces. Figures from an emulated guest (TCG): compare the ratios, not the absolutes.
"""
import os
import re
import subprocess
import sys
import time

import transaction
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import SITE


def timed(argv, **kw):
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=SITE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit("bench: %s failed (exit %d):\n%s" % (argv, proc.returncode, proc.stdout))
    return elapsed, proc.stdout


def grow_datafs(megabytes):
    """Append transactions of 1 MB each to the site's Data.fs (the site is stopped)."""
    storage = ZODB.FileStorage.FileStorage(SITE + "/var/filestorage/Data.fs",
                                           blob_dir=SITE + "/var/blobstorage")
    db = ZODB.DB(storage)
    conn = db.open()
    root = conn.root()
    payload = os.urandom(1 << 19).hex()  # 1 MB of text that does not compress
    for i in range(megabytes):
        # An object of its own per transaction: each commit writes 1 MB, not the root's all.
        root["payload-%d" % (i % 8)] = PersistentMapping({"data": payload + str(i)})
        transaction.commit()
    conn.close()
    db.close()


def main():
    megabytes = int(os.environ.get("BENCH_DATAFS_MB", "1000"))
    layers.GuestPool.setUp()
    layers.Site.setUp()
    layers.stop_site()
    started = time.monotonic()
    grow_datafs(megabytes)
    size = os.path.getsize(SITE + "/var/filestorage/Data.fs")
    print("bench: Data.fs grown to %.0f MB in %.0f s" % (size / 1e6, time.monotonic() - started))
    layers.start_site()

    results = []
    for _ in range(3):
        snap, _out = timed([SITE + "/bin/snapshot", "bench"])
        layers.app("/write?blob=bench", "POST")
        with open(SITE + "/VERSION", "w") as f:
            f.write("2.0\n")
        rollback, out = timed([SITE + "/bin/rollback", "--yes"])
        down = float(re.search(r"down for (\d+\.\d+) s", out).group(1))
        layers.wait_for(layers.app)
        cleanup, _out = timed([SITE + "/bin/cleanup"])
        results.append((snap, rollback, down, cleanup))

    layers.stop_site()
    repozo = [sys.executable, "-m", "ZODB.scripts.repozo"]
    os.makedirs("/scratch/repozo", exist_ok=True)
    backup, _out = timed(repozo + ["-B", "-r", "/scratch/repozo", "-f",
                                   SITE + "/var/filestorage/Data.fs"])
    restore, _out = timed(repozo + ["-R", "-r", "/scratch/repozo", "-o",
                                    "/scratch/restored.fs"])

    def median(values):
        return sorted(values)[len(values) // 2]

    print("bench: OpenZFS %s, Data.fs %.0f MB, 3 datasets, median of %d runs" % (
        os.environ.get("ZFSSNAP_LAB_SERIES", "?"), size / 1e6, len(results)))
    rows = [("bin/snapshot", median([r[0] for r in results])),
            ("bin/rollback (wall clock)", median([r[1] for r in results])),
            ("  site down (as reported)", median([r[2] for r in results])),
            ("bin/cleanup", median([r[3] for r in results])),
            ("repozo full backup", backup),
            ("repozo restore", restore)]
    for name, seconds in rows:
        print("bench:   %-28s %7.1f s" % (name, seconds))
    print("bench: repozo restore / rollback downtime: %.1fx" % (
        restore / max(median([r[2] for r in results]), 0.001)))
    layers.Site.tearDown()
    layers.GuestPool.tearDown()


if __name__ == "__main__":
    main()
