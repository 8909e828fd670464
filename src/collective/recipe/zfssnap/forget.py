"""bin/rollback --forget: set aside the record of an unfinished rollback, after showing it.

The record is the only map of a half-done --keep swap (which name holds which state, by guid):
it is shown in full, asked about, and moved aside (never deleted), so that what it says can
still be read when the datasets are put right by hand.
"""
import os

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import keep as keepmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import swapsteps
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.progress import PREPARING
from collective.recipe.zfssnap.progress import ROLLED_BACK
from collective.recipe.zfssnap.progress import SETTLING
from collective.recipe.zfssnap.progress import STOPPING
from collective.recipe.zfssnap.progress import Progress
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop


def describe_swaps(swaps):
    """One line per dataset of a --keep rollback: its names and guids, as recorded."""
    return ["  %s (guid %s): its clone of %s is %s (guid %s); the state rolled away from is "
            "to be kept as %s" % (s["dataset"], s.get("old_guid") or "?", s["snapshot"],
                                  s["new"], s.get("new_guid") or "not recorded", s["kept"])
            for s in swaps]


def aside_path(path):
    return "%s.forgotten-%s" % (path, state.utc_stamp().replace(":", ""))


def forget(site, describe, dry_run=False, yes=False, confirm=None):
    """Show the record (`describe`: its paragraph), the swaps with their guids and what is left
    to do by hand; then, asked, move the record aside. With `dry_run`, change nothing."""
    out = site.out
    record = site.rollback_record()
    data = Progress.from_record(record.load())
    if not data:
        out.say("No unfinished rollback is recorded.")
        return
    # What the operator must read before confirming: shown with -q too (stderr with --json).
    out.plan(describe(data))
    if data.keep:
        out.data["swaps"] = data.keep
        out.plan("\n".join(["The --keep swaps, as recorded:"] + describe_swaps(data.keep)))
    # A --keep swap that never began: its clones are the part's to destroy.
    unused = data.keep if data.keep and data.stage in (PREPARING, STOPPING) else []
    left = []
    if data.keep and data.stage in (ROLLED_BACK, SETTLING):
        # Swapped: what the rerun would have done after the start is the operator's now.
        try:
            left = [" ".join(site.zfs.command + argv) for _, argv in swapsteps.settle_steps(
                site, data.keep, keepmod.facts(site, data.keep), data.target, data.stamp)]
        except zfsmod.ZfsError as e:
            out.warn("could not read where the --keep swap stands: %s" % e.message)
    if left:
        out.data["left_to_do"] = left
        out.plan("The --keep rollback was not settled; to finish it by hand: %s"
                 % "; ".join(left))
    aside = aside_path(record.path)
    out.data["record"] = record.path
    if dry_run:
        out.say("Dry run: nothing was changed; without --dry-run the record would be moved to "
                "%s%s." % (aside, "" if not unused else ", and the unused clones %s destroyed"
                           % ", ".join(s["new"] for s in unused)))
        return
    if not yes and confirm is not None and not confirm():
        raise Stop("nothing was forgotten: the record %s stays" % record.path, REFUSED)
    if unused:
        keepmod.undo(site, unused)
    os.rename(record.path, aside)
    state.sync_directory(os.path.dirname(aside))
    crashpoint.done("record moved aside")
    out.data["forgotten_to"] = aside
    out.log("forgot the unfinished rollback to %s (record moved to %s)" % (data.target, aside))
    out.say("Forgotten: the record is kept as %s; start what should run by hand." % aside)
