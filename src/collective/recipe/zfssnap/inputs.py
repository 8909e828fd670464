"""The release guard of sites without buildout: `snapshot --if-changed`.

Typed in a deploy script after the checkout is updated and before the install (uv sync, pip
install), it takes the snapshot only when the site's install inputs differ from those recorded
with the last snapshot it took: the git revision of the part's directory, and a digest of each
file the install-inputs option matches (pyproject.toml, uv.lock, requirements*.txt, ...). An
install from the same inputs changes nothing, so no snapshot is needed before it.

The record is kept outside the datasets, in the part's state directory (state.Places), and
written only once the whole set is taken: a snapshot that fails leaves the last one as it was.
A rollback that ends well sets it to the snapshot rolled back to (reset).
"""
import glob
import hashlib
import os

from collective.recipe.zfssnap import snapshot as snapshotmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import Background
from collective.recipe.zfssnap.site import Stop

# Relative to the site directory: what uv, pip, pdm and setuptools read, and mxdev's mx.ini.
# A buildout part puts *.cfg before them (recipe.py).
PATTERNS = ("pyproject.toml", "uv.lock", "pylock.toml", "pylock.*.toml", "requirements*.txt",
            "constraints*.txt", "mx.ini", "setup.py", "setup.cfg")
SHOWN = 8  # changes named in the one line; the others are counted


def patterns(config):
    # A configuration made before the option existed (the fast tests' worlds): the default.
    found = config.get("install_inputs")
    return PATTERNS if found is None else found


def matches(directory, patterns):
    """{name: path} of the files the patterns match now: a name is relative to `directory`
    for a file inside it, else the absolute path."""
    found = {}
    for pattern in patterns:
        if os.path.isabs(pattern):
            listed = glob.glob(pattern, recursive=True)
        else:
            listed = glob.glob(pattern, root_dir=directory, recursive=True)
        for match in listed:
            path = os.path.normpath(os.path.join(directory, match))
            if not os.path.isfile(path):
                continue  # a directory: what an install reads in it is named by its own pattern
            inside = path.startswith(directory.rstrip("/") + "/")
            found[os.path.relpath(path, directory) if inside else path] = path
    return found


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(site):
    """The site's install inputs now: {"revision": REVISION or "", "files": {name: sha256}}."""
    git = Background(snapshotmod.git_info, site.directory)  # while the files are read
    files = {}
    for name, path in sorted(matches(site.directory, patterns(site.config)).items()):
        try:
            files[name] = digest(path)
        except OSError as e:
            raise Stop("cannot read the install input %s (%s): make it readable for this "
                       "user, or leave it out of the install-inputs option; no snapshot was "
                       "taken" % (path, e.strerror or e), FAILED)
    return {"revision": git.result().get("git-revision", ""), "files": files}


def changes(last, now):
    """What differs between the recorded inputs and those of now, in words ([]: nothing)."""
    before, after = last["files"], now["files"]
    found = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            found.append(name + " added")
        elif name not in after:
            found.append(name + " removed")
        elif before[name] != after[name]:
            found.append(name + " changed")
    then, revision = last.get("revision") or "", now["revision"]
    if then != revision:
        if then and revision:
            found.append("the checkout moved from %s to %s" % (then[:12], revision[:12]))
        elif revision:
            found.append("the checkout is at %s (no git revision was recorded)"
                         % revision[:12])
        else:
            found.append("git reads no revision of the checkout now (%s was recorded)"
                         % then[:12])
    return found


def said(found):
    shown = found[:SHOWN]
    return ", ".join(shown) + (" and %d more" % (len(found) - SHOWN) if len(found) > SHOWN
                               else "")


def load(record):
    """The record of the last install, or None; one that cannot be read is an error, not
    None: taken for none, it would take a snapshot where the operator may expect none, and
    hide what damaged it."""
    why = None
    try:
        last = record.load()
    except state.StateError as e:
        why = e.message
    else:
        if last is None:
            return None
        if not isinstance(last.get("files"), dict) or not isinstance(
                last.get("revision", ""), str):
            why = "the record %s cannot be read (no files and revision): look at it, then " \
                  "remove it by hand" % record.path
    if why:
        raise state.StateError("%s; it is the record of the last snapshot --if-changed, and "
                               "without it the next one takes a snapshot; no snapshot was "
                               "taken" % why)
    return last


def if_changed(site, label=None, message=None, dry_run=False):
    """snapshot --if-changed: the name of the snapshot taken (with dry_run, of the one it
    would take), or None when the inputs are those recorded."""
    out = site.out
    # Also when nothing is to be taken: the install that follows would build on a
    # half-rolled-back site.
    site.refuse_while_recorded("let the install go on")
    snapshotmod.check_label(site, label, message)
    record = state.Record(site.places.install_record, required="snapshot")
    last = load(record)
    now = read(site)
    found = changes(last, now) if last else None
    view = {"record": record.path, "revision": now["revision"], "files": now["files"],
            "changed": found != [], "changes": found or [],
            "last": None if last is None else {
                k: last.get(k) for k in ("snapshot", "time", "revision")}}
    out.data.update(taken=False, install_inputs=view)
    if found == []:
        # A set missing on a dataset is no way back either.
        view["snapshot_exists"] = any(s.short == last["snapshot"] and not s.missing
                                      for s in site.snapshot_sets())
        out.say("the install inputs are those of the snapshot %s (taken %s)%s: no snapshot "
                "taken" % (last["snapshot"], last.get("time") or "?", "" if view[
                    "snapshot_exists"] else ", which is gone since; an install from "
                    "unchanged inputs changes nothing"))
        return None
    why = ("the install inputs changed since the snapshot %s (%s)" % (last["snapshot"], said(
        found)) if last else "no install was recorded yet")
    out.say("%s: %s" % (why, "taking a snapshot" if not dry_run else
                        "a snapshot would be taken (dry run: no record is written)"))
    name = snapshotmod.take_snapshot(site, label, message, dry_run=dry_run)
    if dry_run:
        return name
    out.data["taken"] = True
    try:
        record.save({"snapshot": name, "revision": now["revision"], "files": now["files"],
                     "time": out.data.get("properties", {}).get("created") or
                     state.utc_stamp()})
    except (state.StateError, OSError) as e:
        # The set is there: the install may go on, and the next run takes another one.
        out.warn("the snapshot %s was taken, but the install inputs could not be recorded in "
                 "%s (%s): the next snapshot --if-changed takes another snapshot" % (
                     name, record.path, getattr(e, "message", None) or e))
    then = (last or {}).get("revision") or ""
    held = ("the snapshot holds the checkout as it is now, with what the last install built "
            "(the virtualenv, or a buildout's eggs and bin/) and the data as they are")
    if then and now["revision"] and then != now["revision"]:
        out.note("%s; after a rollback to it, type git -C %s checkout %s to have the code of "
                 "the last recorded install too" % (held, site.directory, then))
    elif now["revision"] and not last:
        out.note("%s; after a rollback to it, check out the revision the site ran before (git "
                 "reflog shows it) to have the old code too" % held)
    else:
        out.note(held)
    return name


def reset(site, target):
    """After a rollback to `target` that ended well: the record names `target` and the
    inputs the site has now, which are the snapshot's.

    Left as it was, it would name inputs the site no longer has after a rollback to an older
    set (and a set that rollback destroyed): the next deploy of those inputs would take no
    snapshot before an install that changes the site. After a rollback to the set it names it
    is the same record. Only a record that exists is set back: without one, --if-changed is
    not used, or its next run takes a snapshot anyway.
    """
    record = state.Record(site.places.install_record, required="snapshot")
    try:
        if record.load() is None:
            return
        now = read(site)
        try:
            when = site.find_set(target).properties.get("created", "")
        except (Stop, zfsmod.ZfsError):
            when = ""  # only shown
        record.save({"snapshot": target, "revision": now["revision"], "files": now["files"],
                     "time": when, "restored": state.utc_stamp()})
    except (Stop, state.StateError, OSError) as e:
        # No record is safe: the next --if-changed takes a snapshot.
        try:
            record.clear()
            then = "it was removed, so the next snapshot --if-changed takes a snapshot"
        except OSError:
            then = ("remove it by hand, or the next snapshot --if-changed may take none before "
                    "an install that changes the site")
        site.out.warn("could not set the install record %s back to %s (%s): %s" % (
            record.path, target, getattr(e, "message", None) or e, then))
