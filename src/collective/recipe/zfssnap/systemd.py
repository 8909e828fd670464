"""systemd units as the rollback meets them: which unit runs a process (its cgroup, checked
against the unit's main pid), and systemctl for it, never asking for a password, a user's unit
through that user's manager, a system unit through the part's privilege prefix when not root."""
import os
import re

from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.manager import run_command
from collective.recipe.zfssnap.state import user_name


def parse_cgroup_unit(text):
    """The systemd service of a /proc/PID/cgroup text: 'site.service' for a system unit
    ('0::/system.slice/site.service'), 'user/UID/site.service' for a unit of a user's own
    manager ('0::/user.slice/user-1000.slice/user@1000.service/app.slice/site.service')."""
    for line in text.splitlines():
        parts = line.split(":", 2)[-1].split("/")
        for i in range(len(parts) - 1, -1, -1):
            if parts[i].endswith(".service"):
                manager = [p for p in parts[:i] if re.match(r"^user@\d+\.service$", p)]
                if manager:
                    return "user/%s/%s" % (manager[-1][5:-8], parts[i])
                if re.match(r"^user@\d+\.service$", parts[i]):
                    return None  # the user's manager itself, not a unit of it
                return parts[i]
    return None


def systemctl_argv(unit, args, privilege=()):
    """systemctl for `unit` (as parse_cgroup_unit names it): never asking for a password, a
    user's unit through that user's manager, and a system unit through the part's privilege
    prefix (`privilege`, e.g. sudo -n) when not root."""
    root = os.geteuid() == 0
    if unit.startswith("user/"):
        _, uid, name = unit.split("/", 2)
        if os.geteuid() == int(uid):
            base = ["systemctl", "--user"]
        else:
            base = ([] if root else list(privilege)) + [
                "systemctl", "--user", "--machine=%s@.host" % user_name(int(uid))]
    else:
        name = unit
        base = ([] if root else list(privilege)) + ["systemctl"]
    return base + ["--no-ask-password"] + list(args) + [name]


def unit_shown(unit, verb, more=()):
    """How the operator types it: 'systemctl [--user] VERB NAME [MORE...]', another user's
    manager reached with --machine (as root does); `more`: names of the same manager."""
    if unit.startswith("user/"):
        _, uid, name = unit.split("/", 2)
        scope = "--user " if os.geteuid() == int(uid) else \
            "--user --machine=%s@.host " % user_name(int(uid))
    else:
        name, scope = unit, ""
    return "systemctl %s%s %s" % (scope, verb, " ".join([name] + list(more)))


def unit_label(unit):
    """'site.service', or 'site.service of user plone's manager'."""
    if unit.startswith("user/"):
        _, uid, name = unit.split("/", 2)
        return "%s of user %s's manager" % (name, user_name(int(uid)))
    return unit


def systemctl_env(unit):
    """A user's manager is found through XDG_RUNTIME_DIR, which cron and su leave unset."""
    if not unit.startswith("user/") or os.environ.get("XDG_RUNTIME_DIR"):
        return None
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = "/run/user/%s" % unit.split("/", 2)[1]
    return env


def systemd_unit(pid, privilege=()):
    """The systemd service whose main process is `pid`, or None (started by hand, no systemd).

    The cgroup alone is not enough: a supervisord started by hand from another service's
    shell lives in that service's cgroup, and stopping that unit would stop the wrong thing.
    """
    try:
        with open("/proc/%d/cgroup" % pid) as f:
            unit = parse_cgroup_unit(f.read())
    except OSError:
        return None
    if not unit:
        return None
    try:
        # A query: a system unit's needs no privilege (a sudoers line may allow only stop
        # and start); a unit of another user's manager is reached as root.
        main = run_command(systemctl_argv(unit, ["show", "--property=MainPID", "--value"],
                                          privilege if unit.startswith("user/") else ()),
                           30, "the main process of " + unit,
                           changes=False, env=systemctl_env(unit)).strip()
    except ManagerError:
        return None
    return unit if main == str(pid) else None
