"""The crash-point sweep (lab guest only): every script killed after each of its actions.

For bin/snapshot, bin/rollback, bin/rollback --keep and bin/cleanup, on the three-dataset site:
a first run with ZFSSNAP_CRASH_LOG counts the actions that change something (zfs commands,
supervisord calls, the record written), then for every N the script is killed with SIGKILL
right after action N (crashpoint.py), the power is cut (every process of the site killed,
`zfs unmount -a; zfs mount -a` as a boot does), the documented recovery is typed, and the
invariants are checked:

- after the boot: each site path holds the dataset of that name (the old state or the
  restored one), or, while --keep changes canmount (off on the old datasets, then on on the
  clones), nothing; never a kept (rolled-away) dataset. The site starts as a boot starts it
  (bin/supervisord, where bin/ is there); the recovery for an empty path is typed after that;
- after the rerun: the site answers at the target's state (rollback) or unchanged (snapshot,
  cleanup); every dataset at the target snapshot with nothing newer; the other tool's
  snapshot untouched; with --keep, the kept state holds what was written after the snapshot;
  no record left.

One line per crash point is printed (script, N, the action just done, result, and how long
each phase took). Each family runs on one OpenZFS series (SERIES).
"""
import os
import signal
import subprocess
import time
import unittest

from collective.recipe.zfssnap.tests.layers import BASELINE
from collective.recipe.zfssnap.tests.layers import BLOBSTORAGE
from collective.recipe.zfssnap.tests.layers import bounded
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import FILESTORAGE
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import program_pids
from collective.recipe.zfssnap.tests.layers import script_config
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import supervisord_pids
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests.layers import wait_for

# Each family on one series (CI's time): --keep, whose steps depend most on how OpenZFS renames
# and mounts, on the newer; the others beside the ordinary suite on the older.
SERIES = {"snapshot": "2.1", "cleanup": "2.1", "rollback": "2.1", "rollback --keep": "2.3",
          "rollback_console": "2.1"}
LOG = "/tmp/crash-actions.log"
# The console script's configuration of the same site, as a site without buildout writes it
# (docs/standalone.rst): its sweep runs `zfssnap -C SITE rollback`, the same rollback reached
# through cli.py and standalone.py.
CONSOLE = "/opt/venv/bin/zfssnap"
CONSOLE_CFG = """\
[zfssnap]
extra-datasets =
    {site}/var/filestorage
    {site}/var/blobstorage
filestorages = var/filestorage/Data.fs
supervisor-conf = {site}/parts/supervisor/supervisord.conf
stop-timeout = 30
"""


def crashed_run(argv, after=None, log=None, how="kill"):
    """(exit code, output) of a script run in the site, killed (or, `how` power, the guest's
    power cut) after action `after`."""
    env = dict(os.environ)
    for name in ("ZFSSNAP_CRASH_AFTER", "ZFSSNAP_CRASH_LOG", "ZFSSNAP_CRASH_HOW"):
        env.pop(name, None)
    env["ZFSSNAP_CRASH_TEST"] = "1"  # the crash points' opt-in (crashpoint.py)
    if after:
        env["ZFSSNAP_CRASH_AFTER"] = str(after)
        env["ZFSSNAP_CRASH_HOW"] = how
    if log:
        env["ZFSSNAP_CRASH_LOG"] = log
    proc = bounded(argv, cwd="/", env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout


def actions(argv, quiet=False):
    if os.path.exists(LOG):
        os.remove(LOG)
    rc, out = crashed_run(argv, log=LOG)
    assert rc == 0, "the counting run of %s failed (exit %d):\n%s" % (argv, rc, out)
    with open(LOG) as f:
        found = [line.rstrip("\n").split("\t", 1)[1] for line in f]
    if quiet:
        return found
    print("\n  sweep: %s makes %d actions: %s" % (
        " ".join(os.path.basename(a) for a in argv), len(found),
        "; ".join(a.split(" -o ")[0][:40] for a in found)), end="", flush=True)
    return found


class Clock:
    """How long each phase of a crash point took, for the sweep's line."""

    def __init__(self):
        self.last = time.monotonic()
        self.phases = []

    def __call__(self, name):
        now = time.monotonic()
        self.phases.append("%s %.1f" % (name, now - self.last))
        self.last = now

    def __str__(self):
        return "(%s s)" % ", ".join(self.phases)


def power_cut():
    """What a power cut and a boot do to the site: every process gone, every dataset of the
    site unmounted (by its name, the innermost first: `zfs unmount -a` leaves datasets with
    canmount=noauto mounted), then the mounts a boot makes (`zfs mount -a`)."""
    for pid in supervisord_pids() + program_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not supervisord_pids() and not program_pids(), what="the site to die")
    for _ in range(3):  # a mount made over another hides it until the top one is gone
        for point, dataset in sorted(zfs_mounts_below(SITE).items(), reverse=True):
            if "@" in dataset:
                # A snapshot under .zfs/snapshot, mounted when the plan read the Data.fs in
                # it: a boot has none, and zfs unmount takes no snapshot name.
                sh("umount", "-f", point)
            else:
                sh("zfs", "unmount", "-f", dataset)
    sh("zfs", "unmount", "-a", "-f", check=False)
    left = zfs_mounts_below(SITE)
    assert not left, "a power cut leaves nothing mounted, but %s stayed" % left
    sh("zfs", "mount", "-a", check=False)


def zfs_mounts_below(top):
    return {point: dataset for point, dataset in mounted_at().items()
            if point == top or point.startswith(top + "/")}


def boot_start():
    """A site started at boot (its supervisord's unit, or cron @reboot): when bin/ is there."""
    if os.path.exists(SITE + "/bin/supervisord"):
        sh(SITE + "/bin/supervisord", check=False)


def mounted_at():
    """{mountpoint: dataset} of the ZFS mounts, the last (visible) one for each point."""
    table = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "zfs":
                table[fields[4]] = fields[sep + 2]
    return table


def record_path():
    from collective.recipe.zfssnap import state
    return state.Places(script_config()).record


class CrashSweepTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        # test_rollback_keep_first and _second: the two halves of one sweep.
        family = self._testMethodName[len("test_"):].replace("_keep", " --keep")
        family = family.replace("_first", "").replace("_second", "")
        series = SERIES[family]
        if os.environ.get("ZFSSNAP_LAB_SERIES", series) != series:
            self.skipTest("this sweep runs on OpenZFS %s" % series)
        Site.reset()

    def line(self, script, n, action, result):
        text = "%-16s %3d  %-58s %s" % (script, n, action[:58], result)
        print("\n  sweep: " + text, end="", flush=True)

    # -- what every point checks ----------------------------------------------------------
    def check_boot(self, window_ok=False):
        """After the boot: the site paths hold their datasets (or, in --keep's one step per
        dataset, nothing); never a kept one. The recovery typed when bin/ is not there."""
        table = mounted_at()
        empty = []
        for dataset, mountpoint in DATASETS.items():
            there = table.get(mountpoint)
            self.assertNotIn("-rolled-away-", there or "", "a kept dataset at " + mountpoint)
            if there is None:
                empty.append(dataset)
                continue
            if window_ok and there.startswith(dataset + "-rollback-"):
                continue  # the clone, the restored state, before its rename
            self.assertEqual(there, dataset, "%s holds %s" % (mountpoint, there))
        if empty:
            self.assertTrue(window_ok, "nothing mounted at %s after the boot" % empty)
        return empty

    def recover(self, empty):
        """The documented recovery when a boot left a site path empty: mount the dataset by
        its name (the old one still has it in that step), then rerun."""
        for dataset in empty:
            sh("zfs", "mount", dataset)
        return ("boot: %s empty, zfs mount" % ",".join(d.split("/")[-1] for d in empty)
                if empty else "boot ok")

    def check_site(self, expected_version, target=None):
        state = wait_for(app, what="the app to answer")
        self.assertEqual(state["version"], expected_version)
        self.assertFalse(os.path.exists(record_path()), "the record is left")
        # One zfs list for all of them: each zfs call costs here, at every crash point.
        found = {}
        for name in sh("zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name", "-s",
                       "createtxg", *DATASETS).split():
            found.setdefault(name.split("@")[0], []).append(name.split("@")[1])
        for dataset in DATASETS:
            names = found.get(dataset, [])
            self.assertEqual(names[:1], [BASELINE], "the other tool's snapshot of " + dataset)
            if target:
                self.assertEqual(names[-1], target, "%s: %s" % (dataset, names))
        return state

    def release(self):
        with open(SITE + "/VERSION", "w") as f:
            f.write("2.0\n")
        return app("/write?blob=release", "POST")

    def kept(self):
        return [n for n in sh("zfs", "list", "-H", "-o", "name").split()
                if "-rolled-away-" in n]

    # -- the sweeps -----------------------------------------------------------------------
    def test_snapshot(self):
        argv = [SITE + "/bin/snapshot", "sweep"]
        steps = actions(argv)
        self.assertEqual(steps, ["zfs snapshot " + steps[0][len("zfs snapshot "):]])
        for n, action in enumerate(steps, 1):
            rc, out = crashed_run(argv, after=n)
            self.assertEqual(rc, -signal.SIGKILL, out)
            power_cut()
            boot = self.recover(self.check_boot())
            sh(SITE + "/bin/supervisord")
            self.check_site("1.0")
            rc, out = crashed_run(argv)
            self.assertNotEqual(rc, -signal.SIGKILL)
            self.line("snapshot", n, action, "%s; rerun exit %d" % (boot, rc))

    def test_cleanup(self):
        take_snapshot("one")
        take_snapshot("two")
        argv = [SITE + "/bin/cleanup", "--yes"] if "--yes" in crashed_run(
            [SITE + "/bin/cleanup", "--help"])[1] else [SITE + "/bin/cleanup"]
        steps = actions(argv)
        for n, action in enumerate(steps, 1):
            Site.reset()
            take_snapshot("one")
            take_snapshot("two")
            rc, out = crashed_run(argv, after=n)
            self.assertEqual(rc, -signal.SIGKILL, out)
            power_cut()
            boot = self.recover(self.check_boot())
            rc, out = crashed_run(argv)
            self.assertEqual(rc, 0, out)
            sh(SITE + "/bin/supervisord")
            self.check_site("1.0", target=BASELINE)
            self.line("cleanup", n, action, "%s; rerun ok" % boot)

    def sweep_rollback(self, script, extra, half=None, command=None):
        """Every crash point of the rollback, or (half 0 or 1) the first or second half of
        them: the halves run in guests of their own, side by side (tests/lab/suite.py).
        `command`: the rollback's argv before its arguments (bin/rollback)."""
        target = take_snapshot("sweep")
        before = app()
        self.release()
        # --again: every point after the first is a new rollback to the target the last one
        # finished at (the rerun of a killed run finishes that one, --again or not).
        argv = (command or [SITE + "/bin/rollback"]) + ["--yes", "--again"] + extra + [target]
        steps = actions(argv)
        self.check_site("1.0", target)
        self.clear_kept()
        for n, action in enumerate(steps, 1):
            if half is not None and (n - 1) * 2 // len(steps) != half:
                continue
            clock = Clock()
            written = self.release()
            rc, out = crashed_run(argv, after=n)
            self.assertEqual(rc, -signal.SIGKILL, "run killed after %d: %s" % (n, out))
            clock("crash")
            power_cut()
            empty = self.check_boot(window_ok="--keep" in extra)
            boot_start()  # it fails where bin/ is not there, as a boot's would
            boot = self.recover(empty)
            clock("cut")
            if n == len(steps):
                # Killed after its very last action the run was complete: without --again,
                # the rerun names what a second rollback would lose and refuses.
                plain = [a for a in argv if a != "--again"]
                rc, out = crashed_run(plain)
                self.assertEqual(rc, 3, out)
                self.assertIn("a rollback to %s finished at " % target, out)
                self.assertIn("pass --again to roll back to it again; nothing was changed", out)
            rc, out = crashed_run(argv)
            self.assertEqual(rc, 0, "rerun after a crash after %d (%s): %s" % (n, action, out))
            clock("rerun")
            if not extra:
                self.check_rerun_says(action, target, out)
            state = self.check_site("1.0", target)
            self.assertEqual(state["counter"], before["counter"], "point %d" % n)
            self.assertNotIn("release", state["blobs"])
            if "--keep" in extra:
                kept = self.kept()
                # Killed after its very last action the run was complete: the rerun with
                # --again is a new rollback to the same target, which keeps the state it rolls
                # away from too.
                self.assertEqual(len(kept), len(DATASETS) * (2 if n == len(steps) else 1),
                                 kept)
                values = {}
                for line in sh("zfs", "get", "-H", "-p", "-o", "name,property,value",
                               "readonly,written", *kept).splitlines():
                    name, prop, value = line.split("\t")
                    values[name, prop] = value
                for name in kept:
                    self.assertEqual(values[name, "readonly"], "on", name)
                fs = [k for k in kept if k.startswith(FILESTORAGE + "-")][0]
                self.assertGreater(int(values[fs, "written"]), 0, "the kept Data.fs lost the "
                                   "release's transactions (%s)" % written)
                self.clear_kept(kept)
            clock("check")
            self.line(script, n, action, "%s; rerun ok %s" % (boot, clock))

    def check_rerun_says(self, action, target, out):
        """What the rerun of a plain rollback tells the operator about the killed run."""
        if action.startswith("supervisord supervisor.shutdown"):
            self.assertIn("An unfinished rollback to %s is recorded" % target, out)
            self.assertIn("to run again afterwards: app, worker", out)
        if action.startswith("zfs rollback %s@" % BLOBSTORAGE):
            # Killed after the third rollback, before the record said so: the record names the
            # first two (the rerun rolls the third back again; nothing is lost, the site is
            # down).
            self.assertIn("stopped at 'rolling back'", out)
            self.assertIn("datasets rolled back: tank/site, %s; not yet: %s"
                          % (FILESTORAGE, BLOBSTORAGE), out)

    def clear_kept(self, kept=None):
        for name in self.kept() if kept is None else kept:
            sh("zfs", "destroy", "-r", name)

    def test_rollback(self):
        self.sweep_rollback("rollback", [])

    def test_rollback_console(self):
        # Written before the target is taken: every rollback of the sweep keeps it.
        with open(SITE + "/zfssnap.cfg", "w") as f:
            f.write(CONSOLE_CFG.format(site=SITE))
        self.sweep_rollback("zfssnap rollback", [], command=[CONSOLE, "-C", SITE, "rollback"])

    def test_rollback_keep_first(self):
        self.sweep_rollback("rollback --keep", ["--keep"], half=0)

    def test_rollback_keep_second(self):
        self.sweep_rollback("rollback --keep", ["--keep"], half=1)
