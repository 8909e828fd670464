"""The scripts' own files (lock, log, rollback record) in shared directories, and signals.

No ZFS needed. Tests that hand files to another user need root (CI runs as root).
"""
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.main import Deferred
from collective.recipe.zfssnap.output import Output


NOBODY = 65534


class StateFilesTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-state-")
        os.chmod(self.tmp, 0o1777)  # like /var/tmp: shared and sticky
        self.dir = os.path.join(self.tmp, "collective.recipe.zfssnap-%d" % os.geteuid())

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_directory_is_made_private(self):
        lock = state.Lock(os.path.join(self.dir, "site.lock"))
        lock.close()
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(self.dir, "site.lock")).st_mode & 0o777, 0o600)

    def test_second_lock_is_refused(self):
        first = state.Lock(os.path.join(self.dir, "site.lock"))
        try:
            with self.assertRaises(state.StateError) as caught:
                state.Lock(os.path.join(self.dir, "site.lock"))
            self.assertIn("another snapshot, rollback or cleanup of this buildout is running",
                          caught.exception.message)
        finally:
            first.close()

    def test_symlink_is_never_followed(self):
        os.makedirs(self.dir, mode=0o700)
        target = os.path.join(self.tmp, "victim")
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, os.path.join(self.dir, "site.log"))
        with self.assertRaises(state.StateError) as caught:
            state.open_log(os.path.join(self.dir, "site.log"))
        self.assertIn("is a symlink: refusing to follow it", caught.exception.message)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_symlinked_directory_is_refused(self):
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere, 0o700)
        os.symlink(elsewhere, self.dir)
        with self.assertRaises(state.StateError) as caught:
            state.Lock(os.path.join(self.dir, "site.lock"))
        self.assertIn("is not a directory but a symlink", caught.exception.message)

    def test_hard_link_is_refused(self):
        os.makedirs(self.dir, mode=0o700)
        target = os.path.join(self.tmp, "victim")
        with open(target, "w") as f:
            f.write("precious\n")
        os.link(target, os.path.join(self.dir, "site.log"))
        with self.assertRaises(state.StateError) as caught:
            state.open_log(os.path.join(self.dir, "site.log"))
        self.assertIn("2 links", caught.exception.message)

    def test_world_writable_directory_is_refused(self):
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)
        with self.assertRaises(state.StateError) as caught:
            state.Lock(os.path.join(self.dir, "site.lock"))
        self.assertIn("is writable by other users", caught.exception.message)

    @unittest.skipUnless(os.geteuid() == 0, "hands a directory to another user: needs root")
    def test_directory_of_another_user_is_refused(self):
        os.makedirs(self.dir, mode=0o700)
        os.chown(self.dir, NOBODY, NOBODY)
        with self.assertRaises(state.StateError) as caught:
            state.Lock(os.path.join(self.dir, "site.lock"))
        self.assertIn("belongs to uid %d, not to this user" % NOBODY, caught.exception.message)

    @unittest.skipUnless(os.geteuid() == 0, "hands a file to another user: needs root")
    def test_root_uses_the_files_of_the_buildouts_owner_only(self):
        buildout = os.path.join(self.tmp, "buildout")
        os.mkdir(buildout)
        os.chown(buildout, NOBODY, NOBODY)
        os.makedirs(self.dir, mode=0o700)
        os.chown(self.dir, NOBODY, NOBODY)
        try:
            state.trust_owner_of(buildout)
            state.Lock(os.path.join(self.dir, "site.lock")).close()
        finally:
            state.TRUSTED_UIDS.clear()

    def test_record_is_written_atomically_and_read_back(self):
        record = state.Record(os.path.join(self.dir, "site.lock.rollback.json"))
        self.assertIsNone(record.load())
        record.save({"target": "zfssnap-1", "stage": "stopping"})
        record.save({"target": "zfssnap-1", "stage": "stopped"})
        self.assertEqual(record.load(), {"target": "zfssnap-1", "stage": "stopped"})
        self.assertEqual(sorted(os.listdir(self.dir)), ["site.lock.rollback.json"])
        record.clear()
        self.assertIsNone(record.load())

    def test_a_temp_file_left_by_a_failed_save_does_not_block_the_next(self):
        record = state.Record(os.path.join(self.dir, "site.lock.rollback.json"))
        record.save({"target": "zfssnap-1", "stage": "stopping"})
        leftover = "%s.%d.tmp" % (record.path, os.getpid())
        with open(leftover, "w") as f:
            f.write("{half")
        record.save({"target": "zfssnap-1", "stage": "stopped"})
        self.assertEqual(record.load()["stage"], "stopped")
        self.assertEqual(sorted(os.listdir(self.dir)), ["site.lock.rollback.json"])

    def test_a_record_that_cannot_be_written_refuses_before_the_first_stop(self):
        from collective.recipe.zfssnap import rollback
        from collective.recipe.zfssnap.tests.fake_pool import FakePool
        from collective.recipe.zfssnap.tests.fake_pool import FakeSite
        os.makedirs(self.dir, mode=0o700)
        site = FakeSite(FakePool(), ["tank/site"])
        blocked = os.path.join(self.dir, "not-a-directory")
        with open(blocked, "w"):
            pass
        site.config = {"lock_file": os.path.join(blocked, "site.lock")}
        run = rollback.Run(site)
        from collective.recipe.zfssnap.progress import Progress
        run.data = Progress(target="zfssnap-1")
        with self.assertRaises(rollback.Stop) as caught:
            run.save(required=True, stage="stopping")
        self.assertEqual(caught.exception.code, rollback.FAILED)
        self.assertIn("cannot record the rollback in %s" % blocked, caught.exception.message)
        self.assertIn("nothing was stopped", caught.exception.message)
        run.save(stage="rolling back")  # once the site is down: warned, not refused
        self.assertIn("could not record the rollback's progress", site.out.lines[-1])

    def test_unreadable_record_is_an_error_not_nothing(self):
        os.makedirs(self.dir, mode=0o700)
        path = os.path.join(self.dir, "site.lock.rollback.json")
        with open(path, "w") as f:
            f.write("{half a record")
        with self.assertRaises(state.StateError) as caught:
            state.Record(path).load()
        self.assertIn("cannot be read", caught.exception.message)


class DeferredSignalsTest(unittest.TestCase):
    """From the confirmation on, bin/rollback notes interrupts instead of dying of them; what
    it starts (hooks, supervisord) must still die of them."""

    def test_signals_are_noted_and_children_get_the_default(self):
        out = Output("rollback", json_mode=True)
        deferred = Deferred(out)
        deferred()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            child = subprocess.run([sys.executable, "-c", "import signal; print("
                                    "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
                                    "signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)"],
                                   stdout=subprocess.PIPE, text=True)
        finally:
            deferred.restore()
        self.assertEqual(deferred.received, ["SIGTERM", "SIGHUP"])
        self.assertEqual(child.stdout.split(), ["True", "True"])
        self.assertEqual(len(out.warnings), 2)
        self.assertIs(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)


class ProgressTest(unittest.TestCase):
    """The typed record of an unfinished rollback (progress.py)."""

    def test_a_record_of_another_version_reads_with_defaults(self):
        from collective.recipe.zfssnap import progress
        read = progress.Progress.from_record({"target": "zfssnap-1", "stage": "stopping",
                                              "written_by": "a later version"})
        self.assertEqual((read.target, read.stage, read.running_before, read.swaps),
                         ("zfssnap-1", "stopping", [], []))
        self.assertIsNone(progress.Progress.from_record(None))
        self.assertEqual(progress.Progress.from_record(read.as_record()), read)
        with self.assertRaises(AttributeError):
            read.update(stgae="settling")

    def test_which_stages_are_finished_from_zfs_and_the_record(self):
        from collective.recipe.zfssnap import progress
        finished = {}
        for keep in (None, [{"dataset": "tank/site"}]):
            for stage in progress.STAGES:
                record = progress.Progress(target="zfssnap-1", stage=stage, keep=keep)
                finished[bool(keep), stage] = record.finished_in_zfs
        self.assertEqual(sorted(k for k, v in finished.items() if v),
                         [(False, "rolled back"), (False, "settling"), (True, "rolled back"),
                          (True, "rolling back"), (True, "settling")])


class UnexpectedFailureTest(unittest.TestCase):
    """A failure no step foresaw (a bug, Ctrl-C before the critical section): while the
    rollback's record exists the rollback is unfinished, and the script says to run it again
    (exit 4), as every other failure mid-way does; without one it is exit 1 (130 for Ctrl-C)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-main-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.config = {
            "part": "zfssnap", "directory": self.tmp, "datasets": ["tank/site"],
            "zfs": ["zfs"], "state_directory": os.path.join(self.tmp, "state"),
            "scripts": {"rollback": "/srv/site/bin/rollback"}}

    def run_failing(self, error, record):
        from collective.recipe.zfssnap import main
        if record:
            os.makedirs(self.config["state_directory"], exist_ok=True)
            state.Record(state.Places(self.config).record).save(
                {"target": "tank/site@zfssnap-x", "stage": "rolling back"})

        def work(site, args):
            raise error

        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main.run(self.config, "rollback", "test", lambda parser: None, work, argv=[])
        return code, stderr.getvalue()

    def test_a_bug_while_the_record_exists_says_run_it_again(self):
        code, err = self.run_failing(RuntimeError("boom"), record=True)
        self.assertEqual(code, 4, err)
        self.assertIn("unexpected RuntimeError: boom", err)
        self.assertIn("the rollback is not finished (its record %s is kept): "
                      "run /srv/site/bin/rollback again to finish it"
                      % state.Places(self.config).record, err)

    def test_a_bug_without_a_record_is_exit_1(self):
        code, err = self.run_failing(RuntimeError("boom"), record=False)
        self.assertEqual(code, 1, err)
        self.assertNotIn("again", err)

    def test_a_zfs_failure_no_step_caught_while_the_record_exists_is_exit_4(self):
        from collective.recipe.zfssnap import zfs
        code, err = self.run_failing(zfs.ZfsTimeout("'zfs get' did not finish"), record=True)
        self.assertEqual(code, 4, err)
        self.assertIn("'zfs get' did not finish; the rollback is not finished", err)
        os.remove(state.Places(self.config).record)
        self.assertEqual(self.run_failing(zfs.ZfsError("'zfs get' failed"), record=False)[0], 1)

    def test_ctrl_c_is_130_or_4_with_a_record(self):
        self.assertEqual(self.run_failing(KeyboardInterrupt(), record=False)[0], 130)
        code, err = self.run_failing(KeyboardInterrupt(), record=True)
        self.assertEqual(code, 4, err)
        self.assertIn("interrupted; the rollback is not finished", err)


class FakePwd:
    """pwd with the homes the test chooses (the real users' homes stay untouched)."""

    def __init__(self, homes):
        import pwd
        self.homes = homes
        self.real = pwd

    def getpwuid(self, uid):
        import types
        entry = self.real.getpwuid(uid)
        return types.SimpleNamespace(pw_name=entry.pw_name, pw_dir=self.homes.get(
            uid, entry.pw_dir))


class PlacesTest(unittest.TestCase):
    """Where the lock and the rollback's record are is decided when a script runs, from the
    buildout and its owner: every release's scripts find the same record (issue 26, 3), and a
    first run as root leaves the owner's files to the owner (issue 26, 8)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-places-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.buildout = os.path.join(self.tmp, "site")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.buildout)
        os.makedirs(self.home)
        self.addCleanup(setattr, state, "pwd", state.pwd)
        state.pwd = FakePwd({os.geteuid(): self.home, NOBODY: self.home})

    def config(self, **changes):
        config = {"part": "zfssnap", "directory": self.buildout, "datasets": ["tank/site"],
                  "mounts": {"tank/site": self.buildout}, "lock_file": None,
                  "log_file": None}
        config.update(changes)
        return config

    def test_every_release_finds_the_same_record(self):
        one = state.Places(self.config())
        other = state.Places(self.config(lock_file="/srv/elsewhere/site.lock",
                                         log_file="/srv/elsewhere/site.log"))
        self.assertEqual(one.record, other.record)
        self.assertTrue(one.record.startswith(
            self.home + "/.local/state/collective.recipe.zfssnap/site-zfssnap-"), one.record)
        self.assertEqual(one.locks, [one.lock])
        self.assertEqual(other.locks, [one.lock, "/srv/elsewhere/site.lock"])
        self.assertEqual(other.log, "/srv/elsewhere/site.log")

    def test_a_home_on_the_datasets_keeps_them_in_var_tmp(self):
        places = state.Places(self.config(mounts={"tank/site": self.buildout,
                                                  "tank/home": self.home}))
        self.assertEqual(places.directory,
                         "/var/tmp/collective.recipe.zfssnap-%d" % os.geteuid())

    def test_a_record_left_in_the_other_place_is_found(self):
        places = state.Places(self.config())
        other = places.record_candidates[1]
        state.Record(other).save({"target": "zfssnap-x", "stage": "stopping"})
        self.addCleanup(os.remove, other)
        self.assertEqual(state.Places(self.config()).record, other)

    @unittest.skipUnless(os.geteuid() == 0, "needs root")
    def test_as_root_the_owners_files_are_made_the_owners(self):
        os.chown(self.buildout, NOBODY, NOBODY)
        os.chown(self.home, NOBODY, NOBODY)
        self.addCleanup(setattr, state, "GIVE_TO", None)
        self.addCleanup(setattr, state, "GIVE_UNDER", None)
        self.addCleanup(state.TRUSTED_UIDS.clear)
        places = state.Places(self.config())
        places.adopt()
        places.take_locks().close()
        state.Record(places.record).save({"target": "zfssnap-x", "stage": "stopping"})
        for path in (self.home + "/.local", self.home + "/.local/state", places.directory,
                     places.lock, places.record):
            self.assertEqual(os.stat(path).st_uid, NOBODY, path)

    @unittest.skipUnless(os.geteuid() == 0, "needs root")
    def test_a_file_left_by_root_names_the_chown(self):
        directory = os.path.join(self.tmp, "state")
        os.mkdir(directory, 0o700)
        os.chown(directory, NOBODY, NOBODY)
        os.chmod(self.tmp, 0o755)
        lock = os.path.join(directory, "site.lock")
        os.close(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600))  # root's
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the site's user, in a child (no exec: the Python here is root's)
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                state.Lock(lock)
                message = "locked"
            except state.StateError as e:
                message = e.message
            except BaseException as e:
                message = repr(e)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            message = f.read()
        os.waitpid(pid, 0)
        self.assertEqual("the lock-file %s belongs to root, and this user (nobody) may not open "
                         "it: as root, type chown nobody %s" % (lock, lock), message)
