"""A site run by systemd units (no supervisord) on real OpenZFS, with systemd as PID 1 in the
lab guest: snapshot, a bad release, rollback (plain and --keep), cleanup, and a rollback
killed after each of its actions (systemctl, zfs, the record), then what a power cut does to
the processes and mounts, a boot that starts the units, and the rerun (units_site).
"""
import os
import signal
import subprocess
import unittest

from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.test_crash_sweep import crashed_run as crashed
from collective.recipe.zfssnap.tests.test_crash_sweep import mounted_at
from collective.recipe.zfssnap.tests.layers import stack_series_only
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.units_site import BASELINE
from collective.recipe.zfssnap.tests.units_site import DATASETS
from collective.recipe.zfssnap.tests.units_site import SITE
from collective.recipe.zfssnap.tests.units_site import UNITS
from collective.recipe.zfssnap.tests.units_site import UnitsSite
from collective.recipe.zfssnap.tests.units_site import client
from collective.recipe.zfssnap.tests.units_site import main_pids
from collective.recipe.zfssnap.tests.units_site import release
from collective.recipe.zfssnap.tests.units_site import restarts
from collective.recipe.zfssnap.tests.units_site import run
from collective.recipe.zfssnap.tests.units_site import states
from collective.recipe.zfssnap.tests.units_site import systemctl

LOG = "/tmp/units-crash-actions.log"
ACTIVE = {u: "active" for u in UNITS}


def snapshots_of(dataset):
    return sh("zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name", "-s",
              "createtxg", dataset).split()


def power_cut():
    """Every process of the site gone (SIGKILL, then the units stopped so that Restart= does
    not bring them back, as nothing runs after a cut), every dataset unmounted, then the mounts
    a boot makes (`zfs mount -a`) and the units started as a boot starts them (queued: a unit
    whose files are not there fails, and Restart= tries it again)."""
    for unit in UNITS:
        systemctl("kill", "--signal=SIGKILL", unit, check=False)
    systemctl("stop", *reversed(UNITS), check=False)
    systemctl("reset-failed", *UNITS, check=False)
    for _ in range(3):
        for point, dataset in sorted(mounted_at().items(), reverse=True):
            if point == SITE or point.startswith(SITE + "/"):
                sh("zfs", "unmount", "-f", dataset, check=False)
    sh("zfs", "mount", "-a", check=False)
    systemctl("--no-block", "start", *UNITS)


@stack_series_only
class UnitsSiteTest(unittest.TestCase):
    layer = UnitsSite

    def setUp(self):
        self.before = UnitsSite.reset()

    def snapshot(self, label):
        rc, out, err = run(SITE + "/bin/snapshot", label)
        self.assertEqual(rc, 0, out + err)
        return out.split()[1]

    def check_at(self, target):
        """The site at the snapshot: every unit active, the clients answer with the data and
        the code of then, the part's snapshots still there."""
        wait_for(lambda: states() == ACTIVE, timeout=120, what="every unit active")
        for name in ("client1", "client2"):
            state = client(name, timeout=120)
            self.assertEqual(state["version"], "1.0", name)
            self.assertEqual(state["counter"], self.before["counter"], name)
        for dataset in DATASETS:
            self.assertEqual(snapshots_of(dataset)[-1], "%s@%s" % (dataset, target))
            self.assertIn("%s@%s" % (dataset, BASELINE), snapshots_of(dataset))

    def test_snapshot_release_rollback_keep_cleanup(self):
        target = self.snapshot("pre-2.0")
        self.assertGreater(release()["counter"], self.before["counter"])
        pids, restarted = main_pids(), restarts()

        rc, out, err = run(SITE + "/bin/rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("> stop units-client2.service, units-client1.service, units-zeo.service "
                      "(systemctl stop units-client2.service units-client1.service "
                      "units-zeo.service)", out)
        self.assertIn("> start units-zeo.service, units-client1.service, "
                      "units-client2.service (systemctl start", out)
        self.assertIn("health check: ", out)
        self.check_at(target)
        after = main_pids()
        self.assertTrue(all(after[u] != pids[u] for u in UNITS), (pids, after))
        # Stopped and started through systemctl: Restart= never started one behind its back.
        self.assertEqual(restarts(), restarted)
        print("\n    rollback of 3 datasets with 3 systemd units: %s" % [
            line for line in out.splitlines() if "down for" in line][-1:], end=" ")

        # A second bad release, rolled back keeping what it rolls away from.
        release("3.0")
        rc, out, err = run(SITE + "/bin/rollback", "--yes", "--keep", "--again")
        self.assertEqual(rc, 0, out + err)
        self.check_at(target)
        kept = [n for n in sh("zfs", "list", "-H", "-o", "name").split()
                if "-rolled-away-" in n]
        self.assertEqual(len(kept), len(DATASETS), kept)

        rc, out, err = run(SITE + "/bin/cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        for dataset in DATASETS:
            self.assertEqual(snapshots_of(dataset), ["%s@%s" % (dataset, BASELINE)])
        self.assertEqual([n for n in sh("zfs", "list", "-H", "-o", "name").split()
                          if "-rolled-away-" in n], [])
        self.assertEqual(states(), ACTIVE)

    def test_a_unit_that_does_not_start_is_named_with_its_status(self):
        target = self.snapshot("pre")
        release()
        rc, out, err = run(SITE + "/bin/rollback", "--yes", "--no-start")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(set(states().values()), {"inactive"})
        os.rename(SITE + "/client.py", SITE + "/client.py.away")
        try:
            rc, out, err = run(SITE + "/bin/rollback", "--yes", "--start")
            self.assertEqual(rc, 1, out + err)
            self.assertIn("but units-client1.service, units-client2.service did not get to "
                          "active: look at their status (systemctl status "
                          "units-client1.service: ", err)
            self.assertIn("journalctl -u units-client1.service", err)
        finally:
            os.rename(SITE + "/client.py.away", SITE + "/client.py")
        # The record is kept: the rerun starts what ran before without rolling back again.
        rc, out, err = run(SITE + "/bin/rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.check_at(target)

    def test_a_process_outside_the_units_is_refused(self):
        self.snapshot("pre")
        with open(SITE + "/VERSION.lock", "w") as f:
            holder = subprocess.Popen(["sleep", "600"], cwd="/", stdin=f)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        rc, out, err = run(SITE + "/bin/rollback", "--yes")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("processes outside the part's systemd units have files on the datasets: "
                      "pid %d" % holder.pid, err)
        self.assertEqual(states(), ACTIVE)

    def test_killed_after_each_action_then_a_cut_and_the_rerun(self):
        target = self.snapshot("sweep")
        release()
        argv = [SITE + "/bin/rollback", "--yes", "--again", target]
        if os.path.exists(LOG):
            os.remove(LOG)
        rc, out = crashed(argv, log=LOG)
        self.assertEqual(rc, 0, out)
        with open(LOG) as f:
            steps = [line.rstrip("\n").split("\t", 1)[1] for line in f]
        self.assertEqual(len([a for a in steps if "systemctl" in a]), 6, steps)
        self.check_at(target)
        for n, action in enumerate(steps, 1):
            release()
            rc, out = crashed(argv, after=n)
            self.assertEqual(rc, -signal.SIGKILL, "killed after %d: %s" % (n, out))
            power_cut()
            rc, out = crashed(argv)
            self.assertEqual(rc, 0, "rerun after a kill after %d (%s): %s" % (n, action, out))
            self.check_at(target)
            self.assertFalse(os.path.exists(self.record()), "the record is left")
            print("\n  sweep: rollback (systemd) %3d  %-58s rerun ok" % (n, action[:58]),
                  end="", flush=True)

    def record(self):
        from collective.recipe.zfssnap import state
        from collective.recipe.zfssnap.tests.layers import script_config
        return state.Places(script_config(site=SITE)).record
