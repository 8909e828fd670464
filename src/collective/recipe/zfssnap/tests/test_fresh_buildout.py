"""A fresh buildout with no pins installs the part: nothing beyond zc.buildout itself is needed.

Run with the zc.buildout of the environment (the matrix runs zc.buildout 5.1.3, 5.2.0 and 6.0.1),
offline and with an empty eggs directory: a requirement of the recipe that zc.buildout does not
bring (zc.recipe.egg, whose newest release needs zc.buildout 6) would have to be found, and the
run fails.
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
develop = {checkout}
parts = zfssnap
offline = true
newest = false

[zfssnap]
recipe = collective.recipe.zfssnap
zfs = {python} {fake_zfs}
"""


@unittest.skipUnless(os.path.exists(os.path.join(CHECKOUT, "setup.py")),
                     "needs the source checkout (develop)")
class FreshBuildoutTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zfssnap-fresh-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def source(self):
        """A copy of the package's source: the develop step writes its metadata there, not
        into the checkout that the lab builds its wheel from at the same time."""
        copy = os.path.join(self.dir, "source")
        shutil.copytree(os.path.join(CHECKOUT, "src", "collective"),
                        os.path.join(copy, "src", "collective"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("setup.py", "pyproject.toml", "README.rst", "CHANGES.rst"):
            shutil.copy(os.path.join(CHECKOUT, name), copy)
        return copy

    def test_no_pins_no_other_egg(self):
        with open(os.path.join(self.dir, "buildout.cfg"), "w") as f:
            f.write(BUILDOUT.format(checkout=self.source(), python=sys.executable,
                                    fake_zfs=os.path.join(HERE, "fake_zfs.py")))
        env = dict(os.environ, FAKE_ZFS_DATASETS="tank/fresh=" + os.path.realpath(self.dir))
        # The buildout of this environment's Python: what a site's bin/buildout runs.
        proc = subprocess.run(
            [sys.executable, "-c", "import sys, zc.buildout.buildout; "
             "sys.exit(zc.buildout.buildout.main(sys.argv[1:]))", "-c", "buildout.cfg"],
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertIn("Generated script '%s'" % os.path.join(
            os.path.realpath(self.dir), "bin", "rollback"), proc.stdout.replace(self.dir, (
                os.path.realpath(self.dir))))
        fetched = [name for _, _, files in os.walk(os.path.join(self.dir, "eggs"))
                   for name in files]
        self.assertEqual(fetched, [], "eggs were fetched for the part")
        with open(os.path.join(self.dir, "bin", "snapshot")) as f:
            self.assertNotIn("zc.recipe.egg", f.read())
