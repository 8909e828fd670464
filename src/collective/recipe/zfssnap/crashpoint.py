"""Crash points for the tests' crash-point sweep; inert unless the environment asks for them.

Every action of the scripts that changes something outside the process calls `done(what)`:
a zfs command that changes the pool, a supervisord call or systemctl command that stops or
starts, the supervisord started, the rollback record written or removed, a hook run, an
unmount. Read-only queries are not counted: a crash after one leaves the state that a crash
after the change before it leaves.

- ZFSSNAP_CRASH_LOG=FILE appends one line per action ("N<TAB>what") to FILE: how the sweep
  learns how many actions a normal run makes.
- ZFSSNAP_CRASH_AFTER=N makes the process kill itself with SIGKILL right after its N-th action,
  as a power cut would. A zfs child runs in a session of its own, so an action under way when
  the script dies is finished anyway: "after N" covers "during N" too.
"""
import os
import signal


_count = 0


def done(what):
    global _count
    after = os.environ.get("ZFSSNAP_CRASH_AFTER")
    log = os.environ.get("ZFSSNAP_CRASH_LOG")
    if not after and not log:
        return
    _count += 1
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write("%d\t%s\n" % (_count, " ".join(what.split())))
    if after and _count == int(after):
        os.kill(os.getpid(), signal.SIGKILL)


# zfs subcommands that change a pool; `destroy -n` is the only read-only form among them.
ZFS_CHANGES = {"snapshot", "rollback", "destroy", "clone", "rename", "set", "inherit",
               "promote", "mount", "unmount", "umount", "hold", "release", "create"}


def zfs_changes(args):
    if not args or args[0] not in ZFS_CHANGES:
        return False
    return not (args[0] == "destroy" and any(a.startswith("-") and "n" in a for a in args[1:]
                                              if not a.startswith("--")))
