"""A new rollback, or the rerun of one killed before its datasets were touched: the plan,
the checks it must pass before anything stops, then stop, roll back (or swap, --keep), start."""
from collective.recipe.zfssnap import again as againmod
from collective.recipe.zfssnap import keep as keepmod
from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.downtime import check_open_files
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.procman import Refused
from collective.recipe.zfssnap.progress import PREPARING
from collective.recipe.zfssnap.progress import ROLLED_BACK
from collective.recipe.zfssnap.progress import ROLLING_BACK
from collective.recipe.zfssnap.progress import STOPPING
from collective.recipe.zfssnap.rollback.finish import finish
from collective.recipe.zfssnap.rollback.finish import stop_before_start
from collective.recipe.zfssnap.rollback.plan import plan_rollback
from collective.recipe.zfssnap.rollback.plan import rollback_argv
from collective.recipe.zfssnap.rollback.plan import same_plan
from collective.recipe.zfssnap.rollback.plan import show_plan
from collective.recipe.zfssnap.rollback.plan import zodb_view
from collective.recipe.zfssnap.rollback.run import Aborted
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Background
from collective.recipe.zfssnap.site import Stop


def roll_back(run, pending=None, carried=None):
    """Plan, stop, roll back (or swap, with --keep), start, settle. `pending`: the progress of
    an unfinished run this one finishes; `carried`: of one killed before it stopped anything."""
    site, out, request = run.site, run.out, run.request
    keep = request.keep
    mountpoints = site.check_layout("roll back")
    target = site.find_set(request.wanted)
    if keep:
        keepmod.check(site, mountpoints)
    plan = plan_rollback(site, target, keep=keep)
    if keep and pending and pending.keep:
        stamp, swaps = pending.stamp, pending.keep
    elif keep:
        stamp = keepmod.free_stamp(site, site.datasets,
                                   state.utc_stamp().replace("-", "").replace(":", ""))
        swaps = keepmod.plan_swaps(site, plan, stamp)
    else:
        stamp, swaps = None, []
    commands = keepmod.commands(site, swaps, target.short, stamp) if keep else [
        rollback_argv(site, e) for e in plan["datasets"]]
    zodb_view(site, plan)
    if pending is None and carried is None and againmod.check(
            run, target, plan, request.again, request.yes, request.dry_run):
        return None
    show_plan(site, plan, diff=request.diff, always=not request.yes and not request.dry_run)
    if request.dry_run:
        for argv in commands:
            out.command(argv)
        preflight(run, mountpoints, pending or carried)
        out.data["phase"] = "planned"
        return plan
    check_can_see_holders()
    run.go_ahead()
    survey, run.data = survey_or_stop(run, pending or carried)
    run.data.update(target=target.short, keep=swaps or None, stamp=stamp)
    run.swaps = swaps
    check_outside_manager(run, mountpoints, survey)
    site.hook("before-rollback")
    if keep:
        # Recorded before the clones are made, so that a run killed while making them leaves
        # nothing the next one does not know of.
        run.save(required=True, stage=STOPPING if pending else PREPARING)
        try:
            # While the site still runs: the clones cost no downtime.
            keepmod.make_clones(site, swaps)
        except zfsmod.ZfsError as e:
            if isinstance(e, zfsmod.ZfsTimeout):
                raise run.hung(e, stopped=False)  # the rerun destroys the clones, starts over
            keepmod.undo(site, swaps)
            if not pending:
                run.record.clear()
            raise Stop("making the clones for --keep failed: %s; nothing was stopped" % (
                site.permission_message(e, "clone,create,mount")), FAILED)
    run.save(required=True, stage=STOPPING)
    try:
        run.stop(mountpoints, survey)
        out.data["phase"] = "stopped"
    except ManagerError as e:
        raise run.failed_midway(plan, [], e.message)
    except Aborted:
        raise
    except Stop as e:
        if e.code == REFUSED and not pending:  # refused with nothing stopped or rolled back
            keepmod.undo(site, swaps)
            run.record.clear()
        raise
    run.checkpoint("after stopping the site, before any dataset was rolled back")
    # The clones' facts (--keep) read while the plan is read again: the site is down.
    current = Background(keepmod.facts, site, swaps) if keep else None
    try:
        fresh = plan_rollback(site, target, written=False, keep=keep)
        if not same_plan(plan, fresh):
            raise run.failed_midway(plan, [], "the snapshots changed while the site was being "
                                    "stopped (a new snapshot, hold or clone)", REFUSED,
                                    "run %s again to see the new plan"
                                    % site.scripts["rollback"])
        check_open_files(site, mountpoints, set(), run.force)
    except Aborted:
        raise
    except Stop as e:
        raise run.failed_midway(plan, [], e.message, e.code)
    except zfsmod.ZfsError as e:
        raise run.failed_midway(plan, [], e.message)
    try:
        run.save(required=keep, stage=ROLLING_BACK)
    except Stop as e:  # the rerun could not tell a half-done swap: do not start one
        raise run.failed_midway(plan, [], e.message)
    names = {}
    if keep:
        run.committed = True
        names = run.swap(target.short, current)
    else:
        run.roll_back_datasets(plan, commands)
    run.save(stage=ROLLED_BACK)
    out.data["phase"] = "rolled-back"
    out.data["rolled_back"] = [e["dataset"] for e in plan["datasets"]]
    run.checkpoint("with every dataset rolled back")
    run.check_mounted(target.short, names)
    if not request.start:
        stop_before_start(run, target.short)
        return plan
    finish(run, target.short)
    return plan


def preflight(run, mountpoints, pending):
    """What the real run refuses before it stops anything, checked by --dry-run too (it
    changes nothing): that this machine can tell who has files open on the datasets, and that
    nothing outside the process manager does."""
    check_can_see_holders()
    survey, _ = survey_or_stop(run, pending)
    check_outside_manager(run, mountpoints, survey)


def survey_or_stop(run, pending):
    """What runs, and the record to start from; Stop (nothing changed) when the manager cannot
    be asked or refuses what the part names."""
    try:
        return run.survey(pending)
    except Refused as e:
        raise Stop("%s; nothing was changed" % e.message, REFUSED)
    except ManagerError as e:
        label = run.manager.label if run.manager else "the process manager"
        raise Stop("cannot tell what %s runs (%s): the rollback would stop there; run it as a "
                   "user who can reach %s; nothing was changed" % (label, e.message, label),
                   REFUSED)


def check_can_see_holders():
    problem = processes.can_check()
    if problem:
        raise Stop("cannot roll back safely: %s" % problem, REFUSED)


def check_outside_manager(run, mountpoints, survey):
    """Before anything is stopped: what the manager refuses, and processes it does not run,
    would block anyway."""
    problem = run.manager.refusal(survey) if run.manager else None
    if problem:
        raise Stop("refusing to roll back: %s; nothing was changed" % problem, REFUSED)
    managed = processes.with_descendants(survey.pids or [0])
    check_open_files(run.site, mountpoints, managed, run.force, before_stop=True,
                     outside=run.manager.outside if run.manager else "outside supervisor")
