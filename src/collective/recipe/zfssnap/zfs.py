"""The ZFS adapter: argv lists for the zfs command and parsers for its scripted (-H -p) output.

Nothing here decides anything about releases; it only says what ZFS says. Every call goes
through `Zfs.run`, so the command (`zfs`, `sudo -n zfs`, a test's fake) is set in one place.
"""
import os
import re
import subprocess

from collective.recipe.zfssnap import crashpoint


# ZFS's own rule for the part after '@' (zfs_component_namecheck): these characters only.
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\- ]+$")
DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]*(/[A-Za-z0-9_.:\- ]+)*$")
MAX_FULL_NAME = 255  # ZFS_MAX_DATASET_NAME_LEN - 1: "pool/fs@snap" must fit
MAX_PROPERTY_VALUE = 8191  # ZAP_MAXVALUELEN - 1: a user property's value, in bytes
# The property namespace of this tool's snapshots: `zfs get` reads them back.
PROPERTY_PREFIX = "collective.recipe.zfssnap:"
# One argument of an argv may be at most 128 KiB on Linux (MAX_ARG_STRLEN): comma lists of
# snapshots for one `zfs destroy` stay well below it.
MAX_LIST_ARGUMENT = 64 * 1024


class ZfsError(Exception):
    """zfs exited non-zero, or could not be run. `message` is one sentence for the user."""

    def __init__(self, message, argv=None, stderr=""):
        super().__init__(message)
        self.message = message
        self.argv = argv
        self.stderr = stderr

    @property
    def permission_denied(self):
        return "permission denied" in self.stderr.lower()


class ZfsTimeout(ZfsError):
    """A zfs call that did not finish within the part's zfs-timeout."""


class NotOnZfs(ZfsError):
    """The path is not on a ZFS filesystem."""


class NoZfsCommand(ZfsError):
    """The zfs command (or the first word of the zfs option) cannot be found or run."""


def check_snapshot_name(dataset, name, what="a snapshot name", allow_space=True):
    """Return None when `dataset@name` is a valid ZFS snapshot name, else the reason.

    With allow_space=False (labels and prefixes, typed in shells) a space is refused too.
    """
    if not name:
        return "%s cannot be empty" % what
    if name in (".", ".."):
        return "%s cannot be '.' or '..'" % what
    bad = sorted(set(c for c in name if not SNAPSHOT_NAME_RE.match(c)
                     or (c == " " and not allow_space)))
    if bad:
        return "%s may contain only letters, digits%s_ - . : (not %s)" % (
            what, ", space and " if allow_space else " and ", " ".join(repr(c) for c in bad))
    full = "%s@%s" % (dataset, name)
    if len(full.encode()) > MAX_FULL_NAME:
        return "'%s' is %d bytes long; ZFS allows %d" % (full, len(full.encode()), MAX_FULL_NAME)
    return None


def check_dataset_name(name):
    """None when `name` is a valid ZFS filesystem name, else the reason."""
    if not DATASET_NAME_RE.match(name):
        return "%r is not a ZFS dataset name" % name
    if len(name.encode()) > MAX_FULL_NAME:
        return "%r is longer than ZFS allows (%d bytes)" % (name, MAX_FULL_NAME)
    return None


def check_property_value(name, value):
    """None when ZFS can store `value` in the user property `name`, else the reason."""
    size = len(value.encode())
    if size > MAX_PROPERTY_VALUE:
        return "the %s is %d bytes long; ZFS stores at most %d bytes in a property" % (
            name, size, MAX_PROPERTY_VALUE)
    return None


def parse_size(text):
    """'10G' -> bytes (ZFS's binary units); plain digits are bytes."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)i?B?\s*$", text, re.I)
    if not m:
        raise ValueError("not a size: %r (use e.g. 500M, 10G)" % text)
    power = " KMGTP".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * 1024 ** power)


def format_size(n):
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024.0


def parse_table(output, columns):
    """Rows of `zfs ... -H` output (tab-separated) as dicts keyed by `columns`."""
    rows = []
    # Only "\n" ends a row: splitlines() would also split a value at \x0b, \x1c or \u2028.
    for line in output.split("\n"):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(columns):
            raise ZfsError("unexpected output from zfs: %r" % line)
        rows.append(dict(zip(columns, values)))
    return rows


def comma_batches(names, limit=MAX_LIST_ARGUMENT):
    """`names` cut into lists whose comma-joined length stays within `limit` bytes."""
    batch, size = [], 0
    for name in names:
        length = len(name.encode()) + 1
        if batch and size + length > limit:
            yield batch
            batch, size = [], 0
        batch.append(name)
        size += length
    if batch:
        yield batch


class Snapshot:
    """One snapshot (or bookmark) as zfs reports it, with the properties set on it locally."""

    def __init__(self, name, createtxg, creation="0", used="0", userrefs="0", clones="",
                 properties=None):
        self.name = name
        self.dataset, self.short = re.split("[@#]", name, maxsplit=1)
        self.createtxg = int(createtxg)
        self.creation = int(creation) if creation.isdigit() else 0
        self.used = int(used) if used.isdigit() else 0
        self.userrefs = int(userrefs) if userrefs.isdigit() else 0
        self.clones = [c for c in clones.split(",") if c and c != "-"]
        self.properties = properties or {}

    @property
    def is_bookmark(self):
        return "#" in self.name

    def __repr__(self):
        return "<Snapshot %s>" % self.name


NATIVE = ("createtxg", "creation", "used", "userrefs", "clones")


def parse_snapshot_properties(output, prefix=PROPERTY_PREFIX):
    """Snapshots from `zfs get -H -p -o name,property,value,source` output.

    Only properties of `prefix` whose source is "local" count: a value inherited from the
    dataset (someone set it there) is not what this tool wrote on the snapshot.
    """
    rows = {}
    for row in parse_table(output, ("name", "property", "value", "source")):
        entry = rows.setdefault(row["name"], ({}, {}))
        if row["property"] in NATIVE:
            entry[0][row["property"]] = row["value"]
        elif row["property"].startswith(prefix) and row["source"] == "local":
            entry[1][row["property"][len(prefix):]] = row["value"]
    snaps = []
    for name, (native, props) in rows.items():
        if "createtxg" not in native or "@" not in name:
            continue  # the datasets themselves
        snaps.append(Snapshot(name, properties=props, **native))
    return snaps


class Zfs:
    """Runs zfs as an argv list (never through a shell)."""

    def __init__(self, command=("zfs",), env=None, timeout=None):
        self.command = list(command)
        self.env = env
        self.timeout = timeout or None  # seconds one zfs call may take (None: no limit)
        self.trace = None  # called with each argv before it runs (bin/... -v)

    def run(self, *args, check=True):
        argv = self.command + list(args)
        if self.trace:
            self.trace(argv)
        try:
            # A session of its own: a Ctrl-C meant for the script never kills zfs half-way.
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", env=self.env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise NoZfsCommand("the command '%s' was not found: this machine has no ZFS tools, "
                               "or the part's zfs option names the wrong command"
                               % self.command[0], argv)
        except PermissionError:
            raise NoZfsCommand("the command '%s' cannot be run (permission denied): fix its "
                               "permissions or the part's zfs option" % self.command[0], argv)
        except OSError as e:
            raise NoZfsCommand("the command '%s' cannot be run (%s): fix the part's zfs option"
                               % (self.command[0], e.strerror), argv)
        proc = self._wait(child, argv)
        if crashpoint.zfs_changes(args):
            crashpoint.done("zfs " + " ".join(args))
        if check and proc.returncode != 0:
            stderr = proc.stderr.strip()
            raise ZfsError("'%s' failed: %s" % (" ".join(argv), stderr or "exit %d"
                                                % proc.returncode), argv, stderr)
        return proc

    def _wait(self, child, argv):
        """The finished call, or ZfsTimeout. A zfs that does not answer is left running, not
        killed: it may be in the middle of its change (a kill would wait for it anyway), and
        the rerun reads from ZFS what it did."""
        try:
            stdout, stderr = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            for stream in (child.stdout, child.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            error = ZfsTimeout("'%s' did not finish within %d s (the part's zfs-timeout) and "
                               "is still running as pid %d: find out why (zpool status, dmesg), "
                               "wait until it has finished, then try again" % (
                                   " ".join(argv), self.timeout, child.pid), argv)
            error.child = child
            raise error
        return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)

    # -- datasets ---------------------------------------------------------------------------
    def dataset_at(self, path):
        """(dataset, mountpoint property) of the filesystem holding `path`."""
        path = os.path.realpath(path)
        proc = self.run("list", "-H", "-o", "name,mountpoint", path, check=False)
        if proc.returncode != 0:
            stderr = proc.stderr.strip()
            if "not a ZFS filesystem" in stderr or "No such file" in stderr:
                raise NotOnZfs("%s is not on a ZFS filesystem" % path, stderr=stderr)
            raise ZfsError("'zfs list %s' failed: %s" % (path, stderr), stderr=stderr)
        row = parse_table(proc.stdout, ("name", "mountpoint"))[0]
        return row["name"], row["mountpoint"]

    def exists(self, name):
        return self.run("list", "-H", "-o", "name", name, check=False).returncode == 0

    def get(self, names, properties):
        """{name: {property: value}} for datasets or snapshots ('-' where unset)."""
        result = {}
        if not names:
            return result
        proc = self.run("get", "-H", "-p", "-o", "name,property,value",
                        ",".join(properties), *names)
        for row in parse_table(proc.stdout, ("name", "property", "value")):
            result.setdefault(row["name"], {})[row["property"]] = row["value"]
        return result

    def descendants(self, datasets):
        """`datasets` and their descendant filesystems and volumes, parents first."""
        found = []
        proc = self.run("list", "-H", "-r", "-t", "filesystem,volume", "-o", "name", *datasets)
        for name in proc.stdout.split("\n"):
            if name and name not in found:
                found.append(name)
        return found

    @staticmethod
    def pool(dataset):
        return dataset.split("/", 1)[0]

    # -- snapshots --------------------------------------------------------------------------
    def snapshots(self, datasets, own_properties=()):
        """({dataset: [Snapshot]}, {dataset: space all its snapshots hold}) in one zfs call;
        the snapshots oldest first by transaction group.

        `own_properties` (names without the prefix) are read too, where set on the snapshot.
        """
        props = list(NATIVE) + ["usedbysnapshots"] + [PROPERTY_PREFIX + p
                                                      for p in own_properties]
        proc = self.run("get", "-H", "-p", "-o", "name,property,value,source", "-t",
                        "filesystem,volume,snapshot", "-d", "1", ",".join(props), *datasets)
        result = {d: [] for d in datasets}
        held = {}
        for line in proc.stdout.split("\n"):
            fields = line.split("\t")
            if len(fields) == 4 and fields[1] == "usedbysnapshots" and fields[0] in result:
                held[fields[0]] = int(fields[2]) if fields[2].isdigit() else 0
        for snap in parse_snapshot_properties(proc.stdout):
            if snap.dataset in result:
                result[snap.dataset].append(snap)
        for snaps in result.values():
            snaps.sort(key=lambda s: s.createtxg)
        return result, held

    def newer(self, datasets, createtxgs):
        """{dataset: [snapshots and bookmarks newer than createtxgs[dataset]]}, in one call."""
        proc = self.run("list", "-H", "-p", "-t", "snapshot,bookmark", "-d", "1",
                        "-o", "name,createtxg,creation,used,userrefs,clones", *datasets)
        rows = parse_table(proc.stdout, ("name", "createtxg", "creation", "used", "userrefs",
                                         "clones"))
        result = {d: [] for d in datasets}
        for snap in (Snapshot(**row) for row in rows):
            if snap.dataset in result and snap.createtxg > createtxgs[snap.dataset]:
                result[snap.dataset].append(snap)
        for snaps in result.values():
            snaps.sort(key=lambda s: s.createtxg)
        return result

    @staticmethod
    def snapshot_argv(names, properties=None, recursive=False):
        args = ["snapshot"]
        if recursive:
            args.append("-r")
        for key, value in sorted((properties or {}).items()):
            args += ["-o", "%s=%s" % (key, value)]
        return args + list(names)

    def snapshot(self, names, properties=None, recursive=False):
        """One `zfs snapshot` of all `names`: atomic (all or nothing) within one pool."""
        self.run(*self.snapshot_argv(names, properties, recursive))

    def holds(self, snapshot):
        proc = self.run("holds", "-H", snapshot)
        return [line.split("\t")[1] for line in proc.stdout.splitlines() if "\t" in line]

    @staticmethod
    def rollback_argv(snapshot, destroy_newer=False):
        return ["rollback"] + (["-r"] if destroy_newer else []) + [snapshot]

    def rollback(self, snapshot, destroy_newer=False):
        self.run(*self.rollback_argv(snapshot, destroy_newer))

    def reclaimable(self, dataset, shorts):
        """Bytes that destroying these snapshots of one dataset together would free.

        Space held jointly by several snapshots (each one's `used` is 0) counts too.
        """
        total = 0
        for batch in comma_batches(shorts):
            proc = self.run("destroy", "-n", "-v", "-p", "%s@%s" % (dataset, ",".join(batch)))
            for line in proc.stdout.splitlines():
                parts = line.split("\t")
                if parts[0] == "reclaim" and len(parts) > 1 and parts[1].isdigit():
                    total += int(parts[1])
        return total

    def destroy(self, name, recursive=False):
        """Destroy `name` (DATASET@a,b,c: several snapshots of one dataset); the bytes freed,
        as zfs reports them (-v -p), or 0."""
        proc = self.run(*(["destroy", "-v", "-p"] + (["-r"] if recursive else []) + [name]))
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if parts[0] == "reclaim" and len(parts) > 1 and parts[1].isdigit():
                return int(parts[1])
        return 0

    def zpool_command(self):
        """zpool, elevated as the zfs option is (`sudo -n zpool` for `sudo -n zfs`); None when
        the option does not end in a zfs command."""
        last = self.command[-1]
        if os.path.basename(last) != "zfs":
            return None
        return self.command[:-1] + [os.path.join(os.path.dirname(last), "zpool")]

    def sync_pools(self, pools):
        """`zpool sync` of the pools, best effort: `written` counts only what reached a
        transaction group, so right after a release it says 0 until the pool syncs. A failure
        (no zpool, no permission) leaves the figures as they are."""
        argv = self.zpool_command()
        if not argv or not pools:
            return
        argv = argv + ["sync"] + sorted(pools)
        if self.trace:
            self.trace(argv)
        try:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                           timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def written_since(self, datasets, short):
        """{dataset: bytes written since its snapshot `short`}, in one zfs call, after the
        pools synced."""
        self.sync_pools({self.pool(d) for d in datasets})
        values = self.get(list(datasets), ["written@" + short])
        found = {}
        for dataset in datasets:
            value = values.get(dataset, {}).get("written@" + short, "")
            found[dataset] = int(value) if value.isdigit() else 0
        return found
