"""A fresh buildout with no pins installs the part: nothing beyond zc.buildout itself is needed.

Run with the zc.buildout of the environment (the matrix runs zc.buildout 5.1.3, 5.2.0 and 6.0.1),
with no package index and an empty eggs directory: a requirement of the recipe that zc.buildout
does not bring (zc.recipe.egg, whose newest release needs zc.buildout 6) would have to be found,
and the run fails. Once as a develop egg, once from the package's wheel, which buildout installs
into its eggs directory (zc.buildout 5 keeps eggs there in a format of its own).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest


HERE = os.path.dirname(__file__)
CHECKOUT = os.path.abspath(os.path.join(HERE, "..", "..", "..", "..", ".."))
BUILDOUT = """\
[buildout]
{source}
parts = zfssnap
index = file:///nonexistent
newest = false

[zfssnap]
recipe = collective.recipe.zfssnap
zfs = {python} {fake_zfs}
"""


@unittest.skipUnless(os.path.exists(os.path.join(CHECKOUT, "setup.py")),
                     "needs the source checkout")
class FreshBuildoutTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zfssnap-fresh-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def source(self):
        """A copy of the package's source: building writes its metadata there, not into the
        checkout that the lab builds its wheel from at the same time."""
        copy = os.path.join(self.dir, "source")
        shutil.copytree(os.path.join(CHECKOUT, "src", "collective"),
                        os.path.join(copy, "src", "collective"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("setup.py", "pyproject.toml", "README.rst", "CHANGES.rst", "LICENSE"):
            shutil.copy(os.path.join(CHECKOUT, name), copy)
        return copy

    def buildout(self, source):
        site = os.path.join(self.dir, "site")
        os.mkdir(site)
        with open(os.path.join(site, "buildout.cfg"), "w") as f:
            f.write(BUILDOUT.format(source=source, python=sys.executable,
                                    fake_zfs=os.path.join(HERE, "fake_zfs.py")))
        env = dict(os.environ, FAKE_ZFS_DATASETS="tank/fresh=" + os.path.realpath(site))
        # The buildout of this environment's Python: what a site's bin/buildout runs.
        proc = subprocess.run(
            [sys.executable, "-c", "import sys, zc.buildout.buildout; "
             "sys.exit(zc.buildout.buildout.main(sys.argv[1:]))", "-c", "buildout.cfg"],
            cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertIn("Generated script '%s'" % os.path.join(site, "bin", "rollback"),
                      proc.stdout.replace(site, os.path.realpath(site)))
        with open(os.path.join(site, "bin", "snapshot")) as f:
            self.assertNotIn("zc.recipe.egg", f.read())
        version = subprocess.run([os.path.join(site, "bin", "snapshot"), "--version"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(version.returncode, 0, version.stdout)
        return site

    def eggs(self, site):
        return sorted(name for name in os.listdir(os.path.join(site, "eggs", "v5"))
                      if os.path.isdir(os.path.join(site, "eggs", "v5")))

    def test_develop(self):
        site = self.buildout("develop = " + self.source())
        self.assertEqual(self.eggs(site), [])

    def test_from_the_wheel(self):
        # Without build isolation: no package index here; this environment's setuptools.
        dist = os.path.join(self.dir, "dist")
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-w", dist, self.source()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        self.assertEqual(built.returncode, 0, built.stdout)
        site = self.buildout("find-links = " + dist)
        # The recipe from its wheel, and nothing else fetched for it.
        self.assertEqual([e.split("-")[0] for e in self.eggs(site)],
                         ["collective.recipe.zfssnap"])
