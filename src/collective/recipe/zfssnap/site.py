"""The part's view of the site: its datasets as they are mounted now, its snapshot sets, hooks.

A "snapshot set" is one snapshot name taken over all the part's datasets (one `zfs snapshot`
per pool). The part recognises its own sets by the user properties it set on them (its part
name and buildout directory); it never destroys or rolls back to anything else.
"""
import os
import pwd
import signal
import subprocess
import threading

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.progress import ROLLED_BACK
from collective.recipe.zfssnap.progress import ROLLING_BACK
from collective.recipe.zfssnap.progress import SETTLING


P = zfsmod.PROPERTY_PREFIX
PROPERTIES = ("part", "buildout", "created", "label", "message", "git-revision", "git-describe",
              "git-dirty", "user", "host", "version", "datasets", "made-by")

# Exit codes, documented in README.rst.
OK, FAILED, BAD_INPUT, REFUSED, INCOMPLETE = 0, 1, 2, 3, 4


# A --keep rollback's stages from the swap on to the end of its settling.
UNSETTLED = (ROLLING_BACK, ROLLED_BACK, SETTLING)


class Stop(Exception):
    """Ends a script with one sentence for the user and an exit code."""

    def __init__(self, message, code=FAILED):
        super().__init__(message)
        self.message = message
        self.code = code


def current_user():
    """The effective user: the one zfs checks permissions for (not $USER, which su keeps)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


class Background:
    """A read-only query run in a thread while the script goes on: one command's queries wait
    for zfs and git at the same time, not one after the other. result() waits for it and
    raises what it raised."""

    def __init__(self, function, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function,) + args, daemon=True)
        self._thread.start()

    def _run(self, function, *args):
        try:
            self._value = function(*args)
        except BaseException as e:  # handed to the caller of result()
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class SnapshotSet:
    """One snapshot name across the part's datasets; `members` maps dataset -> Snapshot."""

    def __init__(self, short, properties):
        self.short = short
        self.properties = properties
        self.members = {}
        self.missing = []  # the part's datasets without this snapshot
        self.order = 0  # the primary dataset's transaction group: sets sort by it

    @property
    def label(self):
        return self.properties.get("label", "")

    @property
    def created(self):
        return min(s.creation for s in self.members.values())

    @property
    def used(self):
        return sum(s.used for s in self.members.values())

    @property
    def held(self):
        return [s.name for s in self.members.values() if s.userrefs]

    @property
    def cloned(self):
        return [s.name for s in self.members.values() if s.clones]

    @property
    def recorded_datasets(self):
        return [d for d in self.properties.get("datasets", "").split(",") if d]

    def as_dict(self):
        return {"name": self.short, "label": self.label, "created": self.properties.get("created"),
                "message": self.properties.get("message", ""),
                "git_revision": self.properties.get("git-revision", ""),
                "git_describe": self.properties.get("git-describe", ""),
                "used": self.used, "held": self.held,
                "datasets": sorted(self.members), "missing": list(self.missing),
                "complete": not self.missing}


class Site:
    """A part's configuration (from the generated script) and the ZFS adapter built from it."""

    def __init__(self, config, out):
        self.config = config
        self.out = out
        self.part = config["part"]
        self.directory = config["directory"]
        self.configured = list(config["datasets"])
        if not self.configured and config.get("standalone"):
            raise Stop("the site directory %s is not on ZFS (no dataset is mounted there): put "
                       "it on a dataset of its own, or name its dataset in the dataset option "
                       "%s" % (self.directory, config.get("options_in", "")), BAD_INPUT)
        if not self.configured:
            raise Stop("the buildout directory %s is not on ZFS (no dataset was found when "
                       "bin/buildout ran): put it on a dataset of its own and run bin/buildout "
                       "again, or set the dataset option" % self.directory, BAD_INPUT)
        self.zfs = zfsmod.Zfs(config["zfs"], timeout=config.get("zfs_timeout"))
        self.zfs.trace = out.trace
        self._datasets = None
        self.scripts = config["scripts"]
        self.places = state.Places(config)
        self.snapshot_space = {}  # dataset -> what all its snapshots hold (any tool's)
        # What the scripts' sentences call it: a buildout's part, or a site without buildout.
        self.noun = "site" if config.get("standalone") else "part"

    @property
    def datasets(self):
        """Every dataset the part covers: with `recursive`, the children found now too."""
        if self._datasets is None:
            if self.config.get("recursive"):
                self._datasets = self.zfs.descendants(self.configured)
            else:
                self._datasets = list(self.configured)
        return self._datasets

    @property
    def primary(self):
        return self.configured[0]

    @property
    def primary_last(self):
        """The datasets in the order their snapshots are destroyed: the buildout's last, as a
        set is found by its snapshot (a run killed half-way leaves what the next one finds).
        With `recursive`, `datasets` is in zfs's order, not the buildout's first."""
        return [d for d in self.datasets if d != self.primary] + [self.primary]

    # -- the layout on disk -----------------------------------------------------------------
    def check_layout(self, action, other_script=False):
        """Refuse when the datasets are not mounted as when bin/buildout ran: a dataset moved,
        renamed or unmounted, or a new one mounted inside the buildout, would be rolled back
        wrongly or not at all. Returns the mountpoints of the part's datasets. For a script
        other than bin/rollback (`other_script`), an unfinished rollback's record is named as
        the likely cause."""
        table = mountsmod.zfs_mounts()
        recorded = self.config.get("mounts", {})
        problems = []
        for dataset, mountpoint in sorted(recorded.items()):
            now = mountsmod.where(dataset, table)
            holder = mountsmod.holding(mountpoint, table) if os.path.exists(mountpoint) else None
            if now is None:
                problems.append("%s is not mounted (it was at %s)" % (dataset, mountpoint))
            elif now != mountpoint:
                problems.append("%s is mounted at %s, not at %s" % (dataset, now, mountpoint))
            elif holder is not None and holder.dataset != dataset:
                problems.append("%s is mounted over %s at %s" % (holder.dataset, dataset,
                                                                  mountpoint))
        covered = set(self.datasets) | set(self.config.get("excluded", ()))
        tops = [m for m in recorded.values()]
        for m in mountsmod.below(tops, table):
            if m.dataset not in covered:
                problems.append("%s is mounted at %s, inside the part's datasets, and the part "
                                "does not cover it" % (m.dataset, m.mountpoint))
        if problems and other_script and os.path.exists(self.rollback_record().path):
            # A --keep rollback killed after the start leaves the clones under their own names
            # until its rerun renames them.
            raise Stop("refusing to %s: the datasets are not mounted as when bin/buildout ran "
                       "(%s), and an unfinished rollback is recorded: run %s to finish it; "
                       "nothing was changed" % (action, "; ".join(problems),
                                                self.scripts.get("rollback", "bin/rollback")),
                       REFUSED)
        if problems:
            raise Stop("refusing to %s: the datasets are not mounted as when bin/buildout ran: "
                       "%s; mount them as they were, or run bin/buildout again so that the part "
                       "covers what is there now (exclude-datasets leaves one out); nothing was "
                       "changed" % (action, "; ".join(problems)), REFUSED)
        return [mountsmod.where(d, table) for d in self.datasets
                if mountsmod.where(d, table)]

    def rollback_record(self):
        """Where bin/rollback records an unfinished rollback (in the part's state directory,
        outside the datasets, the same for every release: state.Places)."""
        return state.Record(self.places.record)

    def take_locks(self):
        """The part's locks (state.Places), as root given to the buildout's owner."""
        self.places.adopt()
        return self.places.take_locks()

    def recorded_rollback(self, action):
        """The unfinished rollback's record (a dict), or None. A record that cannot be read
        refuses `action`: it may protect the snapshot rolled back to, or map a half-done
        --keep swap, so it is never taken as no record."""
        try:
            return self.rollback_record().load()
        except state.StateError as e:
            raise Stop("refusing to %s: %s; nothing was changed" % (action, e.message),
                       REFUSED)

    def refuse_while_recorded(self, action):
        """Refuse `action` while any rollback is recorded as unfinished: a snapshot would hold
        a half-rolled-back site, and a bin/buildout would build on it."""
        data = self.recorded_rollback(action)
        if data:
            raise Stop("refusing to %s: an unfinished rollback to %s is recorded (stage '%s', "
                       "record %s): run %s to finish it first (after a --no-start, %s --start "
                       "starts the site); nothing was changed"
                       % (action, data.get("target"), data.get("stage"),
                          self.rollback_record().path, self.scripts.get("rollback",
                                                                        "bin/rollback"),
                          self.scripts.get("rollback", "bin/rollback")), REFUSED)

    def unsettled_keep(self, action):
        """The stage of a --keep rollback that is swapping or has swapped the datasets and has
        not settled them, or None. Until its rerun settles them, a dataset's name may still be
        the state's rolled away from: nothing may be read or destroyed by those names."""
        data = self.recorded_rollback(action)
        if data and data.get("keep") and data.get("stage") in UNSETTLED:
            return data["stage"]
        return None

    def refuse_while_unsettled(self, action):
        stage = self.unsettled_keep(action)
        if stage:
            raise Stop("refusing to %s: an unfinished bin/rollback --keep is recorded (stage "
                       "'%s'), and until it is finished the datasets' names are not the "
                       "site's; run %s to finish it first; nothing was changed"
                       % (action, stage, self.scripts.get("rollback", "bin/rollback")),
                       REFUSED)

    # -- reading ----------------------------------------------------------------------------
    def is_own(self, snapshot):
        # Only properties set on the snapshot itself count (zfs.py reads "local" ones only).
        return (snapshot.properties.get("part") == self.part
                and snapshot.properties.get("buildout") == self.directory)

    def snapshot_sets(self):
        """This part's snapshot sets, oldest first (by the primary's transaction group)."""
        found, self.snapshot_space = self.zfs.snapshots(self.datasets, PROPERTIES)
        sets = {}
        for snap in found[self.primary]:
            if self.is_own(snap):
                sets[snap.short] = SnapshotSet(snap.short, snap.properties)
                sets[snap.short].members[self.primary] = snap
                sets[snap.short].order = snap.createtxg
        for dataset in self.datasets:
            if dataset == self.primary:
                continue
            for snap in found[dataset]:
                if snap.short in sets and self.is_own(snap):
                    sets[snap.short].members[dataset] = snap
        for found_set in sets.values():
            found_set.missing = [d for d in self.datasets if d not in found_set.members]
        return sorted(sets.values(), key=lambda s: s.order)

    def find_set(self, wanted, sets=None):
        """The set named `wanted` (its name, dataset@name, or its label); newest if None."""
        sets = self.snapshot_sets() if sets is None else sets
        if not sets:
            raise Stop("this part (%s) has no snapshots of %s: there is nothing to roll back to"
                       % (self.part, self.primary), REFUSED)
        if wanted is None:
            return sets[-1]
        return find_in(self, sets, wanted)

    # -- doing ------------------------------------------------------------------------------
    def hook(self, name):
        argv = self.config.get("hooks", {}).get(name)
        if not argv:
            return
        timeout = self.config.get("hook_timeout", 600)
        self.out.action("hook %s: %s" % (name, " ".join(argv)))
        try:
            # A session of its own: it can be killed as a whole when it hangs.
            proc = subprocess.Popen(argv, cwd=self.directory, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as e:
            raise Stop("the %s hook '%s' could not run: %s" % (name, argv[0], e.strerror))
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            crashpoint.done("hook " + name)
            raise Stop("the %s hook '%s' did not finish within %d s and was killed: fix it, or "
                       "raise hook-timeout" % (name, " ".join(argv), timeout))
        crashpoint.done("hook " + name)
        if rc != 0:
            raise Stop("the %s hook '%s' failed (exit %d): fix it, or empty the %s option"
                       % (name, " ".join(argv), rc, name))

    def permission_message(self, error, permissions):
        if not error.permission_denied:
            return error.message
        user = current_user()
        return ("zfs said permission denied: give %s the ZFS permissions with 'zfs allow %s "
                "%s %s' (and the same on %s), or set the part's zfs option to run zfs through "
                "sudo (zfs = sudo -n zfs)" % (user, user, permissions, self.primary,
                                              ", ".join(self.datasets[1:]) or "its children"))


def find_in(site, sets, wanted):
    """The set among `sets` named `wanted`: its name, DATASET@name, or its (unique) label."""
    short = wanted
    if "@" in wanted:
        dataset, short = wanted.split("@", 1)
        if dataset not in site.datasets:
            raise Stop("%s is not one of this part's datasets (%s)"
                       % (dataset, ", ".join(site.datasets)), BAD_INPUT)
    by_name = [s for s in sets if s.short == short]
    if by_name:
        return by_name[0]
    by_label = [s for s in sets if s.label == wanted]
    if len(by_label) == 1:
        return by_label[0]
    if len(by_label) > 1:
        raise Stop("the label '%s' is on %d snapshots (%s): name the one you mean"
                   % (wanted, len(by_label), ", ".join(s.short for s in by_label)), BAD_INPUT)
    raise Stop("no snapshot of this %s is named or labelled '%s' (see %s --list); "
               "nothing was changed" % (site.noun, wanted, site.scripts["snapshot"]), BAD_INPUT)
