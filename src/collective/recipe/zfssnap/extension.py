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
from collective.recipe.zfssnap.site import Site
from collective.recipe.zfssnap.site import Stop


NAME = "collective.recipe.zfssnap"
logger = logging.getLogger("zfssnap")


def asked_for(buildout):
    # Entry points of every installed extension run when any extension is configured: act
    # only when this one is listed.
    return NAME in buildout["buildout"].get("extensions", "").split()


def our_parts(buildout, parts):
    found = []
    for part in parts:
        recipe = buildout._raw.get(part, {}).get("recipe", "")
        if recipe.split(":")[0].strip() == NAME:
            found.append(part)
    return found


def record_of(config):
    return state.Record(config["lock_file"] + ".buildout.json", required="finished")


def extension(buildout):
    if not asked_for(buildout):
        return
    compute = buildout._compute_part_signatures

    def compute_then_guard(parts):
        compute(parts)
        # buildout passes its own list when it installs the configured parts, and then
        # uninstalls the installed parts that are not among them.
        guard(buildout, parts, uninstall_missing=parts is buildout._parts)

    buildout._compute_part_signatures = compute_then_guard


def unload(buildout):
    """bin/buildout finished without error: record when, and at which revision."""
    if not asked_for(buildout):
        return
    parts = buildout["buildout"].get("parts", "").split()
    for part in our_parts(buildout, parts):
        config = buildout[part].recipe.config
        if not config["datasets"]:
            continue
        info = snapshotmod.git_info(config["directory"])
        try:
            record_of(config).save({
                "finished": state.utc_stamp(), "epoch": time.time(),
                "revision": info.get("git-revision", ""),
                "describe": info.get("git-describe", "")})
        except (state.StateError, OSError) as e:
            logger.warning("could not record this bin/buildout for the release guard: %s",
                           getattr(e, "message", e))


def changes(buildout, parts, uninstall_missing):
    """What this bin/buildout would do to installed parts, as buildout itself decides it."""
    installed, exists = buildout._read_installed_part_options()
    if not exists:
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
    if not found:
        return
    installed, _ = buildout._read_installed_part_options()
    before = installed["buildout"].get("parts", "").split()
    for part in our_parts(buildout, parts):
        if part not in before:
            continue  # the part itself is new: there can be no snapshot yet
        recipe = buildout[part].recipe
        check(buildout, part, recipe.config, recipe.options.get("release-guard", "refuse"),
              found)


def check(buildout, part, config, mode, found):
    if mode == "off":
        return
    if not config["datasets"]:
        logger.warning("%s: the buildout is not on ZFS: the release guard cannot check for a "
                       "snapshot", part)
        return
    out = Output("bin/buildout", json_mode=True)
    try:
        site = Site(config, out)
        state.trust_owner_of(site.directory)
        last = record_of(config).load()
        if last:
            since, when = last["epoch"], last["finished"]
        else:
            since = os.path.getmtime(buildout["buildout"]["installed"])
            when = state.utc_stamp(time_from(since))
        fresh = [s for s in site.snapshot_sets() if s.created >= int(since)]
    except (Stop, state.StateError, zfsmod.ZfsError) as e:
        raise zc.buildout.UserError("[%s] release guard: %s" % (part, e.message))
    if fresh:
        return
    scripts = config["scripts"]
    message = ("bin/buildout would change the installed site (%s), and the part %s has no "
               "snapshot taken since the last successful bin/buildout (%s)" % (
                   ", ".join(found), part, when))
    now = snapshotmod.git_info(config["directory"]).get("git-revision", "")
    then = last.get("revision", "") if last else ""
    if then and now and then != now:
        advice = ("the checkout has moved since, from %s to %s: to snapshot the site as it "
                  "was, type: git -C %s checkout %s && %s pre-release && git -C %s checkout %s"
                  " (git stash first if the tree has changes), then run bin/buildout again"
                  % (then[:12], now[:12], config["directory"], then, scripts["snapshot"],
                     config["directory"], now))
    else:
        advice = "take one first: %s LABEL, then run bin/buildout again" % scripts["snapshot"]
    if mode == "warn":
        logger.warning("%s: %s; going on (release-guard = warn); %s", part, message, advice)
        return
    if mode == "snapshot":
        logger.info("%s: %s: taking one now (release-guard = snapshot)", part, message)
        lock = None
        try:
            lock = state.Lock(config["lock_file"])
            out.open_log(config["log_file"])
            name = snapshotmod.take_snapshot(
                site, "buildout", "taken by bin/buildout before it changed the site",
                made_by="bin/buildout")
        except (Stop, state.StateError, zfsmod.ZfsError) as e:
            raise zc.buildout.UserError("[%s] release guard: the snapshot failed: %s; nothing "
                                        "was changed" % (part, e.message))
        finally:
            if lock is not None:
                lock.close()
        logger.info("%s: took %s (it holds the code as checked out now, with the eggs and "
                    "bin/ of the last bin/buildout); roll back to it with %s %s", part, name,
                    scripts["rollback"], name)
        return
    raise zc.buildout.UserError("[%s] release guard: %s; %s (release-guard = warn or off lets "
                                "bin/buildout go on without)" % (part, message, advice))


def time_from(epoch):
    import datetime
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
