"""How far one bin/rollback got: what its record (state.Record) keeps between a kill and the
rerun that finishes the job.

The stages, in order; a rerun resumes from the one recorded:

- preparing      --keep only: the clones are being made while the site still runs; nothing was
                 stopped. The rerun destroys the clones and starts over.
- stopping       what runs on the datasets is being stopped. The rerun plans again and stops
                 what runs now; what ran before (recorded here) is started at the end.
- rolling back   the datasets are being rolled back (or, with --keep, replaced by their
                 clones). A plain rollback plans again and rolls back what is not yet; --keep
                 finishes the swap from where ZFS says it stands.
- rolled back    every dataset is at the target (with --keep, the clones are mounted in the
                 datasets' places and mounted at boot, under their own names until settled):
                 the rerun only starts what ran before, then settles.
- settling       --keep, the site runs again: the rerun finishes the renames and sets up the
                 kept state.
"""
import copy


PREPARING = "preparing"
STOPPING = "stopping"
ROLLING_BACK = "rolling back"
ROLLED_BACK = "rolled back"
SETTLING = "settling"
STAGES = (PREPARING, STOPPING, ROLLING_BACK, ROLLED_BACK, SETTLING)

# The record's fields and their defaults (a list default is a new list each time). A plain
# class, not a dataclass: importing dataclasses (with inspect) was a tenth of every script's
# start-up.
FIELDS = {
    "target": None,
    "datasets": list,
    "stage": STOPPING,
    "started": "?",
    "by": "?",
    "pid": None,
    "rolled_back": list,  # plain: done so far
    "manager": None,  # the process manager's kind (procman): supervisord, systemd, None
    "daemon_was_running": False,  # the manager answered (systemd always does)
    "daemon_down": False,  # supervisord was shut down by this rollback
    "unit": None,  # the systemd unit supervisord was stopped through: started through it
    "running_before": list,  # to start at the end: programs or units, as the manager names them
    "keep": None,  # --keep: the swaps (keep.plan_swaps), guids included
    "stamp": None,  # --keep: the stamp in the clones' and kept datasets' names
}


class Progress:

    def __init__(self, **values):
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError("a rollback record has no %s" % ", ".join(unknown))
        for name, default in FIELDS.items():
            setattr(self, name, values[name] if name in values else
                    default() if default is list else default)

    def __eq__(self, other):
        return isinstance(other, Progress) and self.as_record() == other.as_record()

    def __repr__(self):
        return "Progress(%s)" % ", ".join("%s=%r" % (n, getattr(self, n)) for n in FIELDS)

    @classmethod
    def from_record(cls, data):
        """From a record's dict; None stays None. Keys of other versions are left out."""
        if data is None:
            return None
        return cls(**{k: v for k, v in data.items() if k in FIELDS})

    def as_record(self):
        """A copy: later changes to the swaps' dicts do not reach a record already made."""
        return {name: copy.deepcopy(getattr(self, name)) for name in FIELDS}

    def update(self, **changes):
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError("a rollback record has no %s" % name)
            setattr(self, name, value)

    @property
    def swaps(self):
        return self.keep or []

    @property
    def finished_in_zfs(self):
        """The datasets are (being) replaced or rolled back for good: ZFS and this record say
        what is left, not a new plan (the layout and snapshots are not what a plan reads)."""
        return self.stage in (ROLLED_BACK, SETTLING) or (
            bool(self.keep) and self.stage == ROLLING_BACK)
