"""The supervisord adapter (procman): the site's supervisord, through its XML-RPC client
(supervisor.Supervisor), as bin/rollback needs it.

supervisord is shut down when its own files are on the datasets (else only the programs are
stopped), through its systemd unit when it runs under one; started again afterwards, its
autostart programs are put back as they were.
"""
import os
import time

from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.procman import Outcome
from collective.recipe.zfssnap.procman import ProcessManager
from collective.recipe.zfssnap.procman import Refused
from collective.recipe.zfssnap.procman import StopPlan
from collective.recipe.zfssnap.procman import Survey
from collective.recipe.zfssnap.supervisor import RUNNING_STATES
from collective.recipe.zfssnap.systemd import unit_label
from collective.recipe.zfssnap.systemd import unit_shown


def stop_order(names, procs):
    """`names` as supervisord stops them: the reverse of its start order, which is by
    priority, then by name (`procs` is in start order). A program it does not know has the
    default priority, 999: among the first."""
    return [n for n in names if n not in procs] + [n for n in reversed(list(procs))
                                                   if n in names]


def supervisord_on_datasets(files, holders, devices, daemon_pid):
    if daemon_pid and any(h.pid == daemon_pid and not h.cwd_only for h in holders):
        return True
    for path in files:
        try:
            if os.stat(os.path.dirname(path)).st_dev in devices:
                return True
        except OSError:
            continue
    return False


class Supervised(ProcessManager):
    """supervisord and the programs it runs (`sup`: a supervisor.Supervisor, or the fast
    suite's stand-in); `files`: supervisord's own (pid file, log, socket); `ctl`: the
    supervisorctl command, for the hints."""

    kind = "supervisord"
    label = "supervisord"
    outside = "outside supervisor"
    running_word = "RUNNING"

    def __init__(self, sup, files=(), ctl=None):
        self.sup = sup
        self.files = list(files)
        self.ctl = " ".join(ctl) if ctl else "supervisorctl"
        self.recorded_unit = None  # the unit an unfinished run's record names

    def survey(self):
        sup = self.sup
        up = sup.running()
        procs = sup.processes() if up else {}
        daemon_pid = sup.pid() if up else None
        return Survey(up, [n for n, p in procs.items() if p.state in RUNNING_STATES],
                      [daemon_pid] + [p.pid for p in procs.values()], (procs, daemon_pid))

    def adopt(self, pending):
        self.recorded_unit = pending.unit
        if pending.unit:
            self.sup.unit = pending.unit  # stopped through its unit: started through it too

    def plan_stop(self, survey, mountpoints, before, carried):
        sup = self.sup
        procs, daemon_pid = survey.detail
        if not procs and daemon_pid is None:
            return None
        devices = processes.devices_of(mountpoints)
        holders = processes.holders(mountpoints, exclude={os.getpid()})
        if supervisord_on_datasets(self.files, holders, devices, daemon_pid):
            sup.find_unit(daemon_pid)
            if not sup.unit and not sup.daemon:
                raise Refused("supervisord has its files on the datasets, so the rollback must "
                              "shut it down, but the supervisord option is none and it could "
                              "not be started again: set the option (bin/supervisord); nothing "
                              "was changed")
            return StopPlan(
                "shutdown supervisord (its files are on the datasets%s), stopping %s" % (
                    ", through systemctl: unit " + unit_label(sup.unit) if sup.unit else "",
                    ", ".join(stop_order(before, procs)) or "no program"),
                # The unit is recorded (a save, a crash point) only when it is news.
                record={"unit": sup.unit} if sup.unit != self.recorded_unit else {},
                shutdown=True,
                names=stop_order(before, procs), detail=survey.detail)
        names = [n for n in sup.selected(procs) if procs[n].state in RUNNING_STATES]
        # What runs after: what this run stops, and what an unfinished run had stopped.
        record = {"running_before": names + [n for n in carried if n not in names]}
        if not names:
            return StopPlan("stop nothing (no selected program runs)", record)
        return StopPlan("stop %s" % ", ".join(names), record, names=names,
                        detail=survey.detail)

    def stop(self, plan):
        sup = self.sup
        procs, daemon_pid = plan.detail
        if plan.shutdown:
            pids = [daemon_pid] + [p.pid for p in procs.values() if p.pid]
            alive = sup.shutdown(pids, time.monotonic() + sup.timeout)
            if not alive:
                return Outcome("stop supervisord")
            # supervisord stops its programs one after another, in reverse priority order:
            # the first of them still alive is the one it is waiting for.
            left = [n for n in stop_order(procs, procs) if procs[n].pid in alive]
            stuck = left[:1] or ["supervisord"]
            # supervisor kills them after their stopwaitsecs: wait, then start again.
            alive = processes.wait_gone(alive, time.monotonic() + sup.timeout + 60)
            if alive:
                return Outcome("stop supervisord", stuck="%s did not stop (pids %s still run "
                               "after supervisord was shut down)" % (
                                   ", ".join(stuck), " ".join(map(str, alive))))
            return Outcome("stop supervisord", late="%s did not stop within %d s%s" % (
                stuck[0], sup.timeout, " (%s waited for it: supervisord stops one program "
                "after another)" % ", ".join(left[1:]) if left[1:] else ""))
        late = sup.stop(plan.names)
        log = "stop %s" % ",".join(n for n in plan.names if n not in late)
        if not late:
            return Outcome(log)
        # Wait for them to stop after all (supervisor kills them after stopwaitsecs), so that
        # every program is started again from a known state.
        sup.wait_settled(late, time.monotonic() + sup.timeout + 60)
        return Outcome(log, late="%s did not stop within %d s" % (", ".join(late),
                                                                  sup.timeout))

    def start(self, wanted, out):
        sup = self.sup
        if not sup.running():  # asked, not read from the record: a rerun may find it up
            out.action("start supervisord" + (" (%s)" % unit_shown(sup.unit, "start")
                                              if sup.unit else ""))
            sup.start_daemon()
            out.log("start supervisord")
            procs = sup.processes()
            # supervisord starts its autostart programs: put each back as it was before.
            extra = [n for n, p in procs.items() if p.state in RUNNING_STATES + ("STOPPING",)
                     and n not in wanted]
            if extra:
                out.action("stop %s (did not run before the rollback)" % ", ".join(extra))
                sup.stop(extra)
        procs = sup.processes()
        deadline = sup.start_deadline(wanted, procs)
        missing = [n for n in wanted if n in procs and procs[n].state not in RUNNING_STATES]
        if missing:
            out.action("start %s" % ", ".join(missing))
        failed = sup.start(missing, deadline) if missing else []
        states = sup.states()
        unknown = [n for n in wanted if n not in states]
        late = [n for n in wanted if n not in failed and states.get(n) != "RUNNING"]
        if late:
            sup.wait_settled(late, deadline)
            states = sup.states()
            late = [n for n in late if states.get(n) != "RUNNING"]
        out.log("start %s" % ",".join(n for n in wanted if states.get(n) == "RUNNING"))
        return failed + [n for n in late if n not in failed] + [
            n for n in unknown if n not in failed]

    def start_hint(self, names):
        hints = []
        try:
            if not self.sup.running():
                hints.append(self.sup.start_hint())
        except ManagerError:  # it cannot be asked: say how to start it anyway
            hints.append(self.sup.start_hint())
        if names:
            hints.append("%s start %s" % (self.ctl, " ".join(names)))
        return "; ".join(hints)

    def logs_hint(self, names):
        return "%s (%s tail %s)" % ("its log" if len(names) == 1 else "their logs", self.ctl,
                                    names[0])


def supervisord_of(site, client):
    """The adapter for the part's supervisord, or None when the part names none. `client`:
    makes the XML-RPC client from the site (rollback.run.supervisor_of)."""
    sup = client(site)
    if sup is None:
        return None
    return Supervised(sup, site.config.get("supervisord_files", ()),
                      site.config.get("supervisorctl"))
