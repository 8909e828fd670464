"""The order of bin/rollback --keep's steps, against a model of a pool (fake_pool): after each
step, what a boot would mount, and that a rerun finishes the job from there. The guest's
crash-point sweep proves the same on real OpenZFS."""
import copy
import os
import unittest

from collective.recipe.zfssnap import keep
from collective.recipe.zfssnap import swapsteps
from collective.recipe.zfssnap.tests.fake_pool import FakePool
from collective.recipe.zfssnap.tests.fake_pool import FakeSite


STAMP = "S"
LAYOUT = (("tank/site", "/srv/site"), ("tank/site-fs", "/srv/site/var/filestorage"),
          ("data/blobs", "/srv/site/var/blobstorage"))


# The data outside the buildout: their mountpoints sort before the buildout's.
OUTSIDE = (("tank/site", "/srv/site"), ("data/fs", "/data/filestorage"),
           ("data/blobs", "/data/blobstorage"))


def new_site(layout=LAYOUT):
    pool = FakePool()
    for name, mountpoint in layout:
        pool.create(name, mountpoint)
        pool.snapshot(name + "@before")
    site = FakeSite(pool, [name for name, _ in layout])
    swaps = []
    for name, mountpoint in layout:
        swaps.append({"dataset": name, "snapshot": name + "@before",
                      "new": keep.new_name(name, STAMP), "kept": keep.kept_name(name, STAMP),
                      "mountpoint": mountpoint, "canmount": "on", "mounted": True,
                      "old_guid": pool.datasets[name]["guid"], "new_guid": None,
                      "properties": {"compression": "lz4"}, "buildout": name == layout[0][0]})
    keep.make_clones(site, swaps)
    return pool, site, swaps


def run_steps(site, swaps):
    for swap, argv in keep.swap_steps(swaps, keep.facts(site, swaps)):
        if argv[0] == "unmount":
            keep.unmount(site, swap, argv[1])
        else:
            site.zfs.run(*argv)


class SwapOrderTest(unittest.TestCase):
    layout = LAYOUT  # the data datasets inside the buildout

    def setUp(self):
        self.pool, self.site, self.swaps = new_site(self.layout)
        self.steps = keep.swap_steps(self.swaps, keep.facts(self.site, self.swaps))
        self.addCleanup(os.chdir, os.getcwd())  # the swap leaves its working directory

    def assert_swapped(self, pool, settled=False):
        """Each clone mounted in its dataset's place, to be mounted at boot; the old dataset
        not. Under the clone's own name until settled (after the site runs again)."""
        for s in self.swaps:
            new = pool.datasets[s["dataset"] if settled else s["new"]]
            old = pool.datasets[s["kept"] if settled else s["dataset"]]
            self.assertEqual(new["guid"], s["new_guid"])
            self.assertEqual(old["guid"], s["old_guid"])
            self.assertEqual((new["canmount"], new["mounted"], new["mountpoint"]),
                             ("on", True, s["mountpoint"]))
            self.assertEqual((old["canmount"], old["mounted"]), ("noauto", False))
            self.assertNotIn(s["kept"] if not settled else s["new"], pool.datasets)

    def test_a_run_swaps_every_dataset(self):
        run_steps(self.site, self.swaps)
        self.assert_swapped(self.pool)
        self.assertEqual(keep.swap_steps(self.swaps, keep.facts(self.site, self.swaps)), [])

    def test_only_mounts_and_two_canmount_commands_each_way_while_the_site_is_down(self):
        verbs = [argv[0] for _, argv in self.steps]
        self.assertEqual(verbs, ["unmount"] * 3 + ["mount"] * 3 + ["set"] * 4)
        sets = [argv for _, argv in self.steps if argv[0] == "set"]
        self.assertEqual(sets, [["set", "canmount=noauto", "tank/site"],
                                ["set", "canmount=noauto"] + sorted(
                                    n for n, _ in self.layout[1:]),
                                ["set", "canmount=on"] + sorted(
                                    keep.new_name(n, STAMP) for n, _ in self.layout[1:]),
                                ["set", "canmount=on", "tank/site-rollback-S"]])

    def test_the_clones_claim_the_mountpoints_and_are_not_mounted_at_boot(self):
        for s in self.swaps:
            clone = self.pool.datasets[s["new"]]
            self.assertEqual((clone["canmount"], clone["mountpoint"], clone["origin"]),
                             ("noauto", s["mountpoint"], s["snapshot"]))
        self.assertIn(["clone", "-o", "canmount=noauto", "-o", "mountpoint=/srv/site", "-o",
                       "compression=lz4", "tank/site@before", "tank/site-rollback-S"],
                      self.pool.calls)

    def prefixes(self):
        """The pool after each step, and within a `zfs set` of several datasets, after each
        of them (a power cut may stop it between two): (where, pool, site, swaps)."""
        for n in range(len(self.steps) + 1):
            argv = self.steps[n - 1][1] if n else []
            names = [a for a in argv[1:] if "=" not in a] if argv[:1] == ["set"] else []
            for part in range(1, len(names)):
                pool, site, swaps = copy.deepcopy((self.pool, self.site, self.swaps))
                for _, earlier in self.steps[:n - 1]:
                    site.zfs.run(*earlier)
                pairs = [a for a in argv[1:] if "=" in a]
                for name in sorted(names)[:part]:  # zfs takes them by name
                    site.zfs.run("set", *pairs, name)
                yield "step %d, %d of its datasets" % (n, part), pool, site, swaps
            pool, site, swaps = copy.deepcopy((self.pool, self.site, self.swaps))
            for _, earlier in self.steps[:n]:
                site.zfs.run(*earlier)
            yield "step %d" % n, pool, site, swaps

    def test_after_every_step_a_boot_mounts_the_old_or_the_new_dataset_never_the_kept(self):
        top = self.swaps[0]["mountpoint"]  # the buildout's: bin/ and what a boot starts
        empty_points = 0
        for n, pool, site, swaps in self.prefixes():
            booted = pool.boot_mounts()
            empty = []
            for s in swaps:
                claim = booted.get(s["mountpoint"], [])
                self.assertLessEqual(len(claim), 1, "two datasets claim %s after %s"
                                     % (s["mountpoint"], n))
                guids = [pool.datasets[c]["guid"] for c in claim]
                if guids == [s["old_guid"]]:
                    # The state from before: only while it still has the dataset's name.
                    self.assertEqual(claim, [s["dataset"]], n)
                elif not guids:
                    empty.append(s["mountpoint"])
                else:
                    self.assertEqual(guids, [s["new_guid"]])
            if empty:
                empty_points += 1
                # Never the buildout mounted over an empty data directory: the site would start
                # on it at boot.
                self.assertIn(top, empty, "%s: %s empty under a mounted %s" % (n, empty, top))
            else:
                # All from before or all from the target: never a mix.
                self.assertEqual(len({pool.datasets[c[0]]["guid"] == s["new_guid"] for s in swaps
                                      for c in [booted[s["mountpoint"]]]}), 1, n)
        # Only from the first canmount change to the last (two points inside each command
        # of two datasets).
        self.assertEqual(empty_points, 3 + 2 * (len(self.swaps) - 2))

    def test_a_rerun_after_any_step_finishes_the_swap(self):
        for reboot in (False, True):
            for n, pool, site, swaps in self.prefixes():
                if reboot:  # the mounts as a boot makes them, then the rerun
                    pool.boot()
                    if not any(d["mounted"] and d["mountpoint"] == "/srv/site"
                               for d in pool.datasets.values()):
                        # The documented recovery when bin/ is not there after a boot: the
                        # dataset by its name (the old one; the clone is mounted at boot).
                        pool.run("mount", "tank/site")
                run_steps(site, swaps)
                self.assert_swapped(pool)

    def test_a_busy_dataset_is_detached_lazily_with_the_zfs_commands_privileges(self):
        self.site.zfs.command = ["sudo", "-n", "zfs"]
        self.site.zfs.busy.add("/srv/site")
        ran = []
        original = keep.subprocess.run

        def fake_run(argv, **kw):
            ran.append(argv)
            self.pool.datasets["tank/site"]["mounted"] = False
            return original(["true"], **kw)
        keep.subprocess.run = fake_run
        try:
            run_steps(self.site, self.swaps)
        finally:
            keep.subprocess.run = original
        self.assertEqual(ran, [["sudo", "-n", "umount", "-l", "/srv/site"]])
        self.assert_swapped(self.pool)

    def test_a_failure_before_any_handover_puts_the_old_datasets_back(self):
        first_set = [argv[0] for _, argv in self.steps].index("set")
        for n in range(len(self.steps) + 1):
            pool, site, swaps = copy.deepcopy((self.pool, self.site, self.swaps))
            for _, argv in self.steps[:n]:
                site.zfs.run(*argv)
            back = swapsteps.back_steps(swaps, keep.facts(site, swaps))
            if n > first_set:
                self.assertIsNone(back, "step %d: only forward from here" % n)
                continue
            keep.run_steps(site, back)
            keep.undo(site, swaps)
            for s in swaps:
                old = pool.datasets[s["dataset"]]
                self.assertEqual((old["guid"], old["canmount"], old["mounted"]),
                                 (s["old_guid"], "on", True), "step %d" % n)
                self.assertNotIn(s["new"], pool.datasets)

    def test_settle_renames_promotes_marks_and_unmounts_for_good_each_step_on_its_own(self):
        run_steps(self.site, self.swaps)
        self.site.zfs.calls.clear()
        failed = keep.settle(self.site, self.swaps, "before", STAMP)
        self.assertEqual(failed, [])
        self.assert_swapped(self.pool, settled=True)
        for s in self.swaps:
            kept = self.pool.datasets[s["kept"]]
            self.assertEqual(self.pool.datasets[s["dataset"]]["origin"], "-")
            self.assertEqual((kept["readonly"], kept["mountpoint"]), ("on", "none"))
            self.assertEqual(kept["user"][keep.P + "kind"], keep.KIND)
        # Settled again (a rerun): no second promote, which would swap the origins back.
        self.site.zfs.calls.clear()
        self.assertEqual(keep.settle(self.site, self.swaps, "before", STAMP), [])
        self.assertNotIn("promote", [c[0] for c in self.site.zfs.calls])

    def test_a_failed_settle_step_does_not_skip_the_others(self):
        run_steps(self.site, self.swaps)
        original = self.pool.run

        def failing(*args, check=True):
            if args[0] == "promote" and args[-1] == "tank/site":
                self.pool.fail("cannot promote: permission denied")
            return original(*args, check=check)
        self.pool.run = failing
        failed = keep.settle(self.site, self.swaps, "before", STAMP)
        self.assertEqual(failed, ["zfs promote tank/site"])
        kept = self.pool.datasets["tank/site-rolled-away-S"]
        self.assertEqual((kept["readonly"], kept["mountpoint"]), ("on", "none"))

    def test_a_failed_rename_skips_what_would_act_on_the_wrong_names(self):
        run_steps(self.site, self.swaps)
        self.pool.create("tank/site-rolled-away-S", "none", canmount="noauto", mounted=False)
        failed = keep.settle(self.site, self.swaps, "before", STAMP)
        self.assertEqual([f for f in failed if "tank/site " in f + " "][:3], [
            "zfs rename -u tank/site tank/site-rolled-away-S",
            "zfs rename -u tank/site-rollback-S tank/site", "zfs promote tank/site"])
        self.assertEqual(self.pool.datasets["tank/site-rollback-S"]["guid"],
                         self.swaps[0]["new_guid"])
        self.assertEqual(self.pool.datasets["tank/site"]["guid"], self.swaps[0]["old_guid"])
        self.assertEqual(self.pool.datasets["data/blobs"]["guid"], self.swaps[2]["new_guid"])
        # The dataset that had the kept name is not the part's: not marked, not unmounted.
        foreign = self.pool.datasets["tank/site-rolled-away-S"]
        self.assertNotIn(keep.P + "kind", foreign["user"])
        self.assertNotEqual(foreign.get("readonly"), "on")

    def test_the_dry_run_prints_what_a_run_runs(self):
        self.pool, self.site, self.swaps = copy.deepcopy((self.pool, self.site, self.swaps))
        printed = keep.commands(self.site, self.swaps, "before", STAMP)
        self.pool.calls.clear()
        pool, site, swaps = new_site(self.layout)
        clones = [["zfs"] + c for c in pool.calls]
        pool.calls.clear()
        run_steps(site, swaps)
        keep.settle(site, swaps, "before", STAMP)
        ran = clones + [["zfs"] + c for c in pool.calls]
        # The marks carry who ran it and when: compare without their values.
        strip = [[a.split("=")[0] if keep.P in a else a for a in argv] for argv in printed]
        self.assertEqual(strip, [[a.split("=")[0] if keep.P in a else a for a in argv]
                                 for argv in ran])

    def test_undo_destroys_only_the_unmounted_clones_of_the_target(self):
        clone = self.swaps[1]["new"]
        self.pool.datasets[clone]["mounted"] = True  # not ours to drop now
        keep.undo(self.site, self.swaps)
        self.assertEqual(sorted(n for n in self.pool.datasets if "-rollback-" in n), [clone])


class DataOutsideTheBuildoutSwapOrderTest(SwapOrderTest):
    """The same, with the Data.fs and blobs mounted outside the buildout: their mountpoints
    sort before it, and still the buildout's dataset is the first off and the last on."""
    layout = OUTSIDE


class RefusalTest(unittest.TestCase):
    """What --keep refuses before it changes anything, and what cleanup never destroys."""

    def setUp(self):
        self.pool = FakePool()
        for name, mountpoint in LAYOUT:
            self.pool.create(name, mountpoint)
        self.site = FakeSite(self.pool, [name for name, _ in LAYOUT])
        self.mountpoints = [m for _, m in LAYOUT]
        self.original = keep.mountsmod.all_mountpoints
        keep.mountsmod.all_mountpoints = lambda: ["/", "/tank"] + self.mountpoints

    def tearDown(self):
        keep.mountsmod.all_mountpoints = self.original

    def refusal(self):
        with self.assertRaises(keep.Stop) as caught:
            keep.check(self.site, self.mountpoints)
        self.assertEqual(caught.exception.code, keep.REFUSED)
        self.assertEqual(self.pool.calls, [])  # nothing was changed
        return caught.exception.message

    def test_a_layout_it_handles(self):
        keep.check(self.site, self.mountpoints)

    def test_a_child_the_part_does_not_roll_back(self):
        self.pool.create("tank/site/shared", "/srv/site/shared")  # in exclude-datasets
        self.assertIn("would rename tank/site/shared along with its parent",
                      self.refusal())

    def test_something_else_mounted_inside(self):
        keep.mountsmod.all_mountpoints = lambda: ["/", "/srv/site/var/cache"] + self.mountpoints
        self.assertIn("would have to unmount /srv/site/var/cache, mounted inside the "
                      "datasets", self.refusal())

    def test_a_pool_root(self):
        self.site.datasets = ["tank"]
        self.assertIn("cannot rename the pool's root dataset tank", self.refusal())


class CleanupOfKeptTest(unittest.TestCase):

    def test_a_kept_dataset_with_a_foreign_child_is_not_destroyed(self):
        from collective.recipe.zfssnap import cleanup
        pool = FakePool()
        pool.create("tank/site", "/srv/site")
        pool.create("tank/site-rolled-away-S", "none", canmount="noauto", mounted=False)
        pool.create("tank/site-rolled-away-S/shared", "none", mounted=False)
        pool.snapshot("tank/site-rolled-away-S@newer")
        site = FakeSite(pool, ["tank/site"])
        kept = [{"name": "tank/site-rolled-away-S", "dataset": "tank/site"}]
        self.assertEqual(cleanup.destroy_kept(site, kept, dry_run=False), [])
        self.assertIn("tank/site-rolled-away-S/shared", pool.datasets)
        self.assertIn("skipped the kept tank/site-rolled-away-S: it holds "
                      "tank/site-rolled-away-S/shared, which is not kept state of this part",
                      "\n".join(site.out.lines))
        del pool.datasets["tank/site-rolled-away-S/shared"]
        self.assertEqual(cleanup.destroy_kept(site, kept, dry_run=False),
                         ["tank/site-rolled-away-S"])
        self.assertNotIn("tank/site-rolled-away-S", pool.datasets)


class BeforeStartTest(unittest.TestCase):
    """What the rollback checks before it starts anything again."""

    def setUp(self):
        import tempfile
        self.top = tempfile.mkdtemp(prefix="zfssnap-mounts-")
        self.fs = os.path.join(self.top, "var", "filestorage")
        os.makedirs(self.fs)
        self.addCleanup(__import__("shutil").rmtree, self.top)
        self.site = FakeSite(FakePool(), ["tank/site", "tank/fs"])
        self.site.config = {"mounts": {"tank/site": self.top, "tank/fs": self.fs},
                            "lock_file": os.path.join(self.top, "lock")}
        self.site.scripts["rollback"] = "/srv/site/bin/rollback"
        self.addCleanup(setattr, keep.mountsmod, "zfs_mounts", keep.mountsmod.zfs_mounts)
        self.addCleanup(setattr, keep.mountsmod, "is_mountpoint", keep.mountsmod.is_mountpoint)

    def mounted(self, *pairs, hidden=()):
        keep.mountsmod.zfs_mounts = lambda: [keep.mountsmod.Mount(d, m) for d, m in pairs]
        keep.mountsmod.is_mountpoint = lambda path: path not in hidden

    def test_every_dataset_where_buildout_found_it(self):
        from collective.recipe.zfssnap import rollback
        self.mounted(("tank/site", self.top), ("tank/fs", self.fs))
        rollback.Run(self.site).check_mounted("zfssnap-1")

    def test_a_hidden_or_missing_mount_starts_nothing(self):
        from collective.recipe.zfssnap import rollback
        # The parent's rollback hid the child (OpenZFS #11511): mounted, but under the parent.
        self.mounted(("tank/fs", self.fs), ("tank/site", self.top), hidden=(self.fs,))
        with self.assertRaises(rollback.Stop) as caught:
            rollback.Run(self.site).check_mounted("zfssnap-1")
        self.assertEqual(caught.exception.code, rollback.INCOMPLETE)
        self.assertIn("rolled back every dataset to zfssnap-1, but they are not mounted as the "
                      "site needs: tank/fs is mounted at %s, but hidden under tank/site; "
                      "nothing was started" % self.fs, caught.exception.message)
        self.mounted(("tank/site", self.top))
        with self.assertRaises(rollback.Stop) as caught:
            rollback.Run(self.site).check_mounted("zfssnap-1")
        self.assertIn("tank/fs is not mounted (it belongs at %s)" % self.fs,
                      caught.exception.message)


class ResumeThroughTheUnitTest(unittest.TestCase):

    def test_a_resumed_rollback_starts_supervisord_through_the_unit_that_stopped_it(self):
        import tempfile
        from collective.recipe.zfssnap import rollback
        top = tempfile.mkdtemp(prefix="zfssnap-unit-")
        self.addCleanup(__import__("shutil").rmtree, top)
        conf = os.path.join(top, "supervisord.conf")
        with open(conf, "w") as f:
            f.write("[supervisorctl]\nserverurl = unix://%s/nobody.sock\n" % top)
        site = FakeSite(FakePool(), ["tank/site"])
        site.config = {"supervisor_conf": conf, "supervisord": ["/srv/site/bin/supervisord"],
                       "lock_file": os.path.join(top, "lock")}
        run = rollback.Run(site)
        from collective.recipe.zfssnap.progress import Progress
        survey, data = run.survey(Progress(target="zfssnap-1", unit="site.service",
                                           daemon_was_running=True, running_before=["app"]))
        self.assertEqual((run.manager.sup.unit, data.unit), ("site.service", "site.service"))
        self.assertEqual(run.manager.sup.start_hint(), "systemctl start site.service")


class ReadingTest(unittest.TestCase):

    def test_snapshots_mounted_on_access_are_not_other_mounts(self):
        from collective.recipe.zfssnap import mounts
        text = ("36 26 0:32 / /srv/site rw - zfs tank/site rw\n"
                "40 36 0:40 / /srv/site/var/filestorage/.zfs/snapshot/zfssnap-1 ro - zfs "
                "tank/site-filestorage@zfssnap-1 ro\n"
                "41 36 0:41 / /srv/site/var/cache rw - tmpfs tmpfs rw\n")
        self.assertEqual(mounts.mountpoints_in_mountinfo(text),
                         ["/srv/site", "/srv/site/var/cache"])

    def test_a_failing_zfs_get_is_an_error_not_missing_datasets(self):
        pool, site, swaps = new_site()
        original = pool._get

        def denied(args):
            result = original(args)
            result.returncode, result.stderr = 1, "permission denied\n"
            return result
        pool._get = denied
        with self.assertRaises(keep.zfsmod.ZfsError):
            keep.facts(site, swaps)
        self.assertEqual({c[0] for c in pool.calls}, {"clone"})  # only new_site's clones
