"""The end of a rollback: what ran before started again, the state kept by --keep set up, the
release guards' records set back, the finished rollback remembered (again.py), the report."""
import time

from collective.recipe.zfssnap import again as againmod
from collective.recipe.zfssnap import inputs
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.downtime import HealthFailed
from collective.recipe.zfssnap.progress import SETTLING
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import Stop


def stop_before_start(run, target):
    """--no-start: the datasets are at `target`; the record stays, for --start."""
    names = run.data.running_before
    run.out.data["to_start"] = list(names)
    run.out.log("rolled back to %s; not started (--no-start): %s" % (
        target, ", ".join(names) or "nothing ran before"))
    run.out.say("Rolled back to %s; nothing was started (--no-start). Start what ran before "
                "(%s) with: %s --start" % (target, ", ".join(names) or "nothing",
                                            run.site.scripts["rollback"]))


def finish(run, target, start=True):
    """Start what ran before, settle what --keep left to settle, forget the record, report."""
    try:
        if start:
            run.finish_start(target)
            run.out.data["phase"] = "started"
    except HealthFailed:
        restore_records(run.site, target)
        if run.swaps and run.settle(target):
            run.save(stage=SETTLING)  # the rerun settles what is left
        else:
            againmod.remember(run.site, target)
            run.record.clear()  # it ran: a rerun has nothing left to do
        if run.swaps:
            say_kept(run)
        raise
    except Stop:
        if run.swaps:
            run.settle(target)  # the record stays: the rerun starts what did not start
        raise
    if run.swaps:
        run.save(stage=SETTLING)
        run.checkpoint("after starting the site, before setting up the kept state",
                       started=True)
        failed = run.settle(target)
        if failed:
            restore_records(run.site, target)  # the site runs the target's state
            raise Stop("rolled back to %s and started the site, but setting up the state kept "
                       "in %s failed (above): run %s again to finish it, or by hand: %s" % (
                           target, ", ".join(s["kept"] for s in run.swaps),
                           run.site.scripts["rollback"], "; ".join(failed)), INCOMPLETE)
    restore_records(run.site, target)
    againmod.remember(run.site, target)
    run.record.clear()
    run.out.data["phase"] = "done"
    report(run, target)
    if run.swaps:
        say_kept(run)


def restore_records(site, target):
    """The records of the last bin/buildout and of the last install (snapshot --if-changed)
    set back to the target: the site is that state again."""
    restore_guard_record(site, target)
    inputs.reset(site, target)


def restore_guard_record(site, target):
    """The release guard's record of the last bin/buildout (outside the datasets) back to what
    it was when the target was taken: the site is that state again, and the target is a
    snapshot of it. Without this, the next bin/buildout would see the bad release's revision
    in it and refuse."""
    guard = state.Record(site.places.buildout_record, required="finished")
    try:
        if guard.load() is None:
            return  # the guard is not used
        found = site.find_set(target)
        guard.save({"finished": found.properties.get("created", ""), "epoch": found.created,
                    "revision": found.properties.get("git-revision", ""),
                    "describe": found.properties.get("git-describe", ""), "versions": None,
                    "restored": target})
    except (Stop, state.StateError, zfsmod.ZfsError, OSError) as e:
        site.out.warn("could not set the release guard's record back to %s (%s): the next "
                      "bin/buildout may ask for a snapshot" % (target, getattr(e, "message", e)))


def say_kept(run):
    site = run.site
    run.out.data["kept"] = [s["kept"] for s in run.swaps]
    run.out.say("The state rolled away from is kept in %s (read-only, not mounted): look inside "
                "with zfs set mountpoint=/mnt/rolled-away DATASET; %s --list shows them, %s "
                "destroys them." % (", ".join(s["kept"] for s in run.swaps),
                                    site.scripts["snapshot"], site.scripts["cleanup"]))
    if any(mountsmod.is_inside(run.cwd or "", s["mountpoint"]) for s in run.swaps
           if s["mounted"]):
        run.out.say("Your shell's working directory is still in the state rolled away from: "
                    "type cd %s to see the restored one." % site.directory)


def report(run, target):
    out = run.out
    hook_error = None
    try:
        run.site.hook("after-rollback")
    except Stop as e:
        hook_error = e.message
    if run.stopped_at is not None:
        down = (run.up_at or time.monotonic()) - run.stopped_at
        out.data["downtime_seconds"] = round(down, 2)
        out.say("Rolled back to %s; the site was down for %.1f s%s." % (
            target, down, " (until the health check passed)"
            if run.site.config.get("health_check") else ""))
    else:
        out.say("Rolled back to %s." % target)
    if hook_error:
        raise Stop("rolled back, but " + hook_error, FAILED)
