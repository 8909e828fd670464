"""A [zfssnap] part's options made into the configuration the scripts run with, whoever reads
them: the buildout recipe (recipe.py) or, for a site without buildout, its configuration file.
Each defaults what it does not find to what the site tells (subclasses: the supervisor, the
Data.fs files, a database server) and says where a wrong option is (its `error`).

Defaults are computed in __init__ so that they land in .installed.cfg (buildout copies a part's
options before it calls install()).
"""
import difflib
import logging
import os
import re
import shlex

from collective.recipe.zfssnap import inputs
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.datasets import PartDatasets
from collective.recipe.zfssnap.storages import EXTERNAL_DATABASE


HOOKS = ("before-snapshot", "after-snapshot", "before-rollback", "after-rollback")
SCRIPTS = ("snapshot", "rollback", "cleanup")
TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "")
OPTIONS = set(HOOKS) | {s + "-script" for s in SCRIPTS} | {
    "dataset", "exclude-datasets", "external-database", "extra-datasets", "filestorages",
    "health-check",
    "hook-timeout", "install-inputs", "keep-rolled-away", "lock-file", "log-file", "prefix",
    "programs", "recipe", "recursive", "release-guard", "retain", "stop-timeout",
    "supervisor-conf", "supervisorctl", "supervisord", "supervisord-unit", "systemd-units",
    "systemd-user", "warn-size", "zfs", "zfs-timeout"}
UNIT_TYPES = ("service", "socket", "timer", "path", "target")
OTHER_UNIT_TYPES = ("mount", "automount", "swap", "device", "slice", "scope")


def default_script_name(part, script):
    """bin/snapshot for a part named zfssnap; bin/PART-snapshot for any other."""
    return script if part == "zfssnap" else "%s-%s" % (part, script)


def is_inside(path, directory):
    return mountsmod.is_inside(os.path.realpath(path), os.path.realpath(directory))


class PartOptions(PartDatasets):

    # What `snapshot --if-changed` compares (inputs.py): the files an install reads.
    install_inputs = inputs.PATTERNS

    def __init__(self, name, options, directory, bin_directory):
        self.name = name
        self.options = options
        self.log = logging.getLogger(name)
        self.check_option_names()
        self.directory = os.path.realpath(directory)
        self.bin = bin_directory
        options.setdefault("zfs", "zfs")
        self.zfs = zfsmod.Zfs(self.split("zfs"))
        self.table = mountsmod.zfs_mounts()
        self.found_dataset = "dataset" not in options
        if self.found_dataset:
            options["dataset"] = self.find_dataset()
        for option, default in (("extra-datasets", ""), ("exclude-datasets", ""),
                                ("recursive", "false"), ("prefix", name), ("retain", "0"),
                                ("warn-size", "10G"), ("programs", ""), ("stop-timeout", "60"),
                                ("hook-timeout", "600"), ("supervisord-unit", ""),
                                ("release-guard", "refuse"), ("health-check", ""),
                                ("keep-rolled-away", "false"), ("zfs-timeout", "1800"),
                                ("systemd-units", ""), ("systemd-user", ""),
                                ("external-database", "refuse")):
            options.setdefault(option, default)
        for hook in HOOKS:
            options.setdefault(hook, "")
        options.setdefault("install-inputs", " ".join(self.install_inputs))
        for script in SCRIPTS:
            default = default_script_name(name, script)
            options.setdefault(script + "-script", default)
        self.units = self.systemd_units()
        if self.units:
            # The site's processes are systemd's: a supervisor part of the buildout is not
            # what stops them.
            for option in ("supervisorctl", "supervisord"):
                options.setdefault(option, "none")
            options.setdefault("supervisor-conf", "")
            self.supervisor_files = []
            if options["supervisor-conf"].strip():
                raise self.error("systemd-units", "the part names supervisor-conf too: "
                                 "bin/rollback stops the site through one process manager; "
                                 "remove one of the two options")
        else:
            self.find_supervisor()
        # Quoted: the option is split into words (a path may have a space).
        options.setdefault("filestorages", "\n".join(shlex.quote(p)
                                                     for p in self.find_filestorages()))
        self.external_databases = self.find_external_databases()
        self.mountpoints = {}  # dataset -> where it is mounted (when it is)
        self.dataset_list, self.excluded = self.datasets()
        # Empty: the scripts' state directory, decided when they run (state.Places), so that
        # every release's scripts find the same lock and rollback record.
        options.setdefault("lock-file", "")
        options.setdefault("log-file", "")
        self.config = self.compute_config()

    # -- what the site's way of deploying tells (the buildout, or a configuration file) ----
    def error(self, option, message):
        """The exception for a wrong option: one sentence naming where it is set."""
        raise NotImplementedError

    def find_supervisor(self):
        """Default supervisor settings (options supervisorctl, supervisord, supervisor-conf)
        and self.supervisor_files, supervisord's files that tell whether it must go down."""
        raise NotImplementedError

    def find_filestorages(self):
        return []

    def find_external_databases(self):
        return []

    def other_part_with_script(self, script):
        """Another part that generates a script of this name: None when there is none."""
        return None

    # -- option helpers ---------------------------------------------------------------------

    def check_option_names(self):
        """A misspelt option (extra-dataset) would silently leave datasets out: refuse it."""
        for key in self.options.keys():
            if key in OPTIONS or key.startswith(("_", "<")):
                continue
            if key == "keep":
                raise self.error(key, "renamed retain: the number of the newest snapshot sets "
                                 "bin/cleanup leaves (0 leaves none, where "
                                 "collective.recipe.backup's keep = 0 keeps all)")
            close = difflib.get_close_matches(key, sorted(OPTIONS), n=1)
            raise self.error(key, "unknown option%s (the options are listed in the README)"
                             % ("; did you mean %s?" % close[0] if close else ""))

    def split(self, option):
        argv = self.words(option)
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

    def systemd_units(self):
        """The systemd-units option: unit names in start order (.service when none is said)."""
        units = []
        for word in self.names("systemd-units"):
            if not re.match(r"^[\w:.@\\-]+$", word) or word.startswith("-"):
                raise self.error("systemd-units", "%r is not a systemd unit name" % word)
            kind = word.rpartition(".")[2]
            if kind in OTHER_UNIT_TYPES:
                raise self.error("systemd-units", "%s is a %s unit, which bin/rollback does not "
                                 "stop or start: name the services (and the sockets, timers "
                                 "or paths that start them)" % (word, kind))
            if kind not in UNIT_TYPES:
                word += ".service"
            if word in units:
                raise self.error("systemd-units", "%s is named twice" % word)
            units.append(word)
        user = self.options["systemd-user"].strip()
        if user and not re.match(r"^[a-z_][\w.-]*\$?$", user, re.I):
            raise self.error("systemd-user", "%r is not a user name" % user)
        if user and not units:
            raise self.error("systemd-user", "names the user whose units run the site, but "
                             "systemd-units names none")
        return units

    def health_check(self):
        value = self.options["health-check"].strip()
        if not value:
            return None
        if re.match(r"^https?://", value):
            return {"url": value}
        return {"command": self.split("health-check")}

    def command_or_none(self, option):
        value = self.options[option].strip()
        return None if value.lower() in ("none", "") else self.split(option)

    def names(self, option):
        """The option's names, separated by spaces, commas or new lines (programs, units)."""
        return [n for n in re.split(r"[\s,]+", self.options[option]) if n]

    def words(self, option):
        """The option's words (spaces or new lines between them; quotes for a word with a
        space), possibly none."""
        try:
            return shlex.split(self.options[option])
        except ValueError as e:
            raise self.error(option, "cannot split %r into words (%s)" % (self.options[option], e))

    def hook(self, option):
        value = self.options[option].strip()
        if "\n" in value:
            raise self.error(option, "one command on one line, not %d lines: put several "
                             "commands in a script and name the script here"
                             % len(value.splitlines()))
        return self.split(option)

    def compute_config(self):
        options = self.options
        prefix = options["prefix"].strip()
        # Names are pasted into shells (the printed hints): no spaces, like labels.
        problem = zfsmod.check_snapshot_name("x", prefix, what="a prefix", allow_space=False)
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
            if not re.match(r"^[\w.-]+$", value) or value in (".", ".."):
                raise self.error(script + "-script", "%r is not a script name" % value)
            if value in scripts.values():
                raise self.error(script + "-script", "%r is also the name of another of the "
                                 "part's scripts: give each its own" % value)
            other = self.other_part_with_script(value)
            if other:
                raise self.error(script + "-script", "%r is also the name of a script of the "
                                 "[%s] part: one would overwrite the other; give each part "
                                 "its own names" % (value, other))
            scripts[script] = value
        guard = options["release-guard"].strip()
        if guard not in ("refuse", "warn", "snapshot", "off"):
            raise self.error("release-guard", "must be refuse, warn, snapshot or off, not %r"
                             % guard)
        external = options["external-database"].strip()
        if external not in EXTERNAL_DATABASE:
            raise self.error("external-database", "must be refuse or by-hand, not %r"
                             % external)
        unit = options["supervisord-unit"].strip()
        if unit and not re.match(r"^[\w:.@-]+$", unit):
            raise self.error("supervisord-unit", "%r is not a systemd unit name" % unit)
        conf = options["supervisor-conf"].strip()
        if conf and not os.path.isabs(conf):
            raise self.error("supervisor-conf", "must be an absolute path")
        for option in ("lock-file", "log-file"):
            path = options[option].strip()
            if not path:
                continue
            if not os.path.isabs(path):
                raise self.error(option, "must be an absolute path")
            inside = [d for d, m in self.mountpoints.items() if m and is_inside(path, m)]
            if inside:
                raise self.error(option, "%s is on the dataset %s, which a rollback replaces: "
                                 "put it outside the part's datasets" % (path, inside[0]))
        return {
            "part": self.name,
            "directory": self.directory,
            "datasets": self.dataset_list,
            "excluded": self.excluded,
            "mounts": {d: m for d, m in self.mountpoints.items() if m},
            "recursive": self.boolean("recursive"),
            "zfs": self.split("zfs"),
            "prefix": prefix,
            "retain": self.number("retain", 0),
            "warn_size": warn_size,
            "supervisor_conf": conf or None,
            "supervisorctl": self.command_or_none("supervisorctl"),
            "supervisord": self.command_or_none("supervisord"),
            "supervisord_unit": unit or None,
            "supervisord_files": self.supervisor_files,
            "programs": self.names("programs"),
            "systemd_units": self.units,
            "systemd_user": options["systemd-user"].strip() or None,
            "stop_timeout": self.number("stop-timeout", 1),
            "hook_timeout": self.number("hook-timeout", 1),
            "zfs_timeout": self.number("zfs-timeout", 0),
            "filestorages": [os.path.join(self.directory, p) for p in self.words("filestorages")],
            "install_inputs": self.words("install-inputs"),
            "external_databases": self.external_databases,
            "external_database": external,
            "health_check": self.health_check(),
            "keep_rolled_away": self.boolean("keep-rolled-away"),
            "hooks": {hook: self.hook(hook) for hook in HOOKS if options[hook].strip()},
            "lock_file": options["lock-file"].strip() or None,
            "log_file": options["log-file"].strip() or None,
            "scripts": {k: os.path.join(self.bin, v) for k, v in scripts.items()},
        }
