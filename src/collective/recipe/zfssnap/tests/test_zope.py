"""A release rolled back on a real Zope stack: ZEO server, two ZEO clients, supervisor (lab
guest only, on the series of layers.STACK_SERIES)."""
import json
import re
import unittest

from collective.recipe.zfssnap.tests import zope_site
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import on_terminal
from collective.recipe.zfssnap.tests.layers import script_config
from collective.recipe.zfssnap.tests.layers import stack_series_only
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.zope_site import HTTP_PORTS
from collective.recipe.zfssnap.tests.zope_site import SITE
from collective.recipe.zfssnap.tests.zope_site import add_folder
from collective.recipe.zfssnap.tests.zope_site import has_folder
from collective.recipe.zfssnap.tests.zope_site import run


def supervisor_events(log):
    """[(verb, program)] of supervisord's log: what it stopped and spawned, in order."""
    return re.findall(r"(stopped|spawned): '?(zeoserver|instance\d)'?", log)


@stack_series_only
class ZopeStackTest(unittest.TestCase):
    layer = zope_site.ZopeStack

    def test_the_part_finds_the_stack(self):
        # No datasets and no filestorages in the part: it found them from the mounts below
        # the buildout and from the zeoserver and instance parts.
        config = script_config(site=SITE)
        self.assertEqual(sorted(config["datasets"]), sorted(zope_site.DATASETS))
        self.assertEqual(config["filestorages"], [zope_site.DATAFS])
        rc, out, err = run(SITE + "/bin/rollback", "--help")
        self.assertEqual(rc, 0, err)
        for dataset in zope_site.DATASETS:
            self.assertIn(dataset, out)

    def test_plan_of_a_data_fs_with_no_transaction(self):
        # The ZEO server had created its Data.fs, no client had written: a header only.
        rc, out, size = zope_site.ZopeStack.new_site_plan
        self.assertEqual(size, 4)
        self.assertEqual(rc, 0, out)
        self.assertIn(zope_site.DATAFS, out)
        self.assertNotIn("cannot tell", out)
        self.assertNotIn("Errno", out)
        self.assertRegex(out, r"Data\.fs.*(no transaction|nothing)")

    def test_release_rolled_back(self):
        rc, out, err = run(SITE + "/bin/snapshot", "pre-2.0", "-m", "before the 2.0 release")
        self.assertEqual(rc, 0, out + err)
        taken = out.split()[1]
        for dataset in zope_site.DATASETS:
            self.assertIn("%s@%s" % (dataset, taken), snapshots(dataset))
        rev_before = sh("git", "-C", SITE, "rev-parse", "HEAD").strip()

        # The bad release: a new tag, bin/buildout, objects written through both clients.
        with open(SITE + "/VERSION", "w") as f:
            f.write("2.0\n")
        sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release 2.0")
        sh(*GIT, "-C", SITE, "tag", "2.0")
        rc, out, err = run(zope_site.BUILDOUT)
        self.assertEqual(rc, 0, out + err)
        add_folder(HTTP_PORTS[0], "release-2-0", "the bad release's upgrade")
        add_folder(HTTP_PORTS[1], "news", "an editor's change")
        for port in HTTP_PORTS:  # the other client sees it once ZEO's invalidation arrives
            wait_for(lambda: has_folder(port, "news"), timeout=30, what="news on %d" % port)

        # The plan, found from the zeoserver part: the Zope user and both transactions.
        rc, out, err = run(SITE + "/bin/rollback", "--dry-run", "--json", taken)
        self.assertEqual(rc, 0, out + err)
        plan = json.loads(out)
        views = {v["path"]: v for v in plan["zodb"]}
        self.assertEqual(list(views), [zope_site.DATAFS])
        view = views[zope_site.DATAFS]
        self.assertEqual(view["count"], 2, view)
        self.assertEqual([t["description"] for t in view["transactions"]],
                         ["/manage_addFolder"] * 2)
        self.assertTrue(all(t["user"].split()[-1] == zope_site.USER
                            for t in view["transactions"]), view)
        rc, text, err = run(SITE + "/bin/rollback", "--dry-run", taken)
        self.assertEqual(rc, 0, text + err)
        self.assertIn("2 transactions", text)
        self.assertIn(zope_site.USER, text)

        log_start = len(zope_site.supervisord_log())
        rc, shown = on_terminal([SITE + "/bin/rollback", taken], answer="yes", timeout=900,
                                cwd=SITE)
        self.assertEqual(rc, 0, shown)

        # Clients stopped before the ZEO server, the server started before the clients.
        events = supervisor_events(zope_site.supervisord_log()[log_start:])
        stopped = [p for verb, p in events if verb == "stopped"]
        spawned = [p for verb, p in events if verb == "spawned"]
        self.assertEqual(sorted(stopped[:2]), ["instance1", "instance2"], events)
        self.assertEqual(stopped[2:], ["zeoserver"], events)
        # What bin/rollback said it stops, in the order supervisord stopped them.
        said = re.search(r"stopping (.*)\n", shown).group(1).split(", ")
        self.assertEqual(said, stopped, shown)
        self.assertEqual(spawned[:1], ["zeoserver"], events)
        self.assertEqual(sorted(spawned[1:]), ["instance1", "instance2"], events)
        self.assertEqual(zope_site.program_states(), zope_site.PROGRAMS)
        wait_for(zope_site.answering, timeout=300, what="both Zope clients to answer")
        for port in HTTP_PORTS:
            self.assertTrue(has_folder(port, "before"))
            self.assertFalse(has_folder(port, "release-2-0"))
            self.assertFalse(has_folder(port, "news"))
        self.assertEqual(sh("git", "-C", SITE, "rev-parse", "HEAD").strip(), rev_before)
        with open(SITE + "/VERSION") as f:
            self.assertEqual(f.read(), "1.0\n")
        # The clients write again, to the rolled-back database.
        add_folder(HTTP_PORTS[1], "after", "written after the rollback")
        wait_for(lambda: has_folder(HTTP_PORTS[0], "after"), timeout=30, what="after on 8081")

        rc, out, err = run(SITE + "/bin/cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        for dataset in zope_site.DATASETS:
            self.assertEqual([s for s in snapshots(dataset) if "@zfssnap-" in s], [])
