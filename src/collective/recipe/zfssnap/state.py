"""The scripts' own files outside the datasets: the lock, the log and the rollback record.

They may live in a shared directory (/var/tmp): a file another user put there (a symlink to
/etc/shadow, a hard link) must never be written as root. Directories are made 0700, a directory
or file owned by someone else is refused, and no symlink is followed when a file is opened.
"""
import datetime
import fcntl
import json
import os
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


def ensure_directory(path, option):
    """Make `path` (0700) or check an existing one: a real directory of a trusted owner, not
    writable by others unless sticky (as /tmp is)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise StateError("cannot create the directory %s for the %s (%s): set the part's %s "
                         "option to a path this user may write, outside the datasets"
                         % (path, option, e.strerror, option))
    if not stat.S_ISDIR(st.st_mode):
        raise StateError("%s (for the %s) is not a directory but %s: remove it, or set the "
                         "part's %s option" % (path, option, "a symlink" if stat.S_ISLNK(
                             st.st_mode) else "a file", option))
    if not _trusted(st.st_uid):
        raise StateError("the directory %s (for the %s) belongs to uid %d, not to this user: "
                         "remove it, or set the part's %s option to a directory of this user's"
                         % (path, option, st.st_uid, option))
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StateError("the directory %s (for the %s) is writable by other users: make it "
                         "chmod 700, or set the part's %s option" % (path, option, option))


def open_private(path, option, flags=os.O_RDWR | os.O_CREAT, mode=0o600):
    """A file descriptor of `path`, opened without following symlinks, checked to be a plain
    file of a trusted owner with one link (a hard link to another file has two)."""
    directory = os.path.dirname(path)
    ensure_directory(directory, option)
    try:
        # Through the checked directory itself: swapping it for a symlink afterwards is no use.
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise StateError("cannot open the directory %s for the %s (%s): set the part's %s "
                         "option" % (directory, option, e.strerror, option))
    try:
        fd = os.open(os.path.basename(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     mode, dir_fd=dfd)
    except OSError as e:
        if os.path.islink(path):
            raise StateError("%s (the %s) is a symlink: refusing to follow it; remove it, or "
                             "set the part's %s option" % (path, option, option))
        raise StateError("cannot open the %s %s (%s): set the part's %s option to a path this "
                         "user may write, outside the datasets" % (option, path, e.strerror,
                                                                    option))
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _trusted(st.st_uid):
        os.close(fd)
        raise StateError("%s (the %s) is not a plain file of this user's or root's (owner uid %d, %d "
                         "links): remove it, or set the part's %s option"
                         % (path, option, st.st_uid, st.st_nlink, option))
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
