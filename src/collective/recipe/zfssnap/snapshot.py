"""bin/snapshot: one snapshot set of the part's datasets before a release, and --list.

ZFS takes the snapshots of one `zfs snapshot` command in one transaction group, all or
nothing, but only within a pool: datasets on several pools get one command per pool, and when
a later pool's fails the ones already taken are destroyed again, so that no half set remains.
"""
import datetime
import os
import subprocess
import time

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import BAD_INPUT
from collective.recipe.zfssnap.site import Background
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import P
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.site import current_user


def git_info(directory):
    """Revision, `git describe` and dirtiness of the buildout checkout ({} when not one).

    Read-only: no optional locks (git status would otherwise refresh the index), and the
    directory is marked safe for these calls only, since root running the scripts of a
    buildout owned by the site user is what git calls "dubious ownership".
    """
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")

    def git(*args):
        try:
            proc = subprocess.run(["git", "-c", "safe.directory=" + directory, "-C", directory]
                                  + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, errors="replace",
                                  stdin=subprocess.DEVNULL, timeout=30, env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    # One call: TAG-N-gREVISION (or REVISION without tags), +dirty when the tree has changes.
    described = git("describe", "--tags", "--always", "--long", "--abbrev=40",
                    "--dirty=+dirty")
    return parse_describe(described) if described else {}


def parse_describe(text):
    """The git properties from `git describe --tags --always --long --abbrev=40 --dirty`."""
    dirty = text.endswith("+dirty")
    text = text[:-6] if dirty else text
    parts = text.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].startswith("g"):
        tag, distance, revision = parts[0], int(parts[1]), parts[2][1:]
        describe = tag if distance == 0 else "%s-%d-g%s" % (tag, distance, revision[:7])
    else:
        revision = describe = text
    return {"git-revision": revision, "git-describe": describe,
            "git-dirty": "yes" if dirty else "no"}


def snapshot_name(site, label, now):
    short = "%s-%s" % (site.config["prefix"], now.strftime("%Y%m%dT%H%M%SZ"))
    return short + "-" + label if label else short


def by_pool(names):
    """[(pool, [names])], in the order the pools first appear (the buildout's pool first)."""
    pools = {}
    for name in names:
        pools.setdefault(zfsmod.Zfs.pool(name), []).append(name)
    return list(pools.items())


def refuse_external_database(config):
    """A ZODB in a database server is not on the datasets: a snapshot would let a rollback
    undo the code and not the data. Checked from the configuration alone, before any zfs call
    (also where there is no ZFS)."""
    found = config.get("external_databases") or []
    if not found or config.get("external_database") == "by-hand":
        return
    where = config.get("options_in") or "in the [%s] part and run bin/buildout" % (
        config.get("part"))
    raise Stop("the database is in %s (%s): a ZFS rollback would undo the code but not the "
               "data; if you roll the database back yourself with each release, set "
               "external-database = by-hand %s; no snapshot was taken" % (
                   " and ".join(sorted({d["kind"] for d in found})),
                   "; ".join(d["where"] for d in found), where), REFUSED)


def check_label(site, label, message):
    """Refuse a label or message that take_snapshot would refuse (also before a run that may
    take none: --if-changed)."""
    if label is not None:
        # ZFS allows spaces, but a label is typed in shells: letters, digits, _ - . : only.
        problem = zfsmod.check_snapshot_name(site.primary, label, what="a label",
                                             allow_space=False)
        if problem:
            raise Stop("cannot use the label '%s': %s" % (label, problem), BAD_INPUT)
    if message is not None and not message.isprintable():
        raise Stop("the message must be one line of printable characters", BAD_INPUT)


def take_snapshot(site, label=None, message=None, dry_run=False, made_by=None):
    out = site.out
    site.refuse_while_recorded("take a snapshot")
    check_label(site, label, message)
    now = datetime.datetime.now(datetime.timezone.utc)
    short = snapshot_name(site, label, now)
    datasets = site.datasets
    git = Background(git_info, site.directory)  # while the names and layout are checked
    for dataset in datasets:
        problem = zfsmod.check_snapshot_name(dataset, short)
        if problem:
            raise Stop("cannot use the snapshot name '%s': %s" % (short, problem), BAD_INPUT)
    properties = {"part": site.part, "buildout": site.directory,
                  "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "label": label or "",
                  "message": message or "", "user": current_user(),
                  "host": os.uname().nodename, "version": site.config.get("version", ""),
                  "datasets": ",".join(datasets), "made-by": made_by or ""}
    properties.update(git.result())
    # Every value is checked before anything runs (hooks included): zfs would stop half-way.
    for key, value in properties.items():
        problem = zfsmod.check_property_value(key if key != "datasets" else
                                              "list of datasets (%d)" % len(datasets), value)
        if problem:
            raise Stop("cannot take the snapshot: %s; %s" % (problem, "shorten it" if key in (
                "message", "label") else "snapshot fewer datasets per part"), BAD_INPUT)
    props = {P + k: v for k, v in properties.items() if v != ""}
    recursive = bool(site.config.get("recursive"))
    groups = by_pool("%s@%s" % (d, short) for d in site.configured)
    out.data.update(snapshot=short, datasets=datasets, properties=properties)
    # Before the dry run returns: it must refuse what the real run refuses.
    site.check_layout("take a snapshot", other_script=True)
    record = state.Record(site.places.snapshot_record, required="snapshot")
    pending = record.load()
    unfinished = unfinished_sets(site, pending=pending)
    if dry_run:
        for found in unfinished:
            for name in destroy_order(site, found) if not (found.held or found.cloned) else ():
                out.command(site.zfs.command + ["destroy", name])
        for pool, names in groups:
            out.command(site.zfs.command + site.zfs.snapshot_argv(names, props, recursive))
        return short
    # Before the hook: the hook and the snapshot it prepares stay close together.
    for found in unfinished:
        destroy_unfinished(site, found)
    if pending is not None:
        record.clear()
    site.hook("before-snapshot")
    several = len(groups) > 1
    if several:
        # Named before the first pool's snapshot, cleared after the last one's: a run killed
        # in between leaves the one set its rerun destroys, and no other set is ever taken
        # for one.
        record.save({"snapshot": short, "datasets": datasets, "stage": "taking"})
    taken = []
    started = time.monotonic()
    for pool, names in groups:
        try:
            site.zfs.snapshot(names, props, recursive)
        except zfsmod.NoZfsCommand:
            raise  # bad input (exit 2), as for the other scripts: nothing was taken
        except zfsmod.ZfsError as e:
            # A name taken already (two snapshots in one second) is the one foreseeable case.
            exists = "dataset already exists" in e.stderr
            message, left = undo_partial(site, taken, pool, "a snapshot named %s exists "
                                         "already: wait a second, or give another label" % short
                                         if exists else site.permission_message(
                                             e, "snapshot,userprop"), recursive)
            if several and not left:
                record.clear()
            raise Stop(message, BAD_INPUT if exists else FAILED)
        taken.append((pool, names))
    if several:
        record.clear()
    gap = time.monotonic() - started
    out.log("snapshot %s" % " ".join(n for _, names in groups for n in names))
    scripts = site.scripts
    out.say("Snapshot %s taken of %s." % (short, ", ".join(datasets)))
    if len(groups) > 1:
        out.note("the datasets are on %d pools (%s): one snapshot per pool, all taken within "
                 "%.2f s; each pool's is atomic" % (len(groups), ", ".join(
                     p for p, _ in groups), gap))
    out.say("Roll back to it:  %s %s" % (scripts["rollback"], short))
    out.say("Clean it up:      %s %s" % (scripts["cleanup"], short))
    try:
        # Read after the snapshot, which synced the pool: read before, the space a file
        # deleted since the last snapshot holds may not be counted yet.
        warn_about_growth(site, [s for s in site.snapshot_sets() if s.short != short])
    except zfsmod.ZfsError as e:
        out.warn("the snapshot was taken, but its space could not be read: " + e.message)
    for database in site.config.get("external_databases") or ():
        out.warn("the database in %s (%s) is not in this snapshot: roll it back yourself with "
                 "a rollback to %s" % (database["kind"], database["where"], short))
    for zeo in site.config.get("remote_zeo_servers") or ():
        out.warn("the ZEO server %s (%s) is not on this machine: its Data.fs is not in this "
                 "snapshot; snapshot it where it runs, and roll both back together" % (
                     zeo["server"], zeo["where"]))
    site.hook("after-snapshot")
    return short


def undo_partial(site, taken, failed_pool, reason, recursive):
    """(message, whether some are left) for a snapshot that failed on one pool after others
    were taken, which are destroyed again here (the buildout's last, as the rerun would): a
    half set would roll back some datasets and not others."""
    if not taken:
        return "the snapshot failed: %s; no snapshot was taken" % reason, False
    destroyed, left = [], []
    for pool, names in reversed(taken):
        for name in reversed(names):
            try:
                site.zfs.destroy(name, recursive=recursive)
                destroyed.append(name)
            except zfsmod.ZfsError as e:
                left.append((name, e.message))
    site.out.log("snapshot failed on pool %s; destroyed again: %s" % (
        failed_pool, " ".join(destroyed) or "-"))
    if left:
        return ("the snapshot failed on pool %s: %s; destroying the ones already taken on the "
                "other pools failed too, so a half set is left: %s; the next %s destroys it, "
                "or destroy them by hand (zfs destroy%s NAME)" % (
                    failed_pool, reason, "; ".join("%s (%s)" % item for item in left),
                    site.scripts["snapshot"], " -r" if recursive else "")), True
    return ("the snapshot failed on pool %s: %s; the snapshots already taken on the other "
            "pools (%s) were destroyed again: no snapshot was taken" % (
                failed_pool, reason, ", ".join(n for _, names in taken for n in names
                                               if n in destroyed))), False


def unfinished_sets(site, sets=None, pending=None):
    """The set a bin/snapshot on several pools left when it stopped between two of them: the
    one its record names (written before the first pool's snapshot, removed after the last),
    when that set misses datasets; [] or [it].

    Only that set: one missing datasets for any other reason (a member destroyed or rolled
    back by hand, a dataset added since) is shown by --list and left to bin/cleanup.
    """
    if pending is None:
        pending = state.Record(site.places.snapshot_record, required="snapshot").load()
    if not pending:
        return []
    sets = site.snapshot_sets() if sets is None else sets
    return [s for s in sets if s.short == pending["snapshot"] and s.missing]
def destroy_order(site, found):
    """The members' names, in the order they are destroyed (Site.primary_last)."""
    return [found.members[d].name for d in site.primary_last if d in found.members]


def destroy_unfinished(site, found):
    out = site.out
    what = "the unfinished snapshot set %s (a bin/snapshot stopped before it reached %s)" % (
        found.short, ", ".join(found.missing))
    if found.held or found.cloned:
        out.warn("%s is kept: %s; release it, then run %s %s" % (what, "; ".join(
            ["held: " + ", ".join(found.held)] * bool(found.held) +
            ["cloned: " + ", ".join(found.cloned)] * bool(found.cloned)),
            site.scripts["cleanup"], found.short))
        return
    destroyed = []
    for name in destroy_order(site, found):
        out.action("destroy " + name)
        try:
            site.zfs.destroy(name)
        except zfsmod.ZfsError as e:
            raise Stop("destroying %s failed: %s; destroyed before it: %s; no new snapshot was "
                       "taken" % (name, site.permission_message(e, "destroy,mount"),
                                  ", ".join(destroyed) or "nothing"))
        destroyed.append(name)
        out.log("destroy " + name)
    site.out.data.setdefault("destroyed_unfinished", []).append(found.short)
    out.say("Destroyed %s." % what)


def warn_about_growth(site, older):
    """`older`: the part's sets but the new one, read after it was taken."""
    sets = older
    retain = site.config.get("retain", 0)
    scripts = site.scripts
    if len(older) > retain:
        site.out.warn("%d older snapshot(s) of this part are kept beyond retain = %d (%s): "
                      "they grow as the data changes; run %s when the release is good"
                      % (len(older), retain, ", ".join(s.short for s in older),
                         scripts["cleanup"]))
    limit = site.config.get("warn_size")
    if not limit or not sets:
        return
    # What destroying them all would free: space shared by several snapshots is in no one's
    # `used`, but it is held all the same. All snapshots of the datasets (any tool's) hold at
    # least that much: when they hold less than the limit, the exact figure is not needed.
    if sum(site.snapshot_space.values()) <= limit:
        return
    # Held and cloned ones cannot be destroyed (zfs destroy -n refuses the whole list).
    free = [s for s in sets if not s.held and not s.cloned]
    held = sum(site.zfs.reclaimable(d, shorts) for d in site.datasets
               for shorts in [[s.short for s in free if d in s.members]] if shorts)
    if held > limit:
        site.out.warn("this part's snapshots hold %s, more than warn-size = %s: run %s"
                      % (zfsmod.format_size(held), zfsmod.format_size(limit),
                         scripts["cleanup"]))


def list_snapshots(site):
    from collective.recipe.zfssnap import keep
    try:
        stage = site.unsettled_keep("list")
    except Stop as e:  # listing changes nothing: say it, and list
        site.out.warn(e.message.replace("refusing to list: ", "").replace(
            "; nothing was changed", ""))
        stage = None
    if stage:
        site.out.warn("an unfinished bin/rollback --keep is recorded (stage '%s'): until %s "
                      "finishes it, what is listed by the datasets' names may be the state "
                      "rolled away from" % (stage, site.scripts["rollback"]))
    kept = Background(keep.kept_datasets, site)
    sets = site.snapshot_sets()
    kept = kept.result()
    site.out.data["snapshots"] = [s.as_dict() for s in sets]
    site.out.data["kept"] = kept
    if kept:
        site.out.say("States kept by bin/rollback --keep (read-only, not mounted; look inside "
                     "with zfs set mountpoint=/mnt/rolled-away NAME):")
        for k in kept:
            site.out.say("  %s  (%s before the rollback to %s, %s)" % (
                k["name"], k.get("dataset", "?"), k.get("target", "?"), k.get("created", "?")))
    if not sets:
        site.out.say("This %s has no snapshots of %s." % (site.noun, site.primary))
        return
    unfinished = unfinished_sets(site, sets)
    for s in sets:
        if s.missing:
            site.out.warn("the snapshot set %s is missing on %s: it cannot be rolled back to; %s"
                          % (s.short, ", ".join(s.missing), (
                              "a bin/snapshot stopped before it reached them, and the next %s "
                              "destroys it" % site.scripts["snapshot"]) if s in unfinished else
                             "destroy it with %s %s" % (site.scripts["cleanup"], s.short)))
    rows = [("NAME", "CREATED", "LABEL", "GIT", "USED", "HELD")]
    for s in sets:
        rows.append((s.short, s.properties.get("created", "?"), s.label or "-",
                     (s.properties.get("git-describe") or s.properties.get("git-revision", "-")
                      )[:20] or "-", zfsmod.format_size(s.used), "held" if s.held else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        site.out.say("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
