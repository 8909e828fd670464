"""Unit tests of the supervisor adapter's parsing and of the open-files scan (no ZFS needed)."""
import os
import subprocess
import sys
import tempfile
import unittest

from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import release
from collective.recipe.zfssnap.supervisor import parse_pids
from collective.recipe.zfssnap.supervisor import parse_status


STATUS = """\
app                              RUNNING   pid 4242, uptime 0:01:02
group:one                        STOPPED   Nov 26 07:30 AM
worker                           FATAL     Exited too quickly (process log may have details)
unix:///srv/site/var/supervisord.sock no such file
"""


class SupervisorParsingTest(unittest.TestCase):

    def test_status(self):
        self.assertEqual(parse_status(STATUS),
                         {"app": "RUNNING", "group:one": "STOPPED", "worker": "FATAL"})

    def test_pids(self):
        self.assertEqual(parse_pids(STATUS), {"app": 4242})


@unittest.skipUnless(os.path.isdir("/proc/self/fd") and os.path.isdir("/dev/shm"),
                     "needs Linux /proc and a tmpfs at /dev/shm")
class OpenFilesTest(unittest.TestCase):
    """The /proc scan, on a real filesystem of its own (the tmpfs at /dev/shm)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/dev/shm")
        self.children = []

    def tearDown(self):
        for child in self.children:
            child.kill()
            child.wait()
            if child.stdout:
                child.stdout.close()
        for name in os.listdir(self.dir):
            os.remove(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def spawn(self, code, cwd="/"):
        child = subprocess.Popen([sys.executable, "-c", code, self.dir], cwd=cwd,
                                 stdout=subprocess.PIPE, text=True)
        self.children.append(child)
        self.assertEqual(child.stdout.readline().strip(), "ready")
        return child

    def test_open_file_cwd_and_mapping_are_found(self):
        writer = self.spawn("import sys, time\nf = open(sys.argv[1] + '/data', 'w')\n"
                            "print('ready', flush=True)\ntime.sleep(60)")
        shell = self.spawn("print('ready', flush=True)\nimport time\ntime.sleep(60)",
                           cwd=self.dir)
        mapper = self.spawn("import mmap, sys, time\nf = open(sys.argv[1] + '/m', 'w+b')\n"
                            "f.write(b'x' * 4096)\nf.flush()\nm = mmap.mmap(f.fileno(), 4096)\n"
                            "f.close()\nprint('ready', flush=True)\ntime.sleep(60)")
        found = {h.pid: h for h in processes.holders([self.dir])}
        self.assertTrue(any(t.startswith("fd ") for t in found[writer.pid].ties))
        self.assertEqual(found[shell.pid].ties, ["cwd"])
        self.assertTrue(found[shell.pid].cwd_only)
        self.assertIn("mmap", found[mapper.pid].ties)
        self.assertFalse(found[mapper.pid].cwd_only)
        self.assertNotIn(os.getpid(), found)
        self.assertIn(sys.executable.split("/")[-1], found[writer.pid].command)
        # Excluded pids are left out.
        self.assertNotIn(writer.pid, [h.pid for h in processes.holders([self.dir],
                                                                       exclude={writer.pid})])

    def test_descendants(self):
        parent = self.spawn("import subprocess, sys, time\n"
                            "c = subprocess.Popen(['sleep', '60'])\n"
                            "print('ready', flush=True)\nprint(c.pid, flush=True)\n"
                            "time.sleep(60)")
        child = int(parent.stdout.readline())
        self.assertEqual(processes.with_descendants([parent.pid]), {parent.pid, child})


class QuiescedTest(unittest.TestCase):
    """What the operator is told to run when the site is left stopped."""

    class FakeSite:
        config = {"supervisord": ["/srv/site/bin/supervisord"],
                  "supervisorctl": ["/srv/site/bin/supervisorctl"]}

    def test_start_commands(self):
        q = release.Quiesced(running_before=["app", "worker"], daemon_down=True)
        self.assertEqual(q.start_commands(self.FakeSite()), [
            ["/srv/site/bin/supervisord"],
            ["/srv/site/bin/supervisorctl", "start", "app", "worker"]])
        q = release.Quiesced(programs=["app"])
        self.assertEqual(q.start_commands(self.FakeSite()),
                         [["/srv/site/bin/supervisorctl", "start", "app"]])

    def test_merge_what_an_earlier_failed_rollback_left_stopped(self):
        earlier = release.Quiesced(daemon_down=True, running_before=["worker", "app"])
        # supervisord runs again (started by hand) and this run only stopped programs.
        q = release.Quiesced(programs=["app"])
        q.merge(earlier, daemon_running=True)
        self.assertEqual(q.programs, ["app", "worker"])
        self.assertFalse(q.daemon_down)
        # This run shut supervisord down: all are started after its restart.
        q = release.Quiesced(daemon_down=True, running_before=["app"])
        q.merge(release.Quiesced(programs=["zeo"]), daemon_running=True)
        self.assertEqual(q.running_before, ["app", "zeo"])
        # supervisord is still down from the earlier run: start it and what ran.
        q = release.Quiesced()
        q.merge(earlier, daemon_running=False)
        self.assertTrue(q.daemon_down)
        self.assertEqual(q.running_before, ["worker", "app"])
