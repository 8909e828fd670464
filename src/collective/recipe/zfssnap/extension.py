"""The zc.buildout extension: the release guard.

With ``extensions = collective.recipe.zfssnap``, a bin/buildout that would change an installed
site (install, reinstall or uninstall parts) first checks that each [zfssnap] part has a snapshot
taken since the last successful bin/buildout, and stops before it changes anything when there is
none (``release-guard = refuse``, the default), warns (``warn``) or takes one (``snapshot``).
The check runs where buildout has just computed what each part would be, and before it
uninstalls or installs any part. A successful bin/buildout is recorded (time and git revision)
beside the part's lock file.
"""
import logging
import os
import time

import zc.buildout

from collective.recipe.zfssnap import snapshot as snapshotmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.output import Output
from collective.recipe.zfssnap.recipe import recipe_of
from collective.recipe.zfssnap.site import Site
from collective.recipe.zfssnap.site import Stop


NAME = "collective.recipe.zfssnap"


def asked_for(buildout):
    # Entry points of every installed extension run when any extension is configured: act
    # only when this one is listed.
    return NAME in buildout["buildout"].get("extensions", "").split()


def our_parts(buildout, parts):
    found = []
    for part in parts:
        if recipe_of(buildout._raw, part) == NAME:
            found.append(part)
    return found


def record_of(config):
    return state.Record(state.Places(config).buildout_record, required="finished")


# part -> its locks, held from the guard's check to the end of bin/buildout: no snapshot,
# rollback or cleanup of the part runs while bin/buildout changes the site.
HELD = {}


def hold(part, config):
    """Take the part's locks (once per bin/buildout), then refuse while a rollback of the part
    is recorded as unfinished: bin/buildout would build on a half-rolled-back site."""
    try:
        site = Site(config, Output("bin/buildout"))
        state.trust_owner_of(site.directory)
        if part not in HELD:
            HELD[part] = site.take_locks()
        site.refuse_while_recorded("let bin/buildout change the site")
    except (Stop, state.StateError) as e:
        raise zc.buildout.UserError("[%s] release guard: %s" % (part, e.message))
    return site


def release(part):
    locks = HELD.pop(part, None)
    if locks is not None:
        locks.close()


def extension(buildout):
    if not asked_for(buildout):
        return
    compute = buildout._compute_part_signatures
    # bin/buildout appends to .installed.cfg and builds the develop eggs before the guard can
    # run: what they were is kept, so that a refusal leaves them as they were.
    before = Files(buildout)

    def compute_then_guard(parts):
        compute(parts)
        # buildout passes its own list when it installs the configured parts, and then
        # uninstalls the installed parts that are not among them.
        try:
            guard(buildout, parts, uninstall_missing=parts is buildout._parts)
        except zc.buildout.UserError as e:
            raise zc.buildout.UserError("%s%s" % (e, before.restore()))

    buildout._compute_part_signatures = compute_then_guard


class Files:
    """The bytes of .installed.cfg, and a digest of each develop egg file, as they were when
    the extension was loaded."""

    def __init__(self, buildout):
        self.installed = buildout["buildout"]["installed"]
        self.develop = buildout["buildout"]["develop-eggs-directory"]
        self.content = read_bytes(self.installed)
        self.eggs = digests(self.develop)

    def restore(self):
        """Put .installed.cfg back; '' when every file is as it was, else what is not."""
        if self.content is not None and read_bytes(self.installed) != self.content:
            tmp = self.installed + ".zfssnap-tmp"
            with open(tmp, "wb") as f:
                f.write(self.content)
            os.replace(tmp, self.installed)
        now = digests(self.develop)
        changed = sorted(n for n in set(self.eggs) | set(now) if self.eggs.get(n) != now.get(n))
        if not changed:
            return ""
        return ("; bin/buildout had already rebuilt the develop eggs before the guard ran, and "
                "these files of %s differ now: %s" % (self.develop, ", ".join(changed)))


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def digests(top):
    """{relative path: sha256} of the files under `top` (develop eggs are small links and
    metadata)."""
    import hashlib
    found = {}
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(directory, name)
            content = read_bytes(path) if not os.path.islink(path) else os.readlink(
                path).encode()
            found[os.path.relpath(path, top)] = hashlib.sha256(content or b"").hexdigest()
    return found


def versions_key(buildout):
    """What the [versions] pins are now, as one string (a release may change only those)."""
    section = buildout["buildout"].get("versions", "versions")
    pins = buildout._raw.get(section, {}) if section else {}
    return "\n".join("%s=%s" % item for item in sorted(pins.items()))


def unload(buildout):
    """bin/buildout finished without error: record when, and at which revision and pins."""
    if not asked_for(buildout):
        return
    parts = buildout["buildout"].get("parts", "").split()
    for part in our_parts(buildout, parts):
        config = buildout[part].recipe.config
        if not config["datasets"]:
            release(part)
            continue
        info = snapshotmod.git_info(config["directory"])
        try:
            record_of(config).save({
                "finished": state.utc_stamp(), "epoch": time.time(),
                "revision": info.get("git-revision", ""),
                "describe": info.get("git-describe", ""),
                "versions": versions_key(buildout)})
        except (state.StateError, OSError) as e:
            logging.getLogger(part).warning(
                "could not record this bin/buildout for the release guard: %s",
                getattr(e, "message", e))
        release(part)
    for part in list(HELD):
        release(part)


def changes(buildout, parts, uninstall_missing):
    """What this bin/buildout would do to installed parts, as buildout itself decides it."""
    installed, exists = buildout._read_installed_part_options()
    if not exists or not installed["buildout"].get("parts", "").split():
        return None  # a first install
    before = installed["buildout"].get("parts", "").split()
    mine = set(our_parts(buildout, before + list(parts)))
    found = []
    for part in parts:
        if part in mine:
            continue  # the part's own scripts change nothing of the site
        if part not in before:
            found.append("install " + part)
            continue
        old = installed[part].copy()
        files = old.pop("__buildout_installed__", "")
        if old != buildout.get(part):
            found.append("reinstall " + part)
        elif any(f and not os.path.exists(buildout._buildout_path(f))
                 for f in files.split("\n")):
            found.append("reinstall " + part)
    if uninstall_missing:
        found += ["uninstall " + p for p in before if p not in parts and p not in mine]
    return found


def guard(buildout, parts, uninstall_missing):
    found = changes(buildout, parts, uninstall_missing)
    if found is None:
        return  # a first install
    installed, _ = buildout._read_installed_part_options()
    before = installed["buildout"].get("parts", "").split()
    configured = buildout["buildout"].get("parts", "").split()
    # Every installed part of this recipe guards, also when bin/buildout installs other
    # parts by name (bin/buildout install instance).
    for part in our_parts(buildout, configured):
        if part not in before:
            continue  # the part itself is new: there can be no snapshot yet
        recipe = buildout[part].recipe
        config = recipe.config
        mode = recipe.options.get("release-guard", "refuse")
        site = hold(part, config) if mode != "off" and config["datasets"] else None
        try:
            last = record_of(config).load() if config["datasets"] else None
        except state.StateError as e:
            raise zc.buildout.UserError("[%s] release guard: %s" % (part, e.message))
        moved = list(found)
        if last:
            now = snapshotmod.git_info(config["directory"]).get("git-revision", "")
            if last.get("revision") and now and now != last["revision"]:
                moved.append("the checkout moved from %s to %s" % (last["revision"][:12],
                                                                   now[:12]))
            if last.get("versions") is not None and last["versions"] != versions_key(buildout):
                moved.append("the [versions] pins changed")
        if moved:
            check(part, config, site, mode, moved, last)


def check(part, config, site, mode, found, last):
    logger = logging.getLogger(part)
    if mode == "off":
        return
    if not config["datasets"]:
        logger.warning("the buildout is not on ZFS: the release guard cannot check for a "
                       "snapshot")
        return
    out = site.out
    try:
        # Without a record (the guard's first run) any snapshot of the part will do.
        since, when = (last["epoch"], last["finished"]) if last else (0, "none recorded")
        # A set missing on a dataset (a bin/snapshot stopped between pools) is no safety net.
        fresh = [s for s in site.snapshot_sets() if s.created >= int(since) and not s.missing]
    except (Stop, state.StateError, zfsmod.ZfsError) as e:
        raise zc.buildout.UserError("[%s] release guard: %s" % (part, e.message))
    if fresh:
        return
    try:
        # A database server the snapshot would not hold: say so, not "take a snapshot".
        snapshotmod.refuse_external_database(config)
    except Stop as e:
        if mode == "warn":
            logger.warning("%s; going on (release-guard = warn)", e.message)
            return
        raise zc.buildout.UserError("[%s] release guard: %s; no part was installed, updated or "
                                    "uninstalled" % (part, e.message))
    scripts = config["scripts"]
    message = ("bin/buildout would change the installed site (%s), and the part %s has no "
               "snapshot taken since the last successful bin/buildout (%s)" % (
                   ", ".join(found), part, when))
    now = snapshotmod.git_info(config["directory"]).get("git-revision", "")
    then = (last or {}).get("revision", "")
    if then and now and then != now:
        advice = ("the checkout has moved since, from %s to %s: to snapshot the site as it "
                  "was, type: git -C %s checkout %s && %s pre-release && git -C %s checkout %s"
                  " (git stash first if the tree has changes), then run bin/buildout again"
                  % (then[:12], now[:12], config["directory"], then, scripts["snapshot"],
                     config["directory"], now))
    else:
        advice = "take one first: %s LABEL, then run bin/buildout again" % scripts["snapshot"]
    if mode == "warn":
        logger.warning("%s; going on (release-guard = warn); %s", message, advice)
        return
    if mode == "snapshot":
        logger.info("%s: taking one now (release-guard = snapshot)", message)
        try:  # under the locks hold() took
            out.open_log(site.places.log)
            name = snapshotmod.take_snapshot(
                site, "buildout", "taken by bin/buildout before it changed the site",
                made_by="bin/buildout")
        except (Stop, state.StateError, zfsmod.ZfsError) as e:
            raise zc.buildout.UserError("[%s] release guard: the snapshot failed: %s; no part "
                                        "was installed, updated or uninstalled"
                                        % (part, e.message))
        logger.info("took %s (it holds the code as checked out now, with the eggs and bin/ "
                    "of the last bin/buildout); roll back to it with %s %s", name,
                    scripts["rollback"], name)
        return
    raise zc.buildout.UserError("[%s] release guard: %s; %s (release-guard = warn or off lets "
                                "bin/buildout go on without); no part was installed, updated "
                                "or uninstalled" % (part, message, advice))
