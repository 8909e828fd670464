"""Where ZFS datasets are mounted, as the kernel says (its mount table, not the zfs property).

The `mountpoint` property says "legacy" for datasets mounted through fstab or by hand, and
nothing about datasets of other pools mounted inside a buildout: the kernel's table knows both.
Linux: /proc/self/mountinfo. FreeBSD: `mount -p` (fstab lines).
"""
import os
import re
import subprocess


class Mount:
    """One mounted ZFS filesystem: `dataset` mounted at `mountpoint`."""

    def __init__(self, dataset, mountpoint):
        self.dataset = dataset
        self.mountpoint = mountpoint

    def __eq__(self, other):
        return (self.dataset, self.mountpoint) == (other.dataset, other.mountpoint)

    def __hash__(self):
        return hash((self.dataset, self.mountpoint))

    def __repr__(self):
        return "<Mount %s at %s>" % (self.dataset, self.mountpoint)


def unescape(field):
    # The kernel (and FreeBSD's mount -p) write space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text):
    """ZFS mounts in /proc/self/mountinfo: ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS] - TYPE SRC"""
    mounts = []
    for line in text.split("\n"):
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3 or fields[sep + 1] != "zfs" or "@" in fields[sep + 2]:
            continue  # not ZFS, or a snapshot mounted on access under .zfs/snapshot
        mounts.append(Mount(unescape(fields[sep + 2]), unescape(fields[4])))
    return mounts


def mountpoints_in_mountinfo(text):
    """Every mountpoint in /proc/self/mountinfo, of any type (bind mounts and tmpfs too)."""
    points = []
    for line in text.split("\n"):
        fields = line.split(" ")
        if len(fields) > 4 and "/.zfs/snapshot/" not in fields[4]:
            # Snapshots mounted on access (a look into .zfs/snapshot) go with their dataset.
            points.append(unescape(fields[4]))
    return points


def all_mountpoints():
    """Every mountpoint of this machine, whatever is mounted there."""
    return read_table(mountpoints_in_mountinfo, mountpoints_in_fstab)


def mountpoints_in_fstab(text):
    """Every mountpoint in `mount -p` output (FreeBSD), snapshots mounted on access left out."""
    return [unescape(line.split()[1]) for line in text.split("\n")
            if len(line.split()) >= 2 and "/.zfs/snapshot/" not in line.split()[1]]


def parse_fstab(text):
    """ZFS mounts in `mount -p` output (FreeBSD): SOURCE POINT TYPE OPTIONS DUMP PASS"""
    mounts = []
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "zfs" and "@" not in fields[0]:
            mounts.append(Mount(unescape(fields[0]), unescape(fields[1])))
    return mounts


def zfs_mounts():
    """The ZFS filesystems mounted now, in mount order (a later one may hide an earlier one)."""
    return read_table(parse_mountinfo, parse_fstab)


def read_table(mountinfo_parser, fstab_parser):
    """This machine's mount table, read by one of the parsers: /proc/self/mountinfo (Linux)
    or `mount -p` (FreeBSD); [] when neither can be read."""
    if os.path.exists("/proc/self/mountinfo"):
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return mountinfo_parser(f.read())
    try:
        proc = subprocess.run(["mount", "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, errors="surrogateescape", stdin=subprocess.DEVNULL)
    except OSError:
        return []
    return fstab_parser(proc.stdout) if proc.returncode == 0 else []


def is_mountpoint(path):
    """Is something mounted at `path` and not covered (a mount made over its parent later
    hides it)?"""
    return os.path.ismount(path)


def is_inside(path, directory):
    """Is `path` `directory` or below it (both real paths)?"""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def where(dataset, mounts):
    """The mountpoint of `dataset` in `mounts`, or None when it is not mounted."""
    found = [m.mountpoint for m in mounts if m.dataset == dataset]
    return found[-1] if found else None


def holding(path, mounts):
    """The mount whose filesystem holds `path` (the innermost mountpoint above it)."""
    path = os.path.realpath(path)
    best = None
    for m in mounts:
        if is_inside(path, m.mountpoint) and (best is None or
                                              len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


def below(directories, mounts):
    """Mounts strictly below any of `directories`, sorted by mountpoint."""
    found = {m for m in mounts for d in directories
             if d and m.mountpoint != d and is_inside(m.mountpoint, d)}
    return sorted(found, key=lambda m: (m.mountpoint, m.dataset))
