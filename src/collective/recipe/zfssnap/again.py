"""A second rollback to the snapshot a finished one went back to: what it would lose.

A finished rollback leaves a small record outside the datasets (state.Places.finished): the
set it went back to, its snapshots' guids, when, and the last ZODB transaction of each Data.fs
then. A rollback to the same set later (an orchestrator run again, a habit, a typo) would undo
everything the site did since: it is named and asked for (--again when not asked), and with
nothing written since there is nothing to do unless --again asks for it.
"""
import os
import time

from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap import zodb
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop


def snapshot_copy(path, snapshot_of, table):
    """Where the file at `path` is in its dataset's snapshot (`snapshot_of`: dataset -> short
    name), through the snapshot directory; None when `path` is on none of those datasets."""
    mount = mountsmod.holding(path, table) if os.path.exists(path) else None
    if mount is None or mount.dataset not in snapshot_of:
        return None
    relative = os.path.relpath(os.path.realpath(path), mount.mountpoint)
    return os.path.join(mount.mountpoint, ".zfs", "snapshot", snapshot_of[mount.dataset],
                        relative)


def guids(site, target):
    names = [target.members[d].name for d in site.datasets if d in target.members]
    found = site.zfs.get(names, ["guid"])
    return {n: found.get(n, {}).get("guid", "") for n in names}


def remember(site, short):
    """Record that the rollback to the set `short` finished. A failure to is a warning: the
    rollback itself is done."""
    try:
        target = site.find_set(short)
        table = mountsmod.zfs_mounts()
        tids = {}
        for path in site.config.get("filestorages", ()):
            copy = snapshot_copy(path, {d: short for d in site.datasets}, table)
            try:
                tid = zodb.last_tid(copy) if copy and os.path.exists(copy) else None
            except (OSError, zodb.Unreadable):
                tid = None
            tids[path] = tid.hex() if tid else None
        state.Record(site.places.finished).save({
            "stage": "finished", "target": short, "label": target.label, "finished": state.utc_stamp(),
            "epoch": time.time(), "tids": tids, "guids": guids(site, target)})
    except (Stop, zfsmod.ZfsError, state.StateError, OSError) as e:
        site.out.warn("could not record the finished rollback in %s (%s): a second rollback to "
                      "%s will not be asked for" % (site.places.finished,
                                                     getattr(e, "message", e), short))


def finished_before(site, target, plan):
    """What a rollback to `target` again would lose, if the last finished rollback went back
    to this very set (same snapshots, by guid): {target, finished, transactions, written}."""
    try:
        done = state.Record(site.places.finished).load()
    except state.StateError as e:
        site.out.warn(e.message)
        return None
    if not done or done.get("target") != target.short:
        return None
    try:
        if done.get("guids") and done["guids"] != guids(site, target):
            return None  # a new set of the same name: not the one rolled back to
    except zfsmod.ZfsError:
        pass  # cannot tell: taken for the same set, which asks rather than rolls back
    transactions = None  # no Data.fs known: not counted
    for path, tid in (done.get("tids") or {}).items():
        if not os.path.exists(path):
            continue
        try:
            count = zodb.since(path, bytes.fromhex(tid) if tid else None)["count"]
        except (OSError, ValueError, zodb.Unreadable):
            continue
        transactions = (transactions or 0) + count
    written = sum(e["written"] or 0 for e in plan["datasets"])
    return {"target": target.short, "finished": done.get("finished", "?"),
            "transactions": transactions, "written": written}


def check(run, target, plan, again, yes, dry_run):
    """Before a new rollback: True when there is nothing to do (rolled back to `target`
    already, nothing written since, and not `again`). A second rollback that would lose
    something is shown, and with --yes refused unless `again` (--again)."""
    site, out = run.site, run.out
    before = finished_before(site, target, plan)
    if before is None:
        return False
    out.data["finished_rollback"] = before
    if not before["written"] and not before["transactions"]:  # None or 0
        if again:  # asked for: hooks, a restart, a fresh process run as a rollback runs them
            out.note("rolled back to %s already (%s), and nothing was written since (--again)"
                     % (target.short, before["finished"]))
            return False
        out.say("Rolled back to %s already (%s), and nothing was written since: nothing to do."
                % (target.short, before["finished"]))
        return True
    lost = ["%s written to the datasets" % zfsmod.format_size(before["written"])]
    if before["transactions"] is not None:
        lost.insert(0, "%d ZODB transaction%s" % (
            before["transactions"], "" if before["transactions"] == 1 else "s"))
    sentence = "a rollback to %s finished at %s; another one loses what was written since: %s" \
        % (target.short, before["finished"], " and ".join(lost))
    if again:
        out.note(sentence + " (--again)")
    elif dry_run:
        out.note(sentence + "; the real run asks, or needs --again")
    elif yes:
        raise Stop("%s; pass --again to roll back to it again; nothing was changed" % sentence,
                   REFUSED)
    else:
        out.plan(sentence[0].upper() + sentence[1:] + ".")
    return False
