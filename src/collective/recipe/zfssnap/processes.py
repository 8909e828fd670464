"""Which processes hold files on the datasets about to be rolled back.

ZFS rolls a mounted filesystem back under processes that have files open on it: they go on
with what they had read (a ZODB app serves the rolled-away data, and loses its next write).
On Linux /proc says, per process, where its cwd, root, executable, open files and mappings
are; each ZFS dataset is a filesystem with a device number of its own, which is what ties a
file to a dataset (what `fuser -m` does). On FreeBSD, `fstat -f MOUNTPOINT` says the same.
"""
import os
import subprocess


class Holder:
    """A process with ties to the datasets: `ties` names them (cwd, exe, fd 3, mmap, ...)."""

    def __init__(self, pid, command, ties):
        self.pid = pid
        self.command = command
        self.ties = ties

    @property
    def cwd_only(self):
        # A shell sitting in the buildout directory: the rollback changes nothing for it.
        return self.ties == ["cwd"]

    def __repr__(self):
        return "<Holder %d %s %s>" % (self.pid, self.command, self.ties)

    def describe(self):
        return "pid %d (%s): %s" % (self.pid, self.command, ", ".join(self.ties))


def devices_of(mountpoints):
    return {os.stat(m).st_dev for m in mountpoints if os.path.isdir(m)}


def _dev(path):
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _command(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            words = f.read().split(b"\0")
        text = " ".join(w.decode("utf-8", "replace") for w in words if w)
        if text:
            return text[:120]
        with open("/proc/%d/comm" % pid) as f:
            return "[%s]" % f.read().strip()
    except OSError:
        return "?"


def _mapped_devices(pid):
    """Device numbers of the files a process has mapped (shared libraries, mmapped data)."""
    devices = set()
    try:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
                    major, minor = fields[3].split(":")
                    devices.add(os.makedev(int(major, 16), int(minor, 16)))
    except OSError:
        pass
    return devices


def holders_linux(devices, exclude=(), unreadable=None):
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        pid = int(entry)
        base = "/proc/%d/" % pid
        ties = [tie for tie in ("cwd", "root", "exe") if _dev(base + tie) in devices]
        try:
            fds = os.listdir(base + "fd")
        except PermissionError:
            # Another user's process: only root sees its files.
            if unreadable is not None:
                unreadable.append(pid)
            fds = []
        except OSError:
            fds = []
        for fd in sorted(fds, key=int):
            if _dev(base + "fd/" + fd) in devices:
                ties.append("fd " + fd)
        if _mapped_devices(pid) & devices:
            ties.append("mmap")
        if ties:
            holders.append(Holder(pid, _command(pid), ties))
    return holders


def holders_fstat(mountpoints, exclude=()):
    """FreeBSD: `fstat -f MOUNTPOINT` lines are USER CMD PID FD MOUNT ..."""
    found = {}
    for mountpoint in mountpoints:
        proc = subprocess.run(["fstat", "-f", mountpoint], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout.splitlines()[1:]:
            words = line.split()
            if len(words) < 4 or not words[2].isdigit() or int(words[2]) in exclude:
                continue
            pid = int(words[2])
            tie = {"wd": "cwd", "text": "exe", "root": "root", "mmap": "mmap"}.get(
                words[3], "fd " + words[3])
            holder = found.setdefault(pid, Holder(pid, words[1], []))
            if tie not in holder.ties:
                holder.ties.append(tie)
    return sorted(found.values(), key=lambda h: h.pid)


def holders(mountpoints, exclude=(), unreadable=None):
    """Processes (but those in `exclude`) with ties to the filesystems at `mountpoints`.

    Pids whose files could not be read (other users' processes, for a non-root caller) are
    appended to `unreadable` when it is given.
    """
    if os.path.isdir("/proc/self/fd"):
        return holders_linux(devices_of(mountpoints), set(exclude), unreadable)
    return holders_fstat(mountpoints, set(exclude))


def can_check():
    """None when this system can tell which processes hold files, else why not."""
    if os.path.isdir("/proc/self/fd"):
        return None
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if os.access(os.path.join(directory, "fstat"), os.X_OK):
            return None
    return "neither /proc nor fstat(1) is available to find processes with open files"


def with_descendants(pids):
    """`pids` and every process below them (a program's own children hold files too)."""
    children = {}
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found
