"""The systemd adapter (procman): the site's own systemd units (the part's systemd-units, in
start order), for sites whose ZEO server and clients are units of their own, with no
supervisord.

Stopped and started only through systemctl, so that Restart= never fights the rollback (a
unit stopped by systemctl is not restarted; one killed behind systemd's back is), each job
queued (--no-block) and its unit watched until it is done, with the part's stop-timeout: the
clients stopped before their ZEO server, started after it, each active before the next.
Started again: only the units that were active. Never asking for a password: a system unit
through the part's privilege prefix (sudo -n) when not root, a user's units through that
user's manager.
"""
import os
import pwd
import time

from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.manager import run_command
from collective.recipe.zfssnap.processes import POLL
from collective.recipe.zfssnap.procman import Outcome
from collective.recipe.zfssnap.procman import ProcessManager
from collective.recipe.zfssnap.procman import Refused
from collective.recipe.zfssnap.procman import StopPlan
from collective.recipe.zfssnap.procman import Survey
from collective.recipe.zfssnap.systemd import systemctl_argv
from collective.recipe.zfssnap.systemd import systemctl_env
from collective.recipe.zfssnap.systemd import unit_shown

PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "ControlGroup",
              "TriggeredBy")
RUNS = ("active", "activating", "reloading")
DOWN = ("inactive", "failed")
TRIGGERS = ("socket", "timer", "path")
STEADY = 1.0  # how long a started unit stays active before it counts as running
STATUS_LINES = 6


def parse_show(text, names):
    """{name: {property: value}} from `systemctl show` of `names` (one block each, in order,
    blank lines between)."""
    blocks, current = [], {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    if len(blocks) != len(names):
        raise ManagerError("systemctl show answered %d units for %d (%s)" % (
            len(blocks), len(names), " ".join(names)))
    return dict(zip(names, blocks))


def cgroup_pids(group):
    """Every process of a unit's control group and the groups below it (cgroup v2, or the
    systemd hierarchy of v1), read from /sys/fs/cgroup."""
    pids = set()
    if not group:
        return pids
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"):
        for directory, _, files in os.walk(top + group):
            if "cgroup.procs" not in files:
                continue
            try:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    pids.update(int(p) for p in f.read().split())
            except (OSError, ValueError):
                continue
        if pids:
            break
    return pids


class Units(ProcessManager):
    """The part's systemd units: `units` in start order, `user` the owner of the manager
    that runs them (None: the system's), `privilege` the part's prefix (sudo -n)."""

    kind = "systemd"
    label = "systemd"
    outside = "outside the part's systemd units"
    running_word = "active"

    def __init__(self, units, user=None, timeout=60, privilege=()):
        self.units = list(units)
        self.user = user
        self.timeout = timeout
        self.privilege = list(privilege)
        self.problem = None
        self.uid = None
        if user:
            try:
                self.uid = pwd.getpwnam(user).pw_uid
            except KeyError:
                self.problem = ("the systemd-user option names %r, who is not a user of this "
                                "machine: fix the option" % user)

    # -- systemctl --------------------------------------------------------------------------
    def unit_id(self, name):
        """As systemd.systemctl_argv names it: a user's unit carries the user's uid."""
        return "user/%d/%s" % (self.uid, name) if self.user else name

    def systemctl(self, args, names, what, changes=True, query=False, check=True):
        if self.problem:
            raise ManagerError(self.problem)
        first = self.unit_id(names[0])
        # A query of a system unit needs no privilege (a sudoers line may allow only the
        # stop and the start); another user's manager is reached as root.
        privilege = () if query and not self.user else self.privilege
        argv = systemctl_argv(first, args, privilege) + list(names[1:])
        return run_command(argv, self.timeout + 30, what, changes=changes,
                           env=systemctl_env(first), check=check)

    def show(self, names=None):
        names = list(names or self.units)
        text = self.systemctl(["show", "--property=" + ",".join(PROPERTIES), "--"], names,
                              "the state of " + " ".join(names), changes=False, query=True)
        shown = parse_show(text, names)
        missing = [n for n in names if shown[n].get("LoadState") in ("not-found", "bad-setting",
                                                                     "error", "masked")]
        if missing:
            raise Refused("systemd cannot run %s (%s): check the part's systemd-units%s" % (
                ", ".join(missing), ", ".join(shown[n].get("LoadState") for n in missing),
                " and systemd-user" if self.user else ""))
        return shown

    def status(self, name):
        """The first lines of `systemctl status`: what the operator would look at."""
        try:
            text = self.systemctl(["status", "--no-pager", "--full",
                                   "--lines=%d" % STATUS_LINES], [name],
                                  "the status of " + name, changes=False, query=True,
                                  check=False)
        except ManagerError as e:
            return e.message
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        return " | ".join(lines[:3 + STATUS_LINES])

    def shown(self, names, verb):
        """How the operator types it: systemctl [--user] VERB NAMES."""
        return unit_shown(self.unit_id(names[0]), verb, names[1:])

    # -- the interface ----------------------------------------------------------------------
    def survey(self):
        shown = self.show()
        running = [n for n in self.units if shown[n].get("ActiveState") in RUNS]
        pids = set()
        for n in self.units:
            main = shown[n].get("MainPID", "0")
            pids.update([int(main)] if main.isdigit() else [])
            pids.update(cgroup_pids(shown[n].get("ControlGroup")))
        return Survey(True, running, sorted(pids - {0, 1}), shown, busy=bool(running))

    def refusal(self, survey):
        # A socket, timer or path unit would start a stopped unit again during the rollback.
        triggers = sorted({t for n in self.units
                           for t in survey.detail[n].get("TriggeredBy", "").split()
                           if t not in self.units})
        if triggers:
            return ("%s can start the part's units again while the datasets are rolled back: "
                    "add %s to the part's systemd-units, then try again" % (
                        ", ".join(triggers), "it" if len(triggers) == 1 else "them"))
        return None

    def stop_order(self, names):
        """The reverse of the start order, but what starts units (sockets, timers, paths)
        first: stopped last, it could start again a unit stopped before it."""
        names = [n for n in reversed(self.units) if n in names]
        triggers = [n for n in names if n.rpartition(".")[2] in TRIGGERS]
        return triggers + [n for n in names if n not in triggers]

    def plan_stop(self, survey, mountpoints, before, carried):
        problem = self.refusal(survey)
        if problem:
            raise Refused(problem + "; nothing was changed")
        # A unit still stopping (a killed run's stop under way) is stopped and waited for too:
        # its stop job is joined. It runs again afterwards only if it ran (the record says).
        names = self.stop_order([n for n in self.units
                                 if survey.detail[n].get("ActiveState") not in DOWN])
        record = {"running_before": [n for n in self.units if n in survey.running or
                                     n in carried]}
        if not names:
            return StopPlan("stop nothing (no unit of the part is active)", record)
        return StopPlan("stop %s (%s)" % (", ".join(names), self.shown(names, "stop")),
                        record, names=names)

    def wait(self, names, done, deadline, steady=0.0):
        """Until each of `names` is in a state `done` accepts (for `steady` seconds, with the
        same main pid): the names that are not by the deadline, and the last reading."""
        seen = {}
        while True:
            shown = self.show(names)
            now = time.monotonic()
            late = []
            for n in names:
                state = (shown[n].get("ActiveState"), shown[n].get("MainPID"))
                if not done(state[0]):
                    seen.pop(n, None)
                    late.append(n)
                elif seen.setdefault(n, (state, now))[0] != state:
                    seen[n] = (state, now)
                    late.append(n)
                elif now - seen[n][1] < steady:
                    late.append(n)
            if not late or now > deadline:
                return late, shown
            time.sleep(POLL if not steady else max(POLL, 0.25))

    def stop(self, plan):
        stopped = []
        for name in plan.names:
            self.systemctl(["--no-block", "stop"], [name], "stopping " + name)
            late, _ = self.wait([name], lambda s: s in DOWN, time.monotonic() + self.timeout)
            if late:
                # systemd kills what is left after the unit's TimeoutStopSec: wait for that,
                # so that the site is started again from a known state.
                still, _ = self.wait([name], lambda s: s in DOWN,
                                     time.monotonic() + self.timeout + 60)
                log = "stop %s" % ",".join(stopped) if stopped else "stop nothing"
                why = "%s did not stop within %d s (%s: %s)" % (
                    name, self.timeout, self.shown([name], "status"), self.status(name))
                if still:
                    return Outcome(log, stuck=why)
                return Outcome(log, late=why)
            stopped.append(name)
        log = "stop %s" % ",".join(stopped)
        shown = self.show(plan.names) if plan.names else {}
        again = [n for n in plan.names if shown[n].get("ActiveState") in RUNS]
        if again:
            return Outcome(log, late="%s started again after it was stopped (%s: %s)" % (
                again[0], self.shown(again[:1], "status"), self.status(again[0])))
        return Outcome(log)

    def start(self, wanted, out):
        unknown = [n for n in wanted if n not in self.units]  # a record older than the option
        wanted = [n for n in self.units if n in wanted]
        if not wanted:
            return unknown
        shown = self.show(wanted)
        missing = [n for n in wanted if shown[n].get("ActiveState") != "active"]
        if missing:
            out.action("start %s (%s, each active before the next)" % (
                ", ".join(missing), self.shown(missing, "start")))
        failed = []
        for i, name in enumerate(missing):
            if shown[name].get("ActiveState") == "failed":
                # What systemd remembers of the failures (its start limit among them) would
                # refuse the start the operator asked for.
                self.systemctl(["reset-failed"], [name], "resetting the failed " + name)
            self.systemctl(["--no-block", "start"], [name], "starting " + name)
            # "failed" is systemd giving up (no Restart=, or its start limit hit): final. While
            # Restart= tries again the unit is "activating".
            late, now = self.wait([name], lambda s: s in ("active", "failed"),
                                  time.monotonic() + self.timeout, steady=STEADY)
            if late or now[name].get("ActiveState") != "active":
                # The next ones need it (clients their ZEO server): left as they are, named.
                failed += missing[i:]
                break
        out.log("start %s" % ",".join(n for n in wanted if n not in failed))
        return failed + unknown

    def start_hint(self, names):
        return self.shown(names, "start") if names else ""

    def logs_hint(self, names):
        return "%s (%s; journalctl%s %s)" % (
            "its status" if len(names) == 1 else "their status",
            "; ".join("%s: %s" % (self.shown([n], "status"), self.status(n)) for n in names),
            " --user-unit" if self.user else " -u", names[0])


def units_of(site, privilege=()):
    """The adapter for the part's systemd units, or None when the part names none."""
    config = site.config
    if not config.get("systemd_units"):
        return None
    return Units(config["systemd_units"], config.get("systemd_user"),
                 config.get("stop_timeout", 60), privilege)
