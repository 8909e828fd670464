"""bin/rollback --keep: roll back without destroying the state rolled away from.

As boot-environment tools do: a clone of the target snapshot takes the dataset's place, and the
dataset as it was (its data, and its snapshots newer than the target, held or cloned ones
included) stays, renamed DATASET-rolled-away-STAMP, read-only and not mounted, owned by the part
(listed by bin/snapshot --list, destroyed by bin/cleanup).

Crash safety decides the order. The clones are made while the site runs, with the dataset's
mountpoint set on them and canmount=noauto. While the site is down, only the swap itself: the
old datasets are unmounted and the clones mounted in their places, then the old ones get
canmount=noauto and the clones their canmount, the buildout's dataset first off and last on:
from then on a boot (`zfs mount -a`) mounts the clones, before that the old datasets, never
the kept ones, and never the buildout over an empty data directory. Everything else waits until
the site runs again: the renames (they change no mount), the promotes (the new datasets take
over the older snapshots), and the marks that make the kept ones the part's, read-only and
unmounted for good. Which dataset is which is told by its guid, so a run killed after any step
is finished by the next one from what ZFS says, not from what the killed run meant to do.
"""
import os
import subprocess

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import P
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.swapsteps import KIND
from collective.recipe.zfssnap.swapsteps import fresh_facts
from collective.recipe.zfssnap.swapsteps import settle_steps
from collective.recipe.zfssnap.swapsteps import swap_steps


# Set when a dataset is created, or not at all by hand: a clone has its origin's.
NOT_COPIED = {"mountpoint", "canmount", "encryption", "keyformat", "keylocation",
              "pbkdf2iters", "volsize", "volblocksize", "normalization", "utf8only",
              "casesensitivity", "origin"}
SPACE_LIMITS = {"quota", "refquota", "reservation", "refreservation"}
FACTS = ("guid", "canmount", "mounted", "origin")


def kept_name(dataset, stamp):
    return "%s-rolled-away-%s" % (dataset, stamp)


def new_name(dataset, stamp):
    return "%s-rollback-%s" % (dataset, stamp)


def parents(datasets):
    """The parents of the part's datasets: where their clones and kept states live (a pool's
    root has none; --keep refuses it)."""
    return sorted({d.rsplit("/", 1)[0] for d in datasets if "/" in d})


def free_stamp(site, datasets, stamp):
    """`stamp`, or `stamp`-2, -3...: the first for which no clone or kept name is taken (a
    second --keep within the same second, or a clock set back, must not meet the names of an
    earlier one)."""
    above = parents(datasets)
    taken = set(site.zfs.run("list", "-H", "-o", "name", "-d", "1", *above).stdout.split()
                ) if above else set()
    candidate, n = stamp, 1
    while any(name in taken for d in datasets
              for name in (kept_name(d, candidate), new_name(d, candidate))):
        n += 1
        candidate = "%s-%d" % (stamp, n)
    return candidate


def refuse(why):
    raise Stop("--keep %s: roll back without --keep; nothing was changed" % why, REFUSED)


def check(site, mountpoints):
    """Refuse layouts this way of rolling back cannot swap without touching what the part does
    not own: children (a rename takes them along), anything else mounted inside the datasets
    (an unmount would take it along), legacy mountpoints (zfs neither unmounts nor mounts
    them), pool roots (they cannot be renamed)."""
    if site.config.get("recursive"):
        refuse("cannot roll back recursively (renaming a dataset renames its children)")
    roots = [d for d in site.datasets if "/" not in d]
    if roots:
        refuse("cannot rename the pool's root dataset %s" % ", ".join(roots))
    values = site.zfs.get(site.datasets, ["mountpoint"])
    legacy = [d for d in site.datasets if values.get(d, {}).get("mountpoint") == "legacy"]
    if legacy:
        refuse("does not handle datasets with mountpoint=legacy (%s)" % ", ".join(legacy))
    for a in site.datasets:
        for b in site.datasets:
            if b.startswith(a + "/"):
                refuse("cannot roll back %s and its child %s (renaming the parent renames the "
                       "child)" % (a, b))
    children = [d for d in site.zfs.descendants(site.datasets) if d not in site.datasets]
    if children:
        refuse("would rename %s along with %s, and the part does not roll %s back" % (
            ", ".join(children), "its parent" if len(children) == 1 else "their parents",
            "it" if len(children) == 1 else "them"))
    foreign = sorted({p for p in mountsmod.all_mountpoints()
                      if p not in mountpoints and any(mountsmod.is_inside(p, m)
                                                      for m in mountpoints)})
    if foreign:
        refuse("would have to unmount %s, mounted inside the datasets, and nothing would mount "
               "%s again" % (", ".join(foreign), "it" if len(foreign) == 1 else "them"))


def local_properties(site, datasets):
    """{dataset: {property: value}} of the properties set on each dataset itself."""
    proc = site.zfs.run("get", "-H", "-p", "-o", "name,property,value", "-s", "local", "all",
                        *datasets)
    props = {d: {} for d in datasets}
    for line in proc.stdout.split("\n"):
        fields = line.split("\t", 2)
        if len(fields) != 3 or fields[0] not in props or fields[1] in NOT_COPIED:
            continue
        name, value = fields[1], fields[2]
        if name in SPACE_LIMITS and value == "0":
            value = "none"  # what zfs prints as 0 with -p, and takes only as none
        props[fields[0]][name] = value
    return props


def plan_swaps(site, plan, stamp):
    """What each dataset's swap needs, read before anything is made: [{dataset, snapshot,
    new, kept, mountpoint, canmount, mounted, old_guid, new_guid, properties, buildout}]."""
    table = mountsmod.zfs_mounts()
    datasets = [e["dataset"] for e in plan["datasets"]]
    values = site.zfs.get(datasets, ["mountpoint", "canmount", "guid"])
    props = local_properties(site, datasets)
    swaps = []
    for entry in plan["datasets"]:
        d = entry["dataset"]
        mounted = mountsmod.where(d, table)
        swaps.append({"dataset": d, "snapshot": entry["snapshot"], "new": new_name(d, stamp),
                      "kept": kept_name(d, stamp), "mountpoint": mounted or
                      values[d]["mountpoint"], "canmount": values[d]["canmount"],
                      "mounted": mounted is not None, "old_guid": values[d]["guid"],
                      "new_guid": None, "properties": props[d],
                      "buildout": d == site.primary})
    return swaps


def clone_argv(swap):
    """The clone claims the dataset's mountpoint itself (set, not inherited): which of the two
    a boot mounts is then decided by canmount alone, whatever their names are."""
    argv = ["clone", "-o", "canmount=noauto", "-o", "mountpoint=" + swap["mountpoint"]]
    for key, value in sorted(swap["properties"].items()):
        argv += ["-o", "%s=%s" % (key, value)]
    return argv + [swap["snapshot"], swap["new"]]


def facts(site, swaps):
    """Where each swap stands, from ZFS: for the old and the new dataset, the name it has now
    (or None), whether it is mounted, its canmount and its origin."""
    names = [n for s in swaps for n in (s["dataset"], s["kept"], s["new"])]
    proc = site.zfs.run("get", "-H", "-p", "-o", "name,property,value", ",".join(FACTS),
                        *names, check=False)  # some of the names do not exist: not an error
    problems = [line for line in proc.stderr.split("\n")
                if line.strip() and "does not exist" not in line]
    if proc.returncode != 0 and problems:
        raise zfsmod.ZfsError("'zfs get' of the datasets being swapped failed: %s"
                              % problems[0].strip(), stderr=proc.stderr)
    seen = {}
    for line in proc.stdout.split("\n"):
        fields = line.split("\t")
        if len(fields) == 3:
            seen.setdefault(fields[0], {})[fields[1]] = fields[2]
    # Where each name is in the mount table: a mount made later may cover an earlier one.
    order = {m.dataset: i for i, m in enumerate(mountsmod.zfs_mounts())}
    result = []
    for s in swaps:
        fact = {"old": None, "new": None}
        for name in (s["dataset"], s["kept"], s["new"]):
            values = seen.get(name, {})
            for role in ("old", "new"):
                if s[role + "_guid"] and values.get("guid") == s[role + "_guid"]:
                    fact.update({role: name, role + "_mounted": values.get("mounted") == "yes",
                                 role + "_canmount": values.get("canmount"),
                                 role + "_origin": values.get("origin")})
        if not s["new_guid"] and s["new"] in seen and \
                seen[s["new"]].get("origin") == s["snapshot"]:
            # Cloned by a run killed before it could record the guid.
            values = seen[s["new"]]
            fact.update({"new": s["new"], "new_mounted": values.get("mounted") == "yes",
                         "new_canmount": values.get("canmount"),
                         "new_origin": values.get("origin")})
        fact["old_order"] = order.get(fact["old"])
        fact["new_order"] = order.get(fact["new"])
        result.append(fact)
    return result


def commands(site, swaps, target, stamp):
    """Every zfs command of a --keep rollback, in order, from the code that runs them."""
    zfs = site.zfs.command
    argvs = [zfs + clone_argv(s) for s in swaps]
    argvs += [zfs + argv for _, argv in swap_steps(swaps, fresh_facts(swaps))]
    settled = [dict(f, old_canmount="noauto", new_canmount=s["canmount"], new_origin=None)
               for s, f in zip(swaps, fresh_facts(swaps))]
    return argvs + [zfs + argv for _, argv in settle_steps(site, swaps, settled, target,
                                                            stamp)]


def make_clones(site, swaps):
    """Clone the target snapshot for every swap that has no clone yet (the site may run)."""
    current = facts(site, swaps)
    for s, f in zip(swaps, current):
        if f["new"]:
            continue
        s["new_guid"] = None  # a clone of an earlier try, destroyed since: not this one
        site.out.action(" ".join(site.zfs.command + clone_argv(s)))
        site.zfs.run(*clone_argv(s))
    missing = [s["new"] for s in swaps if not s["new_guid"]]
    if missing:
        guids = site.zfs.get(missing, ["guid"])
        for s in swaps:
            if s["new"] in guids:
                s["new_guid"] = guids[s["new"]]["guid"]


def undo(site, swaps):
    """Destroy the clones made for a rollback that did not happen: only those that are still
    the unmounted clones of the target this part made."""
    problems = []
    for s, f in zip(swaps, facts(site, swaps)):
        if f["new"] != s["new"] or f.get("new_mounted") or f.get("new_origin") != s["snapshot"]:
            continue
        s["new_guid"] = None
        try:
            site.zfs.destroy(s["new"])
        except zfsmod.ZfsError as e:
            problems.append(e.message)
            site.out.warn("could not destroy %s, made for the rollback: %s" % (s["new"],
                                                                           e.message))
    return problems


def swap(site, swaps, current=None):
    """While the site is down: each dataset's clone takes its place, from where ZFS says the
    swap stands (a killed run may have done part of it; `current`: facts() read since the
    site was stopped). Returns clone_names()."""
    current = facts(site, swaps) if current is None else current
    lost = [s["dataset"] for s, f in zip(swaps, current) if not f["old"] or not f["new"]]
    if lost:
        # Never act on a name whose guid is not the one recorded: it is not ours to touch.
        raise zfsmod.ZfsError("cannot find %s or its clone by the guids the rollback recorded: "
                              "look at zfs list, then run bin/rollback --forget and finish by "
                              "hand" % ", ".join(lost))
    run_steps(site, swap_steps(swaps, current))
    return clone_names(swaps, current)


def clone_names(swaps, current):
    """{dataset: the name its clone has now}: until settle() renames them, the clones hold the
    datasets' mountpoints under names of their own."""
    return {s["dataset"]: f["new"] for s, f in zip(swaps, current) if f["new"]}


def run_steps(site, steps):
    os.chdir("/")  # this process's own working directory must not keep a dataset busy
    for s, argv in steps:
        site.out.action(" ".join(site.zfs.command + argv))
        if argv[0] == "unmount":
            unmount(site, s, argv[1])
        else:
            site.zfs.run(*argv)


def elevation(site):
    """What runs zfs with privileges (`sudo -n` of `sudo -n zfs`), for the one command that is
    not zfs's: the lazy unmount."""
    return site.zfs.command[:-1]


def unmount(site, swap, name):
    """Unmount a dataset that may be some shell's working directory (the operator's own, who
    typed bin/rollback in the buildout): detached lazily on Linux, forcibly on FreeBSD. Nothing
    else is mounted inside it (check() refuses that), so nothing else is detached with it."""
    proc = site.zfs.run("unmount", name, check=False)
    if proc.returncode == 0:
        return
    if "busy" not in proc.stderr:
        raise zfsmod.ZfsError("'zfs unmount %s' failed: %s" % (name, proc.stderr.strip()),
                              stderr=proc.stderr)
    if os.path.isdir("/proc/self"):
        argv = elevation(site) + ["umount", "-l", swap["mountpoint"]]
    else:
        argv = site.zfs.command + ["unmount", "-f", name]
    site.out.note("%s is busy (a working directory in it): %s; a shell in %s sees the state "
                  "rolled away from until it changes directory (cd %s)" % (
                      name, " ".join(argv), swap["mountpoint"], swap["mountpoint"]))
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise zfsmod.ZfsError("'%s' could not run: %s" % (" ".join(argv), e.strerror))
    crashpoint.done(" ".join(argv))
    if done.returncode != 0:
        raise zfsmod.ZfsError("'%s' failed: %s" % (" ".join(argv), done.stdout.strip()))


def settle(site, swaps, target, stamp):
    """After the site runs again: the new datasets promoted, the kept ones marked as the
    part's, read-only and never mounted. Each step on its own: one that fails does not skip
    the others. The commands that failed, as text for the operator."""
    failed, broken = [], set()
    for s, argv in settle_steps(site, swaps, facts(site, swaps), target, stamp):
        if s["dataset"] in broken:
            # A rename that failed: what follows would act on the wrong names; the kept name
            # may even be another dataset's, which the marks would make the part's.
            failed.append(" ".join(site.zfs.command + argv))
            continue
        try:
            site.zfs.run(*argv)
        except zfsmod.ZfsError as e:
            failed.append(" ".join(site.zfs.command + argv))
            if argv[0] == "rename":
                broken.add(s["dataset"])
            site.out.warn("setting up the rolled-away %s: %s" % (s["kept"], e.message))
    return failed


def kept_datasets(site):
    """The part's kept (rolled-away) datasets: [{name, dataset, target, created}]. They are
    siblings of the part's datasets: only their parents' children are asked about."""
    above = parents(site.datasets)
    if not above:
        return []
    props = ["part", "buildout", "kind", "created", "target", "dataset"]
    proc = site.zfs.run("get", "-H", "-p", "-o", "name,property,value,source", "-t",
                        "filesystem", "-d", "1", ",".join(P + p for p in props), *above)
    found = {}
    for row in zfsmod.parse_table(proc.stdout, ("name", "property", "value", "source")):
        if row["source"] == "local" and row["property"].startswith(P):
            found.setdefault(row["name"], {})[row["property"][len(P):]] = row["value"]
    return [dict(values, name=name) for name, values in sorted(found.items())
            if values.get("kind") == KIND and values.get("part") == site.part
            and values.get("buildout") == site.directory]
