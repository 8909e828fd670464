"""The release workflow: snapshot before a release, cleanup after a good one, rollback after a bad one.

A "snapshot set" is one snapshot name taken in one `zfs snapshot` over all the part's datasets.
The part recognises its own sets by the user properties it writes on them (its part name and
buildout directory); it never destroys or rolls back to anything else.
"""
import datetime
import getpass
import os
import socket
import subprocess
import time

from collective.recipe.zfssnap import processes
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.supervisor import RUNNING_STATES
from collective.recipe.zfssnap.supervisor import Supervisor
from collective.recipe.zfssnap.supervisor import SupervisorError


P = zfsmod.PROPERTY_PREFIX
PROPERTIES = ("part", "buildout", "created", "label", "message", "git-revision", "git-describe",
              "git-dirty", "user", "host", "version", "datasets")

# Exit codes, documented in README.rst.
OK, FAILED, BAD_INPUT, REFUSED, INCOMPLETE = 0, 1, 2, 3, 4


class Stop(Exception):
    """Ends a script with one sentence for the user and an exit code."""

    def __init__(self, message, code=FAILED, **data):
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data


class SnapshotSet:
    """One snapshot name across the part's datasets; `members` maps dataset -> Snapshot."""

    def __init__(self, short, properties):
        self.short = short
        self.properties = properties
        self.members = {}

    @property
    def label(self):
        return self.properties.get("label", "")

    @property
    def createtxg(self):
        return min(s.createtxg for s in self.members.values())

    @property
    def used(self):
        return sum(s.used for s in self.members.values())

    @property
    def held(self):
        return [s.name for s in self.members.values() if s.userrefs]

    @property
    def cloned(self):
        return [s.name for s in self.members.values() if s.clones]

    def as_dict(self):
        return {"name": self.short, "label": self.label, "created": self.properties.get("created"),
                "git_revision": self.properties.get("git-revision", ""),
                "git_describe": self.properties.get("git-describe", ""),
                "used": self.used, "held": self.held,
                "datasets": sorted(self.members)}


class Site:
    """A part's configuration (from the generated script) and the adapters built from it."""

    def __init__(self, config, out):
        self.config = config
        self.out = out
        self.part = config["part"]
        self.directory = config["directory"]
        self.datasets = list(config["datasets"])
        if not self.datasets:
            raise Stop("the buildout directory %s is not on ZFS (no dataset was found when "
                       "bin/buildout ran): put it on a dataset of its own and run bin/buildout "
                       "again, or set the dataset option" % self.directory, BAD_INPUT)
        self.zfs = zfsmod.Zfs(config["zfs"])
        self.supervisor = None
        if config.get("supervisorctl"):
            self.supervisor = Supervisor(config["supervisorctl"], config.get("supervisord"),
                                         config.get("programs", ()),
                                         config.get("stop_timeout", 60))

    @property
    def primary(self):
        return self.datasets[0]

    # -- reading ----------------------------------------------------------------------------
    def snapshots(self, dataset):
        """The dataset's snapshots (oldest first) with this tool's properties read in."""
        columns = ["name", "createtxg", "creation", "used", "userrefs", "clones"]
        props = [P + p for p in PROPERTIES]
        proc = self.zfs.run("list", "-H", "-p", "-t", "snapshot", "-d", "1",
                            "-o", ",".join(columns + props), dataset)
        snaps = []
        for row in zfsmod.parse_table(proc.stdout, columns + props):
            properties = {p: row.pop(P + p) for p in PROPERTIES}
            snaps.append(zfsmod.Snapshot(properties={k: v for k, v in properties.items()
                                                     if v != "-"}, **row))
        snaps.sort(key=lambda s: s.createtxg)
        return snaps

    def is_own(self, snapshot):
        return (snapshot.properties.get("part") == self.part
                and snapshot.properties.get("buildout") == self.directory)

    def snapshot_sets(self):
        """This part's snapshot sets, oldest first (by transaction group, not by clock)."""
        sets = {}
        for snap in self.snapshots(self.primary):
            if self.is_own(snap):
                sets[snap.short] = SnapshotSet(snap.short, snap.properties)
                sets[snap.short].members[self.primary] = snap
        for dataset in self.datasets[1:]:
            for snap in self.snapshots(dataset):
                if snap.short in sets and self.is_own(snap):
                    sets[snap.short].members[dataset] = snap
        return sorted(sets.values(), key=lambda s: s.createtxg)

    def find_set(self, wanted):
        """The set named `wanted` (its name, dataset@name, or its label); newest if None."""
        sets = self.snapshot_sets()
        if not sets:
            raise Stop("this part (%s) has no snapshots of %s: there is nothing to roll back to"
                       % (self.part, self.primary), REFUSED)
        if wanted is None:
            return sets[-1]
        short = wanted.split("@", 1)[1] if "@" in wanted else wanted
        by_name = [s for s in sets if s.short == short]
        if by_name:
            return by_name[0]
        by_label = [s for s in sets if s.label == wanted]
        if len(by_label) == 1:
            return by_label[0]
        if len(by_label) > 1:
            raise Stop("the label '%s' is on %d snapshots (%s): name the one you mean"
                       % (wanted, len(by_label), ", ".join(s.short for s in by_label)),
                       BAD_INPUT)
        raise Stop("no snapshot of this part is named or labelled '%s': see %s --list"
                   % (wanted, self.config["scripts"]["snapshot"]), BAD_INPUT)

    def mountpoints(self):
        values = self.zfs.get(self.datasets, ["mountpoint"])
        return [values[d]["mountpoint"] for d in self.datasets
                if values[d]["mountpoint"].startswith("/")]

    # -- doing ------------------------------------------------------------------------------
    def hook(self, name):
        argv = self.config.get("hooks", {}).get(name)
        if not argv:
            return
        self.out.action("hook %s: %s" % (name, " ".join(argv)))
        try:
            proc = subprocess.run(argv, cwd=self.directory, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise Stop("the %s hook '%s' could not run: %s" % (name, argv[0], e.strerror))
        if proc.returncode != 0:
            raise Stop("the %s hook '%s' failed (exit %d): fix it, or empty the %s option"
                       % (name, " ".join(argv), proc.returncode, name))

    def permission_message(self, error, permissions):
        if not error.permission_denied:
            return error.message
        return ("zfs said permission denied: give %s the ZFS permissions with 'zfs allow %s "
                "%s %s' (and the same on %s), or set the part's zfs option to run zfs through "
                "sudo (zfs = sudo -n zfs)" % (getpass.getuser(), getpass.getuser(), permissions,
                                              self.primary, ", ".join(self.datasets[1:]) or
                                              "its children"))


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def git_info(directory):
    """Revision, `git describe` and dirtiness of the buildout checkout ({} when not one)."""
    def git(*args):
        try:
            proc = subprocess.run(["git", "-C", directory] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if not revision:
        return {}
    return {"git-revision": revision,
            "git-describe": git("describe", "--tags", "--always") or "",
            "git-dirty": "yes" if git("status", "--porcelain", "--untracked-files=no") else "no"}


def take_snapshot(site, label=None, message=None, dry_run=False):
    out = site.out
    now = utc_now()
    short = "%s-%s" % (site.config["prefix"], now.strftime("%Y%m%dT%H%M%SZ"))
    if label:
        short += "-" + label
    for dataset in site.datasets:
        problem = zfsmod.check_snapshot_name(dataset, short)
        if problem:
            raise Stop("cannot use the snapshot name '%s': %s" % (short, problem), BAD_INPUT)
    if message and any(ord(c) < 32 for c in message):
        raise Stop("the message must be one line without control characters", BAD_INPUT)
    properties = {"part": site.part, "buildout": site.directory,
                  "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "label": label or "",
                  "message": message or "", "user": getpass.getuser(),
                  "host": socket.gethostname(), "version": site.config.get("version", ""),
                  "datasets": ",".join(site.datasets)}
    properties.update(git_info(site.directory))
    props = {P + k: v for k, v in properties.items() if v != ""}
    names = ["%s@%s" % (d, short) for d in site.datasets]
    argv = site.zfs.command + ["snapshot"] + (["-r"] if site.config.get("recursive") else [])
    for key, value in sorted(props.items()):
        argv += ["-o", "%s=%s" % (key, value)]
    argv += names
    out.data.update(snapshot=short, datasets=site.datasets, properties=properties)
    if dry_run:
        out.command(argv)
        return short
    pools = sorted({site.zfs.pool(d) for d in site.datasets})
    if len(pools) > 1:
        out.warn("the datasets are on %d pools (%s): ZFS takes one snapshot per pool, so the "
                 "set is not atomic across pools" % (len(pools), ", ".join(pools)))
    for name in names:
        if site.zfs.exists(name):
            raise Stop("the snapshot %s exists already: wait a second, or give another label"
                       % name, BAD_INPUT)
    site.hook("before-snapshot")
    try:
        site.zfs.snapshot(names, props, recursive=site.config.get("recursive"))
    except zfsmod.ZfsError as e:
        raise Stop(site.permission_message(e, "snapshot,userprop"))
    out.log("snapshot %s" % " ".join(names))
    site.hook("after-snapshot")
    scripts = site.config["scripts"]
    out.say("Snapshot %s taken of %s." % (short, ", ".join(site.datasets)))
    out.say("Roll back to it:  %s %s" % (scripts["rollback"], short))
    out.say("Clean it up:      %s %s" % (scripts["cleanup"], short))
    warn_about_growth(site, short)
    return short


def warn_about_growth(site, newest):
    sets = site.snapshot_sets()
    older = [s for s in sets if s.short != newest]
    keep = site.config.get("keep", 0)
    if len(older) > keep:
        site.out.warn("%d older snapshot(s) of this part are kept beyond keep = %d (%s): they "
                      "grow as the data changes; run %s when the release is good"
                      % (len(older), keep, ", ".join(s.short for s in older),
                         site.config["scripts"]["cleanup"]))
    used = sum(s.used for s in sets)
    limit = site.config.get("warn_size")
    if limit and used > limit:
        site.out.warn("this part's snapshots hold %s, more than warn-size = %s: run %s"
                      % (zfsmod.format_size(used), zfsmod.format_size(limit),
                         site.config["scripts"]["cleanup"]))


def list_snapshots(site):
    sets = site.snapshot_sets()
    site.out.data["snapshots"] = [s.as_dict() for s in sets]
    if not sets:
        site.out.say("This part has no snapshots of %s." % site.primary)
        return
    rows = [("NAME", "CREATED", "LABEL", "GIT", "USED", "HELD")]
    for s in sets:
        rows.append((s.short, s.properties.get("created", "?"), s.label or "-",
                     (s.properties.get("git-describe") or s.properties.get("git-revision", "-")
                      )[:20] or "-", zfsmod.format_size(s.used), "held" if s.held else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        site.out.say("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def newer_than(site, dataset, target):
    """Snapshots and bookmarks of `dataset` newer than `target` (a Snapshot), any tool's."""
    newer = [s for s in site.zfs.snapshots(dataset) if s.createtxg > target.createtxg]
    proc = site.zfs.run("list", "-H", "-p", "-t", "bookmark", "-d", "1",
                        "-o", "name,createtxg", dataset, check=False)
    bookmarks = [row["name"] for row in zfsmod.parse_table(proc.stdout, ("name", "createtxg"))
                 if int(row["createtxg"]) > target.createtxg] if proc.returncode == 0 else []
    return newer, bookmarks


def plan_rollback(site, wanted):
    """Everything the rollback will do, checked before anything is changed."""
    target = site.find_set(wanted)
    missing = [d for d in site.datasets if d not in target.members]
    if missing:
        raise Stop("the snapshot %s is missing on %s: rolling back only some of the datasets "
                   "would leave the site inconsistent; refusing"
                   % (target.short, ", ".join(missing)), REFUSED)
    plan = {"target": target, "datasets": []}
    blockers = []
    for dataset in site.datasets:
        snap = target.members[dataset]
        newer, bookmarks = newer_than(site, dataset, snap)
        for s in newer:
            if s.userrefs:
                blockers.append("%s is held (%s)" % (s.name, ", ".join(site.zfs.holds(s.name))))
            if s.clones:
                blockers.append("%s has clones (%s)" % (s.name, ", ".join(s.clones)))
        plan["datasets"].append({
            "dataset": dataset, "snapshot": snap.name,
            "newer": [s.name for s in newer] + bookmarks,
            "written": site.zfs.written_since(dataset, target.short)})
    if blockers:
        raise Stop("refusing to roll back: newer snapshots must be destroyed by the rollback "
                   "but ZFS would stop half-way on these: %s; release the holds (zfs release) "
                   "or promote/destroy the clones first" % "; ".join(blockers), REFUSED)
    return plan


def rollback_argv(site, entry):
    return site.zfs.command + ["rollback"] + (["-r"] if entry["newer"] else []) + [
        entry["snapshot"]]


def show_plan(site, plan, diff=False):
    out = site.out
    target = plan["target"]
    out.say("Rollback of %s to %s (label: %s, created %s, git %s)" % (
        ", ".join(site.datasets), target.short, target.label or "-",
        target.properties.get("created", "?"),
        target.properties.get("git-describe") or target.properties.get("git-revision", "-")))
    for entry in plan["datasets"]:
        out.say("  %s: undoes %s written since the snapshot" % (
            entry["dataset"], zfsmod.format_size(entry["written"])))
        for name in entry["newer"]:
            out.say("    destroys the newer %s" % name)
        if diff:
            summary = diff_summary(site, entry["snapshot"])
            entry["diff"] = summary
            out.say("    changes since: %s" % summary)
    out.data["plan"] = [dict(e) for e in plan["datasets"]]
    out.data["target"] = target.as_dict()


def diff_summary(site, snapshot):
    proc = site.zfs.run("diff", "-H", snapshot, check=False)
    if proc.returncode != 0:
        return "unavailable (%s)" % (proc.stderr.strip() or "zfs diff failed")
    counts = {}
    for line in proc.stdout.splitlines():
        kind = line.split("\t", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    names = {"+": "added", "-": "removed", "M": "modified", "R": "renamed"}
    return ", ".join("%d %s" % (counts[k], names[k]) for k in "+-MR" if k in counts) or \
        "no changes"


class Quiesced:
    """What the rollback stopped, so that exactly that is started again."""

    def __init__(self):
        self.programs = []        # stopped through supervisorctl stop
        self.daemon_down = False  # supervisord shut down (its files are on the datasets)
        self.running_before = []  # every program that ran before a shutdown
        self.stopped_at = None


def supervisord_on_datasets(site, holders, devices):
    sup = site.supervisor
    pid = sup.daemon_pid()
    if pid and any(h.pid == pid and not h.cwd_only for h in holders):
        return True
    for path in site.config.get("supervisord_files", ()):
        parent = os.path.dirname(path)
        try:
            if os.stat(parent).st_dev in devices:
                return True
        except OSError:
            continue
    return False


def quiesce(site, mountpoints):
    """Stop what runs on the datasets; raise Stop after starting again what was stopped."""
    q = Quiesced()
    sup = site.supervisor
    if sup is None:
        return q
    states = sup.status()
    if states is None:
        site.out.say("supervisord is not running: no programs to stop.")
        return q
    devices = processes.devices_of(mountpoints)
    holders = processes.holders(mountpoints, exclude={os.getpid()})
    q.stopped_at = time.monotonic()
    if supervisord_on_datasets(site, holders, devices):
        q.running_before = [n for n, s in sorted(states.items()) if s in RUNNING_STATES]
        site.out.action("supervisord shutdown (its files are on the datasets); it ran: %s"
                        % (", ".join(q.running_before) or "nothing"))
        sup.shutdown()
        q.daemon_down = True
        site.out.log("stop supervisord (ran: %s)" % ",".join(q.running_before))
        return q
    wanted = [n for n in sup.selected(states) if states[n] in RUNNING_STATES]
    site.out.action("stop %s" % (", ".join(wanted) or "nothing (no selected program runs)"))
    late = sup.stop(wanted)
    q.programs = [n for n in wanted if n not in late]
    if q.programs:
        site.out.log("stop %s" % ",".join(q.programs))
    if late:
        restart(site, q)
        raise Stop("%s did not stop within %d s: rollback aborted, nothing rolled back, "
                   "and what was stopped was started again" % (", ".join(late),
                                                               sup.timeout))
    return q


def restart(site, q):
    """Start again what `quiesce` stopped; the programs that did not reach RUNNING."""
    sup = site.supervisor
    if sup is None:
        return []
    if q.daemon_down:
        site.out.action("start supervisord")
        sup.start_daemon()
        site.out.log("start supervisord")
        states = sup.wait(q.running_before, lambda s: s not in ("STARTING", "BACKOFF")) and \
            sup.status() or sup.status() or {}
        # supervisord starts its autostart programs: put each back as it was before.
        extra = [n for n, s in states.items()
                 if s in RUNNING_STATES and n not in q.running_before]
        if extra:
            sup.stop(extra)
        missing = [n for n in q.running_before if states.get(n) != "RUNNING"]
        return sup.start(missing) if missing else []
    if not q.programs:
        return []
    site.out.action("start %s" % ", ".join(q.programs))
    late = sup.start(q.programs)
    site.out.log("start %s" % ",".join(n for n in q.programs if n not in late))
    return late


def rollback(site, wanted=None, yes=False, dry_run=False, force=False, diff=False,
             confirm=None, committed=None):
    out = site.out
    plan = plan_rollback(site, wanted)
    show_plan(site, plan, diff=diff)
    commands = [rollback_argv(site, e) for e in plan["datasets"]]
    if dry_run:
        for argv in commands:
            out.command(argv)
        return plan
    if not yes:
        if confirm is None or not confirm():
            raise Stop("not confirmed: nothing was changed", REFUSED)
    if committed:
        committed()
    mountpoints = site.mountpoints()
    site.hook("before-rollback")
    q = quiesce(site, mountpoints)
    holders = processes.holders(mountpoints, exclude={os.getpid()})
    blocking = [h for h in holders if not h.cwd_only]
    for h in holders:
        if h.cwd_only:
            out.note("%s has its working directory on the datasets (not a blocker)"
                     % h.describe())
    out.data["open_files"] = [h.describe() for h in blocking]
    if blocking and not force:
        late = restart(site, q)
        raise Stop("refusing to roll back: processes still have files on the datasets: %s; "
                   "stop them (or pass --force), then try again%s"
                   % ("; ".join(h.describe() for h in blocking),
                      "" if not late else " (and start %s, which did not come back)"
                      % ", ".join(late)), REFUSED)
    for h in blocking:
        out.warn("rolling back under %s (--force)" % h.describe())
    done = []
    for entry, argv in zip(plan["datasets"], commands):
        out.action(" ".join(argv))
        try:
            site.zfs.rollback(entry["snapshot"], destroy_newer=bool(entry["newer"]))
        except zfsmod.ZfsError as e:
            pending = [x["dataset"] for x in plan["datasets"] if x["dataset"] not in done]
            out.log("rollback FAILED at %s: %s" % (entry["snapshot"], e.stderr or e.message))
            out.data.update(rolled_back=done, not_rolled_back=pending)
            raise Stop(
                "the rollback of %s failed (%s): %s at the snapshot %s; %s NOT; nothing was "
                "started again: fix the cause and run %s %s again, or roll the rest back by "
                "hand (zfs rollback -r)" % (
                    entry["dataset"], site.permission_message(e, "rollback,destroy,mount"),
                    ", ".join(done) + (" are" if len(done) > 1 else " is") if done else
                    "no dataset is", plan["target"].short, ", ".join(pending),
                    site.config["scripts"]["rollback"], plan["target"].short), INCOMPLETE)
        done.append(entry["dataset"])
        out.log("rollback %s%s" % (entry["snapshot"], " (destroyed %s)" % ",".join(
            entry["newer"]) if entry["newer"] else ""))
    out.data["rolled_back"] = done
    late = restart(site, q)
    site.hook("after-rollback")
    if q.stopped_at is not None:
        down = time.monotonic() - q.stopped_at
        out.data["downtime_seconds"] = round(down, 2)
        out.say("Rolled back to %s; the site was down for %.1f s." % (plan["target"].short,
                                                                      down))
    else:
        out.say("Rolled back to %s." % plan["target"].short)
    if late:
        raise Stop("rolled back, but %s did not reach RUNNING: look at its log"
                   % ", ".join(late), FAILED)
    return plan


def cleanup(site, names=(), older_than=None, dry_run=False):
    out = site.out
    sets = site.snapshot_sets()
    keep = site.config.get("keep", 0)
    if names:
        chosen = []
        for name in names:
            short = name.split("@", 1)[1] if "@" in name else name
            found = [s for s in sets if s.short == short or s.label == name]
            if not found:
                raise Stop("no snapshot of this part is named or labelled '%s': nothing was "
                           "destroyed (%s never destroys other snapshots)"
                           % (name, site.config["scripts"]["cleanup"]), BAD_INPUT)
            chosen += [s for s in found if s not in chosen]
    else:
        chosen = sets[:-keep] if keep else list(sets)
        if older_than is not None:
            limit = time.time() - older_than
            chosen = [s for s in chosen if min(m.creation for m in s.members.values()) < limit]
    skipped = [s for s in chosen if s.held or s.cloned]
    for s in skipped:
        out.warn("skipped %s: %s" % (s.short, "; ".join(
            ["held: " + ", ".join(s.held)] * bool(s.held) +
            ["cloned: " + ", ".join(s.cloned)] * bool(s.cloned))))
    chosen = [s for s in chosen if s not in skipped]
    out.data.update(destroyed=[s.short for s in chosen], skipped=[s.short for s in skipped])
    if not chosen:
        out.say("Nothing to clean up.")
        out.data["freed"] = 0
        return
    freed = 0
    by_dataset = {}
    for s in chosen:
        for dataset, snap in s.members.items():
            by_dataset.setdefault(dataset, []).append(snap.short)
    batches = [(d, shorts[i:i + 50]) for d, shorts in by_dataset.items()
               for i in range(0, len(shorts), 50)]
    try:
        for dataset, shorts in batches:
            freed += site.zfs.destroy_dry_run(dataset, shorts)
    except zfsmod.ZfsError as e:
        raise Stop(site.permission_message(e, "destroy,mount"))
    out.data["freed"] = freed
    if dry_run:
        for dataset, shorts in batches:
            out.command(site.zfs.command + ["destroy", "%s@%s" % (dataset, ",".join(shorts))])
        out.say("Would destroy %s, freeing %s." % (", ".join(s.short for s in chosen),
                                                 zfsmod.format_size(freed)))
        return
    for dataset, shorts in batches:
        name = "%s@%s" % (dataset, ",".join(shorts))
        out.action("destroy " + name)
        try:
            site.zfs.destroy(name)
        except zfsmod.ZfsError as e:
            raise Stop("destroying %s failed: %s" % (
                name, site.permission_message(e, "destroy,mount")))
        out.log("destroy " + name)
    out.say("Destroyed %s, freed %s." % (", ".join(s.short for s in chosen),
                                         zfsmod.format_size(freed)))
