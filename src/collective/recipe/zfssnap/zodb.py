"""The ZODB's view of a rollback: the transactions a FileStorage gained since a snapshot.

Read-only and without ZODB itself (the scripts do not have it): a FileStorage (Data.fs) is
"FS30" ("FS21" when written by Python 2) and then transaction records, each ending with its own
length repeated, so the newest transactions are read from the end of the file backwards, and
only as far back as the snapshot's last transaction: the time and memory spent grow with what
the rollback undoes, not with the size of the Data.fs. A new storage is its magic alone.

A transaction whose status is "c" was being committed (voted, not finished) when the file was
read: FileStorage truncates it when it opens the file again, so it does not count, in the live
file or in the snapshot.

A file that cannot be read this way is Unreadable, in one sentence that names the file (the
live Data.fs or the snapshot's copy) and what was expected in it: the plan shows that sentence
on the file's line, in text and in --json alike, never a bare OS error.
"""
import contextlib
import datetime
import os
import stat
import struct
import time


MAGICS = (b"FS30", b"FS21")
MAGIC_SIZE = 4
HEADER = struct.Struct(">8sQcHHH")  # tid, length, status, user, description, extension
SMALLEST = HEADER.size + 8  # a transaction record with nothing in it, and its trailing length
COMMITTED = (b" ", b"p", b"u")  # normal, packed, undone-by-an-old-ZODB; b"c": not committed
STATUSES = COMMITTED + (b"c",)
LISTED = 20  # transactions shown one by one; the rest are counted
KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


class Unreadable(Exception):
    """A file the view cannot read as a FileStorage; the message names it."""


class _Damaged(Exception):
    """The file's content is not the transaction record expected to end at byte `end`. The
    readers below do not know the file's name: _reading() adds it."""

    def __init__(self, end, found):
        super().__init__("expected a transaction record ending at byte %d, found %s"
                         % (end, found))


def tid_time(tid):
    """The UTC time a transaction id stands for (ZODB's TimeStamp encoding); ValueError for
    eight bytes that are no time."""
    minutes, fraction = struct.unpack(">II", tid)
    minutes, minute = divmod(minutes, 60)
    minutes, hour = divmod(minutes, 24)
    minutes, day = divmod(minutes, 31)
    year, month = divmod(minutes, 12)
    seconds = fraction * 60.0 / (1 << 32)
    return datetime.datetime(year + 1900, month + 1, day + 1, hour, minute, int(seconds),
                             tzinfo=datetime.timezone.utc)


def _read(f, pos, size, end):
    f.seek(pos)
    data = f.read(size)
    if len(data) != size:
        # The file shrank since its size was read: FileStorage truncates a commit aborted
        # after its vote.
        raise _Damaged(end, "the file ending before byte %d" % (pos + size))
    return data


def _previous(f, end):
    """(start, tid, time, status, user, description) of the transaction that ends at `end`."""
    # Checked before anything is read: from a shorter span the reads below would seek before
    # the start of the file, and the operator would get "[Errno 22] Invalid argument".
    if end - MAGIC_SIZE < SMALLEST:
        raise _Damaged(end, "only %d bytes after the header" % (end - MAGIC_SIZE))
    length = struct.unpack(">Q", _read(f, end - 8, 8, end))[0]
    if length < HEADER.size:
        raise _Damaged(end, "a length of %d, less than a transaction header's %d bytes"
                       % (length, HEADER.size))
    start = end - 8 - length
    if start < MAGIC_SIZE:
        raise _Damaged(end, "a length of %d, which reaches back before the header" % length)
    fields = HEADER.unpack(_read(f, start, HEADER.size, end))
    when = _checked(end, start, length, fields)
    tid, _, status, ulen, dlen, _ = fields
    texts = _read(f, start + HEADER.size, ulen + dlen, end)
    return start, tid, when, status, texts[:ulen].decode("utf-8", "replace"), \
        texts[ulen:].decode("utf-8", "replace")


def _checked(end, start, length, fields):
    """The time of the transaction whose header `fields` were read at `start`, once they agree
    with the `length` at its end: a length that happens to point at some byte must not pass
    for a transaction."""
    tid, tlen, status, ulen, dlen, elen = fields
    record = "a record at byte %d " % start
    if tlen != length:
        raise _Damaged(end, record + "whose header gives the length %d" % tlen)
    if status not in STATUSES:
        raise _Damaged(end, record + "with the unknown status %s" % repr(status)[1:])
    if HEADER.size + ulen + dlen + elen > tlen:
        raise _Damaged(end, record + "whose user, description and extension do not fit in it")
    try:
        return tid_time(tid)
    except ValueError:
        raise _Damaged(end, record + "whose transaction id %s is not a time" % tid.hex()) \
            from None


def _found(magic):
    """What a file starts with instead of a FileStorage's magic, for the message."""
    if not magic:
        return "an empty file"
    if len(magic) < MAGIC_SIZE:
        return "only %s" % repr(magic)[1:]
    return repr(magic)[1:]


def _open(path):
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        # Looked at before opening: opening a named pipe would wait for a writer.
        kind = next((name for test, name in KINDS if test(mode)), "something else")
        raise Unreadable("%s is not a FileStorage (expected a file, found %s)" % (path, kind))
    f = open(path, "rb")
    magic = f.read(MAGIC_SIZE)
    if magic not in MAGICS:
        f.close()
        raise Unreadable("%s is not a FileStorage (expected it to start with FS30 or FS21, "
                         "found %s)" % (path, _found(magic)))
    return f


@contextlib.contextmanager
def _reading(path):
    """The FileStorage at `path`, open after its magic. What goes wrong while it is read is
    Unreadable and names the file: the plan has the view of two files per Data.fs (the
    snapshot's and the live one), and a bare OS error would name neither."""
    try:
        with _open(path) as f:
            yield f
    except _Damaged as e:
        raise Unreadable("%s does not read as a FileStorage (%s)" % (path, e)) from None
    except OSError as e:
        raise Unreadable("%s cannot be read (%s)" % (path, e.strerror or e)) from None


def last_tid(path):
    """The id of the last committed transaction in a FileStorage, or None when it has none."""
    with _reading(path) as f:
        end = os.fstat(f.fileno()).st_size
        while end > MAGIC_SIZE:
            start, tid, _, status = _previous(f, end)[:4]
            if status in COMMITTED:
                return tid
            end = start
        return None


def since(path, tid, deadline=None):
    """The transactions of the FileStorage at `path` after the transaction `tid`, newest
    first: {"count", "first", "last", "transactions": [{tid, time, user, description}]} with
    at most LISTED listed. A transaction being written at the end is waited for a moment;
    if the end still does not read as a whole transaction, Unreadable."""
    deadline = deadline or time.monotonic() + 30
    listed, count, first, last = [], 0, None, None
    with _reading(path) as f:
        end = os.fstat(f.fileno()).st_size
        for attempt in range(3):
            if end <= MAGIC_SIZE:
                break  # a new storage: no transaction at all
            try:
                _previous(f, end)
                break
            except _Damaged:
                # A commit in progress: its trailing length is not written yet.
                time.sleep(0.1)
                end = os.fstat(f.fileno()).st_size
        while end > MAGIC_SIZE:
            if time.monotonic() > deadline:
                raise Unreadable("reading the transactions took too long")
            start, this, when, status, user, description = _previous(f, end)
            if tid is not None and this <= tid:
                break
            end = start
            if status not in COMMITTED:
                continue  # being committed: FileStorage drops it when it opens the file
            count += 1
            last = last or when
            first = when
            if len(listed) < LISTED:
                listed.append({"tid": this.hex(), "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "user": user.strip(), "description": description.strip(),
                               "status": status.decode("latin-1")})
    return {"count": count,
            "first": first.strftime("%Y-%m-%dT%H:%M:%SZ") if first else None,
            "last": last.strftime("%Y-%m-%dT%H:%M:%SZ") if last else None,
            "transactions": listed}
