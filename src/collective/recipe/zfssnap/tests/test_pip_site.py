"""A release rolled back on a Zope site with no buildout, by the site's own `zfssnap` (lab
guest only, STACK_SERIES): pip's virtualenv, cookiecutter-zope-instance's layout, ZEO and Zope
under a plain supervisord.conf, then under systemd units."""
import json
import os
import re
import shutil
import unittest

from collective.recipe.zfssnap.tests import pip_site
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import on_terminal
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import stack_series_only
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.pip_site import DATASETS
from collective.recipe.zfssnap.tests.pip_site import SITE
from collective.recipe.zfssnap.tests.pip_site import zfssnap

RELSTORAGE_SITE = "/srv/pip-site-relstorage"
RELSTORAGE_CONF = """\
%define INSTANCEHOME {site}/instance
instancehome $INSTANCEHOME
%import relstorage
<zodb_db main>
    mount-point /
    <relstorage>
        blob-dir {site}/instance/var/blobcache
        shared-blob-dir false
        <postgresql>
            dsn dbname='plone' user='plone' host='db.example.org'
        </postgresql>
    </relstorage>
</zodb_db>
"""


def supervisor_events(log):
    return re.findall(r"(stopped|spawned): '?(zeo|instance)'?", log)


def ours(dataset):
    return [s for s in snapshots(dataset) if "@zfssnap-" in s]


def head():
    return sh("git", "-C", SITE, "rev-parse", "HEAD").strip()


def commit_release(version):
    """The release's change to the checkout: the site's package pinned at `version`."""
    pip_site.policy_wheel(version)
    pip_site.release_requirements(version)
    sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release " + version)


def bad_release(version, written):
    """pip installs the release's package set; editors write through Zope."""
    pip_site.pip_install("-r", SITE + "/requirements.txt")
    for name in written:
        pip_site.add_folder(name, "written after the release")


@stack_series_only
class PipSiteTest(unittest.TestCase):
    layer = pip_site.PipSite

    def tearDown(self):
        # Every test leaves the site as the layer made it: under supervisord, no snapshot.
        if os.path.exists(SITE + "/zfssnap.cfg"):
            os.remove(SITE + "/zfssnap.cfg")
        pip_site.remove_units()
        if not pip_site.supervisord_pids():
            pip_site.start_supervisord()
        zfssnap("cleanup", "--yes")

    def test_what_zfssnap_finds(self):
        # No zfssnap.cfg: the datasets from the mounts below the site, the Data.fs from the ZEO
        # server's zeo.conf, supervisord from supervisord.conf and the virtualenv.
        rc, out, err = pip_site.run(pip_site.VENV + "/bin/python", "-c", (
            "import json; from collective.recipe.zfssnap import standalone; "
            "print(json.dumps(standalone.load(%r)))" % SITE))
        self.assertEqual(rc, 0, err)
        config = json.loads(out)
        self.assertEqual(sorted(config["datasets"]), sorted(DATASETS))
        self.assertEqual(config["filestorages"], [pip_site.DATAFS])
        self.assertEqual(config["supervisor_conf"], SITE + "/supervisord.conf")
        self.assertEqual(config["supervisord"][0], pip_site.VENV + "/bin/supervisord")
        self.assertIn(SITE + "/var/supervisor.sock", config["supervisord_files"])
        rc, out, err = zfssnap("rollback", "--help")
        self.assertEqual(rc, 0, err)
        self.assertIn("usage: zfssnap rollback", out)
        text = " ".join(out.replace("-\n", "-").split())  # argparse wraps at a hyphen
        for dataset in DATASETS:
            self.assertIn(dataset, text)
        self.assertIn("The site %s" % SITE, text)
        self.assertIn("run zfssnap rollback again", text)
        self.assertNotIn("bin/", text)
        rc, out, err = zfssnap("snapshot", "--list")
        self.assertEqual((rc, out), (0, "This site has no snapshots of tank/pip-site.\n"), err)

    def test_release_rolled_back_under_supervisord(self):
        rc, out, err = zfssnap("snapshot", "pre-2.0", "-m", "before the 2.0 release")
        self.assertEqual(rc, 0, out + err)
        commit_release("2.0")
        rev_release = head()
        # The deploy script's guard: the inputs changed since the last install was recorded
        # (none was): a snapshot; run again with nothing changed, none.
        rc, out, err = zfssnap("snapshot", "--if-changed", "release", "--json")
        self.assertEqual(rc, 0, out + err)
        taken = json.loads(out)
        self.assertTrue(taken["taken"], taken)
        target = taken["snapshot"]
        rc, out, err = zfssnap("snapshot", "--if-changed", "release")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("no snapshot taken", out + err)
        for dataset in DATASETS:
            self.assertEqual([s.split("@")[1] for s in ours(dataset)][-1:], [target])

        bad_release("2.0", ["release-2-0", "news"])
        self.assertEqual(pip_site.installed_policy(), "2.0")

        rc, out, err = zfssnap("rollback", "--dry-run", "--json", target)
        self.assertEqual(rc, 0, out + err)
        plan = json.loads(out)
        views = {v["path"]: v for v in plan["zodb"]}
        self.assertEqual(list(views), [pip_site.DATAFS])
        self.assertEqual(views[pip_site.DATAFS]["count"], 2, views)

        log_start = len(pip_site.supervisord_log())
        rc, shown = on_terminal([pip_site.VENV + "/bin/zfssnap", "rollback", target],
                                answer="yes", timeout=900, cwd=SITE)
        self.assertEqual(rc, 0, shown)
        self.assertNotIn("Traceback", shown)
        events = supervisor_events(pip_site.supervisord_log()[log_start:])
        self.assertEqual([p for verb, p in events if verb == "stopped"], ["instance", "zeo"],
                         events)
        self.assertEqual([p for verb, p in events if verb == "spawned"], ["zeo", "instance"],
                         events)
        pip_site.wait_running()
        self.assertTrue(pip_site.has_folder("before"))
        self.assertFalse(pip_site.has_folder("release-2-0"))
        self.assertFalse(pip_site.has_folder("news"))
        # The virtualenv as the last install left it; the checkout as the snapshot held it.
        self.assertEqual(pip_site.installed_policy(), "1.0")
        self.assertEqual(head(), rev_release)
        # Zope writes again, to the rolled-back database.
        pip_site.add_folder("after", "written after the rollback")
        self.assertTrue(pip_site.has_folder("after"))

        rc, out, err = zfssnap("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        for dataset in DATASETS:
            self.assertEqual(ours(dataset), [])
        # Back at 1.0 for the next test: the checkout and the virtualenv.
        sh(*GIT, "-C", SITE, "checkout", "-q", "1.0", "--", "requirements.txt")
        sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Back to 1.0")

    def test_release_rolled_back_under_systemd(self):
        pip_site.stop_supervisord()
        pip_site.install_units()
        pip_site.write(SITE + "/zfssnap.cfg", "[zfssnap]\nsystemd-units = %s\n"
                       % " ".join(u[:-len(".service")] for u in pip_site.UNITS))
        pip_site.start_units()
        pids = {u: sh("systemctl", "show", "--property=MainPID", "--value", u).strip()
                for u in pip_site.UNITS}
        rc, out, err = zfssnap("snapshot", "systemd")
        self.assertEqual(rc, 0, out + err)
        target = out.split()[1]
        commit_release("3.0")
        bad_release("3.0", ["under-systemd"])
        self.assertEqual(pip_site.installed_policy(), "3.0")

        rc, out, err = zfssnap("rollback", "--yes", target)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("pip-site-instance.service", out + err)
        self.assertEqual(set(pip_site.unit_states().values()), {"active"})
        after = {u: sh("systemctl", "show", "--property=MainPID", "--value", u).strip()
                 for u in pip_site.UNITS}
        for unit in pip_site.UNITS:
            self.assertNotEqual(after[unit], pids[unit], "%s was not restarted" % unit)
        wait_for(pip_site.answering, timeout=300, what="Zope to answer")
        self.assertTrue(pip_site.has_folder("before"))
        self.assertFalse(pip_site.has_folder("under-systemd"))
        self.assertEqual(pip_site.installed_policy(), "1.0")
        rc, out, err = zfssnap("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        for dataset in DATASETS:
            self.assertEqual(ours(dataset), [])
        # The rollback took the checkout back too: the release's commit is gone.
        self.assertNotIn("Release 3.0", sh("git", "-C", SITE, "log", "--format=%s"))

    def test_relstorage_refused(self):
        dataset = "tank/pip-site-relstorage"
        sh("zfs", "create", "-o", "mountpoint=" + RELSTORAGE_SITE, dataset)
        try:
            pip_site.write(RELSTORAGE_SITE + "/instance/etc/zope.conf",
                           RELSTORAGE_CONF.format(site=RELSTORAGE_SITE))
            rc, out, err = pip_site.run(pip_site.VENV + "/bin/zfssnap", "-C", RELSTORAGE_SITE,
                                        "snapshot")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("the database is in PostgreSQL", err)
            self.assertIn("a ZFS rollback would undo the code but not the data", err)
            self.assertNotIn("Traceback", out + err)
            self.assertEqual(snapshots(dataset), [])
        finally:
            sh("zfs", "destroy", "-r", dataset)
            shutil.rmtree(RELSTORAGE_SITE, ignore_errors=True)
