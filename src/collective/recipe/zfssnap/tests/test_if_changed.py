"""`snapshot --if-changed`, the release guard of sites without buildout (inputs.py), in the
fast suite: the modelled pool and site of fake_world, with real files and a real git checkout
in the site directory, through bin/snapshot's entry point (main.snapshot) and through
`zfssnap` (cli.main). A snapshot is taken when the install inputs differ from those recorded
with the last one it took, and only then; the record is written once the set is taken."""
import datetime
import hashlib
import json
import os
import subprocess
import textwrap
import unittest
from unittest import mock

from collective.recipe.zfssnap import cli
from collective.recipe.zfssnap import inputs
from collective.recipe.zfssnap import main
from collective.recipe.zfssnap import rollback as rollbackmod
from collective.recipe.zfssnap import snapshot as snapshotmod
from collective.recipe.zfssnap import standalone
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.tests.fake_world import World
from collective.recipe.zfssnap.tests.test_snapshot_sets import Clock


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


class IfChangedTest(unittest.TestCase):

    def setUp(self):
        patcher = mock.patch.object(snapshotmod, "datetime", mock.Mock(
            datetime=Clock(), timezone=datetime.timezone))
        patcher.start()
        self.addCleanup(patcher.stop)
        self.world = World()
        self.addCleanup(self.world.close)
        self.world.config["retain"] = 10  # no warning about the sets kept
        self.record = state.Places(self.world.config).install_record
        self.write("pyproject.toml", "[project]\nname = 'site'\n")
        self.write("uv.lock", "version = 1\n")

    def write(self, name, text):
        with open(os.path.join(self.world.top, name), "w") as f:
            f.write(text)

    def running(self):
        return self.world.running()

    def snapshot(self, *argv, **config):
        """bin/snapshot ARGV: (exit code, stdout, stderr)."""
        return self.world.script(main.snapshot, argv, **config)

    def taken(self):
        """The `zfs snapshot` commands the scripts ran so far."""
        return [c for c in self.world.pool.calls if c[0] == "snapshot"]

    def recorded(self):
        try:
            with open(self.record) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def git(self, *args):
        subprocess.run(["git", "-C", self.world.top, "-c", "user.name=t", "-c",
                        "user.email=t@example.org", "-c", "commit.gpgsign=false"] + list(args),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def commit(self, message):
        self.git("commit", "-q", "-a", "-m", message)
        return subprocess.run(["git", "-C", self.world.top, "rev-parse", "HEAD"], check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()

    def first(self):
        """The first run: it takes a snapshot; its name."""
        code, out, err = self.snapshot("--if-changed", "release")
        self.assertEqual((code, err), (0, ""), out)
        return self.recorded()["snapshot"]

    def test_the_first_run_takes_and_records_the_next_takes_nothing(self):
        code, out, err = self.snapshot("--if-changed", "release", "-m", "deploy")
        self.assertEqual((code, err), (0, ""))
        name = self.recorded()["snapshot"]
        self.assertTrue(name.startswith("zfssnap-20261207T12") and name.endswith("-release"),
                        name)
        lines = out.splitlines()
        self.assertEqual(lines[0], "no install was recorded yet: taking a snapshot")
        self.assertEqual(lines[1], "Snapshot %s taken of tank/site, data/site-filestorage, "
                         "data/site-blobstorage." % name)
        self.assertEqual(lines[-1], "Note: the snapshot holds the checkout as it is now, with "
                         "what the last install built (the virtualenv, or a buildout's eggs "
                         "and bin/) and the data as they are")
        self.assertEqual(len(self.taken()), 2)  # one per pool
        self.assertIn("tank/site@" + name, self.world.pool.snapshot_info)
        self.assertEqual(self.world.pool.snapshot_info["tank/site@" + name]["properties"][
            "message"], "deploy")
        record = self.recorded()
        self.assertEqual(record, {"snapshot": name, "revision": "", "time": record["time"],
                                  "files": {"pyproject.toml": sha256("[project]\nname = "
                                                                     "'site'\n"),
                                            "uv.lock": sha256("version = 1\n")}})
        self.assertEqual(record["time"], self.world.pool.snapshot_info[
            "tank/site@" + name]["properties"]["created"])
        # Nothing changed: no zfs snapshot, the record as it was.
        with open(self.record, "rb") as f:
            before = f.read()
        code, out, err = self.snapshot("--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "the install inputs are those of the snapshot %s (taken %s): no "
                         "snapshot taken\n" % (name, record["time"]))
        self.assertEqual(len(self.taken()), 2)
        with open(self.record, "rb") as f:
            self.assertEqual(f.read(), before)
        # A file that is not an install input changes nothing either.
        self.write("README.md", "the site\n")
        self.assertEqual(self.snapshot("--if-changed")[0], 0)
        self.assertEqual(len(self.taken()), 2)

    def test_a_changed_lock_file_takes_one(self):
        name = self.first()
        self.write("uv.lock", "version = 2\n")
        code, out, err = self.snapshot("--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[0], "the install inputs changed since the snapshot %s "
                         "(uv.lock changed): taking a snapshot" % name)
        self.assertEqual(len(self.taken()), 4)
        record = self.recorded()
        self.assertNotEqual(record["snapshot"], name)
        self.assertIn(record["snapshot"], out.splitlines()[1])
        self.assertEqual(record["files"]["uv.lock"], sha256("version = 2\n"))
        # Recorded: the same inputs again take nothing.
        self.snapshot("--if-changed", "release")
        self.assertEqual(len(self.taken()), 4)

    def test_files_added_and_removed(self):
        name = self.first()
        self.write("requirements-dev.txt", "pytest\n")
        os.remove(os.path.join(self.world.top, "pyproject.toml"))
        code, out, err = self.snapshot("--if-changed")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[0], "the install inputs changed since the snapshot %s "
                         "(pyproject.toml removed, requirements-dev.txt added): taking a "
                         "snapshot" % name)
        self.assertEqual(sorted(self.recorded()["files"]), ["requirements-dev.txt", "uv.lock"])
        self.assertEqual(len(self.taken()), 4)

    def test_the_patterns_of_the_install_inputs_option(self):
        # Relative to the part's directory, or absolute; a directory matched is not a file.
        elsewhere = os.path.join(self.world.tmp, "shared.txt")
        with open(elsewhere, "w") as f:
            f.write("pins\n")
        os.makedirs(os.path.join(self.world.top, "locks", "sub"))
        self.write("locks/sub/a.lock", "a\n")
        config = {"install_inputs": ["uv.lock", "locks/**/*.lock", "locks", elsewhere]}
        self.assertEqual(self.snapshot("--if-changed", **config)[0], 0)
        self.assertEqual(sorted(self.recorded()["files"]), sorted(
            ["uv.lock", "locks/sub/a.lock", elsewhere]))
        with open(elsewhere, "w") as f:
            f.write("other pins\n")
        code, out, err = self.snapshot("--if-changed", **config)
        self.assertIn("(%s changed)" % elsewhere, out.splitlines()[0])
        self.assertEqual(len(self.taken()), 4)

    def test_a_moved_git_revision_takes_one(self):
        self.git("init", "-q")
        self.write("app.py", "print(1)\n")
        self.git("add", "pyproject.toml", "uv.lock", "app.py")
        old = self.commit("1.0")
        name = self.first()
        self.assertEqual(self.recorded()["revision"], old)
        # A commit that changes no install input file moves the checkout all the same.
        self.write("app.py", "print(2)\n")
        new = self.commit("2.0")
        code, out, err = self.snapshot("--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "the install inputs changed since the snapshot %s (the "
                         "checkout moved from %s to %s): taking a snapshot"
                         % (name, old[:12], new[:12]))
        self.assertEqual(lines[-1], "Note: the snapshot holds the checkout as it is now, with "
                         "what the last install built (the virtualenv, or a buildout's eggs "
                         "and bin/) and the data as they are; after a rollback to it, type "
                         "git -C %s checkout %s to have the code of the last recorded install "
                         "too" % (self.world.top, old))
        self.assertEqual(self.recorded()["revision"], new)
        self.assertEqual(len(self.taken()), 4)

    def test_the_dry_run_writes_no_record(self):
        code, out, err = self.snapshot("--dry-run", "--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "no install was recorded yet: a snapshot would be taken "
                         "(dry run: no record is written)")
        self.assertEqual([line.split()[:2] for line in lines[1:]], [["zfs", "snapshot"]] * 2)
        self.assertIsNone(self.recorded())
        self.assertEqual(self.world.pool.calls, [])
        state_directory = os.path.dirname(self.record)
        self.assertEqual(os.listdir(state_directory) if os.path.exists(state_directory)
                         else [], [])  # not even a lock
        name = self.first()
        self.write("uv.lock", "version = 2\n")
        code, out, err = self.snapshot("--dry-run", "--if-changed")
        self.assertIn("(uv.lock changed): a snapshot would be taken", out.splitlines()[0])
        self.assertEqual((self.recorded()["snapshot"], len(self.taken())), (name, 2))

    def test_a_snapshot_that_fails_writes_no_record(self):
        hook = {"hooks": {"before-snapshot": ["false"]}}
        code, out, err = self.snapshot("--if-changed", **hook)
        self.assertEqual(code, 1)
        self.assertIn("the before-snapshot hook 'false' failed (exit 1)", err)
        self.assertIsNone(self.recorded())
        self.assertEqual(self.taken(), [])
        # The second pool's snapshot fails: the first one's is destroyed again, no record.
        real = self.world.pool.snapshot

        def failing(names, properties=None, recursive=False):
            if isinstance(names, list) and names[0].startswith("data/"):
                raise zfsmod.ZfsError("cannot create snapshots: out of space", ["snapshot"],
                                      stderr="out of space")
            return real(names, properties, recursive)

        with mock.patch.object(self.world.pool, "snapshot", failing):
            code, out, err = self.snapshot("--if-changed")
        self.assertEqual(code, 1)
        self.assertIn("no snapshot was taken", err)
        self.assertIsNone(self.recorded())
        # A record there stays as it was when the next snapshot fails, also after the set
        # was taken (the after-snapshot hook).
        name = self.first()
        self.write("uv.lock", "version = 2\n")
        for config in (hook, {"hooks": {"after-snapshot": ["false"]}}):
            code, out, err = self.snapshot("--if-changed", **config)
            self.assertEqual(code, 1, config)
            self.assertEqual(self.recorded()["snapshot"], name)
            self.assertEqual(self.recorded()["files"]["uv.lock"], sha256("version = 1\n"))

    def test_list_and_if_changed_is_a_usage_error(self):
        for script, (code, out, err), error in (
                ("snapshot", self.snapshot("--list", "--if-changed"),
                 "argument --if-changed: not allowed with argument --list"),
                ("zfssnap snapshot", self.zfssnap("snapshot", "--if-changed", "--list"),
                 "argument --list: not allowed with argument --if-changed")):
            self.assertEqual((code, out), (2, ""), script)
            self.assertTrue(err.startswith("usage: %s " % script), err)
            self.assertTrue(err.endswith("%s: error: %s\n" % (script, error)), err)
        self.assertEqual((self.recorded(), self.world.pool.calls), (None, []))

    def test_the_json_document_says_whether_one_was_taken(self):
        code, out, err = self.snapshot("--json", "--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        doc = json.loads(out)
        name = self.recorded()["snapshot"]
        self.assertEqual((doc["ok"], doc["exit_code"], doc["format"]), (True, 0, 1))
        self.assertEqual((doc["taken"], doc["snapshot"]), (True, name))
        self.assertEqual(doc["datasets"], [n for n, _ in self.world.layout])
        self.assertEqual(doc["install_inputs"], {
            "record": self.record, "changed": True, "changes": [], "last": None,
            "revision": "", "files": self.recorded()["files"]})
        self.write("uv.lock", "version = 2\n")
        doc = json.loads(self.snapshot("--json", "--if-changed")[1])
        self.assertEqual((doc["taken"], doc["install_inputs"]["changes"],
                          doc["install_inputs"]["last"]["snapshot"]),
                         (True, ["uv.lock changed"], name))
        name = self.recorded()["snapshot"]
        doc = json.loads(self.snapshot("--json", "--if-changed")[1])
        self.assertEqual((doc["ok"], doc["taken"], doc["install_inputs"]["changed"],
                          doc["install_inputs"]["snapshot_exists"]), (True, False, False, True))
        self.assertNotIn("snapshot", doc)
        self.assertEqual(doc["install_inputs"]["last"]["snapshot"], name)

    def test_the_recorded_snapshot_gone_still_takes_nothing(self):
        name = self.first()
        for dataset, _ in self.world.layout:
            del self.world.pool.snapshot_info[dataset + "@" + name]
        code, out, err = self.snapshot("--if-changed")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "the install inputs are those of the snapshot %s (taken %s), which "
                         "is gone since; an install from unchanged inputs changes nothing: no "
                         "snapshot taken\n" % (name, self.recorded()["time"]))
        self.assertEqual(len(self.taken()), 2)

    def test_refused_while_a_rollback_is_unfinished_changed_or_not(self):
        self.first()
        rollback = state.Record(state.Places(self.world.config).record)
        rollback.save({"target": self.world.target, "stage": "stopping"})
        for change in ("version = 1\n", "version = 2\n"):
            self.write("uv.lock", change)
            code, out, err = self.snapshot("--if-changed")
            self.assertEqual((code, out), (3, ""))
            self.assertTrue(err.startswith("snapshot: error: refusing to let the install go "
                                           "on: an unfinished rollback to %s is recorded"
                                           % self.world.target), err)
            self.assertEqual(self.recorded()["files"]["uv.lock"], sha256("version = 1\n"))
        self.assertEqual(len(self.taken()), 2)

    def test_refused_for_a_database_server_changed_or_not(self):
        databases = {"external_databases": [{"kind": "PostgreSQL", "where": "the rel-storage "
                                             "option of the [instance] part"}]}
        for unchanged in (False, True):
            if unchanged:
                self.first()
            code, out, err = self.snapshot("--if-changed", **databases)
            self.assertEqual((code, out), (3, ""))
            self.assertIn("the database is in PostgreSQL", err)
        self.assertEqual(len(self.taken()), 2)

    def test_a_record_that_cannot_be_read(self):
        os.makedirs(os.path.dirname(self.record), mode=0o700)
        for text in ("{not json", '{"snapshot": "x", "files": []}'):
            with open(self.record, "w") as f:
                f.write(text)
            code, out, err = self.snapshot("--if-changed")
            self.assertEqual((code, out), (1, ""))
            self.assertTrue(err.startswith("snapshot: error: the record %s cannot be read ("
                                           % self.record), err)
            self.assertTrue(err.endswith("look at it, then remove it by hand; it is the record "
                                         "of the last snapshot --if-changed, and without it "
                                         "the next one takes a snapshot; no snapshot was "
                                         "taken\n"), err)
        self.assertEqual(self.taken(), [])

    def test_a_label_it_would_refuse_is_refused_when_nothing_is_taken(self):
        self.first()
        code, out, err = self.snapshot("--if-changed", "a label")
        self.assertEqual(code, 2)
        self.assertIn("cannot use the label 'a label'", err)

    def test_a_rollback_without_a_record_writes_none(self):
        self.assertIsNone(self.world.rollback())
        self.assertEqual(self.world.data["phase"], "done")
        self.assertIsNone(self.recorded())

    def test_a_rollback_sets_the_record_to_the_snapshot_rolled_back_to(self):
        self.first()
        self.write("uv.lock", "version = 2\n")
        self.snapshot("--if-changed")
        self.assertEqual(len(self.taken()), 4)
        # Back to the set taken before both: the site's files are that snapshot's again (the
        # model's datasets hold no files), and the two newer sets are destroyed.
        self.write("uv.lock", "version = 0\n")
        self.assertIsNone(self.world.rollback())
        record = self.recorded()
        self.assertEqual((record["snapshot"], record["time"], record["files"]["uv.lock"]), (
            self.world.target, "2026-12-02T00:00:00Z", sha256("version = 0\n")))
        # The release's inputs again are a change: the record of before the rollback would
        # have taken them for unchanged, with no snapshot of this state to go back to.
        self.write("uv.lock", "version = 2\n")
        code, out, err = self.snapshot("--if-changed")
        self.assertEqual(out.splitlines()[0], "the install inputs changed since the snapshot "
                         "%s (uv.lock changed): taking a snapshot" % self.world.target)
        self.assertEqual(len(self.taken()), 6)

    def test_a_rollback_that_cannot_set_the_record_removes_it(self):
        self.first()
        site = self.world.site()
        with self.world.patched(), mock.patch.object(inputs, "read",
                                                     side_effect=OSError("no such file")):
            rollbackmod.rollback(site, self.world.target, yes=True)
        self.assertEqual(site.out.data["phase"], "done")
        self.assertIsNone(self.recorded())
        self.assertIn("could not set the install record %s back to %s (no such file): it was "
                      "removed, so the next snapshot --if-changed takes a snapshot"
                      % (self.record, self.world.target), site.out.warnings)

    # -- through zfssnap ------------------------------------------------------------------
    def zfssnap(self, *argv):
        """`zfssnap -C SITE ARGV` on a site configured by its zfssnap.cfg: (code, out, err)."""
        with open(os.path.join(self.world.top, "zfssnap.cfg"), "w") as f:
            f.write(textwrap.dedent("""\
                [zfssnap]
                dataset = tank/site
                retain = 10
                extra-datasets =
                    data/site-filestorage
                    data/site-blobstorage
                """))
        load = standalone.load
        self.loaded = []

        def loaded(directory):
            config = dict(load(directory), state_directory=self.world.config[
                "state_directory"])
            self.loaded.append(config)
            return config

        with self.running() as (stdout, stderr), mock.patch.object(standalone, "load", loaded):
            try:
                code = cli.main(["-C", self.world.top] + list(argv))
            except SystemExit as e:
                code = e.code
        return code, stdout.getvalue(), stderr.getvalue()

    def test_through_zfssnap(self):
        code, out, err = self.zfssnap("snapshot", "--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        name = self.recorded()["snapshot"]
        self.assertEqual(self.loaded[0]["install_inputs"], list(inputs.PATTERNS))
        self.assertEqual(out.splitlines()[:2], [
            "no install was recorded yet: taking a snapshot",
            "Snapshot %s taken of tank/site, data/site-filestorage, data/site-blobstorage."
            % name])
        self.assertIn("Roll back to it:  zfssnap rollback %s" % name, out)
        code, out, err = self.zfssnap("snapshot", "--if-changed", "release")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("the install inputs are those of the snapshot %s"
                                       % name), out)
        self.assertEqual(len(self.taken()), 2)
        self.write("uv.lock", "version = 2\n")
        code, out, err = self.zfssnap("snapshot", "--if-changed", "--json")
        self.assertEqual((code, json.loads(out)["taken"]), (0, True))
        self.assertEqual(len(self.taken()), 4)


class RemoteZeoServerTest(unittest.TestCase):
    """A ZEO client's server on another machine (standalone.remote_zeo_servers): the snapshot
    is taken, with a warning that its Data.fs is not in it; the rollback's plan says so."""

    def test_snapshot_and_plan_say_so(self):
        world = World()
        self.addCleanup(world.close)
        zeo = {"server": "db.example.org:8100",
               "where": "the <zeoclient> section of /srv/site/instance/etc/zope.conf, line 2"}
        code, out, err = world.script(main.snapshot, ["pre"], remote_zeo_servers=[zeo])
        self.assertEqual(code, 0, err)
        self.assertIn("WARNING: the ZEO server db.example.org:8100 (the <zeoclient> section of "
                      "/srv/site/instance/etc/zope.conf, line 2) is not on this machine: its "
                      "Data.fs is not in this snapshot; snapshot it where it runs, and roll "
                      "both back together", err)
        code, out, err = world.script(main.rollback, ["--dry-run"], remote_zeo_servers=[zeo])
        self.assertEqual(code, 0, err)
        self.assertIn("  the ZEO server db.example.org:8100 (the <zeoclient> section of "
                      "/srv/site/instance/etc/zope.conf, line 2): not on this machine, not "
                      "rolled back with the datasets", out)

