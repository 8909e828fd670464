"""bin/rollback: stop what runs on the datasets, roll every dataset back, start what ran before.

Every step that changes something is checked before and reported after. What ran before and how
far the rollback got are recorded outside the datasets before anything is stopped, and after
every step, so that a rollback killed or failed at any point is finished by running it again.

The package, by job: request (what was asked), plan (what it will do, shown), run (the record
and the steps on the datasets), fresh (a new rollback), resume (the rerun, --start), finish
(the start, the kept state, the report). Importing it imports all of them: the rollback
replaces bin/ and the eggs under the running script, so nothing is imported late.
"""
from collective.recipe.zfssnap.progress import Progress
from collective.recipe.zfssnap.rollback.fresh import roll_back
from collective.recipe.zfssnap.rollback.plan import describe_record
from collective.recipe.zfssnap.rollback.plan import plan_rollback
from collective.recipe.zfssnap.rollback.request import Request
# As a module: the name resume stays the submodule's, not its function's.
from collective.recipe.zfssnap.rollback import resume as resuming
from collective.recipe.zfssnap.rollback.run import Aborted
from collective.recipe.zfssnap.rollback.run import Run
from collective.recipe.zfssnap.rollback.run import privilege_prefix
from collective.recipe.zfssnap.rollback.run import supervisor_of
from collective.recipe.zfssnap.site import BAD_INPUT
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.supervisor import SupervisorError

# What the --json `phase` says, the last of these the run reached: none (nothing was
# changed), planned (--dry-run), aborted (stopped and started again, nothing rolled back),
# stopped, rolled-back (nothing started yet), started (a --keep state not yet set up), done.


def rollback(site, wanted=None, **asked):
    """bin/rollback: from the recorded progress of an unfinished run if there is one (resume),
    else a new rollback to `wanted` (the newest snapshot set if None). The plan, or None.
    `asked`: the rest of Request's fields (yes, dry_run, keep, start, start_only, ...).

    `start` False (--no-start): stop and roll back, and leave the record for `start_only`
    (--start), which starts what ran before from it: phases an orchestrator can interleave
    across hosts. The --json document's `phase` says how far the run got (the phases above)."""
    run = Run(site, Request(wanted, **asked))
    site.out.data["phase"] = "none"
    pending = Progress.from_record(run.record.load())
    site.out.data["recorded_stage"] = pending.stage if pending else None
    if run.request.start_only:
        return resuming.start_recorded(run, pending)
    if pending:
        return resuming.resume(run, pending)
    return roll_back(run)


__all__ = ["rollback", "Request", "Run", "Aborted", "describe_record", "plan_rollback",
           "privilege_prefix", "supervisor_of", "Stop", "ManagerError", "SupervisorError",
           "BAD_INPUT", "FAILED", "INCOMPLETE", "REFUSED"]
