"""The benchmark at its smallest, so that `make bench` cannot rot (lab guest only)."""
import csv
import os
import tempfile
import unittest

from collective.recipe.zfssnap.tests.layers import Site


MEASURES = {"python start-up", "zfs snapshot", "zfs list", "zfs destroy", "bin/snapshot",
            "bin/snapshot --list", "snapshotbackup", "bin/rollback", "bin/rollback: down",
            "bin/cleanup", "bin/rollback --keep", "bin/rollback --keep: down",
            "manual rollback", "manual rollback: down", "snapshotrestore",
            "snapshotrestore: down", "zfs list (3 sets)", "zfs destroy (3 sets)",
            "bin/snapshot --list (3 sets)", "bin/cleanup (3 sets)", "floor: programs stop",
            "floor: zfs rollback", "floor: start until answering", "bin/snapshot (busy pool)",
            "bin/snapshot --list (busy pool)", "bin/rollback (busy pool)",
            "bin/rollback: down (busy pool)", "bin/cleanup (busy pool)"}


class BenchSmokeTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()

    @unittest.skipIf(os.environ.get("ZFSSNAP_LAB_SERIES") == "2.1",
                     "the benchmark's code does not depend on OpenZFS: it runs on 2.3 (2.1 runs "
                     "the zc.buildout 5 site)")
    def test_every_measurement_at_the_smallest_size(self):
        # Only in the lab's wheel: the benchmark driver is not in the one users install.
        from collective.recipe.zfssnap.tests import bench
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.csv")
            bench.run([2], runs=1, sets=3, out_path=out, busy=6, busy_snapshots=2)
            with open(out) as f:
                rows = list(csv.DictReader(f))
        self.assertEqual({r["measure"] for r in rows}, MEASURES)
        self.assertTrue(all(float(r["seconds"]) > 0 for r in rows), rows)
