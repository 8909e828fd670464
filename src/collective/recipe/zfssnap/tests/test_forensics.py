"""Beyond a bare rollback, on real OpenZFS with the site's real ZODB (lab guest only): what
the rollback undoes in ZODB terms, the state rolled away from kept (--keep), a health check."""
import json
import unittest

from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import FILESTORAGE
from collective.recipe.zfssnap.tests.layers import RUNNING
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import full_series_only
from collective.recipe.zfssnap.tests.layers import bin_
from collective.recipe.zfssnap.tests.layers import configure
from collective.recipe.zfssnap.tests.layers import program_states
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests.layers import wait_for


DATAFS = SITE + "/var/filestorage/Data.fs"
EDITS = [("editor", "/Plone/news/edit"), ("admin", "/Plone/front-page/edit")]


def edit_content():
    """Two transactions as Zope records them: the user (with its path) and a description."""
    for user, note in EDITS:
        app("/write?blob=%s&user=%s&note=%s" % (user, user, note), "POST")


def kept():
    return [n for n in sh("zfs", "list", "-H", "-o", "name", "-t", "filesystem").split()
            if "-rolled-away-" in n]


def prop(name, dataset):
    return sh("zfs", "get", "-H", "-p", "-o", "value", name, dataset).strip()


class ForensicsTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        self.before = Site.reset()
        self.name = take_snapshot("pre")
        configure(filestorages=[DATAFS])

    def tearDown(self):
        # A --keep rollback replaces the datasets with clones: make them the owners of the
        # baseline again and drop the kept ones, so that the next reset() can roll back.
        for name in kept():
            dataset = name.split("-rolled-away-")[0]
            if prop("origin", dataset).startswith(name + "@"):
                sh("zfs", "promote", dataset, check=False)
            sh("zfs", "release", "-r", "hold-test", name + "@held", check=False)
            sh("zfs", "destroy", "-r", name, check=False)
        sh("zfs", "release", "hold-test", FILESTORAGE + "@held", check=False)
        sh("zfs", "set", "quota=none", FILESTORAGE, check=False)
        sh("zfs", "inherit", "org.example:tag", FILESTORAGE, check=False)

    @full_series_only  # nothing of it depends on OpenZFS's version or the pools
    def test_the_plan_lists_the_transactions_since_the_snapshot(self):
        edit_content()
        rc, out, err = bin_("rollback", "--dry-run")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("ZODB %s: undoes 2 transactions committed since the snapshot" % DATAFS,
                      out)
        self.assertRegex(out, r"\d\d:\d\dZ  /Plone admin  /Plone/front-page/edit\n.*"
                              r"  /Plone editor  /Plone/news/edit")
        rc, out, err = bin_("rollback", "--dry-run", "--json")
        view = json.loads(out)["zodb"][0]
        self.assertEqual(view["count"], 2)
        self.assertEqual([(t["user"], t["description"]) for t in view["transactions"]],
                         [("/Plone admin", "/Plone/front-page/edit"),
                          ("/Plone editor", "/Plone/news/edit")])
        self.assertEqual(view["transactions"][0]["tid"], app()["last_tid"])

    def test_keep_rolls_back_and_keeps_the_rolled_away_state(self):
        sh("zfs", "set", "quota=1G", "org.example:tag=kept-property", FILESTORAGE)
        edit_content()
        tid_after = app()["last_tid"]
        # A held newer snapshot blocks a plain rollback; --keep keeps it instead.
        sh("zfs", "snapshot", FILESTORAGE + "@held")
        sh("zfs", "hold", "hold-test", FILESTORAGE + "@held")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 3, out + err)
        rc, out, err = bin_("rollback", "--yes", "--keep")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("keeps the newer %s@held" % FILESTORAGE, out)
        self.assertIn("ZODB %s: keeps apart 2 transactions" % DATAFS, out)
        self.assertIn("The state rolled away from is kept in", out)
        # Typed in the site directory: its shell is told where it is.
        self.assertIn("Your shell's working directory is still in the state rolled away "
                      "from: type cd %s to see the restored one." % SITE, out)
        self.assertEqual(program_states(), RUNNING)
        self.assertEqual(wait_for(app)["counter"], self.before["counter"])
        # The datasets have their own properties still.
        self.assertEqual(prop("quota", FILESTORAGE), str(1 << 30))
        self.assertEqual(prop("org.example:tag", FILESTORAGE), "kept-property")
        names = kept()
        self.assertEqual(sorted(n.split("-rolled-away-")[0] for n in names), sorted(DATASETS))
        fs = [n for n in names if n.startswith(FILESTORAGE + "-")][0]
        self.assertEqual(prop("readonly", fs), "on")
        self.assertEqual(prop("mounted", fs), "no")
        self.assertIn(fs + "@held", snapshots(fs))

        # The rolled-away Data.fs opens read-only and has the transactions after the snapshot.
        sh("zfs", "set", "mountpoint=/mnt/rolled-away", fs)
        try:
            sh("zfs", "mount", fs)
            import ZODB.FileStorage
            storage = ZODB.FileStorage.FileStorage("/mnt/rolled-away/Data.fs", read_only=True)
            try:
                self.assertEqual(storage.lastTransaction().hex(), tid_after)
                notes = [t.description.decode() for t in storage.iterator()][-2:]
                self.assertEqual(notes, [note for _, note in EDITS])
            finally:
                storage.close()
        finally:
            sh("zfs", "unmount", fs, check=False)
            sh("zfs", "set", "mountpoint=none", fs)

        rc, out, err = bin_("snapshot", "--list")
        self.assertEqual(rc, 0, out + err)
        self.assertIn(fs, out)
        sh("zfs", "release", "hold-test", fs + "@held")
        rc, out, err = bin_("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(kept(), [])
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])
        self.assertEqual(program_states(), RUNNING)

    @full_series_only
    def test_health_check(self):
        configure(health_check={"url": "http://127.0.0.1:%d/state" % 8080})
        app("/write?blob=late", "POST")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("(until the health check passed)", out)
        configure(health_check={"url": "http://127.0.0.1:8099/"}, stop_timeout=5)
        rc, out, err = bin_("rollback", "--yes", "--again")  # to the set rolled back to
        self.assertEqual(rc, 1, out + err)
        self.assertIn("but the health check http://127.0.0.1:8099/ did not pass within 5 s", err)
        self.assertEqual(program_states(), RUNNING)
