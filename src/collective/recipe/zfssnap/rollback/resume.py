"""The rerun: a recorded unfinished rollback finished from where it stopped (progress.py has
its stages), and --start, which starts what a --no-start run left stopped."""
from collective.recipe.zfssnap import keep as keepmod
from collective.recipe.zfssnap import swapsteps
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.progress import PREPARING
from collective.recipe.zfssnap.progress import ROLLED_BACK
from collective.recipe.zfssnap.progress import ROLLING_BACK
from collective.recipe.zfssnap.progress import SETTLING
from collective.recipe.zfssnap.rollback.finish import finish
from collective.recipe.zfssnap.rollback.finish import stop_before_start
from collective.recipe.zfssnap.rollback.fresh import roll_back
from collective.recipe.zfssnap.rollback.plan import describe_record
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop


def resume(run, pending):
    """The one way on from a recorded unfinished run (progress.py has its stages): for the
    target it recorded, with --keep as it was started."""
    site, out = run.site, run.out
    wanted, keep = run.request.wanted, run.request.keep
    out.plan(describe_record(pending))
    if wanted is not None and wanted != pending.target and \
            site.find_set(wanted).short != pending.target:
        raise Stop("an unfinished rollback to %s is recorded (above): finish it with %s %s, "
                   "or forget it with %s --forget; nothing was changed" % (
                       pending.target, site.scripts["rollback"], pending.target,
                       site.scripts["rollback"]), REFUSED)
    if pending.keep and not keep:
        out.note("the unfinished rollback keeps the state rolled away from (--keep): so "
                 "does this one")
    elif keep and not pending.keep:
        out.note("the unfinished rollback does not keep the state rolled away from (it "
                 "was started without --keep): neither does this one")
    run.request = run.request.but(wanted=pending.target, keep=bool(pending.keep))
    if pending.stage == PREPARING:
        # Killed before it stopped anything: nothing to finish, only its clones to remove;
        # what ran then is still what is to run afterwards.
        if not run.request.dry_run:
            keepmod.undo(site, pending.swaps)
        return roll_back(run, carried=pending)
    if pending.finished_in_zfs:
        return finish_recorded(run, pending)
    # Killed while stopping, or while rolling back (plain): a new plan from what is there now;
    # what ran before the first run is started at the end.
    return roll_back(run, pending=pending)


def start_recorded(run, pending):
    """bin/rollback --start: start what ran before a rollback that stopped at the rolled-back
    phase (--no-start), from its record. Nothing recorded: nothing to start (a rerun of a
    finished --start is no error)."""
    site, out, wanted = run.site, run.out, run.request.wanted
    run.request = run.request.but(start=True)  # --start starts, whatever else was passed
    if pending is None:
        out.say("No unfinished rollback is recorded: nothing to start.")
        out.data["phase"] = "done"
        return None
    out.plan(describe_record(pending))
    if wanted is not None and wanted != pending.target and \
            site.find_set(wanted).short != pending.target:
        raise Stop("the recorded rollback is to %s, not %s: start it with %s --start; nothing "
                   "was changed" % (pending.target, wanted, site.scripts["rollback"]), REFUSED)
    if pending.stage not in (ROLLED_BACK, SETTLING):
        raise Stop("the recorded rollback to %s has not rolled back the datasets yet (stage "
                   "'%s'): run %s --no-start %s to finish that first, then --start; nothing was "
                   "changed" % (pending.target, pending.stage, site.scripts["rollback"],
                                pending.target), REFUSED)
    return finish_recorded(run, pending)


def finish_recorded(run, pending):
    """Finish a run whose datasets are (being) replaced or rolled back for good: the rest of the
    --keep swap, then starting what ran before (unless it runs already), then settling the kept
    state. ZFS and the record say what is left, not a new plan."""
    out, start, dry_run = run.out, run.request.start, run.request.dry_run
    target = pending.target
    run.check_kind(pending)
    run.data = pending
    run.swaps = pending.swaps
    if run.manager:
        run.manager.adopt(pending)  # stopped through supervisord's unit: started through it
    stage = pending.stage
    out.data["phase"] = {ROLLED_BACK: "rolled-back", SETTLING: "started"}.get(stage, "stopped")
    current = keepmod.facts(run.site, run.swaps) if run.swaps else []
    left = swapsteps.swap_steps(run.swaps, current) if run.swaps else []
    if left and stage != ROLLING_BACK:
        # Swapped, but not mounted so (a boot with a buildout dataset of canmount=noauto, or
        # the old one mounted by its name, which it still has until settled): the swap's
        # mounts again, with nothing of the site running.
        stage = ROLLING_BACK
    if stage == ROLLING_BACK:
        where = ["%s %s" % (s["dataset"], "is mounted from its clone" if f.get("new_mounted")
                            else "is as it was") for s, f in zip(run.swaps, current)]
        out.plan("The datasets are being replaced by clones of %s (%s); this run finishes that "
                 "(%d zfs command%s), then starts what ran before: %s." % (
                     target, "; ".join(where), len(left), "" if len(left) == 1 else "s",
                     ", ".join(pending.running_before) or "nothing"))
        if dry_run:
            for _, argv in left:
                out.command(run.site.zfs.command + argv)
    elif not start and stage == ROLLED_BACK:
        out.plan("Every dataset was rolled back to %s; nothing to do before the start "
                 "(--no-start)." % target)
    else:
        out.plan("Every dataset was rolled back to %s; this run %s." % (
            target, "sets up the kept state rolled away from" if stage == SETTLING else
            "starts what ran before: %s" % (", ".join(pending.running_before) or "nothing")))
    if dry_run:
        out.data["phase"] = "planned"
        return None
    if not start and stage == ROLLED_BACK:
        stop_before_start(run, target)
        return None
    run.go_ahead()
    run.stopped_at = None
    if stage == ROLLING_BACK:
        run.committed = True
        try:
            survey = run.manager.survey() if run.manager else None
            if survey and survey.busy:
                # Started since (by hand, or at boot): nothing may run while datasets are
                # swapped.
                run.pending_names = list(pending.running_before)
                mountpoints = sorted(run.site.config.get("mounts", {}).values())
                run.stop(mountpoints, survey)
        except (ManagerError, Stop) as e:
            if isinstance(e, Stop) and e.code != REFUSED:
                raise
            raise Stop("%s runs, and stopping it before the rest of the swap failed: %s; stop "
                       "it, then run %s again: the record is kept" % (
                           run.manager.label if run.manager.kind == "supervisord" else
                           "the site", e.message.replace("; nothing was changed", ""),
                           run.site.scripts["rollback"]), INCOMPLETE)
        names = run.swap(target)
        run.save(stage=ROLLED_BACK)
        out.data["phase"] = "rolled-back"
        run.checkpoint("with every dataset rolled back")
    else:
        names = keepmod.clone_names(run.swaps, current)  # {} for a plain rollback
    # What ran before runs again (a boot may have come between): started if it does not.
    run.check_mounted(target, names)
    if not start and stage != SETTLING:
        stop_before_start(run, target)
        return None
    finish(run, target)
    return None
