"""A ZODB in a database server (RelStorage on PostgreSQL, MySQL or Oracle) is not on the
datasets: bin/snapshot refuses it from the configuration alone, before any zfs call, unless the
part says that the operator rolls the database back (external-database = by-hand). Fast suite:
no ZFS is needed, which is the point (the refusal shows on any machine)."""
import contextlib
import io
import json
import os
import shutil
import tempfile
import unittest

from collective.recipe.zfssnap import main
from collective.recipe.zfssnap import storages


PG = "type postgresql\ndsn dbname='zodb' host='db' user='zope'\nblob-dir var/blobcache"


class ReadFromTheBuildoutTest(unittest.TestCase):

    def test_server_databases_and_not_sqlite(self):
        self.assertEqual(storages.external_databases_of({
            "instance": {"rel-storage": PG},
            "client": {"rel-storage": "dsn dbname='zodb'"},  # postgresql: RelStorage's default
            "reports": {"rel-storage": "  type MySQL\n  db zodb"},
            "local": {"rel-storage": "type sqlite3\ndata-dir var/sqlite"},
            "plain": {"file-storage": "var/Data.fs"}}), [
            {"kind": "PostgreSQL", "where": "the rel-storage option of the [instance] part"},
            {"kind": "PostgreSQL", "where": "the rel-storage option of the [client] part"},
            {"kind": "MySQL", "where": "the rel-storage option of the [reports] part"}])

    def test_a_relstorage_part_has_no_data_fs(self):
        self.assertEqual(storages.filestorages_of({
            "instance": {"rel-storage": PG}, "zeoserver": {"zeo-var": "var/zeo"}}, "/srv/site"),
            ["/srv/site/var/zeo/filestorage/Data.fs"])


class SnapshotRefusedTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.mkdtemp(prefix="zfssnap-external-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        # A zfs that is not there: any call to it would end in exit 2, not in the refusal.
        self.config = {
            "part": "site", "directory": tmp, "datasets": ["tank/site"],
            "zfs": [os.path.join(tmp, "no-zfs-here")], "prefix": "zfssnap",
            "state_directory": os.path.join(tmp, "state"),
            "scripts": {s: "/srv/site/bin/site-" + s for s in ("snapshot", "rollback",
                                                                "cleanup")},
            "external_databases": [{"kind": "PostgreSQL",
                                    "where": "the rel-storage option of the [instance] part"}],
            "external_database": "refuse"}

    def snapshot(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.snapshot(self.config, list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_refused_before_any_zfs_call_also_the_dry_run(self):
        sentence = ("the database is in PostgreSQL (the rel-storage option of the [instance] "
                    "part): a ZFS rollback would undo the code but not the data; if you roll "
                    "the database back yourself with each release, set external-database = "
                    "by-hand in the [site] part and run bin/buildout; no snapshot was taken")
        for argv in (["pre-2.0"], ["--dry-run"]):
            code, out, err = self.snapshot(*argv)
            self.assertEqual((code, out), (3, ""), argv)
            self.assertEqual(err, "site-snapshot: error: %s\n" % sentence)
        code, out, err = self.snapshot("--json")
        self.assertEqual((code, json.loads(out)["error"]), (3, sentence))
        self.assertFalse(os.path.exists(self.config["state_directory"]))

    def test_by_hand_goes_on_to_zfs_and_list_is_never_refused(self):
        for config, argv in (({"external_database": "by-hand"}, ["pre-2.0"]), ({}, ["--list"])):
            self.config.update(config)
            code, out, err = self.snapshot(*argv)
            # The missing zfs is what stops it now: the refusal did not.
            self.assertEqual(code, 2, err)
            self.assertNotIn("the database is in", err)
            self.assertIn("no-zfs-here", err)


class ReleaseGuardTest(unittest.TestCase):
    """bin/buildout about to change a site whose database is in a server: the guard says that,
    in every mode but off, instead of asking for a snapshot that bin/snapshot refuses."""

    def test_the_guard_names_the_database(self):
        import logging
        import zc.buildout
        from collective.recipe.zfssnap import extension

        class NoSnapshots:
            out = None

            def snapshot_sets(self):
                return []

        config = {"part": "site", "datasets": ["tank/site"], "directory": "/srv/site",
                  "scripts": {"snapshot": "/srv/site/bin/site-snapshot"},
                  "external_databases": [{"kind": "MySQL", "where": "the rel-storage option "
                                          "of the [instance] part"}]}
        for mode in ("refuse", "snapshot"):
            with self.assertRaises(zc.buildout.UserError) as caught:
                extension.check("site", config, NoSnapshots(), mode, ["a part changed"], None)
            self.assertTrue(str(caught.exception).startswith(
                "[site] release guard: the database is in MySQL (the rel-storage option of the "
                "[instance] part): a ZFS rollback would undo the code but not the data;"),
                caught.exception)
            self.assertTrue(str(caught.exception).endswith(
                "no snapshot was taken; no part was installed, updated or uninstalled"))
        with self.assertLogs("site", logging.WARNING) as logged:
            extension.check("site", config, NoSnapshots(), "warn", ["a part changed"], None)
        self.assertIn("the database is in MySQL", logged.output[0])
        config["external_database"] = "by-hand"
        with self.assertRaises(zc.buildout.UserError) as caught:
            extension.check("site", config, NoSnapshots(), "refuse", ["a part changed"], None)
        self.assertIn("has no snapshot taken since", str(caught.exception))
