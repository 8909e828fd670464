"""The ZODB's view of a rollback, on real FileStorages written by ZODB (no ZFS needed)."""
import contextlib
import datetime
import io
import itertools
import json
import os
import shutil
import struct
import tempfile
import unittest
from unittest import mock

import transaction
import ZODB
import ZODB.FileStorage

from collective.recipe.zfssnap import main
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap import zodb
from collective.recipe.zfssnap.tests.fake_world import World


def commit(db, user, description, value):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    with tm as txn:
        txn.setUser(user, "/Plone")
        txn.note(description)
        conn.root()["value"] = value
    conn.close()


def new_storage(path, magic=b"FS30"):
    """A FileStorage as a ZEO server leaves it before its first client: it opens no DB, so
    no root is created, and the file is its magic alone (FS21 when the server ran on Python 2,
    as in issue 17)."""
    ZODB.FileStorage.FileStorage(path, create=True).close()
    with open(path, "r+b") as f:
        f.write(magic)


def root_created(path):
    """A FileStorage whose only transaction is the root's creation, as ZODB writes it when a DB
    is first opened on it; that transaction's id."""
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, create=True))
    tid = db.lastTransaction()
    db.close()
    return tid


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
        for magic in zodb.MAGICS:
            with self.subTest(magic=magic):
                new_storage(self.path, magic)
                self.assertEqual(os.path.getsize(self.path), 4)
                self.assertIsNone(zodb.last_tid(self.path))
                self.assertEqual(zodb.since(self.path, None), {
                    "count": 0, "first": None, "last": None, "transactions": []})

    def test_only_the_roots_creation(self):
        tid = root_created(self.path)
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

    def unreadable(self):
        """The message both readers give for the file: one sentence, no bare OS error."""
        messages = set()
        for read in (zodb.last_tid, lambda path: zodb.since(path, None)):
            with self.assertRaises(zodb.Unreadable) as caught:
                read(self.path)
            messages.add(str(caught.exception))
        self.assertEqual(len(messages), 1, messages)
        message = messages.pop()
        self.assertNotIn("Errno", message)
        self.assertNotIn("\n", message)
        return message

    def damaged(self, end, found):
        return ("%s does not read as a FileStorage (expected a transaction record ending at "
                "byte %d, found %s)" % (self.path, end, found))

    def test_a_bad_status_is_named_not_an_os_error(self):
        db = ZODB.DB(ZODB.FileStorage.FileStorage(self.path))
        commit(db, "admin", "one", 1)
        db.close()
        self.last_status_is(b"?")
        with open(self.path, "rb") as f:
            whole = f.read()
        end = len(whole)
        start = end - 8 - int.from_bytes(whole[-8:], "big")
        self.assertEqual(self.unreadable(), self.damaged(
            end, "a record at byte %d with the unknown status '?'" % start))

    def test_not_a_file(self):
        os.mkdir(self.path)
        self.assertEqual(self.unreadable(), "%s is not a FileStorage (expected a file, found a "
                         "directory)" % self.path)
        os.rmdir(self.path)
        os.mkfifo(self.path)  # never opened: that would wait for a writer
        self.assertEqual(self.unreadable(), "%s is not a FileStorage (expected a file, found a "
                         "named pipe)" % self.path)

    def test_an_os_error_is_named_with_the_file(self):
        root_created(self.path)
        denied = PermissionError(13, "Permission denied", self.path)
        with mock.patch.object(zodb, "open", create=True, side_effect=denied):
            self.assertEqual(self.unreadable(),
                             "%s cannot be read (Permission denied)" % self.path)

    def test_another_start_than_a_filestorages(self):
        for content, found in ((b"", "an empty file"), (b"FS3", "only 'FS3'"),
                               (b"PK\x03\x04 a zip file", "'PK\\x03\\x04'"),
                               (b"FS20" + b"\0" * 40, "'FS20'")):
            with self.subTest(content=content):
                with open(self.path, "wb") as f:
                    f.write(content)
                self.assertEqual(self.unreadable(), "%s is not a FileStorage (expected it to "
                                 "start with FS30 or FS21, found %s)" % (self.path, found))

    def test_too_short_after_the_header(self):
        for content in (b"FS30\0\0\0", b"FS21" + b"\0" * 30):
            with self.subTest(content=content):
                with open(self.path, "wb") as f:
                    f.write(content)
                self.assertEqual(self.unreadable(), self.damaged(
                    len(content), "only %d bytes after the header" % (len(content) - 4)))

    def test_a_damaged_end(self):
        tid = root_created(self.path)
        with open(self.path, "rb") as f:
            whole = f.read()
        size = len(whole)
        self.assertEqual(whole[4:12], tid)  # the header of the only transaction starts at 4
        february_31 = struct.pack(">II", ((126 * 12 + 1) * 31 + 30) * 24 * 60, 0)
        for name, content, found in (
                ("garbage at the end", whole + b"garbage!",
                 "a length of %d, which reaches back before the header"
                 % int.from_bytes(b"garbage!", "big")),
                ("zeros at the end", whole + b"\0" * 40,
                 "a length of 0, less than a transaction header's 23 bytes"),
                ("a length pointing before the header", whole[:-8] + (size - 11).to_bytes(
                    8, "big"), "a length of %d, which reaches back before the header"
                 % (size - 11)),
                # The transaction twice, the second's length reaching to the first's start.
                ("a length pointing at another record", whole + whole[4:-8] + (
                    2 * size - 16).to_bytes(8, "big"),
                 "a record at byte 4 whose header gives the length %d" % (size - 12)),
                ("a transaction id that is no time", whole[:4] + february_31 + whole[12:],
                 "a record at byte 4 whose transaction id %s is not a time"
                 % february_31.hex())):
            with self.subTest(name):
                with open(self.path, "wb") as f:
                    f.write(content)
                self.assertEqual(self.unreadable(), self.damaged(len(content), found))
        # Cut inside its last transaction: whatever its last 8 bytes say, the file is named.
        with open(self.path, "wb") as f:
            f.write(whole[:-5])
        self.assertTrue(self.unreadable().startswith(self.damaged(size - 5, "")[:-1]))


class PlanTest(unittest.TestCase):
    """The ZODB line of bin/rollback's plan and the "zodb" of its --json document, through the
    script's entry point on the fast suite's modelled pool and site (fake_world)."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)
        filestorage = self.world.top + "/var/filestorage"
        self.path = filestorage + "/Data.fs"
        self.world.config["filestorages"] = [self.path]
        # The snapshot's Data.fs, where the rollback reads it: the dataset's snapshot directory.
        self.then = os.path.join(filestorage, ".zfs", "snapshot", self.world.target, "Data.fs")
        os.makedirs(os.path.dirname(self.then))

    def plan(self):
        """The ZODB lines of `bin/rollback --dry-run`, and the "zodb" of its --json."""
        printed = []
        for argv in (["--dry-run"], ["--dry-run", "--json"]):
            stdout = io.StringIO()
            with self.world.patched(), \
                    mock.patch.object(zfsmod, "Zfs", lambda command, **kw: self.world.pool), \
                    contextlib.redirect_stdout(stdout):
                code = main.rollback(dict(self.world.config), argv)
            self.assertEqual(code, 0, stdout.getvalue())
            printed.append(stdout.getvalue())
        lines = printed[0].splitlines()
        first = [i for i, line in enumerate(lines) if line.startswith("  ZODB ")][0]
        listed = itertools.takewhile(lambda line: line.startswith("    "), lines[first + 1:])
        return [lines[first]] + list(listed), json.loads(printed[1])["zodb"]

    def test_a_new_storage_then_and_now(self):
        # Issue 17: a ZEO server had created the Data.fs (its magic alone) before the snapshot.
        new_storage(self.then, b"FS21")
        new_storage(self.path, b"FS21")
        shown, views = self.plan()
        self.assertEqual(shown, ["  ZODB %s: no transaction since the snapshot" % self.path])
        self.assertEqual(views, [{"path": self.path, "count": 0, "first": None, "last": None,
                                  "transactions": []}])

    def test_the_roots_creation_since(self):
        new_storage(self.then)
        tid = root_created(self.path)
        when = zodb.tid_time(tid).strftime("%Y-%m-%dT%H:%M:%SZ")
        shown, views = self.plan()
        self.assertEqual(shown, [
            "  ZODB %s: undoes 1 transaction committed since the snapshot, %s to %s:"
            % (self.path, when, when),
            "    %s  -  initial database creation" % when])
        self.assertEqual(views, [{"path": self.path, "count": 1, "first": when, "last": when,
                                  "transactions": [{
                                      "tid": tid.hex(), "time": when, "user": "",
                                      "description": "initial database creation",
                                      "status": " "}]}])
        # A Data.fs that was not there at the snapshot: the same.
        os.remove(self.then)
        self.assertEqual(self.plan(), (shown, views))
        # The root's creation in the snapshot already: nothing since.
        shutil.copy(self.path, self.then)
        shown, views = self.plan()
        self.assertEqual(shown, ["  ZODB %s: no transaction since the snapshot" % self.path])
        self.assertEqual(views[0]["count"], 0)

    def test_unreadable_files_are_named_on_the_line(self):
        root_created(self.path)
        for then, expected in (
                (b"", "%s is not a FileStorage (expected it to start with FS30 or FS21, "
                      "found an empty file)"),
                (b"FS30\0\0\0", "%s does not read as a FileStorage (expected a transaction "
                                "record ending at byte 7, found only 3 bytes after the "
                                "header)"),
                (None, "%s is not a FileStorage (expected a file, found a directory)")):
            with self.subTest(then=then):
                if then is None:
                    os.remove(self.then)
                    os.mkdir(self.then)
                else:
                    with open(self.then, "wb") as f:
                        f.write(then)
                shown, views = self.plan()
                # The snapshot's copy is the one named: the live Data.fs reads well.
                error = expected % self.then
                self.assertEqual(shown, ["  ZODB %s: cannot tell what it undoes (%s)"
                                         % (self.path, error)])
                self.assertEqual(views, [{"path": self.path, "error": error}])
