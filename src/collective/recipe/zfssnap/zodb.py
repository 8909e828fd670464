"""The ZODB's view of a rollback: the transactions a FileStorage gained since a snapshot.

Read-only and without ZODB itself (the scripts do not have it): a FileStorage (Data.fs) is
"FS30" ("FS21" when written by Python 2) and then transaction records, each ending with its own
length repeated, so the newest transactions are read from the end of the file backwards, and
only as far back as the snapshot's last transaction: the time and memory spent grow with what
the rollback undoes, not with the size of the Data.fs. A new storage is its magic alone.

A transaction whose status is "c" was being committed (voted, not finished) when the file was
read: FileStorage truncates it when it opens the file again, so it does not count, in the live
file or in the snapshot.
"""
import datetime
import os
import struct
import time


MAGICS = (b"FS30", b"FS21")
MAGIC_SIZE = 4
HEADER = struct.Struct(">8sQcHHH")  # tid, length, status, user, description, extension
COMMITTED = (b" ", b"p", b"u")  # normal, packed, undone-by-an-old-ZODB; b"c": not committed
STATUSES = COMMITTED + (b"c",)
LISTED = 20  # transactions shown one by one; the rest are counted


class Unreadable(Exception):
    pass


def tid_time(tid):
    """The UTC time a transaction id stands for (ZODB's TimeStamp encoding)."""
    minutes, fraction = struct.unpack(">II", tid)
    minutes, minute = divmod(minutes, 60)
    minutes, hour = divmod(minutes, 24)
    minutes, day = divmod(minutes, 31)
    year, month = divmod(minutes, 12)
    seconds = fraction * 60.0 / (1 << 32)
    try:
        return datetime.datetime(year + 1900, month + 1, day + 1, hour, minute,
                                 int(seconds), tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Unreadable("not a transaction id: %s" % tid.hex())


EXPECTED = "a FileStorage's transaction records were expected"


def _read(f, pos, size):
    if pos < 0:
        raise Unreadable("the data before byte %d is too short to hold a transaction (%s)"
                         % (pos + size, EXPECTED))
    f.seek(pos)
    data = f.read(size)
    if len(data) != size:
        raise Unreadable("the file ends at byte %d, inside a transaction (%s)" % (pos, EXPECTED))
    return data


def _previous(f, end):
    """(start, tid, status, user, description) of the transaction that ends at `end`."""
    length = struct.unpack(">Q", _read(f, end - 8, 8))[0]
    start = end - 8 - length
    if start < MAGIC_SIZE or length < HEADER.size:
        raise Unreadable("no transaction ends at byte %d (%s)" % (end, EXPECTED))
    tid, tlen, status, ulen, dlen, elen = HEADER.unpack(_read(f, start, HEADER.size))
    if tlen != length or tlen < HEADER.size + ulen + dlen + elen or status not in STATUSES:
        raise Unreadable("the transaction at byte %d is not whole (%s)" % (start, EXPECTED))
    texts = _read(f, start + HEADER.size, ulen + dlen)
    return start, tid, status, texts[:ulen].decode("utf-8", "replace"), \
        texts[ulen:].decode("utf-8", "replace")


def _open(path):
    f = open(path, "rb")
    if f.read(MAGIC_SIZE) not in MAGICS:
        f.close()
        raise Unreadable("%s is not a FileStorage (it does not start with FS30 or FS21)" % path)
    return f


def last_tid(path):
    """The id of the last committed transaction in a FileStorage, or None when it has none."""
    with _open(path) as f:
        end = os.fstat(f.fileno()).st_size
        while end > MAGIC_SIZE:
            start, tid, status = _previous(f, end)[:3]
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
    with _open(path) as f:
        end = os.fstat(f.fileno()).st_size
        for attempt in range(3):
            if end <= MAGIC_SIZE:
                break  # a new storage: no transaction at all
            try:
                _previous(f, end)
                break
            except Unreadable:
                # A commit in progress: its trailing length is not written yet.
                time.sleep(0.1)
                end = os.fstat(f.fileno()).st_size
        while end > MAGIC_SIZE:
            if time.monotonic() > deadline:
                raise Unreadable("reading the transactions took too long")
            start, this, status, user, description = _previous(f, end)
            if tid is not None and this <= tid:
                break
            end = start
            if status not in COMMITTED:
                continue  # being committed: FileStorage drops it when it opens the file
            count += 1
            when = tid_time(this)
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
