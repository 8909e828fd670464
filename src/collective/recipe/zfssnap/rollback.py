"""bin/rollback: stop what runs on the datasets, roll every dataset back, start what ran before.

Every step that changes something is checked before and reported after. What ran before and how
far the rollback got are recorded outside the datasets before anything is stopped, and after
every step, so that a rollback killed or failed at any point is finished by running it again.
"""
import os
import time

from collective.recipe.zfssnap import again as againmod
from collective.recipe.zfssnap import keep as keepmod
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap.downtime import Downtime
from collective.recipe.zfssnap.downtime import HealthFailed
from collective.recipe.zfssnap.downtime import check_open_files
from collective.recipe.zfssnap.progress import PREPARING
from collective.recipe.zfssnap.progress import ROLLED_BACK
from collective.recipe.zfssnap.progress import ROLLING_BACK
from collective.recipe.zfssnap.progress import SETTLING
from collective.recipe.zfssnap.progress import STOPPING
from collective.recipe.zfssnap.progress import Progress
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import BAD_INPUT
from collective.recipe.zfssnap.site import Background
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.supervisor import Supervisor
from collective.recipe.zfssnap.supervisor import SupervisorError


class Aborted(Stop):
    """The rollback stopped before any dataset was rolled back; the site runs again."""


def supervisor_of(site):
    config = site.config
    if not config.get("supervisor_conf"):
        return None
    return Supervisor(config["supervisor_conf"], config.get("supervisord"),
                      config.get("supervisord_unit"), config.get("programs", ()),
                      config.get("stop_timeout", 60), config.get("supervisord_files", ()),
                      privilege=privilege_prefix(config.get("zfs") or ["zfs"]))


def privilege_prefix(zfs):
    """What the part's zfs option puts before zfs (zfs = sudo -n zfs: sudo -n), for the other
    commands that need root: systemctl."""
    if len(zfs) > 1 and os.path.basename(zfs[-1]) == "zfs":
        return list(zfs[:-1])
    return []


# -- the plan -------------------------------------------------------------------------------
def plan_rollback(site, target, written=True, keep=False):
    """Everything the rollback of the datasets will do, checked before anything is changed.

    With `keep` the newer snapshots are kept (with the state rolled away from): held and
    cloned ones do not block it."""
    missing = [d for d in site.datasets if d not in target.members]
    if missing:
        raise Stop("the snapshot %s is missing on %s: rolling back only some of the datasets "
                   "would leave the site inconsistent; refusing"
                   % (target.short, ", ".join(missing)), REFUSED)
    recorded = target.recorded_datasets
    if recorded and sorted(recorded) != sorted(site.datasets):
        raise Stop("the snapshot %s was taken of %s, but this part now has %s: a rollback of "
                   "some of them would leave the site inconsistent; refusing" % (
                       target.short, ", ".join(recorded), ", ".join(site.datasets)), REFUSED)
    plan = {"target": target, "datasets": [], "keep": keep}
    blockers = []
    all_newer = site.zfs.newer(site.datasets, {d: target.members[d].createtxg
                                               for d in site.datasets})
    written = site.zfs.written_since(site.datasets, target.short) if written else {}
    for dataset in site.datasets:
        snap = target.members[dataset]
        newer = all_newer[dataset]
        for s in newer if not keep else ():
            if s.userrefs:
                blockers.append("%s is held (%s)" % (s.name, ", ".join(site.zfs.holds(s.name))))
            if s.clones:
                blockers.append("%s has clones (%s)" % (s.name, ", ".join(s.clones)))
        plan["datasets"].append({
            "dataset": dataset, "snapshot": snap.name, "newer": [s.name for s in newer],
            "written": written.get(dataset)})
    if blockers:
        raise Stop("refusing to roll back: newer snapshots must be destroyed by the rollback "
                   "but ZFS would stop half-way on these: %s; release the holds (zfs release) "
                   "or promote/destroy the clones first, or keep them (--keep); nothing was "
                   "changed" % "; ".join(blockers), REFUSED)
    return plan


def zodb_view(site, plan):
    """What the rollback undoes in each FileStorage the part knows: the transactions committed
    since the snapshot, read from the live Data.fs back to the snapshot's last one."""
    from collective.recipe.zfssnap import zodb
    table = mountsmod.zfs_mounts()
    snapshots = {e["dataset"]: e["snapshot"].split("@", 1)[1] for e in plan["datasets"]}
    views = []
    for path in site.config.get("filestorages", ()):
        then = againmod.snapshot_copy(path, snapshots, table)
        if then is None:
            continue
        view = {"path": path}
        try:
            last = zodb.last_tid(then) if os.path.exists(then) else None
            view.update(zodb.since(path, last))
        except (OSError, zodb.Unreadable) as e:
            view["error"] = str(e)
        views.append(view)
    plan["zodb"] = views
    return views


def rollback_argv(site, entry):
    return site.zfs.command + site.zfs.rollback_argv(entry["snapshot"], bool(entry["newer"]))


def same_plan(a, b):
    return [(e["dataset"], e["newer"]) for e in a["datasets"]] == \
        [(e["dataset"], e["newer"]) for e in b["datasets"]]


def show_plan(site, plan, diff=False, always=False):
    out = site.out
    say = out.plan if always else out.say
    target = plan["target"]
    say("Rollback of %s to %s (label: %s, created %s, git %s)%s" % (
        ", ".join(site.datasets), target.short, target.label or "-",
        target.properties.get("created", "?"),
        target.properties.get("git-describe") or target.properties.get("git-revision", "-"),
        ", keeping the state rolled away from" if plan.get("keep") else ""))
    for entry in plan["datasets"]:
        say("  %s: %s %s written since the snapshot" % (
            entry["dataset"], "keeps apart" if plan.get("keep") else "undoes",
            zfsmod.format_size(entry["written"] or 0)))
        for name in entry["newer"]:
            say("    %s the newer %s" % ("keeps" if plan.get("keep") else "destroys", name))
        if diff:
            summary = diff_summary(site, entry["snapshot"])
            entry["diff"] = summary
            say("    changes since: %s" % summary)
    for view in plan.get("zodb", ()):
        if "error" in view:
            say("  ZODB %s: cannot tell what it undoes (%s)" % (view["path"], view["error"]))
            continue
        if not view["count"]:
            say("  ZODB %s: no transaction since the snapshot" % view["path"])
            continue
        say("  ZODB %s: %s %d transaction%s committed since the snapshot, %s to %s:" % (
            view["path"], "keeps apart" if plan.get("keep") else "undoes", view["count"],
            "s" if view["count"] != 1 else "", view["first"], view["last"]))
        for t in view["transactions"]:
            say("    %s  %s  %s" % (t["time"], t["user"] or "-", t["description"] or "-"))
        if view["count"] > len(view["transactions"]):
            say("    ... and %d more" % (view["count"] - len(view["transactions"])))
    out.data["plan"] = [dict(e) for e in plan["datasets"]]
    out.data["zodb"] = plan.get("zodb", [])
    out.data["target"] = target.as_dict()


def diff_summary(site, snapshot):
    proc = site.zfs.run("diff", "-H", snapshot, check=False)
    if proc.returncode != 0:
        return "unavailable (%s)" % (proc.stderr.strip() or "zfs diff failed")
    counts = {}
    for line in proc.stdout.splitlines():
        kind = line.split("\t", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    names = {"+": "added", "-": "removed", "M": "modified", "R": "renamed"}
    return ", ".join("%d %s" % (counts[k], names[k]) for k in "+-MR" if k in counts) or \
        "no changes"


def describe_record(record):
    """One paragraph on an unfinished rollback (a Progress), for the operator, before it is
    acted on."""
    done = record.rolled_back
    pending = [d for d in record.datasets if d not in done]
    return ("An unfinished rollback to %s is recorded: started %s by %s (pid %s), stopped at "
            "'%s'; %s; datasets rolled back: %s; not yet: %s; to run again afterwards: %s." % (
                record.target, record.started, record.by, record.pid, record.stage,
                "supervisord was shut down" if record.daemon_down else
                "supervisord ran" if record.daemon_was_running else
                "supervisord did not run",
                ", ".join(done) or "none", ", ".join(pending) or "none",
                ", ".join(record.running_before) or "nothing"))


# -- the run --------------------------------------------------------------------------------
class Run(Downtime):
    """One bin/rollback: the site, its supervisor, and the record of what it did."""

    def __init__(self, site, force=False, again=False):
        self.site = site
        self.out = site.out
        self.sup = supervisor_of(site)
        self.record = site.rollback_record()
        self.force = force
        self.again = again  # --again: a second rollback to the last one's target is wanted
        self.data = None  # the Progress recorded while the rollback is unfinished
        self.stopped_at = None
        self.swaps = []  # with --keep: the clones made to take the datasets' places
        self.up_at = None  # when the site ran again
        self.committed = False  # datasets are being replaced: no way back, only forward
        self.critical = None  # main.Deferred: the signals received in the critical section
        try:
            self.cwd = os.path.realpath(os.getcwd())
        except OSError:
            self.cwd = None

    def save(self, required=False, **changes):
        self.data.update(**changes)
        try:
            self.record.save(self.data.as_record())
        except (state.StateError, OSError) as e:
            reason = getattr(e, "message", None) or e
            if required:  # nothing has been stopped yet: a run that cannot be resumed is not
                # worth starting
                # Once the site was stopped, the abort that follows says what runs again.
                raise Stop("cannot record the rollback in %s (%s): fix that, then try again%s"
                           % (self.record.path, reason, "; nothing was stopped"
                              if self.stopped_at is None else ""), FAILED)
            # Refusing here would leave the site stopped: go on, and say it.
            self.out.warn("could not record the rollback's progress in %s (%s): if it is "
                          "interrupted, start the site by hand" % (self.record.path, reason))

    def hung(self, error, stopped=True):
        """The Stop for a zfs call that did not answer: it may finish its change later, so
        nothing is undone or started around it; the record is kept for the rerun."""
        self.save()
        self.out.log("rollback stopped: %s" % error.message)
        return Stop("%s; %s and the record %s is kept: once that zfs has finished, run %s again "
                    "to finish the rollback" % (
                        error.message, "the site is not started" if stopped else
                        "nothing was stopped", self.record.path,
                        self.site.scripts["rollback"]), INCOMPLETE)

    def checkpoint(self, where, started=False):
        """A safe point: after a signal in the critical section, stop here, the record kept.
        Any point where a kill leaves a state the rerun finishes is one (the crash sweep)."""
        received = getattr(self.critical, "received", None)
        if not received:
            return
        names = ", ".join(sorted(set(received)))
        self.out.log("rollback stopped %s (%s received)" % (where, names))
        raise Stop("%s received: the rollback stopped %s, and the site is %s; its record %s is "
                   "kept: run %s again to finish it" % (
                       names, where, "started again" if started else "not started",
                       self.record.path, self.site.scripts["rollback"]), INCOMPLETE)

    def abort(self, reason, code=FAILED, advice=""):
        """Nothing was rolled back: start again what was stopped, and Stop with `reason`.
        Once datasets are (partly) replaced, only going forward is safe: say what to do."""
        if self.committed:
            raise Stop("%s, while the datasets are partly rolled back: nothing was started; "
                       "stop it, then run %s again to finish" % (
                           reason, self.site.scripts["rollback"]), INCOMPLETE)
        self.out.log("rollback aborted before any dataset was rolled back: %s" % reason)
        keepmod.undo(self.site, self.swaps)
        try:
            late = self.start()
        except SupervisorError as e:
            raise Aborted("%s; nothing was rolled back, and starting the site again failed: "
                          "%s; start it with: %s" % (reason, e.message, self.start_hint()),
                          FAILED)
        self.record.clear()
        self.out.data["phase"] = "aborted"
        raise Aborted("%s: rollback aborted, nothing rolled back; %s%s" % (
            reason, "now running: " + (", ".join(self.data.running_before) or "nothing")
            if not late else "NOT running now: %s (start with %s)" % (
                ", ".join(late), self.start_hint()), "; " + advice if advice else ""), code)

    # -- the datasets -----------------------------------------------------------------------
    def roll_back_datasets(self, plan, commands):
        done = []
        try:
            for entry, argv in zip(plan["datasets"], commands):
                self.out.action(" ".join(argv))
                self.site.zfs.rollback(entry["snapshot"], destroy_newer=bool(entry["newer"]))
                done.append(entry["dataset"])
                # The rerun would finish without it (it rolls back again what is done; the site
                # is down, so nothing is lost), but the report names which dataset is where.
                self.save(rolled_back=list(done))
                self.out.log("rollback %s%s" % (entry["snapshot"], " (destroyed %s)" % ",".join(
                    entry["newer"]) if entry["newer"] else ""))
                if len(done) < len(plan["datasets"]):
                    self.checkpoint("after rolling back %s (%d of %d datasets)"
                                    % (entry["dataset"], len(done), len(plan["datasets"])))
        except zfsmod.ZfsError as e:
            if isinstance(e, zfsmod.ZfsTimeout):
                # It may still roll the dataset back: starting the site on it would be worse.
                self.committed = True
                raise self.hung(e)
            raise self.failed_midway(plan, done, self.site.permission_message(
                e, "rollback,destroy,mount"))

    def swap(self, target, current=None):
        """--keep: the clones take the datasets' places, from where ZFS says the swap stands
        (`current`: a Background reading of keep.facts, made since the site was stopped)."""
        try:
            names = keepmod.swap(self.site, self.swaps, current and current.result())
        except (zfsmod.ZfsError, OSError) as e:
            if isinstance(e, zfsmod.ZfsTimeout):
                raise self.hung(e)  # no way back while a rename may still be under way
            reason = getattr(e, "message", None) or str(e)
            self.out.log("rollback --keep FAILED: %s" % reason)
            self.swap_back(reason)
            zfs = self.site.zfs.command
            try:
                left = keepmod.swap_steps(self.swaps, keepmod.facts(self.site, self.swaps))
                steps = "; ".join(" ".join(zfs + argv) for _, argv in left)
            except zfsmod.ZfsError:
                steps = "see %s --dry-run" % self.site.scripts["rollback"]
            raise Stop("the --keep rollback failed half-way (%s); nothing was started again: fix "
                       "the cause and run %s again: it finishes from where this one stopped "
                       "(left to do: %s), starts the site and sets up the kept state; if the "
                       "site directory is empty, run zfs mount -a first" % (
                           reason, self.site.scripts["rollback"], steps), INCOMPLETE)
        for s in self.swaps:
            self.out.log("rollback %s: %s is now a clone of the snapshot, the state before is "
                         "kept (as %s once settled)" % (target, s["dataset"], s["kept"]))
        return names

    def swap_back(self, reason):
        """A swap that failed before any dataset was handed over to its clone: the old
        datasets mounted again, the clones destroyed, the site started (Aborted). Returns when
        that is not possible any more (or fails): then only going forward finishes the job."""
        try:
            back = keepmod.back_steps(self.swaps, keepmod.facts(self.site, self.swaps))
            if back is None:
                return
            keepmod.run_steps(self.site, back)
        except (zfsmod.ZfsError, OSError) as e:
            self.out.warn("putting the datasets back failed too: %s" % (
                getattr(e, "message", None) or e))
            return
        # Every dataset is as it was: a way back again, not only forward.
        self.committed = False
        self.abort(reason)

    def settle(self, target):
        """--keep, once the swap is done: the commands that failed (already warned about)."""
        failed = keepmod.settle(self.site, self.swaps, target, self.data.stamp)
        if not failed:
            self.out.log("kept %s" % ",".join(s["kept"] for s in self.swaps))
        return failed

    def check_mounted(self, target, names=None):
        """Before anything is started: each dataset (or, with --keep, its clone: `names`)
        mounted where bin/buildout found it, and not hidden by another mount. A program
        started on an empty var/filestorage would create a fresh, empty Data.fs."""
        table = mountsmod.zfs_mounts()
        problems = []
        for dataset, mountpoint in sorted(self.site.config.get("mounts", {}).items()):
            dataset = (names or {}).get(dataset, dataset)
            now = mountsmod.where(dataset, table)
            holder = mountsmod.holding(mountpoint, table) if os.path.isdir(mountpoint) else None
            above = mountsmod.holding(os.path.dirname(mountpoint), table)
            if now != mountpoint:
                problems.append("%s is %s" % (dataset, "mounted at " + now if now else
                                              "not mounted (it belongs at %s)" % mountpoint))
            elif holder is None or holder.dataset != dataset:
                problems.append("%s holds %s, not %s" % (
                    holder.dataset if holder else "no ZFS dataset", mountpoint, dataset))
            elif not mountsmod.is_mountpoint(mountpoint):
                # Mounted before its parent was mounted over it: hidden.
                problems.append("%s is mounted at %s, but hidden under %s" % (
                    dataset, mountpoint, above.dataset if above else "another mount"))
        if problems:
            raise Stop("rolled back every dataset to %s, but they are not mounted as the site "
                       "needs: %s; nothing was started: mount them (zfs mount -a), then run %s "
                       "again to start the site" % (target, "; ".join(problems),
                                                    self.site.scripts["rollback"]), INCOMPLETE)

    def failed_midway(self, plan, done, reason, code=FAILED, advice=""):
        """The Stop for a rollback that failed after the site was stopped."""
        out = self.out
        pending = [e["dataset"] for e in plan["datasets"] if e["dataset"] not in done]
        out.data.update(rolled_back=done, not_rolled_back=pending)
        if not done:
            try:
                self.abort(reason, code, advice)
            except Stop as stop:
                return stop
        self.save(rolled_back=list(done))
        out.log("rollback FAILED after %s: %s" % (",".join(done), reason))
        target = plan["target"].short
        return Stop(
            "the rollback failed half-way (%s): %s %s at the snapshot %s; %s NOT; nothing was "
            "started again: fix the cause and run %s %s again (it rolls back the rest and starts "
            "what ran before), or roll the rest back by hand (zfs rollback -r) and start the "
            "site (%s)" % (reason, ", ".join(done), "are" if len(done) > 1 else "is", target,
                           ", ".join(pending), self.site.scripts["rollback"], target,
                           self.start_hint()), INCOMPLETE)


def rollback(site, wanted=None, yes=False, dry_run=False, force=False, diff=False,
             confirm=None, critical=None, keep=False, start=True, start_only=False,
             again=False):
    """bin/rollback: from the recorded progress of an unfinished run if there is one (resume),
    else a new rollback to `wanted` (the newest snapshot set if None). The plan, or None.

    `start` False (--no-start): stop and roll back, and leave the record for `start_only`
    (--start), which starts what ran before from it: phases an orchestrator can interleave
    across hosts. The --json document's `phase` says how far the run got (PHASES)."""
    run = Run(site, force, again)
    site.out.data["phase"] = "none"
    pending = Progress.from_record(run.record.load())
    site.out.data["recorded_stage"] = pending.stage if pending else None
    if start_only:
        return start_recorded(run, pending, wanted, yes, dry_run, confirm, critical)
    if pending:
        return resume(run, pending, wanted, keep, yes, dry_run, confirm, critical, diff,
                      start)
    return roll_back(run, wanted, keep, yes, dry_run, confirm, critical, diff, start=start)


# What the --json `phase` says, the last of these the run reached: none (nothing was
# changed), planned (--dry-run), aborted (stopped and started again, nothing rolled back),
# stopped, rolled-back (nothing started yet), started (a --keep state not yet set up), done.


def start_recorded(run, pending, wanted, yes, dry_run, confirm, critical):
    """bin/rollback --start: start what ran before a rollback that stopped at the rolled-back
    phase (--no-start), from its record. Nothing recorded: nothing to start (a rerun of a
    finished --start is no error)."""
    site, out = run.site, run.out
    if pending is None:
        out.say("No unfinished rollback is recorded: nothing to start.")
        out.data["phase"] = "done"
        return None
    out.plan(describe_record(pending))
    if wanted is not None and wanted != pending.target and \
            site.find_set(wanted).short != pending.target:
        raise Stop("the recorded rollback is to %s, not %s: start it with %s --start; nothing "
                   "was changed" % (pending.target, wanted, site.scripts["rollback"]), REFUSED)
    if pending.stage not in (ROLLED_BACK, SETTLING):
        raise Stop("the recorded rollback to %s has not rolled back the datasets yet (stage "
                   "'%s'): run %s --no-start %s to finish that first, then --start; nothing was "
                   "changed" % (pending.target, pending.stage, site.scripts["rollback"],
                                pending.target), REFUSED)
    return finish_recorded(run, pending, yes, dry_run, confirm, critical)


def stop_before_start(run, target):
    """--no-start: the datasets are at `target`; the record stays, for --start."""
    names = run.data.running_before
    run.out.data["to_start"] = list(names)
    run.out.log("rolled back to %s; not started (--no-start): %s" % (
        target, ", ".join(names) or "nothing ran before"))
    run.out.say("Rolled back to %s; nothing was started (--no-start). Start what ran before "
                "(%s) with: %s --start" % (target, ", ".join(names) or "nothing",
                                            run.site.scripts["rollback"]))


def resume(run, pending, wanted, keep, yes, dry_run, confirm, critical, diff, start=True):
    """The one way on from a recorded unfinished run (progress.py has its stages): for the
    target it recorded, with --keep as it was started."""
    site, out = run.site, run.out
    out.plan(describe_record(pending))
    if wanted is not None and wanted != pending.target and \
            site.find_set(wanted).short != pending.target:
        raise Stop("an unfinished rollback to %s is recorded (above): finish it with %s %s, "
                   "or forget it with %s --forget; nothing was changed" % (
                       pending.target, site.scripts["rollback"], pending.target,
                       site.scripts["rollback"]), REFUSED)
    if pending.keep and not keep:
        out.note("the unfinished rollback keeps the state rolled away from (--keep): so "
                 "does this one")
    elif keep and not pending.keep:
        out.note("the unfinished rollback does not keep the state rolled away from (it "
                 "was started without --keep): neither does this one")
    keep = bool(pending.keep)
    if pending.stage == PREPARING:
        # Killed before it stopped anything: nothing to finish, only its clones to remove;
        # what ran then is still what is to run afterwards.
        if not dry_run:
            keepmod.undo(site, pending.swaps)
        return roll_back(run, pending.target, keep, yes, dry_run, confirm, critical, diff,
                         carried=pending, start=start)
    if pending.finished_in_zfs:
        return finish_recorded(run, pending, yes, dry_run, confirm, critical, start)
    # Killed while stopping, or while rolling back (plain): a new plan from what is there now;
    # what ran before the first run is started at the end.
    return roll_back(run, pending.target, keep, yes, dry_run, confirm, critical, diff,
                     pending=pending, start=start)


def roll_back(run, wanted, keep, yes, dry_run, confirm, critical, diff, pending=None,
              carried=None, start=True):
    """Plan, stop, roll back (or swap, with --keep), start, settle. `pending`: the progress of
    an unfinished run this one finishes; `carried`: of one killed before it stopped anything."""
    site, out, force = run.site, run.out, run.force
    mountpoints = site.check_layout("roll back")
    target = site.find_set(wanted)
    if keep:
        keepmod.check(site, mountpoints)
    plan = plan_rollback(site, target, keep=keep)
    if keep and pending and pending.keep:
        stamp, swaps = pending.stamp, pending.keep
    elif keep:
        stamp = keepmod.free_stamp(site, site.datasets,
                                   state.utc_stamp().replace("-", "").replace(":", ""))
        swaps = keepmod.plan_swaps(site, plan, stamp)
    else:
        stamp, swaps = None, []
    commands = keepmod.commands(site, swaps, target.short, stamp) if keep else [
        rollback_argv(site, e) for e in plan["datasets"]]
    zodb_view(site, plan)
    if pending is None and carried is None and againmod.check(run, target, plan, run.again,
                                                              yes, dry_run):
        return None
    show_plan(site, plan, diff=diff, always=not yes and not dry_run)
    if dry_run:
        for argv in commands:
            out.command(argv)
        preflight(run, mountpoints, pending or carried)
        out.data["phase"] = "planned"
        return plan
    check_can_see_holders()
    if not yes and (confirm is None or not confirm()):
        raise Stop("not confirmed: nothing was changed", REFUSED)
    if critical:
        critical()
        run.critical = critical
    procs, daemon_pid, run.data = run.survey(pending or carried)
    run.data.update(target=target.short, keep=swaps or None, stamp=stamp)
    run.swaps = swaps
    check_outside_supervisor(run, mountpoints, procs, daemon_pid)
    site.hook("before-rollback")
    if keep:
        # Recorded before the clones are made, so that a run killed while making them leaves
        # nothing the next one does not know of.
        run.save(required=True, stage=STOPPING if pending else PREPARING)
        try:
            # While the site still runs: the clones cost no downtime.
            keepmod.make_clones(site, swaps)
        except zfsmod.ZfsError as e:
            if isinstance(e, zfsmod.ZfsTimeout):
                raise run.hung(e, stopped=False)  # the rerun destroys the clones, starts over
            keepmod.undo(site, swaps)
            if not pending:
                run.record.clear()
            raise Stop("making the clones for --keep failed: %s; nothing was stopped" % (
                site.permission_message(e, "clone,create,mount")), FAILED)
    run.save(required=True, stage=STOPPING)
    try:
        run.stop(mountpoints, procs, daemon_pid)
        out.data["phase"] = "stopped"
    except SupervisorError as e:
        raise run.failed_midway(plan, [], e.message)
    except Aborted:
        raise
    except Stop as e:
        if e.code == REFUSED and not pending:  # refused with nothing stopped or rolled back
            keepmod.undo(site, swaps)
            run.record.clear()
        raise
    run.checkpoint("after stopping the site, before any dataset was rolled back")
    # The clones' facts (--keep) read while the plan is read again: the site is down.
    current = Background(keepmod.facts, site, swaps) if keep else None
    try:
        fresh = plan_rollback(site, target, written=False, keep=keep)
        if not same_plan(plan, fresh):
            raise run.failed_midway(plan, [], "the snapshots changed while the site was being "
                                    "stopped (a new snapshot, hold or clone)", REFUSED,
                                    "run %s again to see the new plan"
                                    % site.scripts["rollback"])
        check_open_files(site, mountpoints, set(), force)
    except Aborted:
        raise
    except Stop as e:
        raise run.failed_midway(plan, [], e.message, e.code)
    except zfsmod.ZfsError as e:
        raise run.failed_midway(plan, [], e.message)
    try:
        run.save(required=keep, stage=ROLLING_BACK)
    except Stop as e:  # the rerun could not tell a half-done swap: do not start one
        raise run.failed_midway(plan, [], e.message)
    names = {}
    if keep:
        run.committed = True
        names = run.swap(target.short, current)
    else:
        run.roll_back_datasets(plan, commands)
    run.save(stage=ROLLED_BACK)
    out.data["phase"] = "rolled-back"
    out.data["rolled_back"] = [e["dataset"] for e in plan["datasets"]]
    run.checkpoint("with every dataset rolled back")
    run.check_mounted(target.short, names)
    if not start:
        stop_before_start(run, target.short)
        return plan
    finish(run, target.short)
    return plan


def preflight(run, mountpoints, pending):
    """What the real run refuses before it stops anything, checked by --dry-run too (it
    changes nothing): that this machine can tell who has files open on the datasets, and that
    nothing outside supervisor does."""
    check_can_see_holders()
    try:
        procs, daemon_pid, _ = run.survey(pending)
    except SupervisorError as e:
        raise Stop("cannot tell what supervisord runs (%s): the rollback would stop there; "
                   "run it as a user who can reach supervisord; nothing was changed"
                   % e.message, REFUSED)
    check_outside_supervisor(run, mountpoints, procs, daemon_pid)


def check_can_see_holders():
    problem = processes.can_check()
    if problem:
        raise Stop("cannot roll back safely: %s" % problem, REFUSED)


def check_outside_supervisor(run, mountpoints, procs, daemon_pid):
    """Before anything is stopped: processes outside supervisor would block anyway."""
    managed = processes.with_descendants([daemon_pid or 0] + [p.pid for p in procs.values()
                                                              if p.pid])
    check_open_files(run.site, mountpoints, managed, run.force, before_stop=True)


def finish(run, target, start=True):
    """Start what ran before, settle what --keep left to settle, forget the record, report."""
    try:
        if start:
            run.finish_start(target)
            run.out.data["phase"] = "started"
    except HealthFailed:
        restore_guard_record(run.site, target)
        if run.swaps and run.settle(target):
            run.save(stage=SETTLING)  # the rerun settles what is left
        else:
            againmod.remember(run.site, target)
            run.record.clear()  # it ran: a rerun has nothing left to do
        if run.swaps:
            say_kept(run)
        raise
    except Stop:
        if run.swaps:
            run.settle(target)  # the record stays: the rerun starts what did not start
        raise
    if run.swaps:
        run.save(stage=SETTLING)
        run.checkpoint("after starting the site, before setting up the kept state",
                       started=True)
        failed = run.settle(target)
        if failed:
            restore_guard_record(run.site, target)  # the site runs the target's state
            raise Stop("rolled back to %s and started the site, but setting up the state kept "
                       "in %s failed (above): run %s again to finish it, or by hand: %s" % (
                           target, ", ".join(s["kept"] for s in run.swaps),
                           run.site.scripts["rollback"], "; ".join(failed)), INCOMPLETE)
    restore_guard_record(run.site, target)
    againmod.remember(run.site, target)
    run.record.clear()
    run.out.data["phase"] = "done"
    report(run, target)
    if run.swaps:
        say_kept(run)


def restore_guard_record(site, target):
    """The release guard's record of the last bin/buildout (outside the datasets) back to what
    it was when the target was taken: the site is that state again, and the target is a
    snapshot of it. Without this, the next bin/buildout would see the bad release's revision
    in it and refuse."""
    guard = state.Record(site.places.buildout_record, required="finished")
    try:
        if guard.load() is None:
            return  # the guard is not used
        found = site.find_set(target)
        guard.save({"finished": found.properties.get("created", ""), "epoch": found.created,
                    "revision": found.properties.get("git-revision", ""),
                    "describe": found.properties.get("git-describe", ""), "versions": None,
                    "restored": target})
    except (Stop, state.StateError, zfsmod.ZfsError, OSError) as e:
        site.out.warn("could not set the release guard's record back to %s (%s): the next "
                      "bin/buildout may ask for a snapshot" % (target, getattr(e, "message", e)))


def say_kept(run):
    site = run.site
    run.out.data["kept"] = [s["kept"] for s in run.swaps]
    run.out.say("The state rolled away from is kept in %s (read-only, not mounted): look inside "
                "with zfs set mountpoint=/mnt/rolled-away DATASET; %s --list shows them, %s "
                "destroys them." % (", ".join(s["kept"] for s in run.swaps),
                                    site.scripts["snapshot"], site.scripts["cleanup"]))
    if any(mountsmod.is_inside(run.cwd or "", s["mountpoint"]) for s in run.swaps
           if s["mounted"]):
        run.out.say("Your shell's working directory is still in the state rolled away from: "
                    "type cd %s to see the restored one." % site.directory)


def finish_recorded(run, pending, yes, dry_run, confirm, critical, start=True):
    """Finish a run whose datasets are (being) replaced or rolled back for good: the rest of the
    --keep swap, then starting what ran before (unless it runs already), then settling the kept
    state. ZFS and the record say what is left, not a new plan."""
    out = run.out
    target = pending.target
    run.data = pending
    run.swaps = pending.swaps
    if run.sup and pending.unit:
        run.sup.unit = pending.unit  # stopped through its unit: started through it too
    stage = pending.stage
    out.data["phase"] = {ROLLED_BACK: "rolled-back", SETTLING: "started"}.get(stage, "stopped")
    current = keepmod.facts(run.site, run.swaps) if run.swaps else []
    left = keepmod.swap_steps(run.swaps, current) if run.swaps else []
    if left and stage != ROLLING_BACK:
        # Swapped, but not mounted so (a boot with a buildout dataset of canmount=noauto, or
        # the old one mounted by its name, which it still has until settled): the swap's
        # mounts again, with nothing of the site running.
        stage = ROLLING_BACK
    if stage == ROLLING_BACK:
        where = ["%s %s" % (s["dataset"], "is mounted from its clone" if f.get("new_mounted")
                            else "is as it was") for s, f in zip(run.swaps, current)]
        out.plan("The datasets are being replaced by clones of %s (%s); this run finishes that "
                 "(%d zfs command%s), then starts what ran before: %s." % (
                     target, "; ".join(where), len(left), "" if len(left) == 1 else "s",
                     ", ".join(pending.running_before) or "nothing"))
        if dry_run:
            for _, argv in left:
                out.command(run.site.zfs.command + argv)
    elif not start and stage == ROLLED_BACK:
        out.plan("Every dataset was rolled back to %s; nothing to do before the start "
                 "(--no-start)." % target)
    else:
        out.plan("Every dataset was rolled back to %s; this run %s." % (
            target, "sets up the kept state rolled away from" if stage == SETTLING else
            "starts what ran before: %s" % (", ".join(pending.running_before) or "nothing")))
    if dry_run:
        out.data["phase"] = "planned"
        return None
    if not start and stage == ROLLED_BACK:
        stop_before_start(run, target)
        return None
    if not yes and (confirm is None or not confirm()):
        raise Stop("not confirmed: nothing was changed", REFUSED)
    if critical:
        critical()
        run.critical = critical
    run.stopped_at = None
    if stage == ROLLING_BACK:
        run.committed = True
        if run.sup and run.sup.running():
            # Started since (by hand, or at boot): nothing may run while datasets are swapped.
            run.pending_names = list(pending.running_before)
            mountpoints = sorted(run.site.config.get("mounts", {}).values())
            try:
                run.stop(mountpoints, run.sup.processes(), run.sup.pid())
            except SupervisorError as e:
                raise Stop("supervisord runs, and stopping it before the rest of the swap "
                           "failed: %s; stop it, then run %s again" % (
                               e.message, run.site.scripts["rollback"]), INCOMPLETE)
        names = run.swap(target)
        run.save(stage=ROLLED_BACK)
        out.data["phase"] = "rolled-back"
        run.checkpoint("with every dataset rolled back")
    else:
        names = keepmod.clone_names(run.swaps, current)  # {} for a plain rollback
    # What ran before runs again (a boot may have come between): started if it does not.
    run.check_mounted(target, names)
    if not start and stage != SETTLING:
        stop_before_start(run, target)
        return None
    finish(run, target)
    return None


def report(run, target):
    out = run.out
    hook_error = None
    try:
        run.site.hook("after-rollback")
    except Stop as e:
        hook_error = e.message
    if run.stopped_at is not None:
        down = (run.up_at or time.monotonic()) - run.stopped_at
        out.data["downtime_seconds"] = round(down, 2)
        out.say("Rolled back to %s; the site was down for %.1f s%s." % (
            target, down, " (until the health check passed)"
            if run.site.config.get("health_check") else ""))
    else:
        out.say("Rolled back to %s." % target)
    if hook_error:
        raise Stop("rolled back, but " + hook_error, FAILED)


__all__ = ["rollback", "describe_record", "BAD_INPUT"]
