"""bin/cleanup: destroy the part's own snapshot sets once a release is good.

One `zfs destroy DATASET@a,b,c` per dataset (batched only where the list would be too long for
one argument), the primary dataset last: its snapshots are how a set is found again, so a
cleanup that fails half-way leaves nothing behind that the next one cannot see.
"""
import datetime
import time

from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Background
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.site import find_in


def protected_target(site):
    """The snapshot an unfinished rollback is rolling back to: never destroyed under it."""
    data = site.recorded_rollback("clean up")
    return data["target"] if data else None


def destroy_kept(site, kept, dry_run):
    """Destroy states kept by bin/rollback --keep (with their snapshots); the names (with
    `dry_run`, of those it would destroy)."""
    out = site.out
    gone = []
    for k in kept:
        rows = zfsmod.parse_table(site.zfs.run(
            "list", "-H", "-p", "-t", "all", "-o", "name,type,userrefs", "-r",
            k["name"]).stdout, ("name", "type", "userrefs"))
        others = [r["name"] for r in rows if r["name"] != k["name"] and r["type"] != "snapshot"]
        if others:
            # Not the part's to destroy: a dataset someone made (or renamed) inside it.
            out.warn("skipped the kept %s: it holds %s, which %s not kept state of this part; "
                     "move %s out (zfs rename), then run %s again" % (
                         k["name"], ", ".join(others), "is" if len(others) == 1 else "are",
                         "it" if len(others) == 1 else "them", site.scripts["cleanup"]))
            continue
        held = [r["name"] for r in rows if r["userrefs"] not in ("0", "-")]
        if held:
            out.warn("skipped the kept %s: its snapshots %s are held (zfs release them first)"
                     % (k["name"], ", ".join(held)))
            continue
        argv = site.zfs.command + ["destroy", "-r", k["name"]]
        if dry_run:  # listed as the real run would: --json's destroyed_kept says what would go
            out.command(argv)
            gone.append(k["name"])
            continue
        # The dataset that replaced it may still be its clone: promote it first.
        origin = site.zfs.get([k["dataset"]], ["origin"]).get(k["dataset"], {}).get("origin", "")
        if origin.startswith(k["name"] + "@"):
            site.zfs.run("promote", k["dataset"])
        out.action(" ".join(argv))
        try:
            site.zfs.destroy(k["name"], recursive=True)
        except zfsmod.ZfsError as e:
            raise Stop("destroying the kept %s failed: %s; destroyed before it: %s" % (
                k["name"], site.permission_message(e, "destroy,mount"),
                ", ".join(gone) or "nothing"))
        out.log("destroy -r " + k["name"])
        gone.append(k["name"])
    return gone


def choose(site, sets, names, older_than):
    """The sets to destroy: the ones named (`names` not None), or all but the newest `retain`
    (older than AGE)."""
    if names is not None:
        chosen = []
        for name in names:
            found = find_in(site, sets, name)
            if found not in chosen:
                chosen.append(found)
        return chosen
    retain = site.config.get("retain", 0)
    # Only sets that can be rolled back to are kept for it: one missing on a dataset (a run
    # stopped between pools) must not take the place of the last whole one.
    whole = [s for s in sets if not s.missing]
    kept = whole[-retain:] if retain else []
    chosen = [s for s in sets if s not in kept]
    if older_than is not None:
        limit = time.time() - older_than
        chosen = [s for s in chosen if s.created < limit]
    return chosen


def ask(site, kept, chosen, confirm):
    """More than one thing to destroy: the list, and a 'yes' (--yes for scripts)."""
    going = [k["name"] for k in kept]

    def blocked(s):
        # Held, or cloned by something other than a kept state destroyed before it.
        return s.held or any(not any(c == k or c.startswith(k + "/") for k in going)
                             for c in s.cloned)

    sets = [s.short for s in chosen if not blocked(s)]
    if len(going) + len(sets) <= 1:
        return
    site.out.plan("bin/cleanup will destroy %s." % "; ".join(
        (["the kept states " + ", ".join(going)] if going else []) +
        (["the snapshot sets " + ", ".join(sets)] if sets else [])))
    if confirm is None or not confirm():
        raise Stop("not confirmed: nothing was destroyed", REFUSED)


def cleanup(site, names=(), older_than=None, dry_run=False, yes=False, confirm=None):
    from collective.recipe.zfssnap import keep as keepmod
    out = site.out
    site.refuse_while_unsettled("clean up")
    sets = Background(site.snapshot_sets)  # read while the kept states are looked up
    kept = keepmod.kept_datasets(site)
    named = list(names)
    if named:
        kept = [k for k in kept if k["name"] in named]
        names = [n for n in named if n not in [k["name"] for k in kept]]
    elif older_than is not None:
        limit = datetime.datetime.fromtimestamp(time.time() - older_than,
                                                datetime.timezone.utc)
        kept = [k for k in kept if k.get("created", "") < limit.strftime("%Y%m%dT%H%M%SZ")]
    chosen = choose(site, sets.result(), names if named else None, older_than)
    target = protected_target(site)
    if not dry_run and not yes:
        ask(site, kept, [s for s in chosen if s.short != target], confirm)
    # Kept states first: the snapshots they were rolled back to are their clones' origins.
    out.data["destroyed_kept"] = destroy_kept(site, kept, dry_run)
    if out.data["destroyed_kept"] and not dry_run:
        # The sets shown, read again: a kept state gone, its origin is not cloned any more.
        shorts = [s.short for s in chosen]
        chosen = [s for s in site.snapshot_sets() if s.short in shorts]
    skipped = [s for s in chosen if s.held or s.cloned]
    for s in skipped:
        out.warn("skipped %s: %s" % (s.short, "; ".join(
            ["held: " + ", ".join(s.held)] * bool(s.held) +
            ["cloned: " + ", ".join(s.cloned)] * bool(s.cloned))))
    for s in chosen:
        if s.short == target:
            out.warn("skipped %s: an unfinished rollback goes back to it (see %s)"
                     % (s.short, site.scripts["rollback"]))
            skipped.append(s)
    chosen = [s for s in chosen if s not in skipped]
    out.data.update(destroyed=[s.short for s in chosen], skipped=[s.short for s in skipped])
    if not chosen:
        out.say("Nothing else to clean up." if out.data["destroyed_kept"] else
                "Nothing to clean up.")
        out.data["freed"] = 0
        return
    by_dataset = {}
    for dataset in site.primary_last:
        shorts = [s.members[dataset].short for s in chosen if dataset in s.members]
        if shorts:
            by_dataset[dataset] = shorts
    batches = ["%s@%s" % (d, ",".join(batch)) for d, shorts in by_dataset.items()
               for batch in zfsmod.comma_batches(shorts)]
    if dry_run:
        try:
            freed = sum(site.zfs.reclaimable(d, shorts) for d, shorts in by_dataset.items())
        except zfsmod.ZfsError as e:
            raise Stop(site.permission_message(e, "destroy,mount"))
        out.data["freed"] = freed
        for name in batches:
            out.command(site.zfs.command + ["destroy", name])
        out.say("Would destroy %s, freeing %s." % (", ".join(s.short for s in chosen),
                                                 zfsmod.format_size(freed)))
        return
    destroyed = []
    freed = 0
    for name in batches:
        out.action("destroy " + name)
        try:
            freed += site.zfs.destroy(name)
        except zfsmod.ZfsError as e:
            out.data["freed"] = freed
            raise Stop("destroying %s failed: %s; destroyed before it: %s" % (
                name, site.permission_message(e, "destroy,mount"),
                ", ".join(destroyed) or "nothing"))
        destroyed.append(name)
        out.log("destroy " + name)
    out.data["freed"] = freed
    out.say("Destroyed %s, freed %s." % (", ".join(s.short for s in chosen),
                                         zfsmod.format_size(freed)))
