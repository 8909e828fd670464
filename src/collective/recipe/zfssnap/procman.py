"""The process manager as bin/rollback meets it: one interface, two adapters.

What a rollback needs of a process manager is small: what runs now (a Survey), how to stop
what runs on the datasets (a StopPlan, shown and recorded before anything is stopped), stopping
it and waiting (an Outcome), starting again, in order, exactly what ran, waiting until it runs,
and how the operator does each by hand. Downtime (downtime.py) speaks only to this interface;
the record keeps the names the adapter gives.

The adapters: procman_supervisord (the site's supervisord, over its XML-RPC socket) and
procman_systemd (the site's own systemd units, through systemctl).
"""
from collective.recipe.zfssnap.manager import ManagerError


class Refused(ManagerError):
    """The adapter will not stop the site this way (or the part names what the manager does
    not know); nothing was stopped. One sentence."""


class Survey:
    """What runs now: `up` (the manager answers), `running` (the names that run, in start
    order), `pids` (the manager's own processes and those it runs: expected holders of files
    on the datasets, not blockers) and `detail` (the adapter's own reading)."""

    __slots__ = ("up", "running", "pids", "detail", "busy")

    def __init__(self, up, running=(), pids=(), detail=None, busy=None):
        self.up = up
        self.running = list(running)
        self.pids = [p for p in pids if p]
        self.detail = detail
        # Something of the site's runs that must not while datasets are swapped: supervisord
        # itself counts (it may start programs), systemd only through the part's units.
        self.busy = up if busy is None else busy


class StopPlan:
    """How the stop goes: `action` (the line shown before), `record` (the record's changes
    saved before the first stop: what runs again at the end), `shutdown` (the manager itself
    is stopped), `names` (what is stopped, in stop order) and `detail` (the adapter's own)."""

    __slots__ = ("action", "record", "shutdown", "names", "detail")

    def __init__(self, action, record=None, shutdown=False, names=(), detail=None):
        self.action = action
        self.record = dict(record or {})
        self.shutdown = shutdown
        self.names = list(names)
        self.detail = detail


class Outcome:
    """How the stop went: `log` (the log line), `late` (why the rollback is aborted and the site
    started again: something did not stop in time) and `stuck` (why it cannot even be started
    again: something still runs after the wait)."""

    __slots__ = ("log", "late", "stuck")

    def __init__(self, log, late=None, stuck=None):
        self.log = log
        self.late = late
        self.stuck = stuck


class ProcessManager:
    """The interface. `kind` is recorded (a rerun refuses a record of another kind), `label`
    names the manager in sentences, `outside` the processes it does not run, `running_word`
    what a started program is called once it runs."""

    kind = label = outside = running_word = None

    def survey(self):
        """A Survey; ManagerError when the manager cannot be asked."""
        raise NotImplementedError

    def adopt(self, pending):
        """Take over what an unfinished run recorded (a Progress) about how it stopped."""

    def refusal(self, survey):
        """Why the site cannot be stopped safely through this manager, or None: checked by
        --dry-run too, before anything is changed."""
        return None

    def plan_stop(self, survey, mountpoints, before, carried):
        """A StopPlan, or None when nothing runs; Refused when it cannot be stopped safely.
        `before`: what the record says runs again at the end; `carried`: what an unfinished
        run had stopped."""
        raise NotImplementedError

    def stop(self, plan):
        """Stop as planned and wait: an Outcome. ManagerError when a stop cannot be asked."""
        raise NotImplementedError

    def start(self, wanted, out):
        """Start the manager if it is down, then the names in `wanted` not running, in start
        order, each running before the next; the names that did not get to run. Shows each
        action on `out` before it, logs it after."""
        raise NotImplementedError

    def start_hint(self, names):
        """How the operator starts `names` (and the manager) by hand."""
        raise NotImplementedError

    def logs_hint(self, names):
        """Where the operator reads why `names` did not start."""
        raise NotImplementedError

