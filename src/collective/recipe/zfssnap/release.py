"""The release workflow: snapshot before a release, cleanup after a good one, rollback after a bad one.

A "snapshot set" is one snapshot name taken in one `zfs snapshot` over all the part's datasets.
The part recognises its own sets by the user properties it writes on them (its part name and
buildout directory); it never destroys or rolls back to anything else.
"""
import datetime
import json
import os
import pwd
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

    def __init__(self, config, out, trace=None):
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
        self.zfs.trace = trace
        # What `zfs snapshot` is given; with recursive, -r adds the children, and everything
        # else (rollback, open files, cleanup) works on the children too.
        self.configured = list(self.datasets)
        if config.get("recursive"):
            self.datasets = self.descendants(self.configured)
        self.supervisor = None
        if config.get("supervisorctl"):
            self.supervisor = Supervisor(config["supervisorctl"], config.get("supervisord"),
                                         config.get("programs", ()),
                                         config.get("stop_timeout", 60))

    def descendants(self, datasets):
        found = []
        for dataset in datasets:
            proc = self.zfs.run("list", "-H", "-r", "-t", "filesystem,volume", "-o", "name",
                                dataset)
            found += [n for n in proc.stdout.split("\n") if n and n not in found]
        return found

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
        return find_in(self, sets, wanted)

    def mountpoints(self):
        """Where the datasets are mounted now (an unmounted one has no open files)."""
        if os.path.exists("/proc/self/mounts"):
            # Linux: where the kernel has them mounted (legacy mountpoints included).
            targets = []
            with open("/proc/self/mounts") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 2 and fields[2] == "zfs" and \
                            fields[0].replace("\\040", " ") in self.datasets:
                        targets.append(fields[1].replace("\\040", " "))
            return targets
        values = self.zfs.get(self.datasets, ["mountpoint", "mounted"])
        return [values[d]["mountpoint"] for d in self.datasets
                if values[d]["mounted"] == "yes" and values[d]["mountpoint"].startswith("/")]

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
    raise Stop("no snapshot of this part is named or labelled '%s' (see %s --list); "
               "nothing was changed" % (wanted, site.config["scripts"]["snapshot"]), BAD_INPUT)


def current_user():
    """The effective user: the one zfs checks permissions for (not $USER, which su keeps)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


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
    if label is not None:
        # ZFS allows spaces, but a label is typed in shells: letters, digits, _ - . : only.
        problem = zfsmod.check_snapshot_name(site.primary, label, what="a label",
                                             allow_space=False)
        if problem:
            raise Stop("cannot use the label '%s': %s" % (label, problem), BAD_INPUT)
    now = utc_now()
    short = "%s-%s" % (site.config["prefix"], now.strftime("%Y%m%dT%H%M%SZ"))
    if label:
        short += "-" + label
    for dataset in site.datasets:
        problem = zfsmod.check_snapshot_name(dataset, short)
        if problem:
            raise Stop("cannot use the snapshot name '%s': %s" % (short, problem), BAD_INPUT)
    if message and not message.isprintable():
        raise Stop("the message must be one line of printable characters", BAD_INPUT)
    properties = {"part": site.part, "buildout": site.directory,
                  "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "label": label or "",
                  "message": message or "", "user": current_user(),
                  "host": socket.gethostname(), "version": site.config.get("version", ""),
                  "datasets": ",".join(site.datasets)}
    properties.update(git_info(site.directory))
    props = {P + k: v for k, v in properties.items() if v != ""}
    names = ["%s@%s" % (d, short) for d in site.configured]
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
    scripts = site.config["scripts"]
    out.say("Snapshot %s taken of %s." % (short, ", ".join(site.datasets)))
    out.say("Roll back to it:  %s %s" % (scripts["rollback"], short))
    out.say("Clean it up:      %s %s" % (scripts["cleanup"], short))
    try:
        warn_about_growth(site, short)
    except zfsmod.ZfsError as e:
        out.warn("the snapshot was taken, but its space could not be read: " + e.message)
    site.hook("after-snapshot")
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
    newer = []
    bookmarks = []
    for snap in site.zfs.snapshots(dataset, types="snapshot,bookmark"):
        if snap.createtxg <= target.createtxg:
            continue
        if "#" in snap.name:
            bookmarks.append(snap.name)
        else:
            newer.append(snap)
    return newer, bookmarks


def plan_rollback(site, wanted, written=True):
    """Everything the rollback will do, checked before anything is changed."""
    target = site.find_set(wanted)
    missing = [d for d in site.datasets if d not in target.members]
    if missing:
        raise Stop("the snapshot %s is missing on %s: rolling back only some of the datasets "
                   "would leave the site inconsistent; refusing"
                   % (target.short, ", ".join(missing)), REFUSED)
    recorded = [d for d in target.properties.get("datasets", "").split(",") if d]
    if recorded and sorted(recorded) != sorted(site.datasets):
        raise Stop("the snapshot %s was taken of %s, but this part now has %s: a rollback of "
                   "some of them would leave the site inconsistent; refusing" % (
                       target.short, ", ".join(recorded), ", ".join(site.datasets)), REFUSED)
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
            "written": site.zfs.written_since(dataset, target.short) if written else None})
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
    """What the rollback stopped, so that exactly that is started again.

    Saved next to the lock file while the site is left stopped (a rollback that failed half-way),
    so that the next run starts again what ran before the first one.
    """

    def __init__(self, programs=(), daemon_down=False, running_before=()):
        self.programs = list(programs)            # stopped through supervisorctl stop
        self.daemon_down = daemon_down            # supervisord shut down (files on datasets)
        self.running_before = list(running_before)  # every program that ran before a shutdown
        self.stopped_at = None

    def as_dict(self):
        return {"programs": self.programs, "daemon_down": self.daemon_down,
                "running_before": self.running_before}

    def merge(self, other, daemon_running):
        """Add what an earlier, failed rollback left stopped (`other`) to what this one stopped.

        `daemon_running`: supervisord ran when this rollback began.
        """
        def add(target, names):
            target += [n for n in names if n not in target]

        if self.daemon_down:
            # This run shut supervisord down: it starts all of these after its restart.
            add(self.running_before, other.programs + other.running_before)
        elif daemon_running:
            add(self.programs, other.programs + other.running_before)
        else:
            self.daemon_down = other.daemon_down
            add(self.running_before, other.running_before)
            add(self.programs, other.programs)

    def start_commands(self, site):
        config = site.config
        if self.daemon_down:
            return [config["supervisord"]] + (
                [config["supervisorctl"] + ["start"] + self.running_before]
                if self.running_before else [])
        return [config["supervisorctl"] + ["start"] + self.programs] if self.programs else []


def pending_path(site):
    return site.config["lock_file"] + ".stopped.json"


def load_pending(site):
    try:
        with open(pending_path(site)) as f:
            return Quiesced(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def save_pending(site, q):
    try:
        with open(pending_path(site), "w") as f:
            json.dump(q.as_dict(), f)
    except OSError as e:
        site.out.warn("could not record what was stopped in %s: %s" % (pending_path(site),
                                                                       e.strerror))


def clear_pending(site):
    try:
        os.remove(pending_path(site))
    except OSError:
        pass


def supervisord_on_datasets(site, holders, devices, daemon_pid):
    if daemon_pid and any(h.pid == daemon_pid and not h.cwd_only for h in holders):
        return True
    for path in site.config.get("supervisord_files", ()):
        try:
            if os.stat(os.path.dirname(path)).st_dev in devices:
                return True
        except OSError:
            continue
    return False


def check_open_files(site, mountpoints, exclude, force, before_stop=False):
    """Refuse (Stop) while processes other than `exclude` hold files on the datasets."""
    unreadable = []
    holders = processes.holders(mountpoints, exclude=exclude | {os.getpid()},
                                unreadable=unreadable)
    blocking = [h for h in holders if not h.cwd_only]
    if not before_stop:
        for h in holders:
            if h.cwd_only:
                site.out.note("%s has its working directory on the datasets (not a blocker)"
                              % h.describe())
        if unreadable:
            site.out.warn("could not see the open files of %d processes of other users: run "
                          "as root to check them all" % len(unreadable))
    site.out.data["open_files"] = [h.describe() for h in blocking]
    if blocking and not force:
        raise Stop("refusing to roll back: processes %s have files on the datasets: %s; stop "
                   "them (or pass --force), then try again" % (
                       "outside supervisor" if before_stop else "still",
                       "; ".join(h.describe() for h in blocking)), REFUSED)
    if not before_stop:
        for h in blocking:
            site.out.warn("rolling back under %s (--force)" % h.describe())


def quiesce(site, mountpoints, states, q):
    """Stop what runs on the datasets; on a program that will not stop, start again and Stop."""
    sup = site.supervisor
    devices = processes.devices_of(mountpoints)
    holders = processes.holders(mountpoints, exclude={os.getpid()})
    daemon_pid = sup.daemon_pid()
    pids = sup.status(pids=True) or {}
    q.stopped_at = time.monotonic()
    shutdown = supervisord_on_datasets(site, holders, devices, daemon_pid)
    if shutdown and not sup.daemon:
        raise Stop("supervisord has its files on the datasets, so the rollback must shut it "
                   "down, but the supervisord option is none and it could not be started "
                   "again: set the option (bin/supervisord); nothing was changed", REFUSED)
    running = [n for n in sup.selected(states) if states[n] in RUNNING_STATES]
    if shutdown:
        # supervisord goes down with every program: stop them all first, so that one that
        # will not stop aborts the rollback while everything can still be started again.
        running = [n for n, s in sorted(states.items()) if s in RUNNING_STATES]
        q.running_before = list(running)
    site.out.action("stop %s" % (", ".join(running) or "nothing (no selected program runs)"))
    every = shutdown or not sup.programs
    late = sup.stop(running, every=every)
    q.programs = [n for n in running if n not in late]
    if q.programs:
        site.out.log("stop %s" % ",".join(q.programs))
    if late:
        states = sup.status() or {}
        stuck = [n for n in late if states.get(n) == "STOPPING"] or late
        waiting = [n for n in late if n not in stuck]
        # Wait for the stuck ones to stop after all (supervisor kills them after its
        # stopwaitsecs) so that every program is started again from a known state.
        sup.settle(stuck, sup.timeout + 60)
        q.programs = list(running)
        q.running_before = []
        not_back = restart(site, q)
        raise Stop("%s did not stop within %d s%s: rollback aborted, nothing rolled back; %s"
                   % (", ".join(stuck), sup.timeout,
                      " (%s not stopped yet)" % ", ".join(waiting) if waiting else "",
                      "now running: " + ", ".join(running) if not not_back else
                      "NOT running now: %s (start it with %s start)" % (
                          ", ".join(not_back), " ".join(site.config["supervisorctl"]))))
    if shutdown:
        site.out.action("shutdown supervisord (its files are on the datasets)")
        sup.shutdown([p for p in [daemon_pid] + list(pids.values()) if p])
        q.daemon_down = True
        q.programs = []
        site.out.log("stop supervisord")


def restart(site, q):
    """Start again what `quiesce` stopped; the programs that did not reach RUNNING."""
    sup = site.supervisor
    if sup is None:
        return []
    if q.daemon_down:
        site.out.action("start supervisord")
        sup.start_daemon()
        site.out.log("start supervisord")
        # supervisord starts its autostart programs: put each back as it was before.
        sup.wait(q.running_before, lambda s: s not in ("STARTING", "BACKOFF"))
        states = sup.status() or {}
        extra = [n for n, s in sorted(states.items())
                 if s in RUNNING_STATES and n not in q.running_before]
        if extra:
            site.out.action("stop %s (did not run before the rollback)" % ", ".join(extra))
            sup.stop(extra)
        missing = [n for n in q.running_before if states.get(n) != "RUNNING"]
        late = sup.start(missing) if missing else []
        return late
    if not q.programs:
        return []
    site.out.action("start %s" % ", ".join(q.programs))
    late = sup.start(q.programs)
    site.out.log("start %s" % ",".join(n for n in q.programs if n not in late))
    return late


def same_plan(a, b):
    return [(e["dataset"], e["newer"]) for e in a["datasets"]] == \
        [(e["dataset"], e["newer"]) for e in b["datasets"]]


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
    sup = site.supervisor
    problem = processes.can_check()
    if problem:
        raise Stop("cannot roll back safely: %s" % problem, REFUSED)
    if not yes:
        if confirm is None or not confirm():
            raise Stop("not confirmed: nothing was changed", REFUSED)
    if committed:
        committed()
    mountpoints = site.mountpoints()
    q = Quiesced()
    states = sup.status() if sup else None
    if sup and states is None:
        out.say("supervisord is not running: no programs to stop.")
    managed = set()
    if states is not None:
        managed = processes.with_descendants(
            [sup.daemon_pid() or 0] + list((sup.status(pids=True) or {}).values()))
    # Before anything is stopped: processes outside supervisor would block anyway.
    check_open_files(site, mountpoints, managed, force, before_stop=True)
    site.hook("before-rollback")
    try:
        if states is not None:
            quiesce(site, mountpoints, states, q)
    except SupervisorError as e:
        raise failed_midway(site, plan, q, [], e)
    pending = load_pending(site)
    if pending:
        # An earlier rollback failed half-way and left these stopped: start them too.
        q.merge(pending, daemon_running=states is not None)
    done = []
    try:
        fresh = plan_rollback(site, plan["target"].short, written=False)
        if not same_plan(plan, fresh):
            raise Stop("the snapshots changed while the site was being stopped (a new "
                       "snapshot, hold or clone): nothing was rolled back; run %s again to "
                       "see the new plan" % site.config["scripts"]["rollback"], REFUSED)
        check_open_files(site, mountpoints, set(), force)
        for entry, argv in zip(plan["datasets"], commands):
            out.action(" ".join(argv))
            site.zfs.rollback(entry["snapshot"], destroy_newer=bool(entry["newer"]))
            done.append(entry["dataset"])
            out.log("rollback %s%s" % (entry["snapshot"], " (destroyed %s)" % ",".join(
                entry["newer"]) if entry["newer"] else ""))
    except (Stop, zfsmod.ZfsError, SupervisorError, OSError) as e:
        raise failed_midway(site, plan, q, done, e)
    out.data["rolled_back"] = done
    clear_pending(site)
    try:
        late = restart(site, q)
    except SupervisorError as e:
        raise Stop("rolled back every dataset to %s, but starting the site failed: %s; start "
                   "it with: %s" % (plan["target"].short, e.message, "; ".join(
                       " ".join(c) for c in q.start_commands(site))), FAILED)
    hook_error = None
    try:
        site.hook("after-rollback")
    except Stop as e:
        hook_error = e.message
    if q.stopped_at is not None:
        down = time.monotonic() - q.stopped_at
        out.data["downtime_seconds"] = round(down, 2)
        out.say("Rolled back to %s; the site was down for %.1f s." % (plan["target"].short,
                                                                      down))
    else:
        out.say("Rolled back to %s." % plan["target"].short)
    problems = []
    if late:
        problems.append("%s did not reach RUNNING: look at its log" % ", ".join(late))
    if hook_error:
        problems.append(hook_error)
    if problems:
        raise Stop("rolled back, but " + "; and ".join(problems), FAILED)
    return plan


def failed_midway(site, plan, q, done, error):
    """The Stop for an error after the site was stopped: exactly where things stand."""
    out = site.out
    reason = error.message if isinstance(error, (Stop, zfsmod.ZfsError, SupervisorError)) \
        else str(error)
    if isinstance(error, zfsmod.ZfsError):
        reason = site.permission_message(error, "rollback,destroy,mount")
    pending = [e["dataset"] for e in plan["datasets"] if e["dataset"] not in done]
    out.data.update(rolled_back=done, not_rolled_back=pending)
    if not done:
        # Nothing changed on disk: the site can safely run again as it was.
        out.log("rollback aborted before any dataset was rolled back: %s" % reason)
        try:
            late = restart(site, q)
        except SupervisorError as e:
            return Stop("%s; nothing was rolled back, and starting the site again failed: "
                        "%s; start it with: %s" % (reason, e.message, "; ".join(
                            " ".join(c) for c in q.start_commands(site))), FAILED)
        code = error.code if isinstance(error, Stop) else FAILED
        return Stop("%s; nothing was rolled back%s" % (
            reason.rstrip("; "), ", and the site was started again" if not late else
            "; NOT running now: " + ", ".join(late)), code)
    save_pending(site, q)
    out.log("rollback FAILED after %s: %s" % (",".join(done), reason))
    start = "; ".join(" ".join(c) for c in q.start_commands(site)) or "nothing to start"
    return Stop(
        "the rollback failed half-way (%s): %s %s at the snapshot %s; %s NOT; nothing was "
        "started again: fix the cause and run %s %s again (it starts what ran before), or "
        "roll the rest back by hand (zfs rollback -r) and start the site (%s)" % (
            reason, ", ".join(done), "are" if len(done) > 1 else "is", plan["target"].short,
            ", ".join(pending), site.config["scripts"]["rollback"], plan["target"].short,
            start), INCOMPLETE)


def cleanup(site, names=(), older_than=None, dry_run=False):
    out = site.out
    sets = site.snapshot_sets()
    keep = site.config.get("keep", 0)
    if names:
        chosen = []
        for name in names:
            found = find_in(site, sets, name)
            if found not in chosen:
                chosen.append(found)
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
    # The primary dataset last: its snapshots are how a set is found again, so a cleanup that
    # fails half-way leaves nothing behind that the next one cannot see.
    for dataset in site.datasets[1:] + site.datasets[:1]:
        for s in chosen:
            if dataset in s.members:
                by_dataset.setdefault(dataset, []).append(s.members[dataset].short)
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
    destroyed = []
    for dataset, shorts in batches:
        name = "%s@%s" % (dataset, ",".join(shorts))
        out.action("destroy " + name)
        try:
            site.zfs.destroy(name)
        except zfsmod.ZfsError as e:
            raise Stop("destroying %s failed: %s; destroyed before it: %s" % (
                name, site.permission_message(e, "destroy,mount"),
                ", ".join(destroyed) or "nothing"))
        destroyed.append(name)
        out.log("destroy " + name)
    out.say("Destroyed %s, freed %s." % (", ".join(s.short for s in chosen),
                                         zfsmod.format_size(freed)))
