"""Accidents during a release, on real OpenZFS with the real site (lab guest only): runs killed
at every stage, signals, programs that will not start, supervisord not running, a full pool,
two scripts at once, bad input, and what is shown before the operator confirms."""
import json
import os
import pty
import signal
import subprocess
import time
import unittest

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.tests.layers import full_series_only
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import RUNNING
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import bin_
from collective.recipe.zfssnap.tests.layers import configure
from collective.recipe.zfssnap.tests.layers import edit
from collective.recipe.zfssnap.tests.layers import on_terminal
from collective.recipe.zfssnap.tests.layers import program_states
from collective.recipe.zfssnap.tests.layers import run_in_site
from collective.recipe.zfssnap.tests.layers import script_config
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests.layers import stop_site
from collective.recipe.zfssnap.tests.layers import supervisord_pids
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.layers import write_script


def released():
    """A release's change: the version file, and a ZODB transaction (the site runs)."""
    with open(SITE + "/VERSION", "w") as f:
        f.write("2.0\n")
    app("/write?blob=release", "POST")


def version_on_disk():
    with open(SITE + "/VERSION") as f:
        return f.read().strip()


def rollback_in_background(*args):
    return subprocess.Popen([SITE + "/bin/rollback", "--yes"] + list(args), cwd=SITE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def read_until(proc, text, timeout=120):
    """Lines of `proc`'s stdout up to the first one containing `text`."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError("%r never printed; got %r" % (text, lines))


def kill_while_stopping(*args):
    """bin/rollback killed (kill -9) right after it said it stops the site."""
    proc = rollback_in_background(*args)
    read_until(proc, "> shutdown supervisord")
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def zfs_wrapper(path, body):
    """A zfs command that does `body` (sh) first, then runs the real zfs: faults injected
    into one call, everything else real."""
    return write_script(path, "#!/bin/sh\n%s\nexec zfs \"$@\"\n" % body)


# The app's startsecs in a supervisord.conf, raised to 8 s.
SLOW_START = r"""#!/usr/bin/python3
import re
import sys

with open(sys.argv[1]) as f:
    text = f.read()
text, found = re.subn(r"(\[program:app\](?:\n(?!\[).*)*?\nstartsecs\s*=\s*)\d+", r"\g<1>8", text)
assert found == 1, "no startsecs in [program:app]"
with open(sys.argv[1], "w") as f:
    f.write(text)
"""


@full_series_only
class KilledRunTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        self.before = Site.reset()
        self.name = take_snapshot("pre")
        released()

    def assertRolledBack(self):
        self.assertEqual(program_states(), RUNNING)
        state = wait_for(app, what="the app after the rollback")
        self.assertEqual(state["counter"], self.before["counter"])
        self.assertEqual(version_on_disk(), "1.0")

    def test_a_refusal_while_stopping_leaves_no_record_behind(self):
        configure(supervisord=None)  # supervisord must go down, and could not start again
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("the supervisord option is none", err)
        self.assertFalse(os.path.exists(state.Places(script_config()).record))
        self.assertEqual(program_states(), RUNNING)
        # So another target is not refused as "an unfinished rollback".
        other = take_snapshot("other")
        rc, out, err = bin_("rollback", "--yes", "--dry-run", other)
        self.assertEqual(rc, 0, out + err)

    def test_stale_record_is_shown_refused_for_another_target_and_forgotten(self):
        later = take_snapshot("later")  # bin/snapshot refuses while the record is there
        kill_while_stopping(self.name)
        rc, out, err = bin_("rollback", "--yes", later)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("an unfinished rollback to %s is recorded (above): finish it with "
                      "%s/bin/rollback %s, or forget it with %s/bin/rollback --forget; nothing "
                      "was changed" % (self.name, SITE, self.name, SITE), err)
        # cleanup never destroys the snapshot an unfinished rollback goes back to
        rc, out, err = bin_("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("skipped %s: an unfinished rollback goes back to it" % self.name, err)
        self.assertIn("tank/site@" + self.name, snapshots("tank/site"))
        rc, out, err = bin_("rollback", "--forget")  # no terminal to ask: refused
        self.assertEqual(rc, 3, out + err)
        self.assertIn("pass --yes to forget it (nothing was changed)", err)
        rc, out, err = bin_("rollback", "--forget", "--dry-run")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Dry run: nothing was changed", out)
        self.assertTrue(os.path.exists(state.Places(script_config()).record))
        rc, out, err = bin_("rollback", "--forget", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("An unfinished rollback to %s is recorded" % self.name, out)
        self.assertIn("Forgotten: the record is kept as %s.forgotten-"
                      % state.Places(script_config()).record, out)
        self.assertFalse(os.path.exists(state.Places(script_config()).record))

    def test_term_and_hup_during_the_rollback_stop_it_at_a_safe_point(self):
        proc = rollback_in_background()
        read_until(proc, "> shutdown supervisord")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=300)
        self.assertEqual(proc.returncode, 4, out + err)
        self.assertIn("SIGTERM received: the rollback stops at its next safe point", err)
        self.assertIn("SIGTERM received: the rollback stopped ", err)
        self.assertIn("run %s/bin/rollback again to finish it" % SITE, err)
        self.assertTrue(os.path.exists(state.Places(script_config()).record))
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Rolled back to " + self.name, out)
        self.assertRolledBack()

    def test_program_that_will_not_start_then_rollback_again_only_starts(self):
        # Something takes the app's port while the site is down: the app cannot start.
        squatter = "/tmp/squatter.py"
        with open(squatter, "w") as f:
            f.write("import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, "
                    "socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 8080))\ns.listen()\n"
                    "open('/tmp/squatting', 'w').close()\ntime.sleep(600)\n")
        # And the restored app gets a startsecs longer than its interpreter can take to reach
        # its bind() on a loaded machine: with the site's 2 s, a slow start is called RUNNING
        # by supervisord before the app finds the port taken, and nothing is left to detect.
        slow = write_script("/tmp/slow-start.py", SLOW_START)
        zfs_wrapper("/tmp/zfs-squat", 'if [ "$1" = rollback ] && [ ! -e /tmp/squatting ]; then '
                    'setsid python3 /tmp/squatter.py < /dev/null > /dev/null 2>&1 & '
                    'while [ ! -e /tmp/squatting ]; do sleep 0.1; done; fi\n'
                    'if [ "$1" = rollback ] && [ "${2%%@*}" = tank/site-blobstorage ]; then '
                    '%s %s/parts/supervisor/supervisord.conf; fi' % (slow, SITE))
        if os.path.exists("/tmp/squatting"):
            os.remove("/tmp/squatting")
        configure(zfs=["/tmp/zfs-squat"], stop_timeout=15)
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 1, out + err)
            self.assertIn("rolled back every dataset to %s, but app did not get to RUNNING: "
                          "look at its log" % self.name, err)
            self.assertIn("then run %s/bin/rollback again: it starts what ran before without "
                          "rolling back again" % SITE, err)
        finally:
            sh("pkill", "-f", "/tmp/squatter.py", check=False)
        with open(SITE + "/var/written-after.txt", "w") as f:
            f.write("kept")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Every dataset was rolled back to %s; this run starts what ran before: "
                      "app, worker" % self.name, err + out)
        self.assertNotIn("> zfs rollback", out)
        self.assertTrue(os.path.exists(SITE + "/var/written-after.txt"))
        self.assertRolledBack()

    def test_supervisord_not_running(self):
        stop_site()
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("supervisord is not running: no programs to stop.", out)
        self.assertNotIn("start supervisord", out)
        self.assertEqual(supervisord_pids(), [])
        self.assertEqual(version_on_disk(), "1.0")

    def test_rollback_and_cleanup_at_the_same_moment(self):
        write_script("/tmp/slow-hook", "#!/bin/sh\ntouch /tmp/hook-started\nsleep 5\n")
        if os.path.exists("/tmp/hook-started"):
            os.remove("/tmp/hook-started")
        configure(hooks={"before-rollback": ["/tmp/slow-hook"]})
        proc = rollback_in_background()
        wait_for(lambda: os.path.exists("/tmp/hook-started"), what="the hook")
        rc, out, err = bin_("cleanup", "--yes")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("another snapshot, rollback or cleanup of this buildout is running", err)
        out, err = proc.communicate(timeout=300)
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertIn("tank/site@" + self.name, snapshots("tank/site"))
        self.assertRolledBack()


class RecordPlaceTest(unittest.TestCase):
    """The rollback's record is where every release's scripts look (issue 26, 3), and while it
    is there bin/snapshot and the release guard refuse (issue 26, 2). On both series."""
    layer = Site

    def setUp(self):
        self.before = Site.reset()
        self.name = take_snapshot("pre")  # release A: the part's default lock-file
        released()

    def test_the_target_releases_rerun_finds_the_record_of_another_lock_file(self):
        # Release B set its own lock-file; its bin/rollback is killed while stopping.
        configure(lock_file="/var/tmp/zfssnap-release-b/site.lock")
        kill_while_stopping()
        record = state.Places(script_config()).record
        self.assertTrue(os.path.exists(record))
        rc, out, err = bin_("snapshot", "during")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("refusing to take a snapshot: an unfinished rollback to %s is recorded "
                      "(stage 'stopping', record %s): run %s/bin/rollback to finish it first"
                      % (self.name, record, SITE), err)
        # The release guard refuses any bin/buildout as long as the record is there.
        edit(SITE + "/buildout.cfg", "versions = versions",
             "versions = versions\nextensions = collective.recipe.zfssnap")
        rc, out, err = run_in_site("/opt/venv/bin/buildout")
        self.assertNotEqual(rc, 0, out + err)
        self.assertIn("Error: [zfssnap] release guard: refusing to let bin/buildout change the "
                      "site: an unfinished rollback to %s is recorded" % self.name, out + err)
        # The rerun is typed with release A's scripts (as after the buildout's dataset came
        # back): the lock-file they were generated with is not B's.
        configure(lock_file=None)
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("An unfinished rollback to %s is recorded" % self.name, out + err)
        self.assertEqual(program_states(), RUNNING)
        self.assertEqual(wait_for(app, what="the app")["counter"], self.before["counter"])
        self.assertFalse(os.path.exists(record))


@full_series_only
class HookTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()
        rc, out, err = bin_("snapshot", "pre")
        assert rc == 0, out + err

    def test_hooks_get_default_signals_and_a_timeout(self):
        write_script("/tmp/sig-hook", "#!/bin/sh\ngrep SigIgn /proc/self/status > /tmp/sigign\n")
        configure(hooks={"before-rollback": ["/tmp/sig-hook"]})
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        with open("/tmp/sigign") as f:
            ignored = int(f.read().split()[1], 16)
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            self.assertFalse(ignored & (1 << (signum - 1)), "%s ignored by the hook" % signum)
        # A hung hook is killed after hook-timeout; the site is left as it was.
        configure(hook_timeout=3, hooks={"before-rollback": ["/bin/sleep", "600"]})
        started = time.monotonic()
        rc, out, err = bin_("rollback", "--yes", "--again")  # to the set rolled back to
        self.assertEqual(rc, 1, out + err)
        self.assertLess(time.monotonic() - started, 60)
        self.assertIn("the before-rollback hook '/bin/sleep 600' did not finish within 3 s and "
                      "was killed", err)
        self.assertEqual(program_states(), RUNNING)
        self.assertEqual(sh("pgrep", "-f", "^/bin/sleep 600$", check=False), "")

    def test_a_message_too_long_for_zfs_is_refused_before_the_hook_runs(self):
        write_script("/tmp/marker-hook", "#!/bin/sh\ntouch /tmp/snapshot-hook-ran\n")
        if os.path.exists("/tmp/snapshot-hook-ran"):
            os.remove("/tmp/snapshot-hook-ran")
        configure(hooks={"before-snapshot": ["/tmp/marker-hook"]})
        rc, out, err = bin_("snapshot", "-m", "x" * 9000)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("cannot take the snapshot: the message is 9000 bytes long; ZFS stores at "
                      "most 8191 bytes in a property; shorten it", err)
        self.assertNotIn("x" * 100, err)
        self.assertFalse(os.path.exists("/tmp/snapshot-hook-ran"))
        self.assertEqual(len(snapshots("tank/site")), 2)  # the baseline and setUp's


@full_series_only
class ConfirmationTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()
        self.name = take_snapshot("pre")

    def test_quiet_still_shows_the_plan_before_asking(self):
        rc, shown = on_terminal([SITE + "/bin/rollback", "-q"], answer="no")
        self.assertEqual(rc, 3, shown)
        self.assertIn("Rollback of tank/site, tank/site-filestorage, tank/site-blobstorage to "
                      + self.name, shown)
        self.assertIn("tank/site: undoes", shown)
        self.assertLess(shown.index("undoes"), shown.index("Type yes"))
        self.assertIn("not confirmed: nothing was changed", shown)

    def test_json_keeps_the_prompt_and_plan_off_stdout(self):
        master, slave = pty.openpty()
        proc = subprocess.Popen([SITE + "/bin/rollback", "--json"], cwd=SITE, stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(slave)
        os.write(master, b"no\n")
        out, err = proc.communicate(timeout=120)
        os.close(master)
        self.assertEqual(proc.returncode, 3, out + err)
        doc = json.loads(out)  # stdout is one JSON document, nothing else
        self.assertEqual(doc["error"], "not confirmed: nothing was changed")
        self.assertEqual(doc["target"]["name"], self.name)
        self.assertIn("Type yes", err)
        self.assertIn("Rollback of tank/site", err)


@full_series_only
class SpaceTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()

    def test_warn_size_counts_space_held_jointly(self):
        with open(SITE + "/var/big", "wb") as f:
            f.write(os.urandom(12 << 20))
        for label in ("one", "two"):
            rc, out, err = bin_("snapshot", label)
            self.assertEqual(rc, 0, out + err)
        os.remove(SITE + "/var/big")
        configure(warn_size=8 << 20, retain=5)
        rc, out, err = bin_("snapshot", "three", "--json")
        self.assertEqual(rc, 0, out + err)
        doc = json.loads(out)
        # Each of the two holds the file jointly: `used` is 0 for both.
        used = [s for s in sh("zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,used",
                              "tank/site").splitlines() if "-one" in s or "-two" in s]
        self.assertTrue(all(u.split("\t")[1] != str(12 << 20) for u in used), used)
        self.assertTrue(any("more than warn-size = 8.0M" in w for w in doc["warnings"]),
                        doc["warnings"])

    def test_properties_inherited_from_the_dataset_do_not_make_a_snapshot_ours(self):
        prefix = "collective.recipe.zfssnap:"
        sh("zfs", "set", prefix + "part=zfssnap", "tank/site")
        sh("zfs", "set", prefix + "buildout=" + SITE, "tank/site")
        try:
            sh("zfs", "snapshot", "tank/site@hourly")
            rc, out, err = bin_("snapshot", "--list")
            self.assertEqual(rc, 0, out + err)
            self.assertNotIn("hourly", out)
            rc, out, err = bin_("cleanup", "--yes")
            self.assertEqual(rc, 0, out + err)
            self.assertIn("tank/site@hourly", snapshots("tank/site"))
        finally:
            sh("zfs", "inherit", prefix + "part", "tank/site")
            sh("zfs", "inherit", prefix + "buildout", "tank/site")

    def test_site_at_its_quota(self):
        name = take_snapshot("pre")
        with open(SITE + "/var/release-data", "wb") as f:
            f.write(os.urandom(4 << 20))
        # The buildout's dataset full: its quota (snapshots included) reached. `used` counts
        # what was written only once the transaction group is synced.
        sh("zpool", "sync", "tank")
        used = int(sh("zfs", "get", "-H", "-p", "-o", "value", "used", "tank/site").strip())
        sh("zfs", "set", "quota=%d" % (used + (2 << 20)), "tank/site")
        try:
            with self.assertRaises(OSError):  # the pool is full for writers
                with open(SITE + "/var/more", "wb") as f:
                    f.write(os.urandom(8 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            rc, out, err = bin_("snapshot", "at-quota")
            self.assertEqual(rc, 0, out + err)
            rc, out, err = bin_("rollback", "--yes", name)
            self.assertEqual(rc, 0, out + err)
            self.assertFalse(os.path.exists(SITE + "/var/release-data"))
            rc, out, err = bin_("cleanup", "--yes")
            self.assertEqual(rc, 0, out + err)
            self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])
        finally:
            sh("zfs", "set", "quota=none", "tank/site")
            if os.path.exists(SITE + "/var/more"):
                os.remove(SITE + "/var/more")
        self.assertEqual(program_states(), RUNNING)
        for dataset in DATASETS:
            self.assertEqual(snapshots(dataset), [dataset + "@lab-baseline"])
