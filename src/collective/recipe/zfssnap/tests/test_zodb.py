"""The ZODB's view of a rollback, on real FileStorages written by ZODB (no ZFS needed)."""
import datetime
import os
import shutil
import tempfile
import unittest

import transaction
import ZODB
import ZODB.FileStorage

from collective.recipe.zfssnap import zodb


def commit(db, user, description, value):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    with tm as txn:
        txn.setUser(user, "/Plone")
        txn.note(description)
        conn.root()["value"] = value
    conn.close()


class ZodbViewTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zfssnap-zodb-")
        self.path = os.path.join(self.dir, "Data.fs")
        self.db = ZODB.DB(ZODB.FileStorage.FileStorage(self.path))

    def tearDown(self):
        self.db.close()
        shutil.rmtree(self.dir)

    def test_transactions_since_the_snapshot_newest_first(self):
        for i in range(50):
            commit(self.db, "admin", "/Plone/page-%d/edit" % i, i)
        # The snapshot: a copy of the Data.fs as it was then.
        shutil.copy(self.path, self.path + ".snapshot")
        snapshot_tid = zodb.last_tid(self.path + ".snapshot")
        self.assertEqual(snapshot_tid, self.db.lastTransaction())
        commit(self.db, "editor", "/Plone/news/edit", "a")
        commit(self.db, "admin", "/Plone/front-page/edit", "b")
        view = zodb.since(self.path, snapshot_tid)
        self.assertEqual(view["count"], 2)
        self.assertEqual([(t["user"], t["description"]) for t in view["transactions"]],
                         [("/Plone admin", "/Plone/front-page/edit"),
                          ("/Plone editor", "/Plone/news/edit")])
        self.assertEqual(view["transactions"][0]["tid"], self.db.lastTransaction().hex())
        now = datetime.datetime.now(datetime.timezone.utc)
        last = datetime.datetime.strptime(view["last"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
        self.assertLess(abs((now - last).total_seconds()), 120)
        self.assertLessEqual(view["first"], view["last"])

    def test_nothing_since_and_many_since(self):
        commit(self.db, "admin", "first", 0)
        tid = zodb.last_tid(self.path)
        self.assertEqual(zodb.since(self.path, tid)["count"], 0)
        for i in range(zodb.LISTED + 5):
            commit(self.db, "admin", "edit %d" % i, i)
        view = zodb.since(self.path, tid)
        self.assertEqual(view["count"], zodb.LISTED + 5)
        self.assertEqual(len(view["transactions"]), zodb.LISTED)
        # No snapshot of the file (it did not exist then): everything counts, the database's
        # creation included.
        everything = len(list(ZODB.FileStorage.FileIterator(self.path)))
        self.assertEqual(everything, zodb.LISTED + 7)
        self.assertEqual(zodb.since(self.path, None)["count"], everything)

    def test_not_a_filestorage(self):
        with open(os.path.join(self.dir, "other"), "wb") as f:
            f.write(b"not a Data.fs")
        self.assertRaises(zodb.Unreadable, zodb.last_tid, os.path.join(self.dir, "other"))

    def test_half_written_tail_is_skipped(self):
        commit(self.db, "admin", "whole", 1)
        tid = zodb.last_tid(self.path)
        commit(self.db, "admin", "also whole", 2)
        with open(self.path, "ab") as f:
            f.write(b"\0" * 40)  # a commit being written: its length not there yet
        with self.assertRaises(zodb.Unreadable):
            zodb.since(self.path, tid)


class EdgeFilesTest(unittest.TestCase):
    """Files the backward reader meets in the field besides a busy Data.fs."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zfssnap-zodb-")
        self.path = os.path.join(self.dir, "Data.fs")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_a_new_storage_holds_its_header_only(self):
        storage = ZODB.FileStorage.FileStorage(self.path)  # no DB: no root created
        storage.close()
        self.assertEqual(os.path.getsize(self.path), 4)
        self.assertIsNone(zodb.last_tid(self.path))
        view = zodb.since(self.path, None)
        self.assertEqual((view["count"], view["transactions"]), (0, []))

    def test_only_the_roots_creation(self):
        db = ZODB.DB(ZODB.FileStorage.FileStorage(self.path))
        tid = db.lastTransaction()
        db.close()
        self.assertEqual(zodb.last_tid(self.path), tid)
        self.assertEqual(zodb.since(self.path, tid)["count"], 0)
        view = zodb.since(self.path, None)  # the snapshot had the header only
        self.assertEqual(view["count"], 1)
        self.assertEqual(view["transactions"][0]["description"], "initial database creation")

    def last_status_is(self, status):
        """Rewrite the status byte of the last transaction (as a commit in its vote leaves it)."""
        with open(self.path, "r+b") as f:
            end = os.fstat(f.fileno()).st_size
            f.seek(end - 8)
            length = int.from_bytes(f.read(8), "big")
            f.seek(end - 8 - length + 16)
            f.write(status)

    def test_a_transaction_being_committed_does_not_count(self):
        db = ZODB.DB(ZODB.FileStorage.FileStorage(self.path))
        commit(db, "admin", "snapshot's last", 1)
        before = db.lastTransaction()
        commit(db, "admin", "voted, not finished", 2)
        db.close()
        self.last_status_is(b"c")
        # In the snapshot: FileStorage drops it on restart, so the last one is the one before.
        self.assertEqual(zodb.last_tid(self.path), before)
        # In the live file: not counted among what the rollback undoes.
        self.assertEqual(zodb.since(self.path, before)["count"], 0)
        self.assertEqual(zodb.since(self.path, None)["count"], 2)

    def test_a_bad_status_or_length_is_named_not_an_os_error(self):
        db = ZODB.DB(ZODB.FileStorage.FileStorage(self.path))
        commit(db, "admin", "one", 1)
        db.close()
        self.last_status_is(b"?")
        with self.assertRaises(zodb.Unreadable) as caught:
            zodb.last_tid(self.path)
        self.assertIn("transaction records were expected", str(caught.exception))

    def test_too_short_files(self):
        for content in (b"FS3", b"FS30\0\0\0", b"FS30" + b"\0" * 4 + (100).to_bytes(8, "big")):
            with open(self.path, "wb") as f:
                f.write(content)
            with self.assertRaises(zodb.Unreadable) as caught:
                zodb.since(self.path, None)
            message = str(caught.exception)
            self.assertTrue("FileStorage" in message, message)
