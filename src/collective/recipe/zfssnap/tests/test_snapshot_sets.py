"""bin/snapshot on datasets of two pools, in the fast suite (fake_world): one `zfs snapshot`
per pool, so a run killed (or a machine cut off) between them leaves a set on the first pool
only. The rerun must destroy that half set and take a whole one, also when it is killed in
turn; --list must say which sets cannot be rolled back to; and a set missing a member for any
other reason is shown, never destroyed by bin/snapshot. The guest suite shows the same on real
OpenZFS (test_layouts.TwoPoolsTest, and the power-cut sweep)."""
import datetime
import json
import unittest
from unittest import mock

from collective.recipe.zfssnap import snapshot as snapshotmod
from collective.recipe.zfssnap.tests.fake_world import Crash
from collective.recipe.zfssnap.tests.fake_world import World


class Clock:
    """datetime for snapshot.py whose now() moves on a second per call: runs in a row get
    names of their own, as runs typed one after the other do."""

    def __init__(self):
        self.now_ = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.timezone.utc)

    def now(self, tz=None):
        self.now_ += datetime.timedelta(seconds=1)
        return self.now_


class UnfinishedSetTest(unittest.TestCase):

    def setUp(self):
        clock = Clock()
        patcher = mock.patch.object(snapshotmod, "datetime", mock.Mock(
            datetime=clock, timezone=datetime.timezone))
        patcher.start()
        self.addCleanup(patcher.stop)

    def world(self, pools=World.POOLS):
        world = World(pools=pools)
        self.addCleanup(world.close)
        return world

    def snapshot(self, world, crash_after=None, log=None, dry_run=False):
        """bin/snapshot sweep: None, or the Crash it ended with; world.data its --json."""
        site = world.site()
        world.data, world.warnings = site.out.data, site.out.warnings
        with world.patched(crash_after, log):
            try:
                snapshotmod.take_snapshot(site, "sweep", dry_run=dry_run)
            except Crash as e:
                return e
        return None

    def listed(self, world):
        site = world.site()
        with world.patched():
            snapshotmod.list_snapshots(site)
        return site.out.data["snapshots"], site.out.warnings

    def sets(self, world):
        """{short name: sorted datasets that have it} of this part's sets, but the target."""
        found = {}
        for name, info in world.pool.snapshot_info.items():
            dataset, short = name.split("@")
            if info["properties"].get("part") == "zfssnap" and short != world.target:
                found.setdefault(short, []).append(dataset)
        return {k: sorted(v) for k, v in found.items()}

    def check_untouched(self, world):
        datasets = [n for n, _ in world.layout]
        for name in datasets:
            self.assertIn(name + "@other-tool", world.pool.snapshot_info)
            self.assertIn(name + "@" + world.target, world.pool.snapshot_info)

    def half_set(self):
        """A world where bin/snapshot was killed between the pools: (world, the half set)."""
        world = self.world()
        # Action 1 is the record naming the set, 2 the first pool's snapshot.
        self.assertIsInstance(self.snapshot(world, crash_after=2), Crash)
        sets = self.sets(world)
        self.assertEqual(list(sets.values()), [["tank/site"]])
        return world, list(sets)[0]

    def test_the_actions_of_a_normal_run(self):
        log = []
        world = self.world()
        self.assertIsNone(self.snapshot(world, log=log))
        short = world.data["snapshot"]
        self.assertEqual([[w for w in a.split() if "@" in w and "=" not in w] or a
                          for a in log], [
            "record taking", ["tank/site@" + short],
            ["data/site-filestorage@" + short, "data/site-blobstorage@" + short],
            "record removed"])
        # On one pool there is nothing to be half-taken: no record.
        log = []
        world = self.world(pools=("tank", "tank", "tank"))
        self.assertIsNone(self.snapshot(world, log=log))
        self.assertEqual([a.split()[:2] for a in log], [["zfs", "snapshot"]])

    def test_list_says_which_set_cannot_be_rolled_back_to(self):
        world, half = self.half_set()
        listed, warnings = self.listed(world)
        row = [s for s in listed if s["name"] == half][0]
        self.assertEqual((row["complete"], row["missing"]), (
            False, ["data/site-filestorage", "data/site-blobstorage"]))
        self.assertTrue([s for s in listed if s["name"] == world.target][0]["complete"])
        json.dumps(listed)
        self.assertIn("the snapshot set %s is missing on data/site-filestorage, "
                      "data/site-blobstorage: it cannot be rolled back to; a bin/snapshot "
                      "stopped before it reached them, and the next %s/bin/snapshot destroys it"
                      % (half, world.top), warnings)

    def test_the_rerun_destroys_the_half_set_and_takes_a_whole_one(self):
        world, half = self.half_set()
        self.assertIsNone(self.snapshot(world))
        sets = self.sets(world)
        self.assertNotIn(half, sets)
        self.assertEqual(list(sets.values()), [sorted(n for n, _ in world.layout)])
        self.assertEqual(world.data["destroyed_unfinished"], [half])
        self.check_untouched(world)

    def test_the_dry_run_shows_the_destroy_and_changes_nothing(self):
        world, half = self.half_set()
        calls = len(world.pool.calls)
        self.assertIsNone(self.snapshot(world, dry_run=True))
        self.assertEqual(len(world.pool.calls), calls)
        self.assertEqual(world.data["commands"][0], ["zfs", "destroy", "tank/site@" + half])
        self.assertEqual([c[1] for c in world.data["commands"][1:]], ["snapshot", "snapshot"])

    def test_killed_at_every_action_of_the_run_and_of_its_rerun(self):
        """Kill the first run after each of its actions, and its rerun after each of its own:
        a third run leaves whole sets only, the last one taken by it, nothing else touched.
        On the buildout's pool and one other (either one dataset on the second pool, or
        two), and on three pools."""
        for pools in (World.POOLS, ("tank", "tank", "data"), ("tank", "data", "archive")):
            counting = self.world(pools)
            first = []
            self.snapshot(counting, log=first)
            self.assertEqual(len(first), len(set(pools)) + 2, pools)  # and the record
            for n in range(1, len(first) + 1):
                probe = self.world(pools)
                self.snapshot(probe, crash_after=n)
                rerun = []
                self.assertIsNone(self.snapshot(probe, log=rerun))
                for m in range(1, len(rerun) + 1):
                    where = "%s: first run killed after action %d, its rerun after %d" % (
                        "+".join(pools), n, m)
                    world = self.world(pools)
                    self.assertIsInstance(self.snapshot(world, crash_after=n), Crash, where)
                    self.assertIsInstance(self.snapshot(world, crash_after=m), Crash, where)
                    self.assertIsNone(self.snapshot(world), where)
                    whole = sorted(name for name, _ in world.layout)
                    sets = self.sets(world)
                    self.assertTrue(all(v == whole for v in sets.values()), (where, sets))
                    self.assertEqual(world.data["snapshot"], max(sets), where)
                    self.check_untouched(world)

    def test_a_held_half_set_is_kept_with_a_warning_and_a_whole_set_taken(self):
        world, half = self.half_set()
        world.pool.snapshot_info["tank/site@" + half]["userrefs"] = 1
        self.assertIsNone(self.snapshot(world, dry_run=True))
        self.assertEqual([c[1] for c in world.data["commands"]], ["snapshot", "snapshot"])
        self.assertIsNone(self.snapshot(world))
        self.assertEqual(self.sets(world)[half], ["tank/site"])
        self.assertEqual(len(self.sets(world)), 2)
        self.assertNotIn("destroyed_unfinished", world.data)
        site_warnings = [w for w in world.warnings if w.startswith("the unfinished")]
        self.assertEqual(site_warnings, [
            "the unfinished snapshot set %s (a bin/snapshot stopped before it reached "
            "data/site-filestorage, data/site-blobstorage) is kept: held: tank/site@%s; release "
            "it, then run %s/bin/cleanup %s" % (half, half, world.top, half)])

    def test_a_set_whose_data_pool_was_rolled_back_by_hand_is_not_destroyed(self):
        """Missing on a whole pool, as a half set is, but no bin/snapshot left it: kept."""
        world = self.world()
        for name in ("data/site-filestorage", "data/site-blobstorage"):
            world.pool.run("destroy", "%s@%s" % (name, world.target))
        self.assertIsNone(self.snapshot(world))
        self.assertIn("tank/site@" + world.target, world.pool.snapshot_info)
        self.assertNotIn("destroyed_unfinished", world.data)
        listed, warnings = self.listed(world)
        self.assertIn("the snapshot set %s is missing on data/site-filestorage, "
                      "data/site-blobstorage: it cannot be rolled back to; destroy it with "
                      "%s/bin/cleanup %s" % (world.target, world.top, world.target), warnings)

    def test_cleanup_keeps_the_last_whole_set_for_retain_not_a_half_set(self):
        from collective.recipe.zfssnap import cleanup as cleanupmod
        world, half = self.half_set()
        world.config["retain"] = 1
        site = world.site()
        with world.patched():
            cleanupmod.cleanup(site, yes=True)
        self.assertEqual(site.out.data["destroyed"], [half])
        self.assertIn("tank/site@" + world.target, world.pool.snapshot_info)
        self.assertEqual(self.sets(world), {})

    def test_a_member_destroyed_by_hand_is_shown_not_destroyed(self):
        world = self.world()
        world.pool.run("destroy", "data/site-blobstorage@" + world.target)
        listed, warnings = self.listed(world)
        self.assertIn("the snapshot set %s is missing on data/site-blobstorage: it cannot be "
                      "rolled back to; destroy it with %s/bin/cleanup %s"
                      % (world.target, world.top, world.target), warnings)
        self.assertIsNone(self.snapshot(world))
        self.assertIn("tank/site@" + world.target, world.pool.snapshot_info)
        self.assertIn("data/site-filestorage@" + world.target, world.pool.snapshot_info)
        self.assertNotIn("destroyed_unfinished", world.data)
