"""A site for the fast suite's rollback tests: the modelled pool (fake_pool), a recording
stand-in for the supervisor adapter, the real record and Site on a temporary directory, and
what a crash, a power cut and a boot do to them.

The guest suite (test_crash_sweep) shows the same on real OpenZFS and a real supervisord; this
file lets every stage of bin/rollback be killed and resumed in a second.
"""
import contextlib
import datetime
import gc
import io
import os
import shutil
import tempfile
import warnings
from unittest import mock

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import output
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import rollback as rollbackmod
from collective.recipe.zfssnap.rollback import run as rollbackrun
from collective.recipe.zfssnap import site as sitemod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.tests.fake_pool import FakePool


P = zfsmod.PROPERTY_PREFIX


class Crash(BaseException):
    """The process died here (SIGKILL): no handler of the code under test may see it."""


class Program:
    def __init__(self, name, priority, state="RUNNING", pid=None):
        self.name = self.short = self.api_name = name
        self.group = name
        self.priority = priority
        self.startsecs = 1
        self.state = state
        self.pid = pid


class FakeSupervisor:
    """supervisord as the rollback sees it through supervisor.Supervisor: up or down, and its
    programs' states. Every call that changes something is a crash point, as in the adapter."""

    timeout = 10

    def __init__(self, programs=("app", "worker")):
        self.up = True
        self.programs = {n: Program(n, 10 * (i + 1), pid=2000 + i)
                         for i, n in enumerate(programs)}
        self.daemon = ["/srv/site/bin/supervisord"]
        self.unit = None
        self.calls = []

    def _changed(self, what):
        self.calls.append(what)
        crashpoint.done("supervisord " + what)

    def _need_up(self):
        if not self.up:
            raise rollbackmod.SupervisorError("supervisord is not running")

    # -- what the rollback asks -------------------------------------------------------------
    def running(self):
        return self.up

    def pid(self):
        return 1999 if self.up else None

    def processes(self):
        self._need_up()
        return dict(self.programs)

    def states(self):
        self._need_up()
        return {n: p.state for n, p in self.programs.items()}

    def selected(self, processes):
        return list(processes)

    def find_unit(self, pid):
        return self.unit

    def start_deadline(self, names, processes=None):
        return 0

    def wait_settled(self, names, deadline):
        return self.states()

    def start_hint(self):
        return "/srv/site/bin/supervisord"

    # -- what it changes --------------------------------------------------------------------
    def shutdown(self, pids, deadline):
        self._need_up()
        self.up = False
        for p in self.programs.values():
            p.state, p.pid = "STOPPED", None
        self._changed("supervisor.shutdown")
        return []

    def stop(self, names):
        self._need_up()
        for n in names:
            self.programs[n].state, self.programs[n].pid = "STOPPED", None
            self._changed("supervisor.stopProcess " + n)
        return []

    def start_daemon(self):
        self.boot()
        self._changed("start supervisord")

    def start(self, names, deadline=None):
        self._need_up()
        for n in names:
            self.programs[n].state = "RUNNING"
            self._changed("supervisor.startProcess " + n)
        return []

    def boot(self):
        """supervisord started (by the rollback, or at boot): its autostart programs run."""
        self.up = True
        for i, p in enumerate(self.programs.values()):
            p.state, p.pid = "RUNNING", 3000 + i

    def power_cut(self):
        self.up = False
        for p in self.programs.values():
            p.state, p.pid = "STOPPED", None


class World:
    """One site: three datasets (the buildout's on pool tank, Data.fs and blobs on data), a
    snapshot set `target` taken by the part with content "v1", the release since ("v2"), and
    another tool's older snapshot on each dataset."""

    POOLS = ("tank", "data", "data")  # of the buildout's, the Data.fs's and the blobs' dataset

    def __init__(self, shutdown=True, pools=POOLS):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-world-")
        self.top = os.path.join(self.tmp, "site")
        self.layout = [("%s/site" % pools[0], self.top),
                       ("%s/site-filestorage" % pools[1], self.top + "/var/filestorage"),
                       ("%s/site-blobstorage" % pools[2], self.top + "/var/blobstorage")]
        for _, mountpoint in self.layout:
            os.makedirs(mountpoint, exist_ok=True)
        self.pool = FakePool()
        for name, mountpoint in self.layout:
            self.pool.create(name, mountpoint, content="v0")
            self.pool.datasets[name]["user"]["org.example:tag"] = "theirs"
            self.pool.snapshot(name + "@other-tool")
            self.pool.datasets[name]["content"] = "v1"
        self.target = "zfssnap-T-pre"
        datasets = [n for n, _ in self.layout]
        for name in datasets:
            self.pool.snapshot(name + "@" + self.target, properties={
                "part": "zfssnap", "buildout": self.top, "label": "pre",
                "datasets": ",".join(datasets), "created": "2026-12-02T00:00:00Z"})
            self.pool.datasets[name]["content"] = "v2"
        self.sup = FakeSupervisor()
        self.config = {
            "part": "zfssnap", "directory": self.top, "datasets": datasets, "zfs": ["zfs"],
            "scripts": {s: self.top + "/bin/" + s for s in ("snapshot", "rollback", "cleanup")},
            "mounts": dict(self.layout), "state_directory": os.path.join(self.tmp, "state"),
            "supervisor_conf": self.top + "/parts/supervisor/supervisord.conf",
            # supervisord's socket on the buildout's dataset: the rollback shuts it down.
            "supervisord_files": [self.top + "/var/supervisord.sock"] if shutdown else [],
            "stop_timeout": 10, "prefix": "zfssnap",
        }

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running a script's entry function (main.py) --------------------------------------
    @contextlib.contextmanager
    def running(self):
        """This world's pool as every zfs of the script; (stdout, stderr) as they are
        written."""
        pool = self.pool

        class Zfs(zfsmod.Zfs):
            def __new__(cls, *args, **kwargs):
                return pool  # not one of this class: Python calls no __init__ on it

        stdout, stderr = io.StringIO(), io.StringIO()
        with self.patched(), mock.patch.object(zfsmod, "Zfs", Zfs), \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                warnings.catch_warnings():
            # The scripts leave their log open for the process's exit to close.
            warnings.simplefilter("ignore", ResourceWarning)
            yield stdout, stderr
            gc.collect()

    def script(self, entry, argv, **config):
        """(exit code, stdout, stderr) of a script's entry function (main.snapshot ...) run
        with ARGV on this world's configuration, changed by `config`."""
        with self.running() as (stdout, stderr):
            try:
                code = entry(dict(self.config, **config), list(argv))
            except SystemExit as e:  # argparse's usage errors
                code = e.code
        return code, stdout.getvalue(), stderr.getvalue()

    # -- running bin/rollback ---------------------------------------------------------------
    def site(self):
        out = output.Output("rollback", json_mode=True, verbosity=0)
        site = sitemod.Site(dict(self.config), out)
        site.zfs = self.pool
        return site

    @contextlib.contextmanager
    def patched(self, crash_after=None, log=None):
        """The process-level readings (mount table, open files) from the model, and crash
        points that raise Crash after action `crash_after` (and append to `log`)."""
        count = [0]

        def done(what):
            count[0] += 1
            if log is not None:
                log.append(" ".join(what.split()))
            if crash_after is not None and count[0] == crash_after:
                raise Crash(what)

        device = os.stat(self.top).st_dev
        # Every run in the same second: the kept datasets' names carry the second, and a
        # rerun right after a complete --keep must not meet the names it left.
        now = datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)
        real_stamp = state.utc_stamp
        with mock.patch.object(state, "utc_stamp", lambda when=None: real_stamp(when or now)), \
                mock.patch.multiple(
                processes, can_check=lambda: None, holders=lambda *a, **k: [],
                devices_of=lambda mountpoints: {device},
                with_descendants=lambda pids, *a: set()), \
                mock.patch.multiple(
                    mountsmod, zfs_mounts=self.pool.mounts,
                    all_mountpoints=lambda: [m.mountpoint for m in self.pool.mounts()],
                    is_mountpoint=self.visible), \
                mock.patch.object(rollbackrun, "supervisor_of", lambda site: self.sup), \
                mock.patch.object(crashpoint, "done", done), \
                contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            cwd = os.getcwd()
            try:
                yield
            finally:
                os.chdir(cwd)

    def visible(self, path):
        """A mountpoint not hidden by a later mount above it."""
        mounts = self.pool.mounts()
        here = [i for i, m in enumerate(mounts) if m.mountpoint == path]
        return bool(here) and not any(
            mountsmod.is_inside(path, m.mountpoint) and m.mountpoint != path
            for m in mounts[here[-1] + 1:])

    def rollback(self, keep=False, crash_after=None, log=None, dry_run=False, start=True,
                 start_only=False, holders=(), critical=None, again=False):
        """bin/rollback --yes [--keep] [--no-start|--start] TARGET: None, the Stop it ended
        with, or Crash; `self.data` is what its --json document would hold. `holders`: the
        processes outside supervisor that have files on the datasets."""
        site = self.site()
        self.data = site.out.data
        with self.patched(crash_after, log), mock.patch.object(
                processes, "holders", lambda *a, **k: list(holders)):
            try:
                rollbackmod.rollback(site, self.target, yes=True, keep=keep, dry_run=dry_run,
                                     start=start, start_only=start_only, critical=critical,
                                     again=again)
            except (sitemod.Stop, Crash) as e:
                return e
        return None

    # -- what a power cut and a boot do -----------------------------------------------------
    def power_cut(self):
        """Every process gone; at boot `zfs mount -a` mounts what has canmount=on, outermost
        first; the site's supervisord starts if its bin/ is there (the buildout mounted).
        The datasets a boot left empty: the mountpoints (the documented recovery mounts the
        dataset of that name, then reruns)."""
        self.sup.power_cut()
        self.pool.boot()
        mounted = {m.mountpoint: m.dataset for m in self.pool.mounts()}
        empty = [n for n, m in self.layout if m not in mounted]
        if self.top in mounted:
            self.sup.boot()
        return mounted, empty

    def mount_by_name(self, names):
        with self.patched():
            for name in names:
                self.pool.run("mount", name)

    # -- what is there ----------------------------------------------------------------------
    def record(self):
        """The rollback's record as written, or None."""
        try:
            with open(state.Places(self.config).record) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def kept(self):
        return sorted(n for n in self.pool.datasets if "-rolled-away-" in n)
