"""The steps of a --keep swap, computed, not run: from what ZFS says of each dataset and its
clone now (keep.facts), the zfs commands still to run, in their crash-safe order (keep.py has
the why), to swap, to put back, or to settle. Pure functions: the rerun after a kill at any
point computes what is left from the same facts."""
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap.site import P
from collective.recipe.zfssnap.site import current_user

KIND = "rolled-away"  # the part's mark on a kept dataset


def fresh_facts(swaps):
    """The facts before anything is done, for --dry-run."""
    return [{"old": s["dataset"], "old_mounted": s["mounted"], "old_canmount": s["canmount"],
             "new": s["new"], "new_mounted": False, "new_canmount": "noauto"} for s in swaps]


def is_buildout(swap, swaps):
    """The swap of the buildout's own dataset: recorded by plan_swaps; in a record of an
    earlier version, the first (plan_swaps keeps the part's order, the buildout's first)."""
    if any("buildout" in s for s in swaps):
        return bool(swap.get("buildout"))
    return swap is swaps[0]


def canmount_steps(pairs, swaps):
    """canmount=noauto on the old datasets, then each clone's canmount on the clones: one `zfs
    set` for the buildout's dataset and one for all the others, the buildout's first off and
    last on. While the buildout's path is not mountable nothing of the site starts at boot, so
    the others may change in any order (zfs applies one command's datasets in name order, and
    a power cut may stop it between two)."""
    steps = []
    off = [(s, f["old"]) for s, f in pairs
           if f["old"] and f.get("old_canmount") != "noauto"]
    on = [(s, f["new"] or s["new"]) for s, f in pairs if f.get("new_canmount") != s["canmount"]]
    first = [(s, name) for s, name in off if is_buildout(s, swaps)]
    rest = [(s, name) for s, name in off if not is_buildout(s, swaps)]
    for group in (first, rest):
        if group:
            steps.append((group[0][0], ["set", "canmount=noauto"] + [n for _, n in group]))
    last = [(s, name) for s, name in on if is_buildout(s, swaps)]
    values = sorted({s["canmount"] for s, _ in on if not is_buildout(s, swaps)})
    for value in values:
        group = [(s, n) for s, n in on if not is_buildout(s, swaps) and s["canmount"] == value]
        steps.append((group[0][0], ["set", "canmount=" + value] + [n for _, n in group]))
    for s, name in last:
        steps.append((s, ["set", "canmount=" + s["canmount"], name]))
    return steps


def swap_steps(swaps, current):
    """The zfs commands (argv tails) still to run, in order, for the clones to take the
    datasets' places, while the site is down: [(swap, argv)]. `current` is facts() (or
    fresh_facts()) of `swaps`. The renames are not among them: settle_steps()."""
    pairs = sorted(zip(swaps, [dict(f) for f in current]),
                   key=lambda p: p[0]["mountpoint"] or "")
    to_mount = [s["mountpoint"] for s, f in pairs if s["mounted"] and not f.get("new_mounted")]
    unmounts = []  # (mount table position, mountpoint, swap, name)
    for s, f in pairs:
        if f["old"] and f.get("old_mounted"):
            unmounts.append((f.get("old_order"), s["mountpoint"], s, f["old"]))
        if f.get("new_mounted") and any(m != s["mountpoint"] and mountsmod.is_inside(
                s["mountpoint"], m) for m in to_mount):
            # Mounted below a mountpoint still to be mounted (as a boot left it): mounting over
            # it would hide it.
            unmounts.append((f.get("new_order"), s["mountpoint"], s, f["new"]))
            f["new_mounted"] = False
    if all(u[0] is not None for u in unmounts):
        # The last mounted first: also a dataset mounted over the ones inside it (the
        # buildout's, mounted by hand after a boot that mounted the data datasets) comes off
        # before them, which are hidden until it does.
        unmounts.sort(key=lambda u: u[0], reverse=True)
    else:
        unmounts.sort(key=lambda u: u[1] or "", reverse=True)  # the innermost first
    steps = [(s, ["unmount", name]) for _, _, s, name in unmounts]
    for s, f in pairs:  # the outermost first: bin/ is back before the data is
        if s["mounted"] and not f.get("new_mounted"):
            steps.append((s, ["mount", f["new"] or s["new"]]))
    return steps + canmount_steps(pairs, swaps)


def back_steps(swaps, current):
    """The steps that put the old datasets back in place, while no dataset has been handed
    over to its clone yet (no canmount changed, nothing renamed); None once one has."""
    pairs = sorted(zip(swaps, current), key=lambda p: p[0]["mountpoint"] or "")
    for s, f in pairs:
        if f["old"] != s["dataset"] or f.get("old_canmount") != s["canmount"] or \
                (f["new"] and f["new"] != s["new"]):
            return None
    steps = [(s, ["unmount", f["new"]]) for s, f in reversed(pairs) if f.get("new_mounted")]
    steps += [(s, ["mount", s["dataset"]]) for s, f in pairs
              if s["mounted"] and not f.get("old_mounted")]
    return steps


def settle_steps(site, swaps, current, target, stamp):
    """What is left to do once the site runs again, per swapped dataset: the old one renamed
    to the kept name and the clone to the dataset's, the clone promoted, the kept one marked,
    read-only and unmounted for good: [(swap, argv)]."""
    marks = {P + "part": site.part, P + "buildout": site.directory, P + "kind": KIND,
             P + "created": stamp, P + "target": target, P + "user": current_user()}
    steps = []
    for s, f in sorted(zip(swaps, current), key=lambda p: p[0]["mountpoint"] or ""):
        if not f["old"] or not f["new"] or f.get("old_canmount") != "noauto" or \
                f.get("new_canmount") != s["canmount"]:
            continue  # not swapped: nothing of this dataset to settle
        if f["old"] == s["dataset"]:
            steps.append((s, ["rename", "-u", s["dataset"], s["kept"]]))
        if f["new"] != s["dataset"]:
            steps.append((s, ["rename", "-u", f["new"], s["dataset"]]))
        origin = f.get("new_origin")
        if origin is None or origin.startswith((s["kept"] + "@", s["dataset"] + "@")):
            steps.append((s, ["promote", s["dataset"]]))
        # One `zfs set`: all of them or none (a rerun sets them again).
        steps.append((s, ["set", "readonly=on", "mountpoint=none"] + ["%s=%s" % (k, v) for k, v
                                                                      in sorted(dict(
            marks, **{P + "dataset": s["dataset"]}).items())] + [s["kept"]]))
    return steps
