"""The ZFS adapter: argv lists for the zfs command and parsers for its scripted (-H -p) output.

Nothing here decides anything about releases; it only says what ZFS says. Every call goes
through `Zfs.run`, so the command (`zfs`, `sudo -n zfs`, a test's fake) is set in one place.
"""
import os
import re
import subprocess


# ZFS's own rule for the part after '@' (zfs_component_namecheck): these characters only.
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\- ]+$")
MAX_FULL_NAME = 255  # ZFS_MAX_DATASET_NAME_LEN - 1: "pool/fs@snap" must fit
# The property namespace of this tool's snapshots: `zfs get` reads them back.
PROPERTY_PREFIX = "collective.recipe.zfssnap:"


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


class NotOnZfs(ZfsError):
    """The path is not on a ZFS filesystem, or this machine has no zfs command."""


def check_snapshot_name(dataset, name, what="a snapshot name", allow_space=True):
    """Return None when `dataset@name` is a valid ZFS snapshot name, else the reason.

    With allow_space=False (labels, typed in shells) a space is refused too.
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


class Snapshot:
    """One snapshot as `zfs list -p -t snapshot` reports it."""

    def __init__(self, name, createtxg, creation, used, userrefs, clones="", properties=None):
        self.name = name
        self.dataset, self.short = re.split("[@#]", name, maxsplit=1)
        self.createtxg = int(createtxg)
        self.creation = int(creation)
        self.used = int(used) if used.isdigit() else 0
        self.userrefs = int(userrefs) if userrefs.isdigit() else 0
        self.clones = [c for c in clones.split(",") if c and c != "-"]
        self.properties = properties or {}

    def __repr__(self):
        return "<Snapshot %s>" % self.name


class Zfs:
    """Runs zfs as an argv list (never through a shell)."""

    def __init__(self, command=("zfs",), env=None):
        self.command = list(command)
        self.env = env
        self.trace = None  # called with each argv before it runs (bin/... -v)

    def run(self, *args, check=True):
        argv = self.command + list(args)
        if self.trace:
            self.trace(argv)
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, errors="replace", env=self.env,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise NotOnZfs("the command '%s' was not found: this machine has no ZFS tools "
                           "(or set the zfs option to their path)" % self.command[0], argv)
        except PermissionError:
            raise ZfsError("the command '%s' cannot be run (permission denied)"
                           % self.command[0], argv)
        if check and proc.returncode != 0:
            stderr = proc.stderr.strip()
            raise ZfsError("'%s' failed: %s" % (" ".join(argv), stderr or "exit %d"
                                                % proc.returncode), argv, stderr)
        return proc

    # -- datasets ---------------------------------------------------------------------------
    def dataset_at(self, path):
        """(dataset, mountpoint) of the filesystem holding `path`."""
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

    def pool(self, dataset):
        return dataset.split("/", 1)[0]

    # -- snapshots --------------------------------------------------------------------------
    def snapshots(self, dataset, types="snapshot"):
        """The snapshots of `dataset` (not of its children), oldest first by transaction group.

        types="snapshot,bookmark" lists its bookmarks (DATASET#NAME) in the same call.
        """
        proc = self.run("list", "-H", "-p", "-t", types, "-d", "1",
                        "-o", "name,createtxg,creation,used,userrefs,clones", dataset)
        rows = parse_table(proc.stdout, ("name", "createtxg", "creation", "used", "userrefs",
                                         "clones"))
        snaps = [Snapshot(**row) for row in rows]
        snaps.sort(key=lambda s: s.createtxg)
        return snaps

    def snapshot(self, names, properties=None, recursive=False):
        """One `zfs snapshot` of all `names`: atomic when they share a pool."""
        args = ["snapshot"]
        if recursive:
            args.append("-r")
        for key, value in sorted((properties or {}).items()):
            args += ["-o", "%s=%s" % (key, value)]
        self.run(*(args + list(names)))

    def holds(self, snapshot):
        proc = self.run("holds", "-H", snapshot)
        return [line.split("\t")[1] for line in proc.stdout.splitlines() if line.strip()]

    def rollback(self, snapshot, destroy_newer=False):
        args = ["rollback"]
        if destroy_newer:
            args.append("-r")
        self.run(*(args + [snapshot]))

    def destroy_dry_run(self, dataset, shorts):
        """Bytes `zfs destroy` of these snapshots of one dataset would free."""
        proc = self.run("destroy", "-n", "-v", "-p", "%s@%s" % (dataset, ",".join(shorts)))
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if parts[0] == "reclaim" and len(parts) > 1 and parts[1].isdigit():
                return int(parts[1])
        return 0

    def destroy(self, snapshot):
        self.run("destroy", snapshot)

    def written_since(self, dataset, short):
        value = self.get([dataset], ["written@" + short])[dataset]["written@" + short]
        return int(value) if value.isdigit() else 0
