"""The plan of a rollback: what it will do to each dataset, checked before anything changes,
and what it undoes (space written, ZODB transactions), shown to the operator."""
import os

from collective.recipe.zfssnap import again as againmod
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop


def plan_rollback(site, target, written=True, keep=False):
    """Everything the rollback of the datasets will do, checked before anything is changed.

    With `keep` the newer snapshots are kept (with the state rolled away from): held and
    cloned ones do not block it."""
    missing = [d for d in site.datasets if d not in target.members]
    if missing:
        raise Stop("the snapshot %s is missing on %s: rolling back only some of the datasets "
                   "would leave the site inconsistent; refusing"
                   % (target.short, ", ".join(missing)), REFUSED)
    recorded = target.recorded_datasets
    if recorded and sorted(recorded) != sorted(site.datasets):
        raise Stop("the snapshot %s was taken of %s, but this part now has %s: a rollback of "
                   "some of them would leave the site inconsistent; refusing" % (
                       target.short, ", ".join(recorded), ", ".join(site.datasets)), REFUSED)
    plan = {"target": target, "datasets": [], "keep": keep}
    blockers = []
    all_newer = site.zfs.newer(site.datasets, {d: target.members[d].createtxg
                                               for d in site.datasets})
    written = site.zfs.written_since(site.datasets, target.short) if written else {}
    for dataset in site.datasets:
        snap = target.members[dataset]
        newer = all_newer[dataset]
        for s in newer if not keep else ():
            if s.userrefs:
                blockers.append("%s is held (%s)" % (s.name, ", ".join(site.zfs.holds(s.name))))
            if s.clones:
                blockers.append("%s has clones (%s)" % (s.name, ", ".join(s.clones)))
        plan["datasets"].append({
            "dataset": dataset, "snapshot": snap.name, "newer": [s.name for s in newer],
            "written": written.get(dataset)})
    if blockers:
        raise Stop("refusing to roll back: newer snapshots must be destroyed by the rollback "
                   "but ZFS would stop half-way on these: %s; release the holds (zfs release) "
                   "or promote/destroy the clones first, or keep them (--keep); nothing was "
                   "changed" % "; ".join(blockers), REFUSED)
    return plan


def zodb_view(site, plan):
    """What the rollback undoes in each FileStorage the part knows: the transactions committed
    since the snapshot, read from the live Data.fs back to the snapshot's last one."""
    from collective.recipe.zfssnap import zodb
    table = mountsmod.zfs_mounts()
    snapshots = {e["dataset"]: e["snapshot"].split("@", 1)[1] for e in plan["datasets"]}
    views = []
    for path in site.config.get("filestorages", ()):
        then = againmod.snapshot_copy(path, snapshots, table)
        if then is None:
            continue
        view = {"path": path}
        try:
            last = zodb.last_tid(then) if os.path.exists(then) else None
            view.update(zodb.since(path, last))
        except (OSError, zodb.Unreadable) as e:
            view["error"] = str(e)
        views.append(view)
    plan["zodb"] = views
    return views


def rollback_argv(site, entry):
    return site.zfs.command + site.zfs.rollback_argv(entry["snapshot"], bool(entry["newer"]))


def same_plan(a, b):
    return [(e["dataset"], e["newer"]) for e in a["datasets"]] == \
        [(e["dataset"], e["newer"]) for e in b["datasets"]]


def show_plan(site, plan, diff=False, always=False):
    out = site.out
    say = out.plan if always else out.say
    target = plan["target"]
    say("Rollback of %s to %s (label: %s, created %s, git %s)%s" % (
        ", ".join(site.datasets), target.short, target.label or "-",
        target.properties.get("created", "?"),
        target.properties.get("git-describe") or target.properties.get("git-revision", "-"),
        ", keeping the state rolled away from" if plan.get("keep") else ""))
    for entry in plan["datasets"]:
        say("  %s: %s %s written since the snapshot" % (
            entry["dataset"], "keeps apart" if plan.get("keep") else "undoes",
            zfsmod.format_size(entry["written"] or 0)))
        for name in entry["newer"]:
            say("    %s the newer %s" % ("keeps" if plan.get("keep") else "destroys", name))
        if diff:
            summary = diff_summary(site, entry["snapshot"])
            entry["diff"] = summary
            say("    changes since: %s" % summary)
    for view in plan.get("zodb", ()):
        if "error" in view:
            say("  ZODB %s: cannot tell what it undoes (%s)" % (view["path"], view["error"]))
            continue
        if not view["count"]:
            say("  ZODB %s: no transaction since the snapshot" % view["path"])
            continue
        say("  ZODB %s: %s %d transaction%s committed since the snapshot, %s to %s:" % (
            view["path"], "keeps apart" if plan.get("keep") else "undoes", view["count"],
            "s" if view["count"] != 1 else "", view["first"], view["last"]))
        for t in view["transactions"]:
            say("    %s  %s  %s" % (t["time"], t["user"] or "-", t["description"] or "-"))
        if view["count"] > len(view["transactions"]):
            say("    ... and %d more" % (view["count"] - len(view["transactions"])))
    for database in site.config.get("external_databases") or ():
        say("  the database in %s (%s): not rolled back with the datasets; roll it back "
            "yourself to its state of %s" % (database["kind"], database["where"],
                                             target.properties.get("created", "?")))
    for zeo in site.config.get("remote_zeo_servers") or ():
        say("  the ZEO server %s (%s): not on this machine, not rolled back with the datasets; "
            "roll it back where it runs to its state of %s" % (
                zeo["server"], zeo["where"], target.properties.get("created", "?")))
    out.data["plan"] = [dict(e) for e in plan["datasets"]]
    out.data["zodb"] = plan.get("zodb", [])
    out.data["target"] = target.as_dict()


def diff_summary(site, snapshot):
    proc = site.zfs.run("diff", "-H", snapshot, check=False)
    if proc.returncode != 0:
        return "unavailable (%s)" % (proc.stderr.strip() or "zfs diff failed")
    counts = {}
    for line in proc.stdout.splitlines():
        kind = line.split("\t", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    names = {"+": "added", "-": "removed", "M": "modified", "R": "renamed"}
    return ", ".join("%d %s" % (counts[k], names[k]) for k in "+-MR" if k in counts) or \
        "no changes"


def describe_record(record):
    """One paragraph on an unfinished rollback (a Progress), for the operator, before it is
    acted on."""
    done = record.rolled_back
    pending = [d for d in record.datasets if d not in done]
    return ("An unfinished rollback to %s is recorded: started %s by %s (pid %s), stopped at "
            "'%s'; %s; datasets rolled back: %s; not yet: %s; to run again afterwards: %s." % (
                record.target, record.started, record.by, record.pid, record.stage,
                "the site runs as systemd units" if record.manager == "systemd" else
                "supervisord was shut down" if record.daemon_down else
                "supervisord ran" if record.daemon_was_running else
                "supervisord did not run",
                ", ".join(done) or "none", ", ".join(pending) or "none",
                ", ".join(record.running_before) or "nothing"))
