"""The buildout side: a [zfssnap] part's options, and the scripts generated from them.

Defaults are computed in __init__ so that they land in .installed.cfg (buildout copies a part's
options before it calls install()). The scripts get the options as plain data (repr of a dict):
they never read buildout.cfg, which a rollback may replace under them.
"""
import hashlib
import logging
import os
import re
import shlex

import zc.buildout
import zc.buildout.easy_install
import zc.recipe.egg

from collective.recipe.zfssnap import zfs as zfsmod


SUPERVISOR_RECIPE = "collective.recipe.supervisor"
HOOKS = ("before-snapshot", "after-snapshot", "before-rollback", "after-rollback")
SCRIPTS = ("snapshot", "rollback", "cleanup")
TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "")


def is_inside(path, directory):
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class Recipe:

    def __init__(self, buildout, name, options):
        self.buildout = buildout
        self.name = name
        self.options = options
        self.directory = os.path.realpath(buildout["buildout"]["directory"])
        self.bin = buildout["buildout"]["bin-directory"]
        options.setdefault("zfs", "zfs")
        self.zfs = zfsmod.Zfs(self.split("zfs"))
        self.found_dataset = "dataset" not in options
        if self.found_dataset:
            options["dataset"] = self.find_dataset()
        options.setdefault("extra-datasets", "")
        options.setdefault("recursive", "false")
        options.setdefault("prefix", name)
        options.setdefault("keep", "0")
        options.setdefault("warn-size", "10G")
        options.setdefault("programs", "")
        options.setdefault("stop-timeout", "60")
        for hook in HOOKS:
            options.setdefault(hook, "")
        for script in SCRIPTS:
            default = script if name == "zfssnap" else "%s-%s" % (name, script)
            options.setdefault(script + "-script", default)
        self.find_supervisor()
        self.mountpoints = {}
        self.dataset_list = self.datasets()
        state = os.path.join(os.path.expanduser("~"), ".local", "state",
                             "collective.recipe.zfssnap")
        if any(m and is_inside(state, m) for m in self.mountpoints.values()):
            # The site user's home is often the buildout itself: the lock and the log must
            # survive a rollback.
            state = "/var/tmp/collective.recipe.zfssnap"
        slug = "%s-%s-%s" % (os.path.basename(self.directory) or "root", name,
                             hashlib.sha1(self.directory.encode()).hexdigest()[:8])
        options.setdefault("lock-file", os.path.join(state, slug + ".lock"))
        options.setdefault("log-file", os.path.join(state, slug + ".log"))
        self.config = self.compute_config()

    # -- option helpers ---------------------------------------------------------------------
    def error(self, option, message):
        return zc.buildout.UserError("[%s] %s: %s" % (self.name, option, message))

    def split(self, option):
        try:
            argv = shlex.split(self.options[option])
        except ValueError as e:
            raise self.error(option, "cannot split %r into words (%s)" % (self.options[option], e))
        if not argv:
            raise self.error(option, "must not be empty")
        return argv

    def boolean(self, option):
        value = self.options[option].strip().lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise self.error(option, "must be true or false, not %r" % self.options[option])

    def number(self, option, minimum):
        value = self.options[option].strip()
        if not value.isdigit() or int(value) < minimum:
            raise self.error(option, "must be a whole number of at least %d, not %r"
                             % (minimum, self.options[option]))
        return int(value)

    # -- datasets ---------------------------------------------------------------------------
    def dataset_mounted_at(self, option, path, what=""):
        try:
            dataset, mountpoint = self.zfs.dataset_at(path)
        except zfsmod.ZfsError as e:
            raise self.error(option, e.message)
        if os.path.realpath(mountpoint) != os.path.realpath(path):
            raise self.error(
                option,
                "%s%s is a subdirectory of the dataset %s (mounted at %s), and rolling that back "
                "would roll back more than this buildout: make the directory a dataset of its "
                "own, or name the dataset to use in this option"
                % (what, path, dataset, mountpoint))
        return dataset

    def find_dataset(self):
        """The dataset mounted at the buildout directory; '' on a machine without ZFS."""
        try:
            self.zfs.dataset_at(self.directory)
        except zfsmod.NotOnZfs:
            # A developer's laptop without ZFS still installs; the scripts say what is missing.
            return ""
        except zfsmod.ZfsError as e:
            raise self.error("dataset", "could not find the buildout directory's dataset: "
                             + e.message)
        return self.dataset_mounted_at("dataset", self.directory, "the buildout directory ")

    def mountpoint_of(self, dataset):
        """Where a dataset is mounted, or '' when zfs cannot say (the lock must not go there)."""
        try:
            value = self.zfs.get([dataset], ["mountpoint"])[dataset]["mountpoint"]
        except (zfsmod.ZfsError, KeyError):
            return ""
        return value if value.startswith("/") else ""

    def datasets(self):
        primary = self.options["dataset"].strip()
        if not primary:
            return []
        result = [primary]
        self.mountpoints[primary] = self.directory if self.found_dataset else \
            self.mountpoint_of(primary)
        for line in self.options["extra-datasets"].split():
            if line.startswith("/"):
                name = self.dataset_mounted_at("extra-datasets", line)
                self.mountpoints[name] = os.path.realpath(line)
            else:
                name = line
                self.mountpoints[name] = self.mountpoint_of(name)
            if name in result:
                raise self.error("extra-datasets", "%s is listed twice (the buildout's own "
                                 "dataset is always included)" % name)
            result.append(name)
        for name in result:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:/ -]*$", name) or "//" in name:
                raise self.error("extra-datasets" if name != primary else "dataset",
                                 "%r is not a ZFS dataset name" % name)
        pools = sorted({d.split("/", 1)[0] for d in result})
        if len(pools) > 1:
            logging.getLogger(self.name).warning(
                "the datasets are on %d pools (%s): ZFS cannot snapshot them atomically "
                "(one snapshot per pool, a moment apart)", len(pools), ", ".join(pools))
        return result

    # -- supervisor -------------------------------------------------------------------------
    def find_supervisor(self):
        """Default supervisorctl/supervisord: the buildout's collective.recipe.supervisor part."""
        self.supervisor_files = []
        part = None
        for candidate in self.buildout["buildout"].get("parts", "").split():
            if candidate == self.name or candidate not in self.buildout:
                continue
            recipe = self.buildout[candidate].get("recipe", "")
            if recipe.split(":")[0].strip() == SUPERVISOR_RECIPE:
                part = candidate
                break
        if part:
            self.options.setdefault("supervisorctl", os.path.join(self.bin, part + "ctl"))
            self.options.setdefault("supervisord", os.path.join(self.bin, part + "d"))
            section = self.buildout[part]
            var = os.path.join(self.buildout["buildout"]["directory"], "var")
            self.supervisor_files = [
                section.get("pidfile") or os.path.join(var, "supervisord.pid"),
                section.get("logfile") or os.path.join(var, "log", "supervisord.log")]
            if section.get("http-socket", "inet") == "unix" and section.get("file"):
                self.supervisor_files.append(section["file"])
        else:
            self.options.setdefault("supervisorctl", "none")
            self.options.setdefault("supervisord", "none")

    def command_or_none(self, option):
        value = self.options[option].strip()
        return None if value.lower() in ("none", "") else self.split(option)

    # -- scripts ----------------------------------------------------------------------------
    def compute_config(self):
        options = self.options
        prefix = options["prefix"].strip()
        problem = zfsmod.check_snapshot_name("x", prefix)
        if problem:
            raise self.error("prefix", problem)
        try:
            warn_size = zfsmod.parse_size(options["warn-size"]) if options["warn-size"].strip() \
                else 0
        except ValueError as e:
            raise self.error("warn-size", str(e))
        scripts = {}
        for script in SCRIPTS:
            value = options[script + "-script"].strip()
            if not re.match(r"^[\w.-]+$", value):
                raise self.error(script + "-script", "%r is not a script name" % value)
            scripts[script] = value
        datasets = self.dataset_list
        for option in ("lock-file", "log-file"):
            path = options[option]
            if not os.path.isabs(path):
                raise self.error(option, "must be an absolute path")
            inside = [d for d, m in self.mountpoints.items() if m and is_inside(path, m)]
            if inside:
                raise self.error(option, "%s is on the dataset %s, which a rollback replaces: "
                                 "put it outside the part's datasets" % (path, inside[0]))
        return {
            "part": self.name,
            "directory": self.directory,
            "datasets": datasets,
            "recursive": self.boolean("recursive"),
            "zfs": self.split("zfs"),
            "prefix": prefix,
            "keep": self.number("keep", 0),
            "warn_size": warn_size,
            "supervisorctl": self.command_or_none("supervisorctl"),
            "supervisord": self.command_or_none("supervisord"),
            "supervisord_files": self.supervisor_files,
            "programs": options["programs"].split(),
            "stop_timeout": self.number("stop-timeout", 1),
            "hooks": {hook: self.split(hook) for hook in HOOKS if options[hook].strip()},
            "lock_file": options["lock-file"],
            "log_file": options["log-file"],
            "scripts": {k: os.path.join(self.bin, v) for k, v in scripts.items()},
        }

    def install(self):
        egg = zc.recipe.egg.Egg(self.buildout, self.options["recipe"],
                                {"eggs": "collective.recipe.zfssnap"})
        requirements, ws = egg.working_set(["collective.recipe.zfssnap"])
        config = dict(self.config)
        config["version"] = next((d.version for d in ws
                                  if d.project_name == "collective.recipe.zfssnap"), "")
        entries = [(os.path.basename(config["scripts"][s]), "collective.recipe.zfssnap.main", s)
                   for s in SCRIPTS]
        return zc.buildout.easy_install.scripts(
            entries, ws, self.buildout["buildout"]["executable"], self.bin,
            arguments=repr(config))

    update = install
