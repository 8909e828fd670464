"""The `zfssnap` command of sites without buildout (cli.py), as far as it goes without ZFS:
its command line, a configuration it cannot use, and the database server it refuses before any
zfs call (fast suite; the scripts' work on such a site is tested in the guest)."""
import contextlib
import io
import os
import shutil
import tempfile
import textwrap
import unittest

from collective.recipe.zfssnap import cli
from collective.recipe.zfssnap.tests.test_standalone import RELSTORAGE


class CommandLineTest(unittest.TestCase):

    def setUp(self):
        self.site = os.path.realpath(tempfile.mkdtemp(prefix="zfssnap-cli-"))
        self.addCleanup(shutil.rmtree, self.site, ignore_errors=True)
        os.makedirs(os.path.join(self.site, "instance", "etc"))

    def write(self, name, text):
        with open(os.path.join(self.site, name), "w") as f:
            f.write(textwrap.dedent(text))

    def zfssnap(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_usage(self):
        code, out, err = self.zfssnap("--help")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("usage: zfssnap [-C DIRECTORY] {snapshot,rollback,"
                                       "cleanup}"), out)
        self.assertEqual(self.zfssnap()[0], 2)
        code, out, err = self.zfssnap("-C", self.site, "restore")
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(err.endswith("zfssnap: error: 'restore' is not a command: give "
                                     "snapshot, rollback or cleanup\n"), err)
        self.assertEqual(self.zfssnap("-C")[0], 2)
        # A command's help, also where there is no site.
        with self.assertRaises(SystemExit) as caught:
            self.zfssnap("-C", self.site, "rollback", "--help")
        self.assertEqual(caught.exception.code, 0)

    def test_a_directory_without_a_site(self):
        empty = os.path.join(self.site, "instance")
        code, out, err = self.zfssnap("-C", empty, "snapshot", "pre")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err, "zfssnap snapshot: error: %s has no zfssnap.cfg, no "
                         "[tool.zfssnap] in pyproject.toml and no instance/etc/zope.conf: run "
                         "zfssnap in the site directory, or write its zfssnap.cfg\n" % empty)

    def test_an_option_it_does_not_know(self):
        self.write("zfssnap.cfg", "[zfssnap]\nretian = 2\n")
        code, out, err = self.zfssnap("--directory=" + self.site, "cleanup")
        self.assertEqual(code, 2)
        self.assertEqual(err, "zfssnap cleanup: error: %s/zfssnap.cfg, line 2: retian: "
                         "unknown option; did you mean retain? (the options are listed in the "
                         "README)\n" % self.site)

    def test_relstorage_is_refused_with_its_sentence_before_any_zfs_call(self):
        # zfs here is a command that does not exist: reaching it would be exit 2.
        self.write("zfssnap.cfg", "[zfssnap]\nzfs = %s/no-zfs\n" % self.site)
        self.write("instance/etc/zope.conf", RELSTORAGE)
        for argv in (["snapshot", "pre-2.0"], ["snapshot", "--dry-run"]):
            code, out, err = self.zfssnap("-C", self.site, *argv)
            self.assertEqual((code, out), (3, ""), err)
            self.assertEqual(err, "zfssnap snapshot: error: the database is in PostgreSQL (the "
                             "<relstorage> section of %s/instance/etc/zope.conf, line 3): a ZFS "
                             "rollback would undo the code but not the data; if you roll the "
                             "database back yourself with each release, set external-database "
                             "= by-hand in %s/zfssnap.cfg; no snapshot was taken\n"
                             % (self.site, self.site))

    def test_a_site_not_on_zfs_is_named_as_a_site(self):
        # This machine's mount table has no ZFS: the site directory is on no dataset. The
        # sentence speaks of the site and zfssnap's configuration, not of bin/buildout.
        self.write("zfssnap.cfg", "[zfssnap]\nzfs = %s/no-zfs\n" % self.site)
        self.write("instance/etc/zope.conf", "%define INSTANCEHOME /x\n")
        code, out, err = self.zfssnap("-C", self.site, "snapshot", "pre-2.0")
        self.assertEqual((code, out), (2, ""), err)
        self.assertEqual(err, "zfssnap snapshot: error: the site directory %s is not on ZFS "
                         "(no dataset is mounted there): put it on a dataset of its own, or "
                         "name its dataset in the dataset option in %s/zfssnap.cfg\n"
                         % (self.site, self.site))
        self.assertNotIn("bin/", err)

    def test_a_command_help_names_the_site_and_zfssnap_rollback(self):
        self.write("zfssnap.cfg", "[zfssnap]\nzfs = %s/no-zfs\n" % self.site)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            cli.main(["-C", self.site, "rollback", "--help"])
        text = " ".join(out.getvalue().split())
        self.assertIn("The site %s: datasets none found (the site directory is not on ZFS)."
                      % self.site, text)
        self.assertIn("4 rollback incomplete (run zfssnap rollback again to finish)", text)
        self.assertNotIn("bin/", text)

    def test_a_site_directory_that_does_not_exist(self):
        missing = os.path.join(self.site, "srv", "nosuch")
        code, out, err = self.zfssnap("-C", missing, "snapshot")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err, "zfssnap snapshot: error: the site directory %s does not exist: "
                         "run zfssnap in the site directory, or name it with -C\n" % missing)
