"""Taking the site down for a rollback and bringing back exactly what ran, through the part's
process manager (procman's interface): what ran before is recorded first and started again
afterwards; a site that does not get to run, or does not answer its health check, is reported
with the way on. Before anything is stopped, processes the manager does not run must not hold
files on the datasets (check_open_files), nor any after the stop.
"""
import os
import time

from collective.recipe.zfssnap import health
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.progress import STOPPING
from collective.recipe.zfssnap.progress import Progress
from collective.recipe.zfssnap.procman import Refused
from collective.recipe.zfssnap.procman import Survey
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.site import current_user


class HealthFailed(Stop):
    """Rolled back and started, but the site does not answer its health check."""


# -- open files -----------------------------------------------------------------------------
def check_open_files(site, mountpoints, exclude, force, before_stop=False,
                     outside="outside supervisor"):
    """Refuse (Stop) while processes other than `exclude` hold files on the datasets
    (`outside`: what the processes the part's process manager does not run are called)."""
    unreadable = []
    try:
        holders = processes.holders(mountpoints, exclude=exclude | {os.getpid()},
                                    unreadable=unreadable)
    except OSError as e:
        raise Stop("cannot tell which processes have files on the datasets (%s); nothing was "
                   "rolled back" % e.strerror, REFUSED)
    blocking = [h for h in holders if not h.cwd_only]
    if before_stop:
        for h in holders:
            if h.cwd_only:
                site.out.note("%s has its working directory on the datasets (not a blocker)"
                              % h.describe())
        if unreadable:
            site.out.warn("could not see the open files of %s of other users: run as root to "
                          "check them all" % ("the processes" if -1 in unreadable else
                                              "%d processes" % len(unreadable)))
    site.out.data["open_files"] = [h.describe() for h in blocking]
    if blocking and not force:
        raise Stop("refusing to roll back: processes %s have files on the datasets: %s; stop "
                   "them (or pass --force), then try again" % (
                       outside if before_stop else "still",
                       "; ".join(h.describe() for h in blocking)), REFUSED)
    if not before_stop:
        for h in blocking:
            site.out.warn("rolling back under %s (--force)" % h.describe())


class Downtime:
    """The stop and start side of a rollback run (rollback.Run), through its process manager
    (procman; None: the part names none): needs its site, out, manager, data (the Progress),
    save() and abort()."""

    # -- stop -------------------------------------------------------------------------------
    def survey(self, pending):
        """What runs now (and, from an unfinished run, ran before): the Survey, and the record
        to start from."""
        manager = self.manager
        survey = manager.survey() if manager else Survey(False)
        if manager and not survey.up:
            self.out.say("%s is not running%s." % (manager.label, "" if pending else
                                                   ": no programs to stop"))
        data = Progress(
            datasets=list(self.site.datasets), started=state.utc_stamp(),
            by="%s@%s" % (current_user(), os.uname()[1]), pid=os.getpid(), stage=STOPPING,
            manager=manager.kind if manager else None, daemon_was_running=survey.up,
            running_before=list(survey.running))
        self.pending_names = list(pending.running_before) if pending else []
        if pending:
            self.check_kind(pending)
            data.daemon_was_running = survey.up or pending.daemon_was_running
            data.unit = pending.unit
            if manager:
                manager.adopt(pending)
            data.running_before += [n for n in pending.running_before
                                    if n not in data.running_before]
        return survey, data

    def check_kind(self, pending):
        """An unfinished run is finished through the process manager that stopped the site:
        another one would not start what it stopped (Stop, before anything is changed)."""
        manager = self.manager
        recorded = pending.manager or "supervisord"  # records before the field had one
        if pending.running_before and recorded != (manager.kind if manager else None):
            raise Stop("the unfinished rollback stopped %s through %s, but the part now names "
                       "%s: put the part's process manager back as it was (bin/buildout), then "
                       "run %s again to finish it; nothing was changed" % (
                           ", ".join(pending.running_before), recorded,
                           manager.kind if manager else "no process manager",
                           self.site.scripts["rollback"]), REFUSED)

    def stop(self, mountpoints, survey):
        """Stop what runs on the datasets; what will not stop aborts (Stop) with everything
        started again."""
        manager = self.manager
        if manager is None:
            return
        try:
            plan = manager.plan_stop(survey, mountpoints, self.data.running_before,
                                     self.pending_names)
        except Refused as e:
            raise Stop(e.message, REFUSED)
        if plan is None:
            return
        if plan.record:  # before any stop: what runs again at the end
            self.save(**plan.record)
        self.out.action(plan.action)
        if not plan.names and not plan.shutdown:
            return
        self.stopped_at = time.monotonic()
        outcome = manager.stop(plan)
        if plan.shutdown:
            self.data.daemon_down = True  # saved with the next step: a rerun asks anyway
        self.out.log(outcome.log)
        if outcome.stuck:
            raise Stop("%s: nothing was rolled back; stop them, then run %s again" % (
                outcome.stuck, self.site.scripts["rollback"]), FAILED)
        if outcome.late:
            self.abort(outcome.late)

    # -- start ------------------------------------------------------------------------------
    def start(self):
        """Start what ran before (the manager first, if the rollback stopped it): the names
        that did not get to run."""
        if self.manager is None or not self.data.daemon_was_running:
            return []
        late = self.manager.start(self.data.running_before, self.out)
        self.data.daemon_down = False
        return late

    def start_hint(self):
        if self.manager is None:
            return "nothing to start"
        return self.manager.start_hint(self.data.running_before if self.data else []) or \
            "nothing to start"

    def finish_start(self, target):
        """Start what ran before; Stop when some program did not get to RUNNING (the record
        stays, so that running the rollback again starts them without rolling back again)."""
        try:
            late = self.start()
        except ManagerError as e:
            raise Stop("rolled back every dataset to %s, but starting the site failed: %s; fix "
                       "it, then run %s again (it starts what ran before without rolling back "
                       "again), or start it with: %s" % (target, e.message,
                                                          self.site.scripts["rollback"],
                                                          self.start_hint()), FAILED)
        if not late:
            self.health(target)
        self.up_at = time.monotonic()
        if late:
            raise Stop("rolled back every dataset to %s, but %s did not get to %s: look at %s, "
                       "fix it, then run %s again: it starts what ran before without rolling "
                       "back again" % (target, ", ".join(late), self.manager.running_word,
                                       self.manager.logs_hint(late),
                                       self.site.scripts["rollback"]), FAILED)

    def health(self, target):
        """Wait until the part's health check passes (within stop-timeout)."""
        check = self.site.config.get("health_check")
        if not check or not (self.data and self.data.running_before):
            return  # nothing ran before the rollback: nothing is expected to answer
        timeout = self.site.config.get("stop_timeout", 60)
        what = health.describe(check)
        self.out.action("health check: " + what)
        ok, why, seconds = health.wait(check, self.site.directory, timeout)
        if ok:
            self.out.data["health_seconds"] = round(seconds, 2)
            self.out.log("health check passed: %s" % what)
            return
        self.out.log("health check failed: %s: %s" % (what, why))
        raise HealthFailed(
            "rolled back every dataset to %s and started what ran before, but the health "
            "check %s did not pass within %d s (%s): the site does not answer as it should; "
            "look at its logs" % (target, what, timeout, why), FAILED)
