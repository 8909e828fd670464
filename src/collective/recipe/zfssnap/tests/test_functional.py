"""The scripts on real OpenZFS, through a real buildout, supervisor and ZODB (lab guest only)."""
import json
import os
import subprocess
import time
import unittest

from collective.recipe.zfssnap.tests.layers import full_series_only
from collective.recipe.zfssnap.tests.layers import DATASETS
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import Site
from collective.recipe.zfssnap.tests.layers import app
from collective.recipe.zfssnap.tests.layers import bin_
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import take_snapshot
from collective.recipe.zfssnap.tests.layers import edit
from collective.recipe.zfssnap.tests.layers import rebuild
from collective.recipe.zfssnap.tests.layers import start_site
from collective.recipe.zfssnap.tests.layers import supervisorctl
from collective.recipe.zfssnap.tests.layers import supervisord_pids
from collective.recipe.zfssnap.tests.layers import last_tid_on_disk
from collective.recipe.zfssnap.tests.layers import program_states
from collective.recipe.zfssnap.tests.layers import run_in_site
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import wait_for
from collective.recipe.zfssnap.tests.layers import EVENTS
from collective.recipe.zfssnap.tests.layers import configure
from collective.recipe.zfssnap.tests.layers import events
from collective.recipe.zfssnap.tests.layers import write_script


def tree(root):
    """{relative path: content} of the buildout's own files (what a release changes)."""
    files = {}
    for base in ("VERSION", "app.py", "buildout.cfg", ".installed.cfg", "bin"):
        path = os.path.join(root, base)
        paths = [path] if os.path.isfile(path) else [
            os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
        for p in paths:
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = f.read()
    return files


def release(version="2.0", buildout=True):
    """A release as an operator does it: a new tag checked out, bin/buildout, new data.

    Tests of refusals skip bin/buildout (minutes under emulation for no new coverage).
    """
    with open(SITE + "/VERSION", "w") as f:
        f.write(version + "\n")
    with open(SITE + "/buildout.cfg") as f:
        cfg = f.read()
    with open(SITE + "/buildout.cfg", "w") as f:
        f.write(cfg.replace("stop-timeout = 30", "stop-timeout = 31"))
    sh(*GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release " + version)
    sh(*GIT, "-C", SITE, "tag", version)
    sh(*GIT, "-C", SITE, "checkout", "-q", version)
    if buildout:
        rebuild()
    app("/write?blob=release-" + version, "POST")
    app("/write?blob=second", "POST")
    with open(SITE + "/var/release-notes.txt", "w") as f:
        f.write("new file in var/")


@full_series_only
class WorkflowTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        self.before = Site.reset()

    def test_snapshot_release_rollback_restores_everything(self):
        files_before = tree(SITE)
        rev_before = sh("git", "-C", SITE, "rev-parse", "HEAD").strip()
        tid_before = last_tid_on_disk()
        self.assertEqual(tid_before, self.before["last_tid"])

        rc, out, err = bin_("snapshot", "pre-2.0", "-m", "before the 2.0 release")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        self.assertRegex(name, r"^zfssnap-\d{8}T\d{6}Z-pre-2\.0$")
        self.assertIn("bin/rollback %s" % name, out)
        self.assertIn("bin/cleanup %s" % name, out)
        txgs = {sh("zfs", "get", "-H", "-p", "-o", "value", "createtxg",
                   "%s@%s" % (d, name)).strip() for d in DATASETS}
        self.assertEqual(len(txgs), 1, "one snapshot command, one transaction group")

        release("2.0")
        after = app()
        self.assertEqual(after["version"], "2.0")
        self.assertEqual(after["counter"], self.before["counter"] + 2)
        self.assertNotEqual(tree(SITE), files_before)

        started = time.monotonic()
        rc, out, err = bin_("rollback", "--yes")
        elapsed = time.monotonic() - started
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Rolled back to %s" % name, out)
        self.assertRegex(out, r"the site was down for \d+\.\d s")

        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        state = wait_for(app, what="the app to answer after the rollback")
        self.assertEqual(state["version"], "1.0")
        self.assertEqual(state["counter"], self.before["counter"])
        self.assertEqual(state["blobs"], self.before["blobs"])
        self.assertEqual(state["last_tid"], tid_before)
        self.assertEqual(last_tid_on_disk(), tid_before)
        self.assertEqual(tree(SITE), files_before)
        self.assertEqual(sh("git", "-C", SITE, "rev-parse", "HEAD").strip(), rev_before)
        self.assertFalse(os.path.exists(SITE + "/var/release-notes.txt"))
        # The snapshot is still there (a second rollback may be needed); cleanup removes it.
        self.assertIn("tank/site@" + name, snapshots("tank/site"))
        print("\n    rollback of 3 datasets with supervisor: %.1f s" % elapsed, end=" ")

    def test_no_start_then_start(self):
        """The two phases of a release across hosts, on one: stopped and rolled back with
        nothing started, then started from the record."""
        name = take_snapshot("pre-2.0")
        release("2.0", buildout=False)
        rc, out, err = bin_("rollback", "--no-start", "--yes", "--json")
        self.assertEqual(rc, 0, out + err)
        doc = json.loads(out)
        self.assertEqual((doc["phase"], doc["to_start"]), ("rolled-back", ["app", "worker"]))
        self.assertEqual(supervisord_pids(), [])  # its files are on the datasets: shut down
        self.assertEqual(last_tid_on_disk(), self.before["last_tid"])
        with open(SITE + "/VERSION") as f:
            self.assertEqual(f.read().strip(), "1.0")
        # The preflight of what is left: nothing but the start.
        rc, out, err = bin_("rollback", "--dry-run", "--json")
        self.assertEqual((rc, json.loads(out)["phase"]), (0, "planned"), out + err)
        self.assertEqual(supervisord_pids(), [])
        rc, out, err = bin_("rollback", "--start", "--yes", "--json")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(json.loads(out)["phase"], "done")
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        state = wait_for(app, what="the app to answer after --start")
        self.assertEqual((state["version"], state["counter"]),
                         ("1.0", self.before["counter"]))
        rc, out, err = bin_("rollback", "--start", "--yes")  # run again: nothing to do
        self.assertEqual(rc, 0, out + err)
        self.assertIn("No unfinished rollback is recorded: nothing to start.", out)
        self.assertIn("tank/site@" + name, snapshots("tank/site"))

    def test_cleanup_after_good_release_destroys_only_own_snapshots(self):
        sh("zfs", "snapshot", "tank/site@other-tool")
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        release("2.0")
        rc, out, err = bin_("cleanup", "--dry-run")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("zfs destroy tank/site@%s" % name, out)
        for dataset in DATASETS:
            self.assertIn("%s@%s" % (dataset, name), snapshots(dataset))

        rc, out, err = bin_("cleanup", "--yes", "--json")
        self.assertEqual(rc, 0, out + err)
        doc = json.loads(out)
        self.assertEqual(doc["destroyed"], [name])
        self.assertGreater(doc["freed"], 0)
        for dataset in DATASETS:
            self.assertNotIn("%s@%s" % (dataset, name), snapshots(dataset))
        self.assertIn("tank/site@other-tool", snapshots("tank/site"))
        self.assertIn("tank/site@lab-baseline", snapshots("tank/site"))
        # The release stays: nothing was rolled back.
        self.assertEqual(app()["version"], "2.0")

    def test_snapshot_records_who_what_and_lists(self):
        with open(SITE + "/VERSION", "a") as f:
            f.write("dirty\n")
        rc, out, err = bin_("snapshot", "pre-3", "-m", "a note; $(not run)")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        props = dict(line.split("\t")[1:3] for line in sh(
            "zfs", "get", "-H", "-o", "name,property,value", "all",
            "tank/site-blobstorage@" + name).splitlines())
        prefix = "collective.recipe.zfssnap:"
        self.assertEqual(props[prefix + "part"], "zfssnap")
        self.assertEqual(props[prefix + "buildout"], SITE)
        self.assertEqual(props[prefix + "label"], "pre-3")
        self.assertEqual(props[prefix + "message"], "a note; $(not run)")
        self.assertEqual(props[prefix + "git-revision"],
                         sh("git", "-C", SITE, "rev-parse", "HEAD").strip())
        self.assertEqual(props[prefix + "git-describe"], "1.0")
        self.assertEqual(props[prefix + "git-dirty"], "yes")
        self.assertEqual(props[prefix + "user"], "root")
        self.assertRegex(props[prefix + "created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

        rc, out, err = bin_("snapshot", "--list")
        self.assertEqual(rc, 0, out + err)
        self.assertIn(name, out)
        self.assertIn("pre-3", out)
        rc, out, err = bin_("snapshot", "--list", "--json")
        doc = json.loads(out)
        self.assertEqual([s["name"] for s in doc["snapshots"]], [name])
        self.assertEqual(sorted(doc["snapshots"][0]["datasets"]), sorted(DATASETS))

    def test_bad_label_is_refused_before_zfs_runs(self):
        for label in ("pre/2.0", "a@b", "x;rm -rf /", "$(touch /tmp/pwned)", "my label"):
            rc, out, err = bin_("snapshot", label)
            self.assertEqual(rc, 2, label + out + err)
            self.assertIn("cannot use the label '%s': a label may contain only letters, digits "
                          "and _ - . : (not " % label, err)
            self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists("/tmp/pwned"))
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])

    def test_dry_run_prints_commands_and_changes_nothing(self):
        rc, out, err = bin_("snapshot")
        name = out.split()[1]
        release("2.0")
        rc, out, err = bin_("rollback", "--dry-run")
        self.assertEqual(rc, 0, out + err)
        for dataset in DATASETS:
            self.assertIn("zfs rollback %s@%s" % (dataset, name), out)
        # Right after the release: the figure counts it (the pools are synced first).
        self.assertNotIn("tank/site-filestorage: undoes 0B", out)
        self.assertIn("tank/site-filestorage: undoes ", out)
        self.assertEqual(app()["version"], "2.0")
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})

    def test_rollback_without_terminal_or_yes_is_refused(self):
        bin_("snapshot")
        rc, out, err = bin_("rollback")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("pass --yes", err)
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})


@full_series_only
class RefusalTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        self.before = Site.reset()
        self.name = take_snapshot("pre")
        release("2.0", buildout=False)

    def assertUntouched(self):
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        self.assertEqual(app()["version"], "2.0")
        for dataset in DATASETS:
            self.assertIn("%s@%s" % (dataset, self.name), snapshots(dataset))

    def test_held_newer_snapshot_refuses_and_is_named(self):
        sh("zfs", "snapshot", "tank/site-filestorage@backup-tool")
        sh("zfs", "hold", "keep", "tank/site-filestorage@backup-tool")
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("tank/site-filestorage@backup-tool is held (keep)", err)
            self.assertUntouched()
            self.assertIn("tank/site-filestorage@backup-tool",
                          snapshots("tank/site-filestorage"))
        finally:
            sh("zfs", "release", "keep", "tank/site-filestorage@backup-tool")

    def test_newer_snapshots_are_listed_and_destroyed_with_confirmation(self):
        sh("zfs", "snapshot", "tank/site@hourly")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("destroys the newer tank/site@hourly", out)
        self.assertNotIn("tank/site@hourly", snapshots("tank/site"))

    def test_open_file_outside_supervisor_refuses_then_force(self):
        # A supervisorctl that prints warnings (once, pid 0 parsed from them made every
        # process "managed"): the check must not depend on what supervisorctl prints.
        configure(supervisorctl=[write_script(
            "/tmp/warning-supervisorctl", "#!/bin/sh\necho 'DeprecationWarning: "
            "pkg_resources is deprecated' >&2\nexec %s/bin/supervisorctl \"$@\"\n" % SITE)])
        holder = subprocess.Popen(["python3", "-c", "import sys, time\n"
                                   "f = open(sys.argv[1], 'a')\nprint('ok', flush=True)\n"
                                   "time.sleep(600)", SITE + "/var/filestorage/holder.txt"],
                                  cwd="/", stdout=subprocess.PIPE, text=True)
        try:
            holder.stdout.readline()
            # The preflight refuses as the run does, and changes nothing either.
            rc, out, err = bin_("rollback", "--dry-run", "--json")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("pid %d (python3 -c" % holder.pid, json.loads(out)["error"])
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("pid %d (python3 -c" % holder.pid, err)
            # What was stopped for the rollback runs again; nothing was rolled back.
            self.assertUntouched()
            rc, out, err = bin_("rollback", "--yes", "--force")
            self.assertEqual(rc, 0, out + err)
            self.assertIn("--force", err)
            self.assertEqual(wait_for(app)["version"], "1.0")
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()

    def test_shell_in_buildout_directory_does_not_block(self):
        shell = subprocess.Popen(["sleep", "600"], cwd=SITE)
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 0, out + err)
            self.assertIn("pid %d (sleep 600): cwd" % shell.pid, out)
            self.assertEqual(wait_for(app)["version"], "1.0")
        finally:
            shell.kill()
            shell.wait()

    def test_snapshots_changed_after_confirmation_refuses_and_restarts(self):
        # before-rollback runs after the preflight: a snapshot made there (as an hourly
        # snapshot job could) is found when the plan is checked again with the site stopped,
        # before anything is rolled back: the operator never confirmed destroying it.
        script = "/tmp/sneaky-hook.sh"
        with open(script, "w") as f:
            f.write("#!/bin/sh\nzfs snapshot tank/site-blobstorage@sneaky\n")
        os.chmod(script, 0o755)
        edit(SITE + "/buildout.cfg", "stop-timeout = 31", "stop-timeout = 31\n"
             "before-rollback = " + script)
        rebuild()
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("the snapshots changed while the site was being stopped", err)
        self.assertIn("rollback aborted, nothing rolled back; now running: app, worker", err)
        self.assertUntouched()
        self.assertIn("tank/site-blobstorage@sneaky", snapshots("tank/site-blobstorage"))

    def test_failure_half_way_reports_datasets_and_starts_nothing_then_rerun(self):
        # A fault injected into the third `zfs rollback` (everything else is real zfs).
        wrapper = "/tmp/zfs-failing-once"
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\n"
                    "if [ \"$1\" = rollback ] && [ ! -e /tmp/failed-once ] && "
                    "echo \"$*\" | grep -q blobstorage; then\n"
                    "  touch /tmp/failed-once\n"
                    "  echo \"cannot rollback 'tank/site-blobstorage': injected I/O error\" >&2\n"
                    "  exit 1\nfi\nexec zfs \"$@\"\n")
        os.chmod(wrapper, 0o755)
        if os.path.exists("/tmp/failed-once"):
            os.remove("/tmp/failed-once")
        edit(SITE + "/buildout.cfg", "stop-timeout = 31", "stop-timeout = 31\nzfs = " + wrapper)
        rebuild()
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 4, out + err)
        self.assertIn("tank/site, tank/site-filestorage are at the snapshot", err)
        self.assertIn("tank/site-blobstorage NOT", err)
        self.assertIn("nothing was started again", err)
        self.assertIn("it rolls back the rest and starts what ran before", err)
        self.assertIn("injected I/O error", err)
        self.assertEqual(program_states(), {})  # supervisord is down, as the message says
        # The rolled-back buildout has the old scripts (without the wrapper): run again.
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        state = wait_for(app)
        self.assertEqual(state["version"], "1.0")
        self.assertEqual(state["blobs"], self.before["blobs"])

    def test_program_that_does_not_stop_aborts_and_is_started_again(self):
        edit(SITE + "/buildout.cfg", "stop-timeout = 31", "stop-timeout = 3")
        edit(SITE + "/buildout.cfg", "    20 worker", "    30 stubborn ${buildout:bin-directory}"
             "/py [${buildout:directory}/stubborn.py] ${buildout:directory} true\n    20 worker")
        rebuild()
        supervisorctl("update")
        wait_for(lambda: program_states().get("stubborn") == "RUNNING", what="stubborn")
        rc, out, err = bin_("rollback", "--yes", self.name)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("stubborn did not stop within 3 s (worker, app waited for it: supervisord "
                      "stops one program after another)", err)
        self.assertIn("rollback aborted, nothing rolled back; now running: app, worker, stubborn",
                      err)
        self.assertEqual(program_states(),
                         {"app": "RUNNING", "stubborn": "RUNNING", "worker": "RUNNING"})
        self.assertEqual(app()["version"], "2.0")

    def test_target_missing_on_one_dataset_refuses(self):
        sh("zfs", "destroy", "tank/site-filestorage@" + self.name)
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("is missing on tank/site-filestorage", err)
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        self.assertEqual(app()["version"], "2.0")

    def test_cloned_newer_snapshot_refuses(self):
        sh("zfs", "snapshot", "tank/site@for-clone")
        sh("zfs", "clone", "tank/site@for-clone", "tank/site-clone")
        try:
            rc, out, err = bin_("rollback", "--yes")
            self.assertEqual(rc, 3, out + err)
            self.assertIn("tank/site@for-clone has clones (tank/site-clone)", err)
            self.assertUntouched()
        finally:
            sh("zfs", "destroy", "tank/site-clone")

    def test_cleanup_skips_held_snapshots_and_names_them(self):
        sh("zfs", "hold", "keep", "tank/site-filestorage@" + self.name)
        try:
            rc, out, err = bin_("cleanup", "--yes")
            self.assertEqual(rc, 0, out + err)
            self.assertIn("skipped %s: held: tank/site-filestorage@%s" % (self.name, self.name),
                          err)
            for dataset in DATASETS:
                self.assertIn("%s@%s" % (dataset, self.name), snapshots(dataset))
        finally:
            sh("zfs", "release", "keep", "tank/site-filestorage@" + self.name)

    def test_rollback_by_label(self):
        rc, out, err = bin_("snapshot", "second")
        self.assertEqual(rc, 0, out + err)
        rc, out, err = bin_("rollback", "--yes", "nonexistent-label")
        self.assertEqual(rc, 2, out + err)
        self.assertIn("no snapshot of this part is named or labelled 'nonexistent-label'", err)
        rc, out, err = bin_("rollback", "--yes", "pre")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Rolled back to " + self.name, out)
        self.assertEqual(wait_for(app)["version"], "1.0")


@full_series_only
class RecursiveTest(unittest.TestCase):
    layer = Site

    def setUp(self):
        Site.reset()
        sh("zfs", "create", "-o", "mountpoint=%s/var/uploads" % SITE, "tank/site/uploads")
        with open(SITE + "/var/uploads/one.txt", "w") as f:
            f.write("before")
        edit(SITE + "/buildout.cfg", "stop-timeout = 30", "stop-timeout = 30\nrecursive = true")
        rebuild()

    def tearDown(self):
        sh("zfs", "destroy", "-r", "tank/site/uploads", check=False)

    def test_children_are_snapshotted_rolled_back_and_cleaned_up(self):
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        name = out.split()[1]
        self.assertIn("tank/site/uploads@" + name, snapshots("tank/site/uploads"))
        with open(SITE + "/var/uploads/one.txt", "w") as f:
            f.write("after")
        rc, out, err = bin_("rollback", "--dry-run", "--diff")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("zfs rollback tank/site/uploads@" + name, out)
        self.assertRegex(out, r"tank/site/uploads: undoes .*\n\s+changes since: \d+ modified")
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        with open(SITE + "/var/uploads/one.txt") as f:
            self.assertEqual(f.read(), "before")
        rc, out, err = bin_("cleanup", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertNotIn("tank/site/uploads@" + name, snapshots("tank/site/uploads"))


SUPERVISOR_OUTSIDE = ("file = /run/site-supervisor/supervisord.sock\n"
                      "logfile = /run/site-supervisor/supervisord.log\n"
                      "pidfile = /run/site-supervisor/supervisord.pid\n"
                      "childlogdir = /run/site-supervisor\n"
                      "groups = 40 jobs batch")
MORE_PROGRAMS = ("    1 zz-server (startsecs=2) ${buildout:bin-directory}/py "
                 "[${buildout:directory}/worker.py ${buildout:directory} zz-server] "
                 "${buildout:directory} true\n"
                 "    30 batch ${buildout:bin-directory}/py [${buildout:directory}/worker.py "
                 "${buildout:directory} batch] ${buildout:directory} true\n"
                 "    20 worker")
ALL_RUNNING = {"zz-server": "RUNNING", "app": "RUNNING", "worker": "RUNNING",
               "jobs:batch": "RUNNING"}


@full_series_only
class ProgramsTest(unittest.TestCase):
    """supervisord outside the datasets (it keeps running): its programs are stopped and
    started in supervisor's priority order, groups included; `programs` selects some."""

    layer = Site

    def setUp(self):
        Site.reset(start=False)
        os.makedirs("/run/site-supervisor", exist_ok=True)
        edit(SITE + "/buildout.cfg", "file = ${buildout:directory}/var/supervisord.sock",
             SUPERVISOR_OUTSIDE)
        edit(SITE + "/buildout.cfg", "    20 worker", MORE_PROGRAMS)
        rebuild()
        start_site(expected=ALL_RUNNING)

    def test_priority_order_and_supervisord_stays(self):
        daemon = supervisord_pids()
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        before = app("/write?blob=late", "POST")
        os.remove(EVENTS)
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("> stop zz-server, app, worker, jobs:batch", out)
        self.assertNotIn("shutdown supervisord", out)
        self.assertEqual(supervisord_pids(), daemon)
        self.assertEqual(program_states(), ALL_RUNNING)
        self.assertEqual(wait_for(app)["counter"], before["counter"] - 1)
        happened = events()
        # Web clients stop before the server they need, and start after it.
        self.assertEqual([n for what, n in happened if what == "stop"],
                         ["batch", "worker", "app", "zz-server"])
        self.assertEqual([n for what, n in happened if what == "start"],
                         ["zz-server", "app", "worker", "batch"])

    def test_selected_programs_and_a_program_left_running_on_the_datasets(self):
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        configure(programs=["app", "jobs"])
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 3, out + err)
        self.assertIn("> stop app, jobs:batch", out)
        self.assertIn("refusing to roll back: processes still have files on the datasets", err)
        self.assertIn("/srv/site/worker.py /srv/site): cwd, fd 3", err)
        self.assertIn("rollback aborted, nothing rolled back; now running: app, jobs:batch", err)
        self.assertEqual(program_states(), ALL_RUNNING)


UNIT = "site-supervisord.service"


@full_series_only
class SystemdTest(unittest.TestCase):
    """supervisord run by a systemd unit (Restart=always), as production sites run it."""

    layer = Site

    def setUp(self):
        Site.reset(start=False)
        with open("/etc/systemd/system/" + UNIT, "w") as f:
            f.write("[Unit]\nDescription=the test site's supervisord\n\n[Service]\n"
                    "ExecStart=%s/bin/supervisord -n\nRestart=always\nRestartSec=1\n" % SITE)
        sh("systemctl", "daemon-reload")
        sh("systemctl", "start", UNIT)
        wait_for(lambda: program_states() == {"app": "RUNNING", "worker": "RUNNING"},
                 what="the unit's programs")
        wait_for(app, what="the app")

    def tearDown(self):
        sh("systemctl", "stop", UNIT, check=False)
        os.remove("/etc/systemd/system/" + UNIT)
        sh("systemctl", "daemon-reload")

    def main_pid(self):
        return int(sh("systemctl", "show", "--property=MainPID", "--value", UNIT).strip())

    def test_rollback_stops_and_starts_supervisord_through_its_unit(self):
        before = self.main_pid()
        self.assertEqual(supervisord_pids(), [before])
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        counter = app("/write?blob=late", "POST")["counter"]
        rc, out, err = bin_("rollback", "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("through systemctl: unit %s" % UNIT, out)
        self.assertIn("> start supervisord (systemctl start %s)" % UNIT, out)
        after = self.main_pid()
        self.assertNotEqual(after, before)
        self.assertEqual(supervisord_pids(), [after])  # one supervisord: the unit's
        self.assertEqual(sh("systemctl", "is-active", UNIT).strip(), "active")
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        self.assertEqual(wait_for(app)["counter"], counter - 1)


USER_UNITS = "/root/.config/systemd/user"
NO_LOGIND = {
    "user-runtime-dir@0.service": "[Service]\nExecStart=\nExecStart=/bin/mkdir -p -m 0700 "
                                  "/run/user/0\nExecStop=\nExecStop=/bin/rm -rf /run/user/0\n",
    "user@0.service": "[Service]\nEnvironment=XDG_RUNTIME_DIR=/run/user/0\n"}


class UserUnitTest(unittest.TestCase):
    """supervisord run by a user's own systemd manager (systemctl --user), here root's: found
    from its cgroup, stopped and started through that manager (issue 26, 9). Both series."""

    layer = Site

    def user_systemctl(self, *args, check=True):
        return sh("env", "XDG_RUNTIME_DIR=/run/user/0", "systemctl", "--user", *args,
                  check=check)

    def setUp(self):
        Site.reset(start=False)
        # The guest has no D-Bus and no pam_systemd: what logind does for a login (the runtime
        # directory, XDG_RUNTIME_DIR for the manager) is done by drop-ins, for this test only.
        for unit, text in NO_LOGIND.items():
            os.makedirs("/run/systemd/system/%s.d" % unit, exist_ok=True)
            with open("/run/systemd/system/%s.d/no-logind.conf" % unit, "w") as f:
                f.write(text)
        sh("systemctl", "daemon-reload")
        sh("systemctl", "start", "user@0.service")
        os.makedirs(USER_UNITS, exist_ok=True)
        with open(os.path.join(USER_UNITS, UNIT), "w") as f:
            f.write("[Unit]\nDescription=the test site's supervisord\n\n[Service]\n"
                    "ExecStart=%s/bin/supervisord -n\nRestart=always\nRestartSec=1\n" % SITE)
        self.user_systemctl("daemon-reload")
        self.user_systemctl("start", UNIT)
        wait_for(lambda: program_states() == {"app": "RUNNING", "worker": "RUNNING"},
                 what="the user unit's programs")
        wait_for(app, what="the app")

    def tearDown(self):
        self.user_systemctl("stop", UNIT, check=False)
        os.remove(os.path.join(USER_UNITS, UNIT))
        self.user_systemctl("daemon-reload", check=False)
        sh("systemctl", "stop", "user@0.service", check=False)
        for unit in NO_LOGIND:
            os.remove("/run/systemd/system/%s.d/no-logind.conf" % unit)
        sh("systemctl", "daemon-reload")

    def main_pid(self):
        return int(self.user_systemctl("show", "--property=MainPID", "--value", UNIT).strip())

    def test_rollback_goes_through_the_users_manager(self):
        before = self.main_pid()
        self.assertEqual(supervisord_pids(), [before])
        rc, out, err = bin_("snapshot")
        self.assertEqual(rc, 0, out + err)
        counter = app("/write?blob=late", "POST")["counter"]
        # As cron runs it: no XDG_RUNTIME_DIR to find the manager by.
        rc, out, err = run_in_site("env", "-u", "XDG_RUNTIME_DIR", SITE + "/bin/rollback",
                                   "--yes")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("through systemctl: unit %s of user root's manager" % UNIT, out)
        self.assertIn("> start supervisord (systemctl --user start %s)" % UNIT, out)
        after = self.main_pid()
        self.assertNotEqual(after, before)
        self.assertEqual(supervisord_pids(), [after])
        self.assertEqual(self.user_systemctl("is-active", UNIT).strip(), "active")
        self.assertEqual(program_states(), {"app": "RUNNING", "worker": "RUNNING"})
        self.assertEqual(wait_for(app)["counter"], counter - 1)


@full_series_only
class InstallTest(unittest.TestCase):
    layer = Site

    def test_permission_denied_names_the_zfs_allow_permissions(self):
        Site.reset()
        if subprocess.run(["id", "siteop"], stdout=subprocess.DEVNULL).returncode != 0:
            sh("useradd", "-m", "siteop")
        configure(lock_file="/var/tmp/zfssnap-test/site.lock",
                  log_file="/var/tmp/zfssnap-test/site.log")
        os.makedirs("/var/tmp/zfssnap-test", exist_ok=True)
        os.chmod("/var/tmp/zfssnap-test", 0o1777)
        rc, out, err = run_in_site("runuser", "-u", "siteop", "--", SITE + "/bin/snapshot")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("zfs said permission denied: give siteop the ZFS permissions with "
                      "'zfs allow siteop snapshot,userprop tank/site'", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(snapshots("tank/site"), ["tank/site@lab-baseline"])
