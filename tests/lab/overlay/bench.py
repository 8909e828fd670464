"""The benchmark (make bench): what the release safety net costs, side by side in one run.

Runs in the lab guest on the test site (buildout, supervisor, a ZODB app on three datasets, and a
collective.recipe.backup part), with its Data.fs and blobs grown to each size in turn. For each
size and run it times:

- the floor: Python's start-up and the raw zfs commands each script must run;
- bin/snapshot against collective.recipe.backup's bin/snapshotbackup (blobs included);
- bin/rollback --yes (and with --keep) against the manual sequence (supervisorctl shutdown,
  zfs rollback of each dataset, bin/supervisord) and against bin/snapshotrestore with the same
  stop and start: the time from the command until the site answers with the old data, and
  the time it was down (from its last answer before to its first answer after, as a client
  polling it sees it);
- bin/cleanup, and bin/snapshot --list and bin/cleanup with SETS snapshot sets;
- the downtime's floor, from the manual sequence's own phases: the programs' stop (shutdown
  until every process is gone), the raw `zfs rollback` of the datasets, and the start until
  the site answers; bin/rollback's downtime is set against their sum;
- at the first size, a busy pool: BUSY other datasets with BUSY_SNAPSHOTS snapshots each
  beside the site (on each of its pools), and bin/snapshot, --list, cleanup and rollback again:
  their cost must not depend on the rest of the pool.

Writes one CSV row per measurement (size_mib, run, measure, seconds) to BENCH_OUT; the host
(lab.py bench) turns it into the table and the plot. Figures from an emulated guest (TCG):
compare ratios, not absolutes.
"""
import concurrent.futures
import csv
import http.client
import json
import os
import subprocess
import sys
import threading
import time

from collective.recipe.zfssnap.snapshot import by_pool
from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import SITE


PYTHON = "/opt/venv/bin/python3"  # the site's Python: what its bin/ scripts run on
P = "collective.recipe.zfssnap:"


def say(text):
    print("bench: " + text, flush=True)


def timed(argv, input=None):
    started = time.monotonic()
    proc = layers.bounded(argv, 3600, input=input, cwd=SITE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          stdin=None if input is not None else subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError("%s failed (exit %d):\n%s" % (argv, proc.returncode, proc.stdout))
    return elapsed


def zfs_all(verb, suffix, *flags):
    """One raw zfs command per dataset (what an operator types); their total time."""
    return sum(timed(["zfs", verb] + list(flags) + ["%s%s" % (d, suffix)]) for d in DATASETS)


class Poller:
    """Asks the site for its state every 20 ms, as a client would, and keeps the answers."""

    def __init__(self):
        self.samples = []  # (monotonic time, counter or None when it did not answer)
        self.running = True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while self.running:
            now = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", layers.PORT, timeout=1)
            try:
                conn.request("GET", "/state")
                counter = json.loads(conn.getresponse().read())["counter"]
            except (OSError, ValueError, http.client.HTTPException):
                counter = None
            finally:
                conn.close()
            self.samples.append((now, counter))
            time.sleep(0.02)

    def outage(self, started, counter, timeout=600):
        """(seconds from `started` until the site answers with `counter`, seconds it was
        down): waits for that answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = [(t, c) for t, c in self.samples if t >= started]
            down = [i for i, (t, c) in enumerate(after) if c is None]
            if down:
                back = [t for t, c in after[down[0]:] if c == counter]
                if back:
                    before = [t for t, c in self.samples if t < after[down[0]][0]
                              and c is not None]
                    last = before[-1] if before else started
                    return back[0] - started, back[0] - last
            time.sleep(0.05)
        raise RuntimeError("the site did not answer with counter %d within %d s"
                           % (counter, timeout))

    def stop(self):
        self.running = False
        self.thread.join()


def grow(megabytes):
    """Grow the Data.fs and the blobs (half each) to about `megabytes` MiB, with ZODB."""
    import transaction
    import ZODB
    import ZODB.blob
    import ZODB.FileStorage
    from persistent.mapping import PersistentMapping

    storage = ZODB.FileStorage.FileStorage(SITE + "/var/filestorage/Data.fs",
                                           blob_dir=SITE + "/var/blobstorage")
    db = ZODB.DB(storage)
    conn = db.open()
    root = conn.root()
    have = root.get("bench-mib", 0)
    root.setdefault("bench", PersistentMapping())
    for i in range(have, megabytes):
        if i % 2:
            blob = ZODB.blob.Blob()
            with blob.open("w") as f:
                f.write(os.urandom(1 << 20))
            root["bench"]["blob-%d" % i] = blob
        else:
            # 1 MiB of text that does not compress, in an object of its own.
            root["bench"]["data-%d" % i] = PersistentMapping(data=os.urandom(1 << 19).hex())
        root["bench-mib"] = i + 1
        transaction.commit()
    conn.close()
    db.close()


def wait_stopped():
    layers.wait_for(lambda: not layers.supervisord_pids() and not layers.program_pids(),
                    timeout=120, what="the site to stop")


def write_and_expect():
    """A change for the rollback to undo: the counter the site must show afterwards."""
    before = layers.app()["counter"]
    layers.app("/write?blob=change", "POST")
    return before


def rollback_like(poller, commands):
    """Run `commands` (callables) in order; (total, down) until the site is back as before."""
    expected = write_and_expect()
    started = time.monotonic()
    for command in commands:
        command()
    return poller.outage(started, expected)


def zfs_snapshot(names):
    """One `zfs snapshot` takes the snapshots of one pool only."""
    return sum(timed(["zfs", "snapshot"] + group) for _, group in by_pool(names))


def make_sets(count, label):
    """`count` snapshot sets as bin/snapshot makes them (its properties), a few at a time."""
    def one(i):
        name = "zfssnap-20260101T%06dZ-%s" % (i, label)
        props = {"part": "zfssnap", "buildout": SITE, "datasets": ",".join(DATASETS),
                 "created": "2026-01-01T00:00:00Z", "label": label}
        argv = ["zfs", "snapshot"]
        for key, value in sorted(props.items()):
            argv += ["-o", P + key + "=" + value]
        for _, names in by_pool(["%s@%s" % (d, name) for d in DATASETS]):
            subprocess.run(argv + names, check=True)
        return name

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def manual_rollback(poller):
    """supervisorctl shutdown, zfs rollback of each dataset, bin/supervisord, each phase timed:
    (total, down, stop, zfs rollback, start until the site answers)."""
    expected = write_and_expect()
    started = time.monotonic()
    timed([SITE + "/bin/supervisorctl", "shutdown"])
    wait_stopped()
    stopped = time.monotonic()
    zfs_all("rollback", "@manual")
    rolled_back = time.monotonic()
    timed([SITE + "/bin/supervisord"])
    total, down = poller.outage(started, expected)
    return (total, down, stopped - started, rolled_back - stopped,
            started + total - rolled_back)


def make_busy(count, snapshots):
    """`count` datasets beside the site's, spread over its pools, with `snapshots` snapshots
    each (one recursive zfs snapshot per round): what else a hosting machine's pool holds."""
    pools = sorted({d.split("/")[0] for d in DATASETS})
    parents = ["%s/bench-busy" % p for p in pools]
    for pool in pools:  # mounted, as other sites' datasets are: the mount table grows too
        subprocess.run(["zfs", "create", "-o", "mountpoint=/srv/bench-busy-" + pool,
                        pool + "/bench-busy"], check=True)

    def one(i):
        subprocess.run(["zfs", "create", "%s/d%03d" % (parents[i % len(parents)], i)],
                       check=True)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    for n in range(snapshots):
        for parent in parents:
            subprocess.run(["zfs", "snapshot", "-r", "%s@s%02d" % (parent, n)], check=True)
    return parents


def run(sizes, runs, sets, out_path, busy=200, busy_snapshots=20):
    rows = []

    def record(size, run_, measure, seconds):
        rows.append((size, run_, measure, round(seconds, 4)))

    for size in sizes:
        layers.stop_site()
        started = time.monotonic()
        grow(size)
        say("grew the Data.fs and blobs to %d MiB in %.0f s" % (size, time.monotonic() - started))
        layers.start_site()
        ctl = SITE + "/bin/supervisorctl"
        for r in range(runs):
            # The floor: Python's start-up, the raw zfs commands.
            record(size, r, "python start-up", timed([PYTHON, "-c", "pass"]))
            names = ["%s@floor" % d for d in DATASETS]
            record(size, r, "zfs snapshot", zfs_snapshot(names))
            record(size, r, "zfs list", timed(["zfs", "list", "-H", "-t", "snapshot", "-d", "1",
                                               "-o", "name"] + list(DATASETS)))
            record(size, r, "zfs destroy", zfs_all("destroy", "@floor"))
            record(size, r, "bin/snapshot", timed([SITE + "/bin/snapshot", "bench"]))
            record(size, r, "bin/snapshot --list", timed([SITE + "/bin/snapshot", "--list"]))
            record(size, r, "snapshotbackup", timed([SITE + "/bin/snapshotbackup", "-q"]))

            poller = Poller()
            try:
                total, down = rollback_like(poller, [
                    lambda: timed([SITE + "/bin/rollback", "--yes", "-q"])])
                record(size, r, "bin/rollback", total)
                record(size, r, "bin/rollback: down", down)
                record(size, r, "bin/cleanup", timed([SITE + "/bin/cleanup", "--yes", "-q"]))

                timed([SITE + "/bin/snapshot", "bench-keep"])
                total, down = rollback_like(poller, [
                    lambda: timed([SITE + "/bin/rollback", "--yes", "--keep", "-q"])])
                record(size, r, "bin/rollback --keep", total)
                record(size, r, "bin/rollback --keep: down", down)
                timed([SITE + "/bin/cleanup", "--yes", "-q"])

                zfs_snapshot(["%s@manual" % d for d in DATASETS])
                total, down, stop, zfs, start = manual_rollback(poller)
                record(size, r, "manual rollback", total)
                record(size, r, "manual rollback: down", down)
                record(size, r, "floor: programs stop", stop)
                record(size, r, "floor: zfs rollback", zfs)
                record(size, r, "floor: start until answering", start)
                zfs_all("destroy", "@manual")

                total, down = rollback_like(poller, [
                    lambda: timed([ctl, "shutdown"]), wait_stopped,
                    lambda: timed([SITE + "/bin/snapshotrestore", "--no-prompt", "-q"]),
                    lambda: timed([SITE + "/bin/supervisord"])])
                record(size, r, "snapshotrestore", total)
                record(size, r, "snapshotrestore: down", down)
            finally:
                poller.stop()
            say("%d MiB, run %d: %s" % (size, r + 1, ", ".join(
                "%s %.2f s" % (m, s) for z, rr, m, s in rows if z == size and rr == r)))
        if size == sizes[0]:
            for r in range(runs):
                made = make_sets(sets, "floor")
                record(size, r, "zfs list (%d sets)" % sets, timed(
                    ["zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name"]
                    + list(DATASETS)))
                record(size, r, "zfs destroy (%d sets)" % sets, sum(
                    timed(["zfs", "destroy", "%s@%s" % (d, ",".join(made))]) for d in DATASETS))
                make_sets(sets, "sets")
                record(size, r, "bin/snapshot --list (%d sets)" % sets,
                       timed([SITE + "/bin/snapshot", "--list"]))
                record(size, r, "bin/cleanup (%d sets)" % sets,
                       timed([SITE + "/bin/cleanup", "--yes", "-q"]))
            say("%d snapshot sets: %s" % (sets, ", ".join(
                "%s %.2f s" % (m, s) for z, rr, m, s in rows if "sets" in m and rr == 0)))
            if busy:
                started = time.monotonic()
                parents = make_busy(busy, busy_snapshots)
                say("made %d datasets with %d snapshots each beside the site in %.0f s" % (
                    busy, busy_snapshots, time.monotonic() - started))
                try:
                    busy_pool(size, runs, record)
                finally:
                    for parent in parents:
                        subprocess.run(["zfs", "destroy", "-r", parent], check=True)
                say("busy pool: %s" % ", ".join(
                    "%s %.2f s" % (m, s) for z, rr, m, s in rows if "busy" in m and rr == 0))
    with open(out_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["size_mib", "run", "measure", "seconds"])
        writer.writerows(rows)
    say("wrote %d measurements to %s" % (len(rows), out_path))
    return rows


def busy_pool(size, runs, record):
    """The scripts again, on a pool that holds much more than the site."""
    poller = Poller()
    try:
        for r in range(runs):
            record(size, r, "bin/snapshot (busy pool)", timed([SITE + "/bin/snapshot", "bench"]))
            record(size, r, "bin/snapshot --list (busy pool)",
                   timed([SITE + "/bin/snapshot", "--list"]))
            total, down = rollback_like(poller, [
                lambda: timed([SITE + "/bin/rollback", "--yes", "-q"])])
            record(size, r, "bin/rollback (busy pool)", total)
            record(size, r, "bin/rollback: down (busy pool)", down)
            record(size, r, "bin/cleanup (busy pool)",
                   timed([SITE + "/bin/cleanup", "--yes", "-q"]))
    finally:
        poller.stop()


TIMELINE = '''\
import runpy, subprocess, sys, threading, time
t0 = time.monotonic()
calls = []
lock = threading.Lock()
real = subprocess.run


def run(argv, *a, **k):
    start = time.monotonic()
    try:
        return real(argv, *a, **k)
    finally:
        with lock:
            calls.append((start - t0, time.monotonic() - t0, argv))


subprocess.run = run
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    end = time.monotonic() - t0
    for start, stop, argv in sorted(calls):
        sys.stderr.write("timeline: %6.3f-%6.3f %5.3f  %s\\n" % (
            start, stop, stop - start, " ".join(map(str, argv))[:110]))
    sys.stderr.write("timeline: %6.3f end\\n" % end)
'''


def importtime(argv):
    """The 15 slowest imports (cumulative, microseconds) of a script's run, and their sum."""
    proc = subprocess.run([PYTHON, "-X", "importtime"] + argv, cwd=SITE, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, cumulative, name = line[12:].split("|")
            if self_us.strip().isdigit():
                rows.append((int(cumulative), int(self_us), name.rstrip()))
    # Imported by the code run itself, not by another module: the name is indented once.
    top = [(c, s, n.strip()) for c, s, n in rows if not n.startswith("  ")]
    return sum(r[0] for r in top), sorted(top, reverse=True)[:15]


def timeline(argv):
    """Each subprocess the script runs, from its start (after Python's own start-up)."""
    with open("/tmp/timeline.py", "w") as f:
        f.write(TIMELINE)
    started = time.monotonic()
    proc = subprocess.run([PYTHON, "/tmp/timeline.py"] + argv, cwd=SITE, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - started
    lines = [line for line in proc.stderr.splitlines() if line.startswith("timeline:")]
    return wall, proc.returncode, lines


def profile(report):
    """Where a small command's time goes (make bench-profile): for each script, its imports
    (python -X importtime) and the commands it runs, each with its start and end; for the
    rollbacks, also the downtime a client saw."""
    def say_(text):
        say(text)
        report.append(text)

    layers.start_site()
    say_("python start-up: %.3f s" % timed([PYTHON, "-c", "pass"]))
    for args in (["snapshot", "profile"], ["snapshot", "--list"], ["cleanup", "--yes"]):
        argv = [SITE + "/bin/" + args[0]] + args[1:]
        if args[0] == "cleanup":
            timed([SITE + "/bin/snapshot", "profile-2"])
        wall, rc, lines = timeline(argv)
        say_("bin/%s: %.3f s wall (exit %d)" % (" ".join(args), wall, rc))
        for line in lines:
            say_("  " + line)
    total, top = importtime(["-c", "import collective.recipe.zfssnap.main, "
                             "collective.recipe.zfssnap.rollback"])
    say_("imports of main and rollback: %.3f s; the slowest:" % (total / 1e6))
    for cumulative, self_us, name in top:
        say_("  %7.3f s  %s" % (cumulative / 1e6, name))
    poller = Poller()
    try:
        for args in (["rollback", "--yes"], ["rollback", "--yes", "--keep"]):
            timed([SITE + "/bin/snapshot", "profile-" + args[-1].strip("-")])
            expected = write_and_expect()
            started = time.monotonic()
            wall, rc, lines = timeline([SITE + "/bin/" + args[0]] + args[1:])
            total, down = poller.outage(started, expected)
            say_("bin/%s: %.3f s wall (exit %d), until answering %.3f s, down %.3f s" % (
                " ".join(args), wall, rc, total, down))
            for line in lines:
                say_("  " + line)
            timed([SITE + "/bin/cleanup", "--yes", "-q"])
    finally:
        poller.stop()


class BenchPool(layers.GuestPool):
    """Room for a 1 GiB Data.fs and blobs, their snapshots and collective.recipe.backup's."""

    vdev_size = 12 << 30


class BenchSite(layers.Site, BenchPool):
    pass


def main():
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10,100,1024").split(",")]
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    sets = int(os.environ.get("BENCH_SETS", "500"))
    busy = int(os.environ.get("BENCH_BUSY", "200"))
    busy_snapshots = int(os.environ.get("BENCH_BUSY_SNAPSHOTS", "20"))
    out = os.environ.get("BENCH_OUT", "/mnt/share/bench.csv")
    say("OpenZFS %s, sizes %s MiB, %d runs, %d snapshot sets, busy pool %d x %d" % (
        os.environ.get("ZFSSNAP_LAB_SERIES", "?"), ",".join(map(str, sizes)), runs, sets, busy,
        busy_snapshots))
    BenchPool.setUp()
    BenchSite.setUp()
    try:
        if os.environ.get("BENCH_PROFILE"):
            report = []
            profile(report)
            with open(os.path.join(os.path.dirname(out), "profile.txt"), "w") as f:
                f.write("\n".join(report) + "\n")
        else:
            run(sizes, runs, sets, out, busy, busy_snapshots)
    finally:
        BenchSite.tearDown()
        BenchPool.tearDown()


if __name__ == "__main__":
    sys.exit(main())
