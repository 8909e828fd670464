"""Crash points for the tests' crash-point sweep; inert unless a test asks for them.

Every action of the scripts that changes something outside the process calls `done(what)`:
a zfs command that changes the pool, a supervisord call or systemctl command that stops or
starts, the supervisord started, the rollback record written or removed, a hook run, an
unmount. Read-only queries are not counted: a crash after one leaves the state that a crash
after the change before it leaves.

A test opts in with ZFSSNAP_CRASH_TEST=1 beside one or both of:

- ZFSSNAP_CRASH_LOG=FILE appends one line per action ("N<TAB>what") to FILE: how the sweep
  learns how many actions a normal run makes.
- ZFSSNAP_CRASH_AFTER=N makes the process kill itself with SIGKILL right after its N-th action,
  as a power cut would. A zfs child runs in a session of its own, so an action under way when
  the script dies is finished anyway: "after N" covers "during N" too.
- ZFSSNAP_CRASH_HOW=power (with ZFSSNAP_CRASH_AFTER) cuts the machine's power there instead:
  the kernel reboots at once, unsynced (sysrq b), and what had not reached the disks is lost.
  Only in the lab's guest (booted with its init), as root (the power-cut sweep); anywhere
  else, or where the trigger cannot be written, the process is killed as without it.

The four are read once, when the script starts, and taken out of its environment, so that
hooks, supervisord and the programs it starts never inherit them. Nothing here raises: a value
that is not a whole number above 0, or a log that cannot be opened (never through a symbolic
link), turns that crash point off with one line on stderr.
"""
import os
import signal
import sys


VARIABLES = ("ZFSSNAP_CRASH_TEST", "ZFSSNAP_CRASH_AFTER", "ZFSSNAP_CRASH_LOG",
             "ZFSSNAP_CRASH_HOW")
SYSRQ = "/proc/sysrq-trigger"
LAB_INIT = "init=/sbin/lab-init"  # tests/lab/lab.py boots its guest so


def _warn(message):
    try:
        sys.stderr.write("crash points: %s\n" % message)
    except (OSError, ValueError, AttributeError):
        pass


def read(environ=os.environ):
    """(after, log, power) from the environment, which loses the variables: (None, None,
    False) unless a test opted in."""
    values = {name: environ.pop(name, None) for name in VARIABLES}
    if values["ZFSSNAP_CRASH_TEST"] != "1":
        if values["ZFSSNAP_CRASH_AFTER"] or values["ZFSSNAP_CRASH_LOG"]:
            _warn("ignored: ZFSSNAP_CRASH_AFTER and ZFSSNAP_CRASH_LOG take effect only with "
                  "ZFSSNAP_CRASH_TEST=1 (the test suite's opt-in)")
        return None, None, False
    how = values["ZFSSNAP_CRASH_HOW"] or "kill"
    if how not in ("kill", "power"):
        _warn("ZFSSNAP_CRASH_HOW=%r is neither kill nor power: killed instead" % how)
    after = values["ZFSSNAP_CRASH_AFTER"]
    if after is not None:
        after = after.strip()
        if not (after.isdigit() and after.isascii() and 0 < int(after) < 1 << 31):
            _warn("ZFSSNAP_CRASH_AFTER=%r is not a whole number above 0: no crash" % after)
            after = None
        else:
            after = int(after)
    return after, values["ZFSSNAP_CRASH_LOG"] or None, how == "power"


_after, _log_path, _power = read()
_log_fd = None
_count = 0


def _append(line):
    global _log_fd, _log_path
    if _log_fd is None:
        try:
            _log_fd = os.open(_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600)
        except OSError as e:
            _warn("cannot write the log %s (%s): no log" % (_log_path, e.strerror))
            _log_path = None
            return
    try:
        os.write(_log_fd, line.encode("utf-8", "replace"))
    except OSError as e:
        _warn("cannot write the log %s (%s): no log" % (_log_path, e.strerror))
        _log_path = None


def done(what):
    global _count
    if _after is None and _log_path is None:
        return
    _count += 1
    if _log_path is not None:
        _append("%d\t%s\n" % (_count, " ".join(str(what).split())))
    if _after is not None and _count == _after:
        if _power:
            cut_power()
        os.kill(os.getpid(), signal.SIGKILL)


def in_lab_guest():
    """Booted by the lab (its init on the kernel command line): nowhere else may a test's
    variable turn a script into a power switch."""
    try:
        with open("/proc/cmdline") as f:
            return LAB_INIT in f.read().split()
    except OSError:
        return False


def cut_power():
    """The machine off at once, nothing synced: returns only when that could not be done."""
    if not in_lab_guest():
        _warn("ZFSSNAP_CRASH_HOW=power outside the lab's guest: killed instead")
        return
    try:
        fd = os.open(SYSRQ, os.O_WRONLY)
        try:
            os.write(fd, b"b")
        finally:
            os.close(fd)
    except OSError as e:
        _warn("cannot cut the power through %s (%s): killed instead" % (SYSRQ, e.strerror))


# zfs subcommands that change a pool; `destroy -n` is the only read-only form among them.
ZFS_CHANGES = {"snapshot", "rollback", "destroy", "clone", "rename", "set", "inherit",
               "promote", "mount", "unmount", "umount", "hold", "release", "create"}


def zfs_changes(args):
    if not args or args[0] not in ZFS_CHANGES:
        return False
    return not (args[0] == "destroy" and any(a.startswith("-") and "n" in a for a in args[1:]
                                              if not a.startswith("--")))
