"""What bin/rollback is asked to do: its command line as one object, handed to every step."""


class Request:
    """`wanted`: the set to roll back to (name or label; None: the newest); `yes`: no
    question; `dry_run`: plan only; `force`: roll back under processes the process manager
    does not run (--force); `diff`: zfs diff in the plan; `confirm`: asks on the terminal, True to go on;
    `critical`: defers signals from the first destructive step on; `keep`: keep the state
    rolled away from; `start` False: --no-start; `start_only`: --start; `again`: a second
    rollback to the set the last one went back to is meant (--again)."""

    __slots__ = ("wanted", "yes", "dry_run", "force", "diff", "confirm", "critical", "keep",
                 "start", "start_only", "again")

    def __init__(self, wanted=None, yes=False, dry_run=False, force=False, diff=False,
                 confirm=None, critical=None, keep=False, start=True, start_only=False,
                 again=False):
        self.wanted = wanted
        self.yes = yes
        self.dry_run = dry_run
        self.force = force
        self.diff = diff
        self.confirm = confirm
        self.critical = critical
        self.keep = keep
        self.start = start
        self.start_only = start_only
        self.again = again

    def but(self, **changes):
        """A copy with `changes`: a rerun finishes the recorded target, as it was started."""
        copy = Request(**{name: getattr(self, name) for name in self.__slots__})
        for name, value in changes.items():
            setattr(copy, name, value)
        return copy
