"""The lab's first real test: one atomic snapshot of three datasets, changes, rollback.

It checks the ZFS behaviour the whole recipe stands on, on the OpenZFS of the guest.
"""
import os
import unittest

from collective.recipe.zfssnap.tests.layers import GuestPool
from collective.recipe.zfssnap.tests.layers import sh


DATASETS = ("tank/site", "tank/filestorage", "tank/blobstorage")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def read(path):
    with open(path) as f:
        return f.read()


class SmokeTest(unittest.TestCase):
    layer = GuestPool

    def setUp(self):
        for ds in DATASETS:
            sh("zfs", "create", ds)

    def tearDown(self):
        for ds in DATASETS:
            sh("zfs", "destroy", "-r", ds, check=False)

    def test_smoke_snapshot_three_datasets_change_rollback(self):
        for ds in DATASETS:
            write("/%s/file.txt" % ds, "before " + ds)
        # One command, three datasets: ZFS takes them in one transaction group.
        sh("zfs", "snapshot", *["%s@pre-release" % ds for ds in DATASETS])
        txgs = sh("zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "createtxg",
                  *["%s@pre-release" % ds for ds in DATASETS]).split()
        self.assertEqual(len(txgs), 3)
        self.assertEqual(len(set(txgs)), 1, "the snapshots were not atomic: txgs %s" % txgs)

        for ds in DATASETS:
            write("/%s/file.txt" % ds, "after " + ds)
            write("/%s/new.txt" % ds, "new")
        for ds in DATASETS:
            sh("zfs", "rollback", ds + "@pre-release")

        for ds in DATASETS:
            self.assertEqual(read("/%s/file.txt" % ds), "before " + ds)
            self.assertFalse(os.path.exists("/%s/new.txt" % ds))
        self.assertIn("pre-release", sh("zfs", "list", "-H", "-t", "snapshot", "-o", "name"))
