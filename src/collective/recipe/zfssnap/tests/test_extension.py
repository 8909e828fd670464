"""The release guard (extensions = collective.recipe.zfssnap) in real bin/buildout runs, on
real OpenZFS (lab guest only)."""
import json
import unittest

from collective.recipe.zfssnap.tests.layers import full_series_only
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import bin_
from collective.recipe.zfssnap.tests.layers import edit
from collective.recipe.zfssnap.tests.layers import run_in_site
from collective.recipe.zfssnap.tests.layers import sh


def buildout():
    return run_in_site("/opt/venv/bin/buildout")


def installed_parts():
    """The parts .installed.cfg records (buildout itself rewrites its [buildout] section)."""
    import configparser
    parser = configparser.RawConfigParser(strict=False)
    parser.read(SITE + "/.installed.cfg")
    return {s: dict(parser[s]) for s in parser.sections() if s != "buildout"}


def change_a_part():
    """A release's buildout change: another part's options (the repozo scripts)."""
    edit(SITE + "/buildout.cfg", "scripts = repozo", "scripts = repozo\ninterpreter = zopepy")


def change_with_guard(mode):
    """bin/buildout after a change, with `release-guard = mode`: its output (it succeeded)."""
    edit(SITE + "/buildout.cfg", "stop-timeout = 30", "stop-timeout = 30\n"
         "release-guard = " + mode)
    change_a_part()
    rc, out, err = buildout()
    assert rc == 0, out + err
    return out + err


@full_series_only
class ReleaseGuardTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()
        edit(SITE + "/buildout.cfg", "versions = versions",
             "versions = versions\nextensions = collective.recipe.zfssnap")
        rc, out, err = buildout()  # changes no part: not stopped, and recorded
        assert rc == 0, out + err

    def test_a_change_without_a_snapshot_is_stopped_before_anything_changes(self):
        change_a_part()
        installed = installed_parts()
        with open(SITE + "/.installed.cfg", "rb") as f:
            raw = f.read()
        rc, out, err = buildout()
        self.assertNotEqual(rc, 0, out + err)
        # bin/buildout appended its develop eggs to .installed.cfg before the guard ran.
        with open(SITE + "/.installed.cfg", "rb") as f:
            self.assertEqual(f.read(), raw, "a refused bin/buildout changed .installed.cfg")
        self.assertNotIn("differ now", out + err)
        self.assertIn("Error: [zfssnap] release guard: bin/buildout would change the installed "
                      "site (reinstall repozo), and the part zfssnap has no snapshot taken "
                      "since the last successful bin/buildout (", out + err)
        self.assertIn("take one first: %s/bin/snapshot LABEL, then run bin/buildout again"
                      % SITE, out + err)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(installed_parts(), installed)

        rc, out, err = bin_("snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        rc, out, err = buildout()
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Installing repozo.", out + err)
        rc, out, err = buildout()  # nothing changes: never stopped
        self.assertEqual(rc, 0, out + err)
        # A release may change only the pins: buildout then updates the parts in place.
        edit(SITE + "/buildout.cfg", "[versions]\n", "[versions]\nzc.recipe.egg = 6.0.0\n")
        rc, out, err = buildout()
        self.assertNotEqual(rc, 0, out + err)
        self.assertIn("would change the installed site (the [versions] pins changed)",
                      out + err)

    def test_a_moved_checkout_gets_the_commands_to_snapshot_the_old_revision(self):
        before = sh("git", "-C", SITE, "rev-parse", "HEAD").strip()
        change_a_part()
        sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release 2.0")
        after = sh("git", "-C", SITE, "rev-parse", "HEAD").strip()
        rc, out, err = buildout()
        self.assertNotEqual(rc, 0, out + err)
        self.assertIn("the checkout has moved since, from %s to %s: to snapshot the site as it "
                      "was, type: git -C %s checkout %s && %s/bin/snapshot pre-release && "
                      "git -C %s checkout %s" % (before[:12], after[:12], SITE, before, SITE,
                                                 SITE, after), out + err)

    def test_a_build_that_changes_nothing_after_a_rollback_is_let_through(self):
        rc, out, err = bin_("snapshot", "pre")
        self.assertEqual(rc, 0, out + err)
        change_a_part()
        sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release 2.0")
        rc, out, err = buildout()
        self.assertEqual(rc, 0, out + err)
        rc, out, err = bin_("rollback", "--yes", "pre")
        self.assertEqual(rc, 0, out + err)
        # The site is the snapshot's again, and so is the guard's record of it.
        rc, out, err = buildout()
        self.assertEqual(rc, 0, out + err)
        self.assertNotIn("release guard", out + err)

    def test_snapshot_mode_takes_one_labelled_as_made_by_buildout(self):
        self.assertIn("taking one now (release-guard = snapshot)", change_with_guard("snapshot"))
        rc, out, err = bin_("snapshot", "--list", "--json")
        sets = json.loads(out)["snapshots"]
        self.assertEqual([s["label"] for s in sets], ["buildout"])
        self.assertEqual(sh("zfs", "get", "-H", "-o", "value",
                            "collective.recipe.zfssnap:made-by",
                            "tank/site@" + sets[0]["name"]).strip(), "bin/buildout")

    def test_warn_mode_goes_on(self):
        output = change_with_guard("warn")
        self.assertIn("going on (release-guard = warn)", output)
        self.assertIn("Installing repozo.", output)
