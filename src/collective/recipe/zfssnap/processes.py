"""Which processes hold files on the datasets about to be rolled back.

ZFS rolls a mounted filesystem back under processes that have files open on it: they go on
with what they had read (a ZODB app serves the rolled-away data, and loses its next write).
On Linux /proc says, per process, where its cwd, root, executable, open files and mappings
are; each ZFS dataset is a filesystem with a device number of its own, which is what ties a
file to a dataset (what `fuser -m` does). On FreeBSD, `fstat -f MOUNTPOINT` says the same.
"""
import os
import subprocess
import time

POLL = 0.1  # how often a wait looks again


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


def parse_fstat(text, exclude=()):
    """Holders from FreeBSD `fstat -f MOUNTPOINT` output: USER CMD PID FD MOUNT INUM ...

    FD is a number, or wd (working directory), root, jail, text (the executable), tr (the
    kernel trace file), mmap or ctty.
    """
    found = {}
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) < 5 or not words[2].isdigit() or int(words[2]) in exclude:
            continue
        pid = int(words[2])
        fd = words[3].rstrip("*")
        tie = {"wd": "cwd", "text": "exe", "root": "root", "jail": "root", "mmap": "mmap",
               "tr": "ktrace", "ctty": "ctty"}.get(fd, "fd " + fd)
        holder = found.setdefault(pid, Holder(pid, words[1], []))
        if tie not in holder.ties:
            holder.ties.append(tie)
    return found


def holders_fstat(mountpoints, exclude=(), unreadable=None):
    """FreeBSD: `fstat -f MOUNTPOINT` for each mountpoint.

    Without root, fstat shows only this user's processes: that is said through `unreadable`
    (with -1, as the pids it could not see are unknown).
    """
    found = {}
    for mountpoint in mountpoints:
        try:
            proc = subprocess.run(["fstat", "-f", mountpoint], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, errors="replace",
                                  stdin=subprocess.DEVNULL)
        except OSError as e:
            raise OSError(e.errno, "fstat could not run: %s" % e.strerror)
        if proc.returncode != 0:
            raise OSError(0, "'fstat -f %s' failed: %s" % (mountpoint, proc.stderr.strip() or
                                                         "exit %d" % proc.returncode))
        for pid, holder in parse_fstat(proc.stdout, exclude).items():
            mine = found.setdefault(pid, holder)
            mine.ties += [t for t in holder.ties if t not in mine.ties]
    if os.geteuid() != 0 and unreadable is not None:
        unreadable.append(-1)
    return sorted(found.values(), key=lambda h: h.pid)


def holders(mountpoints, exclude=(), unreadable=None):
    """Processes (but those in `exclude`) with ties to the filesystems at `mountpoints`.

    Pids whose files could not be read (other users' processes, for a non-root caller) are
    appended to `unreadable` when it is given.
    """
    if os.path.isdir("/proc/self/fd"):
        return holders_linux(devices_of(mountpoints), set(exclude), unreadable)
    return holders_fstat(mountpoints, set(exclude), unreadable)


def can_check():
    """None when this system can tell which processes hold files, else why not."""
    if os.path.isdir("/proc/self/fd"):
        return None
    path = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    for tool in ("fstat", "ps"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in path):
            return "neither /proc nor %s(1) is available to find processes with open files" % (
                tool)
    return None


def parse_ps(text):
    """{ppid: [pid]} from `ps -ax -o pid= -o ppid=` output."""
    children = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0].isdigit() and words[1].isdigit():
            children.setdefault(int(words[1]), []).append(int(words[0]))
    return children


def process_tree(proc=None):
    """{ppid: [pid]} of every process: /proc on Linux, ps(1) elsewhere (FreeBSD)."""
    children = {}
    if proc if proc is not None else os.path.isdir("/proc/self/fd"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        return children
    ps = subprocess.run(["ps", "-ax", "-o", "pid=", "-o", "ppid="], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    if ps.returncode != 0:
        raise OSError(0, "'ps -ax -o pid= -o ppid=' failed (exit %d)" % ps.returncode)
    return parse_ps(ps.stdout)


def with_descendants(pids, children=None):
    """`pids` and every process below them (a program's own children hold files too).

    Pids 0 and 1 are never taken: "below" them is every process on the machine.
    """
    if children is None:
        children = process_tree()
    found = set()
    todo = [p for p in pids if p and p > 1]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


# -- processes by pid ------------------------------------------------------------------------
def listening_inodes(port):
    """{inode: owner uid} of the TCP sockets listening on `port` (Linux /proc/net/tcp, tcp6)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().split("\n")[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local rem st tx:rx tr:when retr uid timeout inode; st 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes[fields[9]] = int(fields[7])
    return inodes


def socket_owner(inodes):
    """The pid of a process with one of the socket `inodes` open, or None if none is seen."""
    wanted = {"socket:[%s]" % i for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fds = "/proc/%s/fd" % entry
        try:
            names = os.listdir(fds)
        except OSError:
            continue
        for fd in names:
            try:
                if os.readlink(os.path.join(fds, fd)) in wanted:
                    return int(entry)
            except OSError:
                continue
    return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [w.decode("utf-8", "replace") for w in f.read().split(b"\0") if w]
    except OSError:
        return []


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie (not yet reaped by its parent) has exited: it holds no files any more.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids, deadline):
    """Wait until the processes `pids` have exited; those still alive at the deadline."""
    while True:
        alive = [p for p in pids if not process_gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(POLL)
