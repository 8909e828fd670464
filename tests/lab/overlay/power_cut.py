"""The power-cut sweep, guest side (`lab.py powercut`; in `make test` on one series).

The kill sweep (test_crash_sweep) kills a script after each action; the kernel, the pool and
every write the killed process made survive it. Here the guest's power is cut instead, right
after a chosen action (crashpoint: ZFSSNAP_CRASH_HOW=power, sysrq b, nothing synced), and the
guest boots again on the same disks (lab.py keeps them): what had not reached them is lost, the
pools are imported as a boot imports them, the site's supervisord starts as its boot would, and
the documented rerun is typed. One cut per boot: each boot checks the cut before it and cuts
the next. Its state lives on the scratch disk, which the boots share.

Each point prints `power cut after <action>: ok` or `power cut after <action>: FAILED <what>`.
"""
import json
import os
import signal
import subprocess
import sys
import time

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import BASELINE
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests import units_site
from collective.recipe.zfssnap.tests.test_crash_sweep import actions
from collective.recipe.zfssnap.tests.test_crash_sweep import crashed_run
from collective.recipe.zfssnap.tests.test_crash_sweep import mounted_at

STATE = os.path.join(layers.SCRATCH, "power-cut.json")
CUT = "/mnt/share/cut"  # told to the host before the cut: the boot that follows is expected


def crashed(argv, after=None):
    return crashed_run(argv, after, how="power")


def release():
    with open(SITE + "/VERSION", "w") as f:
        f.write("2.0\n")
    return app("/write?blob=release", "POST")


# -- the families: how each is prepared, run, and checked after the cut and the rerun --------
def prepare_rollback(keep):
    def prepare():
        target = take_snapshot("cut")
        before = app()
        release()
        argv = [SITE + "/bin/rollback", "--yes", "--again"] + (["--keep"] if keep else [])
        return argv + [target], {"target": target, "counter": before["counter"]}
    return prepare


def prepare_snapshot():
    return [SITE + "/bin/snapshot", "cut"], {}


def prepare_half_set():
    """A bin/snapshot killed between the two pools (a half set on tank): its rerun destroys
    the half set first, and is cut there."""
    argv = [SITE + "/bin/snapshot", "cut"]
    rc, out = crashed_run(argv, after=2)  # 1: the record naming the set; 2: the first pool
    if rc != -signal.SIGKILL:
        raise AssertionError("bin/snapshot was not killed after its first pool (exit %d):\n%s"
                             % (rc, out))
    return argv, {}


def prepare_cleanup():
    take_snapshot("one")
    take_snapshot("two")
    return [SITE + "/bin/cleanup", "--yes"], {}


def check_rollback(keep):
    def check(facts):
        state = layers.wait_for(app, what="the app to answer")
        problems = []
        if state["version"] != "1.0":
            problems.append("the code is at %s" % state["version"])
        if state["counter"] != facts["counter"]:
            problems.append("the data is at counter %s, not %s" % (state["counter"],
                                                                    facts["counter"]))
        kept = [n for n in sh("zfs", "list", "-H", "-o", "name").split()
                if "-rolled-away-" in n]
        if keep and len(kept) < len(DATASETS):
            problems.append("kept %s" % (kept or "nothing"))
        for dataset in DATASETS:
            names = snapshot_names(dataset)
            if names[:1] != [BASELINE] or names[-1:] != [facts["target"]]:
                problems.append("%s has %s" % (dataset, names))
        return problems
    return check


def prepare_units():
    rc, out, err = units_site.run(units_site.SITE + "/bin/snapshot", "cut")
    if rc != 0:
        raise AssertionError("bin/snapshot of the units site failed:\n" + out + err)
    target = out.split()[1]
    before = units_site.client("client1")
    units_site.release()
    return [units_site.SITE + "/bin/rollback", "--yes", "--again", target], {
        "target": target, "counter": before["counter"]}


def check_units(facts):
    layers.wait_for(lambda: set(units_site.states().values()) == {"active"}, timeout=120,
                    what="every unit active")
    problems = []
    for name in units_site.CLIENTS:
        state = units_site.client(name, timeout=120)
        if (state["version"], state["counter"]) != ("1.0", facts["counter"]):
            problems.append("%s at %s, counter %s" % (name, state["version"], state["counter"]))
    for dataset in units_site.DATASETS:
        names = snapshot_names(dataset)
        if names[:1] != [BASELINE] or names[-1:] != [facts["target"]]:
            problems.append("%s has %s" % (dataset, names))
    return problems


def check_snapshot(facts):
    layers.wait_for(app, what="the app to answer")
    sets = {tuple(n for n in snapshot_names(d) if n != BASELINE) for d in DATASETS}
    # The rerun took its own set: every dataset has the same snapshots of the part.
    return [] if len(sets) == 1 and sets != {()} else ["snapshots differ: %s" % sorted(sets)]


def check_cleanup(facts):
    layers.wait_for(app, what="the app to answer")
    left = {d: snapshot_names(d) for d in DATASETS}
    return ["%s has %s" % (d, n) for d, n in left.items() if n != [BASELINE]]


FAMILIES = {
    "snapshot": (prepare_snapshot, check_snapshot),
    "snapshot after a half set": (prepare_half_set, check_snapshot),
    "rollback": (prepare_rollback(False), check_rollback(False)),
    "rollback --keep": (prepare_rollback(True), check_rollback(True)),
    "cleanup": (prepare_cleanup, check_cleanup),
    "rollback (systemd)": (prepare_units, check_units),
}
RESET = {"rollback (systemd)": lambda: units_site.UnitsSite.reset()}


def choose(family, steps):
    """Where unsynced state matters: the record just saved, the first and the last change of
    the datasets, the middle of the --keep swap (between renames), the destroys (the first,
    the middle and the last), a half set's destroy and the snapshot after it."""
    def first(pred):
        return next((n for n, a in enumerate(steps, 1) if pred(a)), None)

    def last(pred):
        found = [n for n, a in enumerate(steps, 1) if pred(a)]
        return found[-1] if found else None

    if family == "snapshot":
        # Between the pools (after the last, the set is whole: nothing to see).
        picks = [first(lambda a: a.startswith("zfs snapshot"))]
    elif family == "snapshot after a half set":
        picks = [first(lambda a: a.startswith("zfs destroy")),
                 first(lambda a: a.startswith("zfs snapshot"))]
    elif family == "cleanup":
        destroys = [n for n, a in enumerate(steps, 1) if a.startswith("zfs destroy")]
        picks = destroys[:1] + destroys[len(destroys) // 2:][:1] + destroys[-1:] + [len(steps)]
    elif family == "rollback (systemd)":
        picks = [first(lambda a: a.startswith("record")),
                 last(lambda a: a.startswith("zfs rollback")),
                 first(lambda a: "systemctl" in a and " start " in a)]
    elif family == "rollback":
        picks = [first(lambda a: a.startswith("record")),
                 first(lambda a: a.startswith("zfs rollback")),
                 last(lambda a: a.startswith("zfs rollback"))]
    else:
        renames = [n for n, a in enumerate(steps, 1) if a.startswith("zfs rename")]
        picks = [first(lambda a: a.startswith("record")),
                 renames[len(renames) // 2] if renames else None,
                 renames[-1] if renames else None]
    return sorted({p for p in picks if p})


# -- one boot ----------------------------------------------------------------------------------
def load():
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, STATE)
    fd = os.open(os.path.dirname(STATE), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_names(dataset):
    return [n.split("@", 1)[1] for n in sh("zfs", "list", "-H", "-t", "snapshot", "-d", "1",
                                             "-o", "name", "-s", "createtxg", dataset).split()]


def boot_up(family):
    """What a boot does: the pools imported (from the cache file, as zfs-import-cache does;
    scanning the scratch disk if the cut lost that file), `zfs mount -a`, and the site of the
    point started: the supervisord site's supervisord when its bin/ is there (as its unit or
    cron @reboot would), or the units site's units. The other site stays down: starting its
    programs would cost a minute of emulated CPU per boot and prove nothing here."""
    if os.path.exists("/etc/zfs/zpool.cache"):
        sh("zpool", "import", "-c", "/etc/zfs/zpool.cache", "-a", "-N", check=False)
    missing = [p for p in layers.GuestPool.pools
               if subprocess.run(["zpool", "list", p], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode != 0]
    if missing:
        sh("zpool", "import", "-d", layers.SCRATCH, "-N", *missing)
    sh("zfs", "mount", "-a", check=False)
    if family in RESET:
        # The units as a boot starts them (queued: one whose files are missing fails, and its
        # Restart= tries again).
        units_site.systemctl("--no-block", "start", *units_site.UNITS, check=False)
    elif os.path.exists(SITE + "/bin/supervisord"):
        sh(SITE + "/bin/supervisord", check=False)


def recover(point):
    """After the cut at `point`: the documented rerun, then the family's checks."""
    family = FAMILIES[point["family"]]
    table = mounted_at()
    problems = ["a kept dataset at %s" % m for m, d in table.items() if "-rolled-away-" in d]
    empty = [d for d, m in DATASETS.items() if m not in table]
    for dataset in empty:  # the documented recovery of a boot in --keep's swap window
        sh("zfs", "mount", dataset, check=False)
    if empty and os.path.exists(SITE + "/bin/supervisord"):
        sh(SITE + "/bin/supervisord", check=False)
    rc, out = crashed(point["argv"])
    if rc != 0:
        return problems + ["the rerun exited %d: %s" % (rc, " ".join(out.split())[-400:])]
    return problems + family[1](point["facts"])


def cut_at(point):
    """Prepare the point from the baseline and run its script, cut after its action."""
    RESET.get(point["family"], Site.reset)()
    argv, facts = FAMILIES[point["family"]][0]()
    point.update(argv=argv, facts=facts)
    return argv


def main():
    state = load()
    if state is None:
        layers.GuestPool.setUp()
        Site.setUp()
        units_site.UnitsSite.setUp()
        points = []
        for family, (prepare, _) in FAMILIES.items():
            RESET.get(family, Site.reset)()
            argv, _ = prepare()
            steps = actions(argv, quiet=True)
            for n in choose(family, steps):
                points.append({"family": family, "after": n, "action": steps[n - 1]})
        print("power cuts: %d points: %s" % (len(points), "; ".join(
            "%s after %d (%s)" % (p["family"], p["after"], p["action"][:40]) for p in points)),
            flush=True)
        state = {"points": points, "next": 0, "results": [], "started": time.time()}
    else:
        point = state["points"][state["next"]]
        boot_up(point["family"])
        try:
            problems = recover(point)
        except Exception as e:  # a check that cannot even run is a failed point, said so
            problems = ["%s: %s" % (type(e).__name__, e)]
        line = "power cut after %s (%s, action %d): %s" % (
            point["action"][:60], point["family"], point["after"],
            "ok" if not problems else "FAILED " + "; ".join(problems))
        print(line, flush=True)
        state["results"].append(line)
        state["next"] += 1
    while state["next"] < len(state["points"]):
        point = state["points"][state["next"]]
        argv = cut_at(point)
        save(state)
        with open(CUT, "w") as f:
            f.write("%s after %d\n" % (point["family"], point["after"]))
        os.sync()  # what the driver wrote is on disk; what the script writes next may not be
        rc, out = crashed(argv, after=point["after"])
        os.remove(CUT)
        # Still here: the cut did not happen.
        line = "power cut after %s (%s, action %d): FAILED the run was not cut (exit %d): %s" % (
            point["action"][:60], point["family"], point["after"], rc,
            " ".join(out.split())[-300:])
        print(line, flush=True)
        state["results"].append(line)
        state["next"] += 1
    failed = [r for r in state["results"] if ": FAILED " in r]
    print("power cuts: %d points, %d failed, in %.0f s" % (
        len(state["results"]), len(failed), time.time() - state["started"]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(main())
