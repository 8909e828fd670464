"""Unit tests of the process scan, the mount table, FreeBSD's tools' output (no ZFS needed)."""
import os
import signal
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

from collective.recipe.zfssnap import mounts
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap.systemd import parse_cgroup_unit


HERE = os.path.dirname(__file__)


def recorded(name):
    with open(os.path.join(HERE, "recorded", name)) as f:
        return f.read()


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
        # The grandchild holds the runner's stderr: left alive, it keeps a pipe reader waiting.
        self.addCleanup(os.kill, child, signal.SIGKILL)
        self.assertEqual(processes.with_descendants([parent.pid]), {parent.pid, child})



class ProcessTreeTest(unittest.TestCase):

    def test_pid_0_and_1_are_never_taken(self):
        # A supervisorctl that printed a warning once made pid 0 "managed": every process is
        # a descendant of 0 (and of 1), so nothing would have been checked.
        children = {0: [1, 2], 1: [100, 200], 100: [101]}
        self.assertEqual(processes.with_descendants([0], children), set())
        self.assertEqual(processes.with_descendants([1, None], children), set())
        self.assertEqual(processes.with_descendants([100], children), {100, 101})

    def test_freebsd_ps(self):
        tree = processes.parse_ps(recorded("freebsd-ps.txt"))
        self.assertEqual(processes.with_descendants([1822], tree), {1822, 1823, 1825, 1826})

    def test_freebsd_fstat(self):
        found = processes.parse_fstat(recorded("freebsd-fstat.txt"), exclude={1822})
        self.assertEqual(sorted(found), [1823, 1825, 1910])
        self.assertEqual(found[1823].ties, ["cwd", "fd 3", "fd 4"])
        self.assertEqual(found[1825].ties, ["cwd", "fd 5"])
        self.assertEqual(found[1910].ties, ["cwd"])
        self.assertTrue(found[1910].cwd_only)
        self.assertEqual(found[1823].command, "python3.11")


class FreeBSDToolsTest(unittest.TestCase):
    """The FreeBSD code paths run against stand-ins of fstat and ps that print the recorded
    output (or fail), found on PATH as the real ones would be."""

    def setUp(self):
        self.bin = tempfile.mkdtemp(prefix="zfssnap-freebsd-")
        self.path = os.environ["PATH"]
        os.environ["PATH"] = self.bin + os.pathsep + self.path

    def tearDown(self):
        os.environ["PATH"] = self.path
        for name in os.listdir(self.bin):
            os.remove(os.path.join(self.bin, name))
        os.rmdir(self.bin)

    def tool(self, name, output, rc=0, stderr=""):
        path = os.path.join(self.bin, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\ncat %s\necho '%s' >&2\nexit %d\n" % (
                os.path.join(HERE, "recorded", output), stderr, rc))
        os.chmod(path, 0o755)

    def test_fstat_and_ps(self):
        self.tool("fstat", "freebsd-fstat.txt")
        self.tool("ps", "freebsd-ps.txt")
        managed = processes.with_descendants([1822], processes.process_tree(proc=False))
        found = processes.holders_fstat(["/srv/site"], exclude=managed)
        self.assertEqual([h.pid for h in found], [1910])
        self.assertTrue(found[0].cwd_only)

    def test_a_failing_fstat_is_an_error_not_no_holders(self):
        self.tool("fstat", "freebsd-fstat.txt", rc=1, stderr="fstat: kvm_openfiles: denied")
        with self.assertRaises(OSError) as caught:
            processes.holders_fstat(["/srv/site"])
        self.assertIn("'fstat -f /srv/site' failed: fstat: kvm_openfiles: denied",
                      caught.exception.strerror)

    @unittest.skipIf(os.geteuid() == 0, "only a non-root user sees fewer processes")
    def test_non_root_is_told_it_sees_only_its_own(self):
        self.tool("fstat", "freebsd-fstat.txt")
        unreadable = []
        processes.holders_fstat(["/srv/site"], unreadable=unreadable)
        self.assertEqual(unreadable, [-1])


class MountTableTest(unittest.TestCase):

    def test_linux_mountinfo(self):
        table = mounts.parse_mountinfo(recorded("linux-mountinfo.txt"))
        self.assertEqual([(m.dataset, m.mountpoint) for m in table], [
            ("tank", "/tank"), ("data", "/data"),
            ("tank/site", "/srv/site"),
            ("tank/site-filestorage", "/srv/site/var/filestorage"),
            ("data/site blobs", "/srv/site/var/blob storage"),
            ("tank/legacy", "/srv/legacy"),
        ])
        self.assertEqual(mounts.where("tank/legacy", table), "/srv/legacy")
        # A snapshot mounted on access (under .zfs/snapshot) is not a dataset.
        more = mounts.parse_mountinfo(
            "50 39 0:40 / /srv/site/var/filestorage/.zfs/snapshot/pre rw,relatime shared:1 - "
            "zfs tank/site-filestorage@pre rw,xattr,noacl\n")
        self.assertEqual(more, [])
        self.assertIsNone(mounts.where("tank/other", table))
        self.assertEqual([m.dataset for m in mounts.below(["/srv/site"], table)],
                         ["data/site blobs", "tank/site-filestorage"])

    def test_freebsd_mount_p(self):
        table = mounts.parse_fstab(recorded("freebsd-mount-p.txt"))
        self.assertEqual([(m.dataset, m.mountpoint) for m in table], [
            ("zroot/ROOT/default", "/"), ("zroot/tmp", "/tmp"), ("zroot/usr/home", "/usr/home"),
            ("zroot/srv/site", "/srv/site"), ("data/site-fs", "/srv/site/var/filestorage")])

    def test_holding_is_the_innermost_mount(self):
        table = [mounts.Mount("tank", "/tank"), mounts.Mount("tank/site", "/tank/site")]
        self.assertEqual(mounts.holding("/tank/site/var", table).dataset, "tank/site")
        self.assertEqual(mounts.holding("/tank/other", table).dataset, "tank")
        self.assertEqual(mounts.holding("/tank", table).dataset, "tank")
        self.assertIsNone(mounts.holding("/srv", table))
        self.assertFalse(mounts.is_inside("/tank/site2", "/tank/site"))


class CgroupTest(unittest.TestCase):

    def test_unit_from_cgroup(self):
        self.assertEqual(parse_cgroup_unit("0::/system.slice/site-supervisord.service\n"),
                         "site-supervisord.service")
        self.assertIsNone(parse_cgroup_unit("0::/user.slice/user-1000.slice/session-3.scope\n"))
        self.assertEqual(parse_cgroup_unit(
            "12:pids:/system.slice/plone.service\n1:name=systemd:/system.slice/plone.service\n"),
            "plone.service")
        self.assertIsNone(parse_cgroup_unit("0::/\n"))


class FileStoragesTest(unittest.TestCase):
    """Where plone.recipe.zope2instance and plone.recipe.zeoserver parts keep the Data.fs."""

    def test_defaults_relative_and_absolute(self):
        from collective.recipe.zfssnap.storages import filestorages_of
        self.assertEqual(filestorages_of({
            "instance": {},
            "client2": {},  # the same Data.fs: listed once
            "zeo": {"zeo-var": "/srv/site/var/zeo", "file-storage": "filestorage/Main.fs"},
            "other": {"var": "data", "file-storage": "/srv/data/Data.fs"},
        }, "/srv/site"), ["/srv/site/var/filestorage/Data.fs",
                          "/srv/site/var/zeo/filestorage/Main.fs", "/srv/data/Data.fs"])

    def test_parts_made_with_macros_are_found(self):
        from collective.recipe.zfssnap.recipe import recipe_of
        raw = {  # as buildout keeps the sections it read: "<= instance" is the option "<"
            "instance": {"recipe": "plone.recipe.zope2instance", "http-address": "8080"},
            "client2": {"<": "instance", "http-address": "8081"},
            "client3": {"<": "client2"},
            "both": {"<": "zeo\ninstance"},  # the last one named wins, as buildout reads it
            "zeo": {"recipe": "plone.recipe.zeoserver:main"},
            "own": {"<": "instance", "recipe": "collective.recipe.zfssnap"},
            "loop": {"<": "loop"},
        }
        self.assertEqual({p: recipe_of(raw, p) for p in raw}, {
            "instance": "plone.recipe.zope2instance", "client2": "plone.recipe.zope2instance",
            "client3": "plone.recipe.zope2instance", "both": "plone.recipe.zope2instance",
            "zeo": "plone.recipe.zeoserver", "own": "collective.recipe.zfssnap", "loop": ""})
        self.assertEqual(recipe_of(raw, "missing"), "")


class StopOrderTest(unittest.TestCase):
    """What bin/rollback says it stops when it shuts supervisord down: in supervisord's order."""

    def test_clients_before_their_server(self):
        from collective.recipe.zfssnap.procman_supervisord import stop_order

        class Proc:
            def __init__(self, group, process=999):
                self.priority = (group, process)

        # In start order, as the supervisor adapter lists them: by priority, then by name.
        procs = {"zeoserver": Proc(10), "instance1": Proc(20), "instance2": Proc(20),
                 "worker": Proc(999)}
        # supervisord stops the last group it started first, within a priority too.
        self.assertEqual(stop_order(["zeoserver", "instance1", "instance2", "worker"], procs),
                         ["worker", "instance2", "instance1", "zeoserver"])
        self.assertEqual(stop_order(["instance1", "zeoserver"], procs),
                         ["instance1", "zeoserver"])
        # A program without a known priority has supervisor's default, 999: among the first.
        self.assertEqual(stop_order(["zeoserver", "other"], procs), ["other", "zeoserver"])


class RollbackImportsTest(unittest.TestCase):
    """bin/rollback imports what it will need before it starts (the rollback replaces the eggs
    under it), and not urllib when there is no URL to check (a third of its imports)."""

    def modules_when_work_starts(self, health_check):
        tmp = tempfile.mkdtemp(prefix="zfssnap-imports-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", tmp]))
        config = {"part": "zfssnap", "directory": tmp, "datasets": ["tank/site"],
                  "zfs": ["zfs"], "mounts": {"tank/site": tmp}, "prefix": "zfssnap",
                  "state_directory": tmp, "health_check": health_check,
                  "scripts": {s: os.path.join(tmp, "bin", s) for s in ("snapshot", "rollback",
                                                                      "cleanup")}}
        code = ("import sys\n"
                "from collective.recipe.zfssnap import main, rollback\n"
                "rollback.rollback = lambda *a, **k: print(' '.join(sorted(sys.modules)))\n"
                "sys.exit(main.rollback(%r, ['--dry-run']))\n" % config)
        proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout.split()

    def test_everything_for_a_url_check(self):
        modules = self.modules_when_work_starts({"url": "http://127.0.0.1:8080/"})
        for name in ("urllib.request", "urllib.error", "collective.recipe.zfssnap.keep",
                     "collective.recipe.zfssnap.zodb", "collective.recipe.zfssnap.supervisor",
                     "collective.recipe.zfssnap.processes", "collective.recipe.zfssnap.health",
                     "collective.recipe.zfssnap.again", "collective.recipe.zfssnap.rollback.plan",
                     "collective.recipe.zfssnap.rollback.run",
                     "collective.recipe.zfssnap.rollback.fresh",
                     "collective.recipe.zfssnap.rollback.resume",
                     "collective.recipe.zfssnap.rollback.finish",
                     "collective.recipe.zfssnap.rollback.request",
                     "collective.recipe.zfssnap.manager", "collective.recipe.zfssnap.systemd",
                     "collective.recipe.zfssnap.swapsteps", "collective.recipe.zfssnap.procman",
                     "collective.recipe.zfssnap.procman_supervisord",
                     "collective.recipe.zfssnap.procman_systemd"):
            self.assertIn(name, modules)

    def test_no_urllib_without_a_url(self):
        for check in (None, {"command": ["true"]}):
            modules = self.modules_when_work_starts(check)
            self.assertNotIn("urllib.request", modules)
            self.assertIn("collective.recipe.zfssnap.downtime", modules)


class CrashPointsTest(unittest.TestCase):
    """The crash points are the test suite's alone: inert without ZFSSNAP_CRASH_TEST=1, read
    once and taken out of the environment (children never inherit them), never raising on a
    bad value, and never writing their log through a symbolic link."""

    SCRIPT = ("import os, sys; from collective.recipe.zfssnap import crashpoint; "
              "crashpoint.done('zfs snapshot a@b'); crashpoint.done('zfs rollback a@b'); "
              "print(sorted(k for k in os.environ if k.startswith('ZFSSNAP_CRASH')))")

    def run_script(self, **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ZFSSNAP_CRASH")}
        environ.update(env, PYTHONPATH=os.pathsep.join(sys.path))
        return subprocess.run([sys.executable, "-c", self.SCRIPT], env=environ, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-crash-")
        self.addCleanup(__import__("shutil").rmtree, self.tmp)
        self.log = os.path.join(self.tmp, "actions.log")

    def test_without_the_opt_in_nothing_is_counted_or_killed(self):
        proc = self.run_script(ZFSSNAP_CRASH_AFTER="1", ZFSSNAP_CRASH_LOG=self.log)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(os.path.exists(self.log))
        self.assertIn("take effect only with ZFSSNAP_CRASH_TEST=1", proc.stderr)
        self.assertEqual(proc.stdout.strip(), "[]")  # not inherited by what it starts

    def test_with_the_opt_in_it_logs_and_kills_after_n(self):
        proc = self.run_script(ZFSSNAP_CRASH_TEST="1", ZFSSNAP_CRASH_AFTER="2",
                               ZFSSNAP_CRASH_LOG=self.log)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        with open(self.log) as f:
            self.assertEqual(f.read(), "1\tzfs snapshot a@b\n2\tzfs rollback a@b\n")

    def test_a_power_cut_outside_the_lab_guest_is_a_kill(self):
        # This machine was not booted by the lab: the variable must never reach its sysrq.
        with open("/proc/cmdline") as f:
            self.assertNotIn("init=/sbin/lab-init", f.read().split())
        proc = self.run_script(ZFSSNAP_CRASH_TEST="1", ZFSSNAP_CRASH_AFTER="1",
                               ZFSSNAP_CRASH_HOW="power")
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertIn("ZFSSNAP_CRASH_HOW=power outside the lab's guest: killed instead",
                      proc.stderr)

    def test_a_bad_number_turns_the_crash_off_without_raising(self):
        for value in ("x", "0", "-1", "1e3", "٣", " "):
            proc = self.run_script(ZFSSNAP_CRASH_TEST="1", ZFSSNAP_CRASH_AFTER=value,
                                   ZFSSNAP_CRASH_LOG=self.log)
            self.assertEqual(proc.returncode, 0, (value, proc.stderr))
            self.assertIn("is not a whole number above 0: no crash", proc.stderr)
            self.assertEqual(proc.stdout.strip(), "[]")
        with open(self.log) as f:  # the log still kept: 2 actions per run
            self.assertEqual(len(f.read().splitlines()), 12)

    def test_the_log_is_never_written_through_a_symlink(self):
        target = os.path.join(self.tmp, "elsewhere")
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, self.log)
        proc = self.run_script(ZFSSNAP_CRASH_TEST="1", ZFSSNAP_CRASH_LOG=self.log)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("cannot write the log", proc.stderr)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")


class SystemctlTest(unittest.TestCase):
    """systemctl never asks for a password, goes through the part's privilege prefix when not
    root, and reaches a user's unit through that user's manager (issue 26, 9)."""

    def test_a_user_unit_from_the_cgroup(self):
        self.assertEqual(parse_cgroup_unit(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/site.service\n"),
            "user/1000/site.service")
        self.assertIsNone(parse_cgroup_unit(
            "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"))

    def argv(self, unit, euid, privilege=("sudo", "-n")):
        from collective.recipe.zfssnap import systemd
        with mock.patch.object(systemd.os, "geteuid", lambda: euid):
            return systemd.systemctl_argv(unit, ["stop"], privilege)

    def test_argv(self):
        self.assertEqual(self.argv("site.service", 0),
                         ["systemctl", "--no-ask-password", "stop", "site.service"])
        self.assertEqual(self.argv("site.service", 1000),
                         ["sudo", "-n", "systemctl", "--no-ask-password", "stop",
                          "site.service"])
        self.assertEqual(self.argv("user/1000/site.service", 1000),
                         ["systemctl", "--user", "--no-ask-password", "stop", "site.service"])
        self.assertEqual(self.argv("user/0/site.service", 1000)[:5],
                         ["sudo", "-n", "systemctl", "--user", "--machine=root@.host"])
        self.assertEqual(self.argv("user/0/site.service", 0, privilege=()),
                         ["systemctl", "--user", "--no-ask-password", "stop", "site.service"])

    def test_the_prefix_comes_from_the_zfs_option(self):
        from collective.recipe.zfssnap.rollback import privilege_prefix
        self.assertEqual(privilege_prefix(["sudo", "-n", "zfs"]), ["sudo", "-n"])
        self.assertEqual(privilege_prefix(["sudo", "-n", "/sbin/zfs"]), ["sudo", "-n"])
        self.assertEqual(privilege_prefix(["zfs"]), [])
        self.assertEqual(privilege_prefix(["python3", "fake_zfs.py"]), [])

    def test_how_it_is_shown(self):
        from collective.recipe.zfssnap.systemd import unit_label
        from collective.recipe.zfssnap.systemd import unit_shown
        self.assertEqual(unit_shown("user/0/site.service", "start"),
                         "systemctl --user start site.service")
        self.assertEqual(unit_shown("site.service", "start"), "systemctl start site.service")
        with mock.patch.object(os, "geteuid", lambda: 0):  # root, for another user's manager
            self.assertEqual(unit_shown("user/65534/a.service", "stop", ["b.service"]),
                             "systemctl --user --machine=nobody@.host stop a.service b.service")
        self.assertEqual(unit_label("user/0/site.service"),
                         "site.service of user root's manager")


class ModuleSizeTest(unittest.TestCase):
    """A module a reader can hold in their head: none of the package's is much over 400
    lines (split one by job when it grows past that)."""

    def test_no_module_is_over_about_400_lines(self):
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sizes = {}
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("tests", "__pycache__")]
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name)) as f:
                        sizes[os.path.relpath(os.path.join(folder, name), top)] = \
                            len(f.readlines())
        self.assertIn(os.path.join("rollback", "run.py"), sizes)
        self.assertEqual({n: s for n, s in sizes.items() if s > 420}, {})
