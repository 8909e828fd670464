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
import dataclasses


PREPARING = "preparing"
STOPPING = "stopping"
ROLLING_BACK = "rolling back"
ROLLED_BACK = "rolled back"
SETTLING = "settling"
STAGES = (PREPARING, STOPPING, ROLLING_BACK, ROLLED_BACK, SETTLING)


@dataclasses.dataclass
class Progress:
    target: str = None
    datasets: list = dataclasses.field(default_factory=list)
    stage: str = STOPPING
    started: str = "?"
    by: str = "?"
    pid: int = None
    rolled_back: list = dataclasses.field(default_factory=list)  # plain: done so far
    daemon_was_running: bool = False
    daemon_down: bool = False  # supervisord was shut down by this rollback
    unit: str = None  # the systemd unit supervisord was stopped through: started through it
    running_before: list = dataclasses.field(default_factory=list)  # to start at the end
    keep: list = None  # --keep: the swaps (keep.plan_swaps), guids included
    stamp: str = None  # --keep: the stamp in the clones' and kept datasets' names

    @classmethod
    def from_record(cls, data):
        """From a record's dict; None stays None. Keys of other versions are left out."""
        if data is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_record(self):
        return dataclasses.asdict(self)

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
