"""One run of bin/rollback: its record of progress, kept after every step, and the steps that
change the datasets (roll back, swap for --keep, settle), each with the way on when it fails.
Downtime (downtime.py) adds stopping and starting the site."""
import os

from collective.recipe.zfssnap import keep as keepmod
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import swapsteps
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.downtime import Downtime
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.rollback.request import Request
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.procman_supervisord import supervisord_of
from collective.recipe.zfssnap.procman_systemd import units_of
from collective.recipe.zfssnap.supervisor import Supervisor


class Aborted(Stop):
    """The rollback stopped before any dataset was rolled back; the site runs again."""


def manager_of(site):
    """The part's process manager (procman's interface), or None: its systemd units, or its
    supervisord."""
    privilege = privilege_prefix(site.config.get("zfs") or ["zfs"])
    return units_of(site, privilege) or supervisord_of(site, supervisor_of)


def supervisor_of(site):
    """The XML-RPC client of the part's supervisord, or None."""
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


class Run(Downtime):
    """One bin/rollback: the site, its process manager, and the record of what it did."""

    def __init__(self, site, request=None):
        self.site = site
        self.out = site.out
        self.request = request or Request()
        self.manager = manager_of(site)
        self.record = site.rollback_record()
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

    @property
    def force(self):  # --force: processes outside the manager do not stop the rollback
        return self.request.force

    def go_ahead(self):
        """The question (unless --yes), then the signals deferred: what follows changes the
        site."""
        request = self.request
        if not request.yes and (request.confirm is None or not request.confirm()):
            raise Stop("not confirmed: nothing was changed", REFUSED)
        if request.critical:
            request.critical()
            self.critical = request.critical

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
        except ManagerError as e:
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
                left = swapsteps.swap_steps(self.swaps, keepmod.facts(self.site, self.swaps))
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
            back = swapsteps.back_steps(self.swaps, keepmod.facts(self.site, self.swaps))
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
