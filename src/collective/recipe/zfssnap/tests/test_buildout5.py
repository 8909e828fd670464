"""The test site on zc.buildout 5.2 (what Plone 6.2 pins), with an old-style (pkg_resources)
namespace package in the same buildout: collective.recipe.backup 5.1 (lab guest only)."""
import os
import shutil
import subprocess
import sys
import time
import unittest

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import GuestPool
from collective.recipe.zfssnap.tests.layers import sh


SITE5 = "/srv/site5"
PORT5 = 8085
# On the lab's cached venv disk of 2.1 (lab.py BUILDOUT5_WARM): zc.buildout 5's first install
# of the site's eggs takes minutes under emulation. The package under test is never in them.
VENV5 = "/opt/venv-buildout5"
EGGS5 = "/opt/eggs-buildout5"
VERSIONS = ("zc.buildout = 5.2.0\nzc.recipe.egg = 4.0.0\nsetuptools = 81.0.0\n"
            "collective.recipe.backup = 5.1.0")


def run5(*argv):
    started = time.monotonic()
    proc = layers.bounded(argv, cwd=SITE5, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    # Where this test's minutes go, in CI's log.
    print("\n  buildout 5: %s exit %d in %.0f s" % (
        " ".join(os.path.basename(a) for a in argv[:2]), proc.returncode,
        time.monotonic() - started), end="", flush=True)
    return proc.returncode, proc.stdout


def make_venv5():
    links = os.environ.get("ZFSSNAP_LAB_FIND_LINKS", "/mnt/wheels").split()
    started = time.monotonic()
    sh("python3", "-m", "venv", VENV5)
    sh(VENV5 + "/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
       *["--find-links=" + link for link in links], "zc.buildout==5.2.0", "setuptools==81.0.0")
    print("\n  buildout 5: venv with zc.buildout 5.2.0 in %.0f s" % (
        time.monotonic() - started), end="", flush=True)


def site5_cfg(parts=None):
    cfg = layers.buildout_cfg(port=PORT5, backups="/scratch/site5-backups", versions=VERSIONS)
    cfg = cfg.replace("    ${buildout:directory}/var/blobstorage\n", "")
    cfg = cfg.replace("blob-storage = ${buildout:directory}/var/blobstorage",
                      "backup_blobs = false")
    if os.path.isdir(EGGS5):
        cfg = cfg.replace("eggs-directory = ${buildout:directory}/eggs",
                          "eggs-directory = " + EGGS5)
    if parts is not None:
        cfg = cfg.replace("parts = app supervisor repozo backup zfssnap", "parts = " + parts)
    return cfg


def warm():
    """The venv and the site's eggs but ours, for the lab's venv disk (lab.py BUILDOUT5_WARM)."""
    make_venv5()
    os.makedirs(EGGS5)
    directory = "/tmp/site5-warm"
    os.makedirs(directory)
    with open(os.path.join(directory, "buildout.cfg"), "w") as f:
        f.write(site5_cfg(parts="app supervisor repozo backup"))
    started = time.monotonic()
    proc = layers.bounded([VENV5 + "/bin/buildout", "-q"], 1800, cwd=directory)
    if proc.returncode != 0:
        sys.exit("the zc.buildout 5 site's warm-up buildout failed (exit %d)" % proc.returncode)
    print("lab: zc.buildout 5 site's eggs in %s, built in %.0f s"
          % (EGGS5, time.monotonic() - started), flush=True)


class Buildout5Test(unittest.TestCase):
    layer = GuestPool

    def setUp(self):
        for dataset, mountpoint in (("tank/site5", SITE5),
                                    ("tank/site5-filestorage", SITE5 + "/var/filestorage")):
            sh("zfs", "create", "-o", "mountpoint=" + mountpoint, dataset)
        os.makedirs(SITE5 + "/var/log", exist_ok=True)
        for name in ("app.py", "worker.py"):
            shutil.copy(os.path.join(layers.TEMPLATES, name), SITE5)
        with open(SITE5 + "/VERSION", "w") as f:
            f.write("1.0\n")
        if not os.path.exists(VENV5 + "/bin/buildout"):
            make_venv5()
        with open(SITE5 + "/buildout.cfg", "w") as f:
            f.write(site5_cfg())

    def tearDown(self):
        subprocess.run(["pkill", "-f", SITE5 + "/"])
        layers.wait_for(lambda: subprocess.run(["pgrep", "-f", SITE5 + "/"],
                                               stdout=subprocess.DEVNULL).returncode != 0,
                        what="the zc.buildout 5 site to stop")
        sh("zfs", "destroy", "-r", "tank/site5-filestorage", check=False)
        sh("zfs", "destroy", "-r", "tank/site5", check=False)

    @unittest.skipIf(os.environ.get("ZFSSNAP_LAB_SERIES") not in (None, "2.1"),
                     "zc.buildout's behaviour does not depend on OpenZFS: run on 2.1 only")
    def test_site_on_buildout_5_beside_an_old_style_namespace_package(self):
        rc, out = run5(VENV5 + "/bin/buildout")
        self.assertEqual(rc, 0, out)
        self.assertIn("Generated script '%s/bin/rollback'" % SITE5, out)
        with open(SITE5 + "/.installed.cfg") as f:
            installed = f.read()
        self.assertIn("collective.recipe.backup-5.1.0", installed)
        rc, out = run5(SITE5 + "/bin/supervisord")
        self.assertEqual(rc, 0, out)

        def state():
            import json
            import urllib.request
            with urllib.request.urlopen("http://127.0.0.1:%d/state" % PORT5, timeout=10) as r:
                return json.loads(r.read())

        try:
            before = layers.wait_for(state, what="the zc.buildout 5 site to answer")
        except AssertionError:
            logs = "".join(open(os.path.join(SITE5, "var", "log", n), errors="replace").read()
                           for n in sorted(os.listdir(SITE5 + "/var/log")) if "app" in n)
            raise AssertionError("the zc.buildout 5 site does not answer: %s\n%s" % (
                run5(SITE5 + "/bin/supervisorctl", "status")[1], logs[-3000:]))
        rc, out = run5(SITE5 + "/bin/snapshot", "pre")
        self.assertEqual(rc, 0, out)
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/write?blob=x" % PORT5, data=b"", method="POST"), timeout=30)
        rc, out = run5(SITE5 + "/bin/rollback", "--yes")
        self.assertEqual(rc, 0, out)
        self.assertIn("Rolled back to", out)
        self.assertEqual(layers.wait_for(state)["counter"], before["counter"])
        rc, out = run5(SITE5 + "/bin/cleanup", "--yes")
        self.assertEqual(rc, 0, out)

        # The release guard works on zc.buildout 5 too.
        layers.edit(SITE5 + "/buildout.cfg", "versions = versions",
                    "versions = versions\nextensions = collective.recipe.zfssnap")
        rc, out = run5(VENV5 + "/bin/buildout")
        self.assertEqual(rc, 0, out)
        layers.edit(SITE5 + "/buildout.cfg", "scripts = repozo",
                    "scripts = repozo\ninterpreter = zopepy")
        rc, out = run5(VENV5 + "/bin/buildout")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("release guard: bin/buildout would change the installed site (reinstall "
                      "repozo)", out)
        rc, out = run5(SITE5 + "/bin/snapshot", "pre-release")
        self.assertEqual(rc, 0, out)
        rc, out = run5(VENV5 + "/bin/buildout")
        self.assertEqual(rc, 0, out)


if __name__ == "__main__" and sys.argv[1:] == ["warm"]:
    warm()
