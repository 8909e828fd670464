"""The scripts' own files outside the datasets: the lock, the log and the rollback record.

They may live in a shared directory (/var/tmp): a file another user put there (a symlink to
/etc/shadow, a hard link) must never be written as root. Directories are made 0700, a directory
or file owned by someone else is refused, and no symlink is followed when a file is opened.
"""
import datetime
import errno
import fcntl
import hashlib
import json
import os
import pwd
import stat

from collective.recipe.zfssnap import crashpoint


class StateError(Exception):
    """A state file cannot be used safely; `message` says why and what to do."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


# Who may own the state files besides the user running the script (and root): set by the
# scripts to the owner of the buildout, whose files root may use when it runs the scripts.
TRUSTED_UIDS = set()


def trust_owner_of(path):
    """As root, also accept state files of the user who owns `path` (the buildout)."""
    if os.geteuid() == 0:
        try:
            TRUSTED_UIDS.add(os.stat(path).st_uid)
        except OSError:
            pass


def _trusted(uid):
    return uid in (os.geteuid(), 0) or uid in TRUSTED_UIDS


# As root, what the scripts create under GIVE_UNDER (the state directory of the buildout's
# owner) is given to GIVE_TO (that owner's uid and gid): a first run as root must not lock the
# site's user out of its own lock, log and record.
GIVE_TO = None
GIVE_UNDER = None


def _give(path=None, fd=None):
    if GIVE_TO is None or os.geteuid() != 0:
        return
    if path is not None and not _is_inside(path, GIVE_UNDER):
        return
    try:
        if fd is not None:
            os.fchown(fd, *GIVE_TO)
        else:
            os.lchown(path, *GIVE_TO)
    except OSError:
        pass  # the file is root's then: the site's user is told the chown when it meets it


def _is_inside(path, top):
    return top is not None and (path == top or path.startswith(top.rstrip("/") + "/"))


class Places:
    """Where a part's scripts keep their files: the lock, the log, the rollback's record, the
    guard's record of the last bin/buildout and that of the last install (--if-changed).

    Decided when a script runs, from the buildout directory and its owner, never from an
    option baked into the script: the release a rollback goes back to has scripts of its own,
    and its rerun must find the record the other release's run left. The directory is the
    state directory (~/.local/state/collective.recipe.zfssnap) of the buildout's owner when
    root or the owner runs the script, else of the user who runs it; or
    /var/tmp/collective.recipe.zfssnap-UID when that home is on one of the part's datasets
    (a rollback would replace the record with the datasets).
    """

    def __init__(self, config):
        directory = config["directory"]
        euid = os.geteuid()
        try:
            st = os.stat(directory)
            owner, group = st.st_uid, st.st_gid
        except OSError:
            owner, group = euid, os.getegid()
        self.uid = owner if euid in (0, owner) else euid
        mounts = [m for m in config.get("mounts", {}).values() if m]
        home = None
        try:
            home = pwd.getpwuid(self.uid).pw_dir
        except KeyError:
            pass
        at_home = os.path.join(home, ".local", "state", "collective.recipe.zfssnap") \
            if home and home != "/" else None
        in_tmp = "/var/tmp/collective.recipe.zfssnap-%d" % self.uid
        if at_home and not any(_is_inside(at_home, m) for m in mounts):
            self.directories = [at_home, in_tmp]
        else:
            self.directories = [in_tmp] + ([at_home] if at_home else [])
        if config.get("state_directory"):  # the fast tests' own place
            self.directories = [config["state_directory"]]
        self.directory = self.directories[0]
        self.slug = "%s-%s-%s" % (os.path.basename(directory.rstrip("/")) or "root",
                                  config["part"],
                                  hashlib.sha1(directory.encode()).hexdigest()[:8])
        self.lock = self.path(".lock")
        # A lock-file set by the part is taken too: another tool may share it.
        self.locks = [self.lock] + [p for p in [config.get("lock_file")] if p and p != self.lock]
        self.log = config.get("log_file") or self.path(".log")
        self.buildout_record = self.path(".buildout.json")
        # The set a bin/snapshot on several pools is taking: there until its last pool's.
        self.snapshot_record = self.path(".snapshot.json")
        # The install inputs of the last snapshot --if-changed took (inputs.py).
        self.install_record = self.path(".install.json")
        self.finished = self.path(".rolled-back.json")  # the last finished rollback (again.py)
        self.owner = (owner, group) if euid == 0 and self.uid == owner and owner != 0 else None
        # Where an earlier run may have left the record: the other candidate directory (the
        # datasets' layout changed since) and beside an explicit lock-file (older releases).
        self.record_candidates = [os.path.join(d, self.slug + ".rollback.json")
                                  for d in self.directories]
        if config.get("lock_file"):
            self.record_candidates.append(config["lock_file"] + ".rollback.json")

    def path(self, suffix):
        return os.path.join(self.directory, self.slug + suffix)

    def adopt(self):
        """As root on the owner's files: what is created from now on is the owner's."""
        global GIVE_TO, GIVE_UNDER
        if self.owner is not None:
            GIVE_TO = self.owner
            GIVE_UNDER = os.path.dirname(os.path.dirname(os.path.dirname(self.directory))) \
                if self.directory.endswith("/.local/state/collective.recipe.zfssnap") \
                else self.directory
            TRUSTED_UIDS.add(self.owner[0])

    @property
    def record(self):
        """The rollback's record: where one is, else where a new one goes."""
        for path in self.record_candidates:
            if os.path.lexists(path):
                return path
        return self.record_candidates[0]

    def take_locks(self):
        """The part's locks, all or none (the fixed one first: the order never deadlocks)."""
        held = []
        try:
            for path in self.locks:
                held.append(Lock(path))
        except BaseException:
            for lock in held:
                lock.close()
            raise
        return Locks(held)


class Locks:
    def __init__(self, held):
        self.held = held

    def close(self):
        for lock in self.held:
            lock.close()
        self.held = []


def _owner(path):
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def user_name(uid):
    """The login name of `uid`, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _make_directories(path):
    """os.makedirs (0700), each directory it makes given to the owner when root makes it."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        _make_directories(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _give(path)


def _other_place(option):
    """The advice's way out: only the log can be put elsewhere by an option; the lock and the
    records stay in the state directory, whose owner and mode must be put right."""
    if option == "log-file":
        return "or set the part's log-file option to a path this user may write, outside the " \
               "datasets"
    return "or, if it was made by another user, as root give it to this one (chown)"


def _chown_advice(option, blocked, error):
    """The sentence for a file or directory of another user's (often root's, from a first run
    as root) that this user may not open, or None."""
    owner = _owner(blocked)
    if error.errno != errno.EACCES or owner is None or owner == os.geteuid():
        return None
    me = user_name(os.geteuid())
    return ("the %s %s belongs to %s, and this user (%s) may not open it: as root, type chown "
            "%s %s" % (option, blocked, user_name(owner), me, me, blocked))


def ensure_directory(path, option):
    """Make `path` (0700) or check an existing one: a real directory of a trusted owner, not
    writable by others unless sticky (as /tmp is)."""
    try:
        _make_directories(path)
        st = os.lstat(path)
    except OSError as e:
        raise StateError("cannot create the directory %s for the %s (%s): make it writable for "
                         "this user, %s" % (path, option, e.strerror, _other_place(option)))
    if not stat.S_ISDIR(st.st_mode):
        raise StateError("%s (for the %s) is not a directory but %s: remove it, %s" % (
            path, option, "a symlink" if stat.S_ISLNK(st.st_mode) else "a file",
            _other_place(option)))
    if not _trusted(st.st_uid):
        raise StateError("the directory %s (for the %s) belongs to uid %d, not to this user: "
                         "remove it, %s" % (path, option, st.st_uid, _other_place(option)))
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StateError("the directory %s (for the %s) is writable by other users: make it "
                         "chmod 700, %s" % (path, option, _other_place(option)))


def open_private(path, option, flags=os.O_RDWR | os.O_CREAT, mode=0o600):
    """A file descriptor of `path`, opened without following symlinks, checked to be a plain
    file of a trusted owner with one link (a hard link to another file has two)."""
    directory = os.path.dirname(path)
    ensure_directory(directory, option)
    try:
        # Through the checked directory itself: swapping it for a symlink afterwards is no use.
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise StateError(_chown_advice(option, directory, e) or
                         "cannot open the directory %s for the %s (%s): %s" % (
                             directory, option, e.strerror, _other_place(option)[3:]))
    try:
        fd = os.open(os.path.basename(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     mode, dir_fd=dfd)
    except OSError as e:
        if os.path.islink(path):
            raise StateError("%s (the %s) is a symlink: refusing to follow it; remove it, %s"
                             % (path, option, _other_place(option)))
        # Typically left by a run as root before the owner's files were given back.
        raise StateError(_chown_advice(option, path if os.path.lexists(path) else directory, e)
                         or "cannot open the %s %s (%s): %s" % (
                             option, path, e.strerror, _other_place(option)[3:]))
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if st.st_uid == 0 and flags & os.O_CREAT:
        _give(path, fd=fd)
        st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _trusted(st.st_uid):
        os.close(fd)
        raise StateError("%s (the %s) is not a plain file of this user's or root's (owner uid "
                         "%d, %d links): remove it, %s"
                         % (path, option, st.st_uid, st.st_nlink, _other_place(option)))
    return fd


class Lock:
    """An exclusive lock on the lock file, held until close()."""

    def __init__(self, path):
        self.path = path
        self.fd = open_private(path, "lock-file")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise StateError("another snapshot, rollback or cleanup of this buildout is running "
                             "(lock %s): wait until it has finished, then try again" % path)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_log(path):
    fd = open_private(path, "log-file", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def utc_stamp(when=None):
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Record:
    """What an unfinished rollback did so far, kept beside the lock file until it is finished.

    Written atomically (a new file renamed over the old) before anything is stopped and after
    every step, so that a rollback killed at any point can be finished by running it again.
    """

    def __init__(self, path, required="target"):
        self.path = path
        self.required = required

    def load(self):
        """The recorded dict, or None. A record that cannot be read is an error, not None:
        ignoring it could start programs that were deliberately stopped, or forget others."""
        try:
            fd = open_private(self.path, "lock-file", os.O_RDONLY)
        except StateError:
            if not os.path.lexists(self.path):
                return None
            raise
        with os.fdopen(fd, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or self.required not in data:
                raise ValueError("no %s" % self.required)
        except ValueError as e:
            raise StateError("the record %s cannot be read (%s): look at it, then remove it by "
                             "hand" % (self.path, e))
        return data

    def save(self, data):
        """Write `data` in place of the record: all of it or nothing, even across a power cut
        (the new file is synced, renamed over the old one, and the directory synced)."""
        directory = os.path.dirname(self.path)
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        if os.path.lexists(tmp):  # what an earlier save of this process left when it failed
            os.remove(tmp)
        fd = open_private(tmp, "lock-file", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        sync_directory(directory)
        crashpoint.done("record " + str(data.get("stage", "saved")))

    def clear(self):
        try:
            os.remove(self.path)
        except FileNotFoundError:
            return
        sync_directory(os.path.dirname(self.path))
        crashpoint.done("record removed")


def sync_directory(path):
    """Make a rename or removal in `path` durable (a power cut cannot bring the old name back)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
