"""Layouts of production sites on real OpenZFS: two pools, datasets mounted inside the
buildout, legacy mountpoints, datasets renamed or unmounted since bin/buildout, buildouts owned
by a site user (lab guest only)."""
import json
import os
import subprocess
import unittest

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.tests.layers import bounded
from collective.recipe.zfssnap.tests.layers import full_series_only
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import EVENTS
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import SCRATCH
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import bin_
from collective.recipe.zfssnap.tests.layers import configure
from collective.recipe.zfssnap.tests.layers import program_states
from collective.recipe.zfssnap.tests.layers import rebuild
from collective.recipe.zfssnap.tests.layers import run_in_site
from collective.recipe.zfssnap.tests.layers import script_config
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests.layers import start_site
from collective.recipe.zfssnap.tests.layers import stop_site
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.test_crash_sweep import crashed_run


ARCHIVE = "data/site-archive"  # on the second pool, mounted inside the buildout
ARCHIVE_AT = SITE + "/var/archive"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def read(path):
    with open(path) as f:
        return f.read()


def txg(name):
    return sh("zfs", "get", "-H", "-p", "-o", "value", "createtxg", name).strip()


@full_series_only
class TwoPoolsTest(unittest.TestCase):
    """The Data.fs's neighbour on a data pool, mounted inside the buildout, not named."""

    layer = Site

    def setUp(self):
        Site.reset()
        sh("zfs", "create", "-o", "mountpoint=" + ARCHIVE_AT, ARCHIVE)
        write(ARCHIVE_AT + "/a.txt", "before")

    def tearDown(self):
        sh("zfs", "destroy", "-r", ARCHIVE, check=False)

    def reimport_data(self, readonly):
        sh("zpool", "export", "data")
        sh("zpool", "import", "-d", SCRATCH, *(["-o", "readonly=on"] if readonly else []),
           "data")

    def test_dataset_inside_on_a_second_pool_is_included_snapshotted_and_rolled_back(self):
        out = rebuild()
        self.assertIn("zfssnap: also snapshots %s, mounted at %s inside the part's datasets "
                      "(exclude-datasets leaves it out)" % (ARCHIVE, ARCHIVE_AT), out)
        self.assertIn("zfssnap: the datasets are on 2 pools (data, tank): bin/snapshot takes "
                      "one snapshot per pool, each atomic", out)
        rc, out, err = bin_("snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        self.assertIn("Note: the datasets are on 2 pools (tank, data): one snapshot per pool",
                      out)
        self.assertEqual(len({txg("%s@%s" % (d, name)) for d in DATASETS}), 1)
        self.assertIn("%s@%s" % (ARCHIVE, name), snapshots(ARCHIVE))

        write(ARCHIVE_AT + "/a.txt", "after")
        app("/write?blob=late", "POST")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("> zfs rollback %s@%s" % (ARCHIVE, name), out)
        self.assertEqual(read(ARCHIVE_AT + "/a.txt"), "before")
        self.assertNotIn("late", wait_for(app)["blobs"])

        rc, out, err = bin_("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(snapshots(ARCHIVE), [])
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])

    def test_failure_on_the_second_pool_leaves_no_half_set(self):
        config = script_config()
        configure(datasets=config["datasets"] + [ARCHIVE],
                  mounts=dict(config["mounts"], **{ARCHIVE: ARCHIVE_AT}))
        self.reimport_data(readonly=True)  # a real failure: zfs snapshot on a read-only pool
        try:
            rc, out, err = bin_("snapshot", "pre")
            self.assertEqual(rc, 1, out + err)
            self.assertIn("the snapshot failed on pool data", err)
            self.assertIn("the snapshots already taken on the other pools (tank/site@", err)
            self.assertIn(") were destroyed again: no snapshot was taken", err)
            for dataset in DATASETS:
                self.assertEqual(snapshots(dataset), [dataset + "@lab-baseline"])
            self.assertEqual(snapshots(ARCHIVE), [])
        finally:
            self.reimport_data(readonly=False)
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})

    def test_killed_between_the_pools_then_the_rerun_destroys_the_half_set(self):
        config = script_config()
        configure(datasets=config["datasets"] + [ARCHIVE],
                  mounts=dict(config["mounts"], **{ARCHIVE: ARCHIVE_AT}))
        # Action 1 is the record naming the set, 2 the first pool's snapshot.
        rc, out = crashed_run([SITE + "/bin/snapshot", "pre"], after=2)
        self.assertEqual(rc, -9, out)
        half = [n.split("@")[1] for n in snapshots("tank/site") if "lab-baseline" not in n]
        self.assertEqual(len(half), 1, snapshots("tank/site"))
        self.assertEqual(snapshots(ARCHIVE), [])
        rc, out, err = bin_("snapshot", "--list")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("WARNING: the snapshot set %s is missing on %s: it cannot be rolled back "
                      "to; a bin/snapshot stopped before it reached them, and the next "
                      "%s/bin/snapshot destroys it" % (half[0], ARCHIVE, SITE), err)
        rc, out, err = bin_("rollback", "--yes", half[0])
        self.assertEqual(rc, 3, out + err)
        self.assertIn("the snapshot %s is missing on %s" % (half[0], ARCHIVE), err)

        rc, out, err = bin_("snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Destroyed the unfinished snapshot set %s (a bin/snapshot stopped before "
                      "it reached %s)." % (half[0], ARCHIVE), out)
        taken = [line.split()[1] for line in out.splitlines() if line.startswith("Snapshot ")]
        self.assertEqual(len(taken), 1, out)
        for dataset in list(DATASETS) + [ARCHIVE]:
            self.assertEqual([n.split("@")[1] for n in snapshots(dataset)
                              if "lab-baseline" not in n], taken, dataset)
        with open(state.Places(config).log) as f:
            self.assertIn("destroy tank/site@%s\n" % half[0], f.read())
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})

    def test_dataset_mounted_inside_since_buildout_is_refused_until_buildout_runs(self):
        rc, out, err = bin_("snapshot", "pre")  # the part's layout: the three datasets
        self.assertEqual(rc, 3, out + err)
        self.assertIn("refusing to take a snapshot: the datasets are not mounted as when "
                      "bin/buildout ran: %s is mounted at %s, inside the part's datasets, and "
                      "the part does not cover it" % (ARCHIVE, ARCHIVE_AT), err)
        self.assertIn("run bin/buildout again", err)
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])
        sh("zfs", "unmount", ARCHIVE)
        rc, out, err = bin_("snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        sh("zfs", "mount", ARCHIVE)
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("refusing to roll back: the datasets are not mounted as when bin/buildout "
                      "ran", err)
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        # Left out on purpose: exclude-datasets (as bin/buildout writes it).
        configure(excluded=[ARCHIVE])
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(read(ARCHIVE_AT + "/a.txt"), "before")


@full_series_only
class MountChangesTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()
        self.name = take_snapshot("pre")

    def test_renamed_dataset_is_refused(self):
        sh("zfs", "rename", "tank/site-blobstorage", "tank/site-blobs")
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("tank/site-blobstorage is not mounted (it was at %s/var/blobstorage)"
                          % SITE, err)
            self.assertIn("tank/site-blobs is mounted at %s/var/blobstorage, inside the part's "
                          "datasets, and the part does not cover it" % SITE, err)
            self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        finally:
            sh("zfs", "rename", "tank/site-blobs", "tank/site-blobstorage")

    def test_unmounted_dataset_is_refused(self):
        stop_site()
        sh("zfs", "unmount", "tank/site-filestorage")
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("tank/site-filestorage is not mounted (it was at %s/var/filestorage)"
                          % SITE, err)
        finally:
            sh("zfs", "mount", "tank/site-filestorage")
        start_site()


LEGACY = "/srv/legacy-site"


@full_series_only
class SmallBuildoutTest(unittest.TestCase):
    """Buildouts of their own with only the part: quick to build, for the recipe's checks."""

    layer = Site

    def buildout(self, directory, extra=""):
        links = os.environ.get("ZFSSNAP_LAB_FIND_LINKS", "/mnt/wheels").split()
        write(directory + "/buildout.cfg",
              "[buildout]\nparts = zfssnap\nfind-links = %s\nindex = file://%s\n"
              "newest = false\n\n[zfssnap]\nrecipe = collective.recipe.zfssnap\n%s"
              % (" ".join(links), links[0], extra))
        return bounded(["/opt/venv/bin/buildout"], cwd=directory, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)

    def test_subdirectory_of_a_dataset_is_refused_by_buildout(self):
        sub = SITE + "/var/sub-buildout"
        os.makedirs(sub, exist_ok=True)
        proc = self.buildout(sub)
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertIn("Error: [zfssnap] dataset: the buildout directory %s is a subdirectory "
                      "of the dataset tank/site (mounted at /srv/site)" % sub, proc.stdout)
        self.assertNotIn("Traceback", proc.stdout)

    def test_legacy_mountpoint(self):
        sh("zfs", "create", "-o", "mountpoint=legacy", "tank/legacy-site")
        os.makedirs(LEGACY, exist_ok=True)
        sh("mount", "-t", "zfs", "tank/legacy-site", LEGACY)
        try:
            write(LEGACY + "/VERSION", "1.0\n")
            proc = self.buildout(LEGACY)
            self.assertEqual(proc.returncode, 0, proc.stdout)
            installed = read(LEGACY + "/.installed.cfg")
            self.assertIn("dataset = tank/legacy-site", installed)
            rc, out, err = run_in_site(LEGACY + "/bin/snapshot", "pre")
            self.assertEqual(rc, 0, out + err)
            write(LEGACY + "/VERSION", "2.0\n")
            rc, out, err = run_in_site(LEGACY + "/bin/rollback", "--yes")
            self.assertEqual(rc, 0, out + err)
            self.assertEqual(read(LEGACY + "/VERSION"), "1.0\n")
            # A lock or log inside it is refused, as for any dataset.
            proc = self.buildout(LEGACY, "log-file = %s/var/zfssnap.log\n" % LEGACY)
            self.assertIn("Error: [zfssnap] log-file: %s/var/zfssnap.log is on the dataset "
                          "tank/legacy-site, which a rollback replaces" % LEGACY, proc.stdout)
        finally:
            sh("umount", LEGACY, check=False)
            sh("zfs", "destroy", "-r", "tank/legacy-site", check=False)


SITEOP = "siteop"


def ensure_user():
    if subprocess.run(["id", SITEOP], stdout=subprocess.DEVNULL).returncode != 0:
        sh("useradd", "-m", SITEOP)


@full_series_only
class SiteUserTest(unittest.TestCase):
    """The buildout owned by a site user: run by root, or by that user with delegated ZFS
    permissions or `sudo -n zfs`."""

    layer = Site

    def setUp(self):
        ensure_user()
        Site.reset(start=False)
        for mountpoint in DATASETS.values():
            sh("chown", "-R", "%s:%s" % (SITEOP, SITEOP), mountpoint)
        open(EVENTS, "w").close()  # the programs, run as the site user, write there
        sh("chown", SITEOP, EVENTS)
        self.state = "/var/tmp/zfssnap-test-%s" % SITEOP
        sh("rm", "-rf", self.state)

    def tearDown(self):
        stop_site()
        for dataset in DATASETS:
            sh("zfs", "unallow", SITEOP, dataset, check=False)
        if os.path.exists("/etc/sudoers.d/zfssnap-test"):
            os.remove("/etc/sudoers.d/zfssnap-test")

    def as_siteop(self, *argv):
        return run_in_site(*argv, user=SITEOP)

    def test_root_reads_git_of_a_buildout_it_does_not_own(self):
        start_site()
        # What git says to root in a buildout owned by the site user:
        self.assertIn("dubious ownership", sh("git", "-C", SITE, "status", check=False))
        rc, out, err = bin_("snapshot", "pre", "--json")
        self.assertEqual(rc, 0, out + err)
        props = json.loads(out)["properties"]
        self.assertEqual(props["git-revision"],
                         sh(*GIT, "-c", "safe.directory=" + SITE, "-C", SITE, "rev-parse",
                            "HEAD").strip())
        self.assertEqual(props["git-describe"], "1.0")
        self.assertEqual(props["git-dirty"], "no")

    def workflow_as_siteop(self):
        """snapshot, a change, rollback and cleanup, all typed by the site user."""
        start_site(user=SITEOP)
        configure(lock_file=self.state + "/site.lock", log_file=self.state + "/site.log")
        rc, out, err = self.as_siteop(SITE + "/bin/snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        self.assertEqual(sh("zfs", "get", "-H", "-o", "value", "collective.recipe.zfssnap:user",
                            "tank/site@" + name).strip(), SITEOP)
        before = app()
        app("/write?blob=late", "POST")
        rc, out, err = self.as_siteop(SITE + "/bin/rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(wait_for(app)["counter"], before["counter"])
        rc, out, err = self.as_siteop(SITE + "/bin/cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])
        self.assertEqual(os.stat(self.state).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(self.state).st_uid,
                         int(sh("id", "-u", SITEOP).strip()))

    def test_site_user_with_zfs_allow(self):
        for dataset in DATASETS:
            sh("zfs", "allow", SITEOP, "snapshot,userprop,rollback,destroy,mount",
               dataset)
        self.workflow_as_siteop()

    def test_site_user_with_sudo_zfs(self):
        write("/etc/sudoers.d/zfssnap-test",
              "%s ALL=(root) NOPASSWD: /usr/sbin/zfs, /sbin/zfs\n" % SITEOP)
        os.chmod("/etc/sudoers.d/zfssnap-test", 0o440)
        configure(zfs=["sudo", "-n", "zfs"])
        self.workflow_as_siteop()
