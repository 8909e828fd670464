"""Unit tests of the ZFS adapter's parsing and argument building (no ZFS needed).

What zfs really does with these arguments is tested in the OpenZFS guest.
"""
import os
import subprocess
import unittest

from collective.recipe.zfssnap import zfs


class RecordingZfs(zfs.Zfs):
    """Answers each call with the next canned (returncode, stdout, stderr); records the argv."""

    def __init__(self, *answers):
        super().__init__(["sudo", "-n", "zfs"])
        self.answers = list(answers)
        self.calls = []

    def run(self, *args, check=True):
        self.calls.append(self.command + list(args))
        rc, out, err = self.answers.pop(0)
        if check and rc:
            raise zfs.ZfsError("failed: " + err, self.calls[-1], err)
        return subprocess.CompletedProcess(self.calls[-1], rc, out, err)


class SnapshotNameTest(unittest.TestCase):

    def test_valid(self):
        for name in ("zfssnap-20261126T072900Z", "a.b:c_d-e", "with space"):
            self.assertIsNone(zfs.check_snapshot_name("tank/site", name), name)

    def test_invalid_characters_are_named(self):
        reason = zfs.check_snapshot_name("tank/site", "pre/2.3@x")
        self.assertIn("'/'", reason)
        self.assertIn("'@'", reason)
        for name in ("a%b", "a+b", "ä", "a;rm -rf", "$(x)", "a\nb"):
            self.assertIsNotNone(zfs.check_snapshot_name("tank/site", name), name)

    def test_labels_refuse_spaces(self):
        self.assertIsNone(zfs.check_snapshot_name("tank", "pre-2.0", allow_space=False))
        self.assertEqual(zfs.check_snapshot_name("tank", "my label", what="a label",
                                                 allow_space=False),
                         "a label may contain only letters, digits and _ - . : (not ' ')")

    def test_empty_and_dots(self):
        self.assertIsNotNone(zfs.check_snapshot_name("tank", ""))
        self.assertIsNotNone(zfs.check_snapshot_name("tank", "."))
        self.assertIsNotNone(zfs.check_snapshot_name("tank", ".."))

    def test_length_counts_the_full_name(self):
        dataset = "tank/" + "d" * 200
        self.assertIsNone(zfs.check_snapshot_name(dataset, "s" * 49))  # 255 bytes
        self.assertIn("255", zfs.check_snapshot_name(dataset, "s" * 50))


class SizeTest(unittest.TestCase):

    def test_parse(self):
        self.assertEqual(zfs.parse_size("512"), 512)
        self.assertEqual(zfs.parse_size("10G"), 10 << 30)
        self.assertEqual(zfs.parse_size("1.5M"), 3 << 19)
        self.assertEqual(zfs.parse_size("2GiB"), 2 << 30)
        self.assertRaises(ValueError, zfs.parse_size, "ten")
        self.assertRaises(ValueError, zfs.parse_size, "-1G")

    def test_format(self):
        self.assertEqual(zfs.format_size(0), "0B")
        self.assertEqual(zfs.format_size(1536), "1.5K")
        self.assertEqual(zfs.format_size(10 << 30), "10.0G")


def recorded(name):
    with open(os.path.join(os.path.dirname(__file__), "recorded", name)) as f:
        return f.read()


class AdapterTest(unittest.TestCase):

    def test_zpool_elevated_as_zfs_is(self):
        self.assertEqual(zfs.Zfs(["sudo", "-n", "/sbin/zfs"]).zpool_command(),
                         ["sudo", "-n", "/sbin/zpool"])
        self.assertEqual(zfs.Zfs(["zfs"]).zpool_command(), ["zpool"])
        self.assertIsNone(zfs.Zfs(["/opt/bin/zfs-wrapper"]).zpool_command())

    def test_a_pool_sync_that_cannot_run_is_not_an_error(self):
        traced = []
        z = zfs.Zfs(["/nonexistent/zfs"])
        z.trace = traced.append
        z.sync_pools({"tank", "data"})
        self.assertEqual(traced, [["/nonexistent/zpool", "sync", "data", "tank"]])

    def test_snapshots_sorted_by_txg_with_local_properties_only(self):
        # Recorded on OpenZFS: @hourly was taken after someone set the part property on the
        # dataset itself, so the snapshot inherits it: it is not this tool's.
        z = RecordingZfs((0, recorded("zfs-get-snapshots.txt") +
                          "tank/site\tusedbysnapshots\t8192\t-\n"
                          "tank/site\tcreatetxg\t1\t-\n", ""))
        found, space = z.snapshots(["tank/site"], ("part", "label"))
        self.assertEqual(space, {"tank/site": 8192})
        snaps = found["tank/site"]
        self.assertEqual([s.short for s in snaps], ["zfssnap-1", "hourly"])
        self.assertEqual(snaps[1].userrefs, 1)
        self.assertEqual(snaps[1].clones, ["tank/clone"])
        self.assertEqual(snaps[1].properties, {})
        self.assertEqual(snaps[0].properties, {"part": "zfssnap"})
        self.assertEqual(snaps[0].clones, [])
        self.assertEqual((snaps[0].createtxg, snaps[0].creation), (15, 1795705794))
        self.assertEqual(z.calls[0], [
            "sudo", "-n", "zfs", "get", "-H", "-p", "-o", "name,property,value,source",
            "-t", "filesystem,volume,snapshot", "-d", "1", "createtxg,creation,used,userrefs,"
            "clones,usedbysnapshots,collective.recipe.zfssnap:part,"
            "collective.recipe.zfssnap:label", "tank/site"])

    def test_newer_lists_snapshots_and_bookmarks_after_a_txg(self):
        out = ("tank/site@b\t120\t1700000000\t4096\t0\t-\n"
               "tank/site#mark\t130\t1700000000\t-\t-\t-\n"
               "tank/site@a\t100\t1700000000\t0\t1\ttank/clone\n")
        z = RecordingZfs((0, out, ""))
        newer = z.newer(["tank/site"], {"tank/site": 100})["tank/site"]
        self.assertEqual([s.name for s in newer], ["tank/site@b", "tank/site#mark"])
        self.assertTrue(newer[1].is_bookmark)

    def test_one_snapshot_command_with_properties(self):
        z = RecordingZfs((0, "", ""))
        z.snapshot(["tank/site@s", "tank/fs@s"], {"p:b": "2", "p:a": "x y"})
        self.assertEqual(z.calls[0][3:], ["snapshot", "-o", "p:a=x y", "-o", "p:b=2",
                                          "tank/site@s", "tank/fs@s"])

    def test_dataset_at_not_zfs(self):
        z = RecordingZfs((1, "", "cannot open '/home': not a ZFS filesystem"))
        self.assertRaises(zfs.NotOnZfs, z.dataset_at, "/home")

    def test_dataset_at(self):
        z = RecordingZfs((0, "tank/site\t/srv/site\n", ""))
        self.assertEqual(z.dataset_at("/srv/site"), ("tank/site", "/srv/site"))

    def test_reclaimable_reads_reclaim_and_batches_long_lists(self):
        out = "destroy\ttank/site@a\ndestroy\ttank/site@b\nreclaim\t8192\n"
        z = RecordingZfs((0, out, ""))
        self.assertEqual(z.reclaimable("tank/site", ["a", "b"]), 8192)
        self.assertEqual(z.calls[0][3:], ["destroy", "-n", "-v", "-p", "tank/site@a,b"])
        names = ["zfssnap-20261126T000000Z-%04d" % i for i in range(3000)]
        batches = list(zfs.comma_batches(names))
        self.assertEqual(sum(batches, []), names)
        self.assertGreater(len(batches), 1)
        self.assertTrue(all(len(",".join(b)) <= zfs.MAX_LIST_ARGUMENT for b in batches))

    def test_permission_denied_is_recognised(self):
        z = RecordingZfs((1, "", "cannot create snapshot 'tank/site@x': permission denied"))
        with self.assertRaises(zfs.ZfsError) as caught:
            z.snapshot(["tank/site@x"])
        self.assertTrue(caught.exception.permission_denied)

    def test_missing_command(self):
        z = zfs.Zfs(["/nonexistent/zfs"])
        with self.assertRaises(zfs.NoZfsCommand) as caught:
            z.dataset_at("/")
        self.assertIn("/nonexistent/zfs", caught.exception.message)

    def test_parse_table_rejects_garbage(self):
        self.assertRaises(zfs.ZfsError, zfs.parse_table, "a\tb\tc\n", ("x", "y"))


class DescribeTest(unittest.TestCase):

    def test_one_git_call_says_revision_describe_and_dirtiness(self):
        from collective.recipe.zfssnap.snapshot import parse_describe
        rev = "0123456789abcdef0123456789abcdef01234567"
        self.assertEqual(parse_describe("1.0-0-g" + rev), {
            "git-revision": rev, "git-describe": "1.0", "git-dirty": "no"})
        self.assertEqual(parse_describe("release-2.0-3-g%s+dirty" % rev), {
            "git-revision": rev, "git-describe": "release-2.0-3-g0123456", "git-dirty": "yes"})
        self.assertEqual(parse_describe(rev + "+dirty"), {
            "git-revision": rev, "git-describe": rev, "git-dirty": "yes"})


class NamesAndValuesTest(unittest.TestCase):

    def test_property_values_fit_zfs(self):
        self.assertIsNone(zfs.check_property_value("message", "x" * 8191))
        self.assertEqual(zfs.check_property_value("message", "é" * 4096),
                         "the message is 8192 bytes long; ZFS stores at most 8191 bytes in a "
                         "property")

    def test_dataset_names(self):
        for name in ("tank", "tank/site", "data/site-fs.1", "tank/a b"):
            self.assertIsNone(zfs.check_dataset_name(name), name)
        for name in ("", "/tank", "tank/", "tank//x", "tank@s", "tank/x%y", "-tank"):
            self.assertIsNotNone(zfs.check_dataset_name(name), name)


class TimeoutTest(unittest.TestCase):
    """A zfs that does not answer within zfs-timeout is reported, and left running (it may be
    in the middle of its change), not waited for forever (issue 26, 6)."""

    def test_a_hung_zfs_is_reported_with_its_pid(self):
        import re
        import signal
        import sys
        hung = zfs.Zfs([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
        with self.assertRaises(zfs.ZfsTimeout) as raised:
            hung.run("rollback", "tank/site@x")
        message = raised.exception.message
        self.assertIn("did not finish within 1 s (the part's zfs-timeout) and is still running "
                      "as pid ", message)
        child = raised.exception.child
        self.assertEqual(int(re.search(r"as pid (\d+)", message).group(1)), child.pid)
        self.assertIsNone(child.poll())  # still there
        child.send_signal(signal.SIGKILL)
        child.wait()
        self.assertIsInstance(raised.exception, zfs.ZfsError)  # failures mid-run say exit 4

    def test_no_timeout_waits(self):
        import sys
        done = zfs.Zfs([sys.executable, "-c", "import time; time.sleep(0.5)"], timeout=0)
        self.assertEqual(done.run("list").returncode, 0)
