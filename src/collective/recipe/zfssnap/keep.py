"""bin/rollback --keep: roll back without destroying the state rolled away from.

As boot-environment tools do: a clone of the target snapshot takes the dataset's place, and the
dataset as it was (its data, and its snapshots newer than the target, held or cloned ones
included) stays, renamed DATASET-rolled-away-STAMP, read-only and not mounted, owned by the part
(listed by bin/snapshot --list, destroyed by bin/cleanup). The clones are made before the site
is stopped; while it is down each dataset costs an unmount, two renames and a mount. After the
site runs again the new datasets are promoted (they take over the older snapshots), so that the
kept ones can be destroyed on their own.
"""
import os
import subprocess

from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import P
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.site import current_user


# Set when a dataset is created, or not at all by hand: a clone has its origin's.
NOT_COPIED = {"mountpoint", "canmount", "encryption", "keyformat", "keylocation",
              "pbkdf2iters", "volsize", "volblocksize", "normalization", "utf8only",
              "casesensitivity", "origin"}
KIND = "rolled-away"
SPACE_LIMITS = {"quota", "refquota", "reservation", "refreservation"}


def kept_name(dataset, stamp):
    return "%s-rolled-away-%s" % (dataset, stamp)


def new_name(dataset, stamp):
    return "%s-rollback-%s" % (dataset, stamp)


def check(site):
    """Refuse layouts this way of rolling back does not handle: children (renaming a dataset
    renames them) and legacy mountpoints (zfs does not unmount or mount those)."""
    values = site.zfs.get(site.datasets, ["mountpoint"])
    legacy = [d for d in site.datasets if values.get(d, {}).get("mountpoint") == "legacy"]
    if legacy:
        raise Stop("--keep does not handle datasets with mountpoint=legacy (%s): roll back "
                   "without --keep; nothing was changed" % ", ".join(legacy), REFUSED)
    if site.config.get("recursive"):
        raise Stop("--keep cannot roll back recursively (renaming a dataset renames its "
                   "children): roll back without --keep; nothing was changed", REFUSED)
    for a in site.datasets:
        for b in site.datasets:
            if b.startswith(a + "/"):
                raise Stop("--keep cannot roll back %s and its child %s (renaming the parent "
                           "renames the child): roll back without --keep; nothing was changed"
                           % (a, b), REFUSED)


def local_properties(site, dataset):
    proc = site.zfs.run("get", "-H", "-p", "-o", "property,value", "-s", "local", "all",
                        dataset)
    props = {}
    for line in proc.stdout.split("\n"):
        if "\t" in line:
            name, value = line.split("\t", 1)
            if name in NOT_COPIED:
                continue
            if name in SPACE_LIMITS and value == "0":
                value = "none"  # what zfs prints as 0 with -p, and takes only as none
            props[name] = value
    return props


def prepare(site, plan, stamp):
    """Clones of the target snapshot, not mounted, with the datasets' own properties; made
    while the site runs. [(dataset, new, kept, mountpoint, canmount)]"""
    mounts = mountsmod.zfs_mounts()
    swaps = []
    for entry in plan["datasets"]:
        dataset = entry["dataset"]
        values = site.zfs.get([dataset], ["mountpoint", "canmount"])[dataset]
        props = local_properties(site, dataset)
        new = new_name(dataset, stamp)
        mountpoint = mountsmod.where(dataset, mounts) or values["mountpoint"]
        argv = ["clone", "-o", "canmount=noauto"]
        if "mountpoint" in site.zfs.run("get", "-H", "-o", "property", "-s", "local",
                                        "mountpoint", dataset).stdout:
            # Set on the dataset itself: the clone gets it too. An inherited one follows the
            # name, and the clone will have the dataset's name.
            argv += ["-o", "mountpoint=" + values["mountpoint"]]
        for key, value in sorted(props.items()):
            argv += ["-o", "%s=%s" % (key, value)]
        site.out.action(" ".join(site.zfs.command + argv + [entry["snapshot"], new]))
        try:
            site.zfs.run(*(argv + [entry["snapshot"], new]))
        except zfsmod.ZfsError:
            undo(site, swaps)
            raise
        swaps.append({"dataset": dataset, "new": new, "kept": kept_name(dataset, stamp),
                      "mountpoint": mountpoint, "legacy": values["mountpoint"] == "legacy",
                      "canmount": values["canmount"], "mounted": mountsmod.where(
                          dataset, mounts) is not None})
    return swaps


def undo(site, swaps):
    """Destroy the clones made for a rollback that did not happen (and forget them)."""
    while swaps:
        swap = swaps.pop()
        try:
            site.zfs.destroy(swap["new"])
        except zfsmod.ZfsError as e:
            site.out.warn("could not destroy %s, made for the rollback: %s" % (swap["new"],
                                                                           e.message))


def commands(site, plan, stamp):
    """What a --keep rollback runs, for --dry-run."""
    zfs = site.zfs.command
    argvs = []
    for entry in plan["datasets"]:
        d = entry["dataset"]
        argvs.append(zfs + ["clone", "-o", "canmount=noauto", entry["snapshot"],
                            new_name(d, stamp)])
    for entry in plan["datasets"]:
        d = entry["dataset"]
        argvs += [zfs + ["unmount", d], zfs + ["rename", "-u", d, kept_name(d, stamp)],
                  zfs + ["rename", "-u", new_name(d, stamp), d], zfs + ["mount", d]]
    for entry in plan["datasets"]:
        argvs.append(zfs + ["promote", entry["dataset"]])
    return argvs


def swap(site, swaps, target, done):
    """While the site is down: each dataset's clone takes its place. `done` gets the datasets
    swapped so far."""
    order = sorted(swaps, key=lambda s: s["mountpoint"] or "")
    os.chdir("/")  # this process's own working directory must not keep a dataset busy
    for s in reversed(order):  # the innermost mounts first
        if s["mounted"]:
            site.out.action(" ".join(site.zfs.command + ["unmount", s["dataset"]]))
            unmount(site, s)
    for s in order:
        site.out.action("%s rename -u %s %s; rename -u %s %s" % (
            " ".join(site.zfs.command), s["dataset"], s["kept"], s["new"], s["dataset"]))
        site.zfs.run("rename", "-u", s["dataset"], s["kept"])
        site.zfs.run("rename", "-u", s["new"], s["dataset"])
        done.append(s["dataset"])
    for s in order:
        if s["mounted"]:
            site.out.action(" ".join(site.zfs.command + ["mount", s["dataset"]]))
            site.zfs.run("mount", s["dataset"])


def unmount(site, swap):
    """Unmount a dataset that may be some shell's working directory (the operator's own, who
    typed bin/rollback in the buildout): detached lazily on Linux, forcibly on FreeBSD. Such a
    shell sees the state rolled away from until it changes directory."""
    proc = site.zfs.run("unmount", swap["dataset"], check=False)
    if proc.returncode == 0:
        return
    if "busy" not in proc.stderr:
        raise zfsmod.ZfsError("'zfs unmount %s' failed: %s" % (swap["dataset"],
                                                                proc.stderr.strip()),
                              stderr=proc.stderr)
    if os.path.isdir("/proc/self"):
        argv = ["umount", "-l", swap["mountpoint"]]
    else:
        argv = site.zfs.command + ["unmount", "-f", swap["dataset"]]
    site.out.note("%s is busy (a working directory in it): %s; a shell in %s sees the state "
                  "rolled away from until it changes directory (cd %s)" % (
                      swap["dataset"], " ".join(argv), swap["mountpoint"],
                      swap["mountpoint"]))
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    if done.returncode != 0:
        raise zfsmod.ZfsError("'%s' failed: %s" % (" ".join(argv), done.stdout.strip()))


def settle(site, swaps, target, stamp):
    """After the site runs again: properties back as they were, the new datasets promoted,
    the kept ones marked as the part's and made read-only."""
    marks = {P + "part": site.part, P + "buildout": site.directory, P + "kind": KIND,
             P + "created": stamp, P + "target": target, P + "user": current_user()}
    for s in swaps:
        try:
            site.zfs.run("set", "canmount=" + s["canmount"], s["dataset"])
            site.zfs.run("promote", s["dataset"])
            site.zfs.run("set", "readonly=on", "canmount=noauto", *[
                "%s=%s" % (k, v) for k, v in sorted(dict(
                    marks, **{P + "dataset": s["dataset"]}).items())], s["kept"])
            site.zfs.run("set", "mountpoint=none", s["kept"])
        except zfsmod.ZfsError as e:
            site.out.warn("the rolled-away %s is kept, but setting it up failed: %s" % (
                s["kept"], e.message))


def kept_datasets(site):
    """The part's kept (rolled-away) datasets: [{name, dataset, target, created}]."""
    pools = sorted({zfsmod.Zfs.pool(d) for d in site.datasets})
    props = ["part", "buildout", "kind", "created", "target", "dataset"]
    proc = site.zfs.run("get", "-H", "-p", "-o", "name,property,value,source", "-t",
                        "filesystem", "-r", ",".join(P + p for p in props), *pools)
    found = {}
    for row in zfsmod.parse_table(proc.stdout, ("name", "property", "value", "source")):
        if row["source"] == "local" and row["property"].startswith(P):
            found.setdefault(row["name"], {})[row["property"][len(P):]] = row["value"]
    return [dict(values, name=name) for name, values in sorted(found.items())
            if values.get("kind") == KIND and values.get("part") == site.part
            and values.get("buildout") == site.directory]
