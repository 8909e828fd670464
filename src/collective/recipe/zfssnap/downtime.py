"""Taking the site down for a rollback and bringing back exactly what ran: the supervisor
policy of bin/rollback.

supervisord is shut down when its own files are on the datasets (else only the programs are
stopped), through its systemd unit when it runs under one; what ran before is recorded first
and started again afterwards, supervisord's autostart programs put back as they were; a site
that does not get to RUNNING, or does not answer its health check, is reported with the way on.
"""
import os
import time

from collective.recipe.zfssnap import health
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.progress import STOPPING
from collective.recipe.zfssnap.progress import Progress
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.site import current_user
from collective.recipe.zfssnap.supervisor import RUNNING_STATES
from collective.recipe.zfssnap.systemd import unit_label
from collective.recipe.zfssnap.systemd import unit_shown


class HealthFailed(Stop):
    """Rolled back and started, but the site does not answer its health check."""


# -- open files -----------------------------------------------------------------------------
def check_open_files(site, mountpoints, exclude, force, before_stop=False):
    """Refuse (Stop) while processes other than `exclude` hold files on the datasets."""
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
                       "outside supervisor" if before_stop else "still",
                       "; ".join(h.describe() for h in blocking)), REFUSED)
    if not before_stop:
        for h in blocking:
            site.out.warn("rolling back under %s (--force)" % h.describe())


def stop_order(names, procs):
    """`names` as supervisord stops them: the reverse of its start order, which is by
    priority, then by name (`procs` is in start order). A program it does not know has the
    default priority, 999: among the first."""
    return [n for n in names if n not in procs] + [n for n in reversed(list(procs))
                                                   if n in names]


def supervisord_on_datasets(site, holders, devices, daemon_pid):
    if daemon_pid and any(h.pid == daemon_pid and not h.cwd_only for h in holders):
        return True
    for path in site.config.get("supervisord_files", ()):
        try:
            if os.stat(os.path.dirname(path)).st_dev in devices:
                return True
        except OSError:
            continue
    return False


class Downtime:
    """The stop and start side of a rollback run (rollback.Run): needs its site, out, sup,
    data (the Progress), save() and abort()."""

    # -- stop -------------------------------------------------------------------------------
    def survey(self, pending):
        """What runs now (and, from an unfinished run, ran before): the record to start from."""
        sup = self.sup
        running = sup.running() if sup else False
        if sup and not running:
            self.out.say("supervisord is not running%s." % (
                "" if pending else ": no programs to stop"))
        procs = sup.processes() if running else {}
        daemon_pid = sup.pid() if running else None
        data = Progress(
            datasets=list(self.site.datasets), started=state.utc_stamp(),
            by="%s@%s" % (current_user(), os.uname()[1]), pid=os.getpid(), stage=STOPPING,
            daemon_was_running=running,
            running_before=[n for n, p in procs.items() if p.state in RUNNING_STATES])
        self.pending_names = list(pending.running_before) if pending else []
        if pending:
            data.daemon_was_running = running or pending.daemon_was_running
            data.unit = pending.unit
            if sup and data.unit:
                sup.unit = data.unit  # stopped through its unit: started through it too
            data.running_before += [n for n in pending.running_before
                                    if n not in data.running_before]
        return procs, daemon_pid, data

    def stop(self, mountpoints, procs, daemon_pid):
        """Stop what runs on the datasets; a program that will not stop aborts (Stop) with
        everything started again."""
        sup = self.sup
        if not procs and daemon_pid is None:
            return
        devices = processes.devices_of(mountpoints)
        holders = processes.holders(mountpoints, exclude={os.getpid()})
        shutdown = supervisord_on_datasets(self.site, holders, devices, daemon_pid)
        if shutdown:
            sup.find_unit(daemon_pid)
            if not sup.unit and not sup.daemon:
                raise Stop("supervisord has its files on the datasets, so the rollback must shut "
                           "it down, but the supervisord option is none and it could not be "
                           "started again: set the option (bin/supervisord); nothing was "
                           "changed", REFUSED)
            if sup.unit != self.data.unit:
                self.save(unit=sup.unit)
            self.out.action("shutdown supervisord (its files are on the datasets%s), stopping "
                            "%s" % (", through systemctl: unit " + unit_label(sup.unit)
                                    if sup.unit else "",
                                    ", ".join(stop_order(self.data.running_before, procs))
                                    or "no program"))
            self.stopped_at = time.monotonic()
            pids = [daemon_pid] + [p.pid for p in procs.values() if p.pid]
            alive = sup.shutdown(pids, time.monotonic() + sup.timeout)
            self.data.daemon_down = True  # saved with the next step: a rerun asks anyway
            self.out.log("stop supervisord")
            if alive:
                # supervisord stops its programs one after another, in reverse priority
                # order: the first of them still alive is the one it is waiting for.
                left = [n for n in stop_order(procs, procs) if procs[n].pid in alive]
                stuck = left[:1] or ["supervisord"]
                # supervisor kills them after their stopwaitsecs: wait, then start again.
                alive = processes.wait_gone(alive, time.monotonic() + sup.timeout + 60)
                if alive:
                    raise Stop("%s did not stop (pids %s still run after supervisord was shut "
                               "down): nothing was rolled back; stop them, then run %s again"
                               % (", ".join(stuck), " ".join(map(str, alive)),
                                  self.site.scripts["rollback"]), FAILED)
                self.abort("%s did not stop within %d s%s" % (
                    stuck[0], sup.timeout, " (%s waited for it: supervisord stops one program "
                    "after another)" % ", ".join(left[1:]) if left[1:] else ""))
            return
        names = [n for n in sup.selected(procs) if procs[n].state in RUNNING_STATES]
        # What runs after: what this run stops, and what an unfinished run had stopped.
        self.save(running_before=names + [n for n in self.pending_names if n not in names])
        if not names:
            self.out.action("stop nothing (no selected program runs)")
            return
        self.out.action("stop %s" % ", ".join(names))
        self.stopped_at = time.monotonic()
        late = sup.stop(names)
        self.out.log("stop %s" % ",".join(n for n in names if n not in late))
        if late:
            # Wait for them to stop after all (supervisor kills them after stopwaitsecs), so
            # that every program is started again from a known state.
            sup.wait_settled(late, time.monotonic() + sup.timeout + 60)
            self.abort("%s did not stop within %d s" % (", ".join(late), sup.timeout))

    # -- start ------------------------------------------------------------------------------
    def start(self):
        """Start what ran before: supervisord if it was shut down, then exactly the programs
        that ran. The programs that did not get to RUNNING."""
        sup = self.sup
        if sup is None or not self.data.daemon_was_running:
            return []
        wanted = self.data.running_before
        if not sup.running():  # asked, not read from the record: a rerun may find it up
            self.out.action("start supervisord" + (" (%s)" % unit_shown(sup.unit, "start")
                                                   if sup.unit else ""))
            sup.start_daemon()
            self.data.daemon_down = False
            self.out.log("start supervisord")
            procs = sup.processes()
            # supervisord starts its autostart programs: put each back as it was before.
            extra = [n for n, p in procs.items() if p.state in RUNNING_STATES + ("STOPPING",)
                     and n not in wanted]
            if extra:
                self.out.action("stop %s (did not run before the rollback)" % ", ".join(extra))
                sup.stop(extra)
        procs = sup.processes()
        deadline = sup.start_deadline(wanted, procs)
        missing = [n for n in wanted if n in procs and procs[n].state not in RUNNING_STATES]
        if missing:
            self.out.action("start %s" % ", ".join(missing))
        failed = sup.start(missing, deadline) if missing else []
        states = sup.states()
        unknown = [n for n in wanted if n not in states]
        late = [n for n in wanted if n not in failed and states.get(n) != "RUNNING"]
        if late:
            sup.wait_settled(late, deadline)
            states = sup.states()
            late = [n for n in late if states.get(n) != "RUNNING"]
        self.out.log("start %s" % ",".join(n for n in wanted if states.get(n) == "RUNNING"))
        return failed + [n for n in late if n not in failed] + [
            n for n in unknown if n not in failed]

    def start_hint(self):
        if self.sup is None:
            return "nothing to start"
        hints = []
        try:
            if not self.sup.running():
                hints.append(self.sup.start_hint())
        except ManagerError:
            hints.append(self.sup.start_hint())
        ctl = self.site.config.get("supervisorctl")
        if self.data and self.data.running_before:
            hints.append("%s start %s" % (" ".join(ctl) if ctl else "supervisorctl",
                                          " ".join(self.data.running_before)))
        return "; ".join(hints) or "nothing to start"

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
            logs = self.site.config.get("supervisorctl")
            raise Stop("rolled back every dataset to %s, but %s did not get to RUNNING: look at "
                       "%s (%s tail %s), fix it, then run %s again: it starts what ran before "
                       "without rolling back again" % (
                           target, ", ".join(late), "its log" if len(late) == 1 else
                           "their logs", " ".join(logs) if logs else "supervisorctl", late[0],
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
