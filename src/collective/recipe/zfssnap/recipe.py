"""The buildout side: a [zfssnap] part's options, defaulted from the buildout's other parts,
and the scripts generated from them.

The scripts get the options as plain data (repr of a dict): they never read buildout.cfg,
which a rollback may replace under them. What the options mean is options.py's.
"""
import os

import zc.buildout
import zc.buildout.easy_install

from collective.recipe.zfssnap.options import SCRIPTS
from collective.recipe.zfssnap.options import PartOptions
from collective.recipe.zfssnap.options import default_script_name
from collective.recipe.zfssnap.storages import ZODB_RECIPES
from collective.recipe.zfssnap.storages import external_databases_of
from collective.recipe.zfssnap.storages import filestorages_of


SUPERVISOR_RECIPE = "collective.recipe.supervisor"


def recipe_of(raw, part, doing=()):
    """The recipe of `part` as buildout will read it, from its raw sections, `<=` macros
    followed (a section's own options win, then the last of the sections it extends).
    Reading buildout[part] instead would initialise that part's recipe."""
    section = raw.get(part) or {}
    if section.get("recipe"):
        return section["recipe"].split(":")[0].strip()
    for base in reversed(section.get("<", "").split()):
        if base not in doing:
            found = recipe_of(raw, base, doing + (part,))
            if found:
                return found
    return ""


# Before anything is imported: in a directory a --keep rollback detached, Python puts a relative
# path first in sys.path and its import system dies on it with a traceback.
CWD_GUARD = """\
import os
try:
    os.getcwd()
except OSError:
    sys.stderr.write(%s)
    sys.exit(3)"""


class Recipe(PartOptions):

    # bin/buildout reads the buildout's configuration too. The release guard (extension.py)
    # compares the parts instead, but --if-changed works in a buildout as well.
    install_inputs = ("*.cfg",) + PartOptions.install_inputs

    def __init__(self, buildout, name, options):
        self.buildout = buildout
        super().__init__(name, options, buildout["buildout"]["directory"],
                         buildout["buildout"]["bin-directory"])

    def error(self, option, message):
        return zc.buildout.UserError("[%s] %s: %s" % (self.name, option, message))

    # -- supervisor -------------------------------------------------------------------------
    def find_supervisor(self):
        """Default supervisor settings: the buildout's collective.recipe.supervisor part."""
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
            section = self.buildout[part]
            self.options.setdefault("supervisorctl", os.path.join(self.bin, part + "ctl"))
            self.options.setdefault("supervisord", os.path.join(self.bin, part + "d"))
            self.options.setdefault("supervisor-conf", section.get("supervisord-conf") or
                                    os.path.join(self.buildout["buildout"]["parts-directory"],
                                                 part, "supervisord.conf"))
            var = os.path.join(self.buildout["buildout"]["directory"], "var")
            self.supervisor_files = [
                section.get("pidfile") or os.path.join(var, "supervisord.pid"),
                section.get("logfile") or os.path.join(var, "log", "supervisord.log")]
            if section.get("http-socket", "inet") == "unix" and section.get("file"):
                self.supervisor_files.append(section["file"])
        else:
            self.options.setdefault("supervisorctl", "none")
            self.options.setdefault("supervisord", "none")
            self.options.setdefault("supervisor-conf", "")

    def zodb_parts(self):
        parts = [p for p in self.buildout["buildout"].get("parts", "").split()
                 if p != self.name and recipe_of(self.buildout._raw, p) in ZODB_RECIPES]
        return {p: self.buildout[p] for p in parts}

    def find_filestorages(self):
        return filestorages_of(self.zodb_parts(), self.buildout["buildout"]["directory"])

    def find_external_databases(self):
        return external_databases_of(self.zodb_parts())

    # -- scripts ----------------------------------------------------------------------------
    def other_part_with_script(self, script):
        """The other [zfssnap]-style part of this buildout that generates `script`, or None.
        Read from the raw sections: buildout[part] would initialise that part's recipe."""
        raw = self.buildout._raw
        for part in self.buildout["buildout"].get("parts", "").split():
            if part == self.name or recipe_of(raw, part) != "collective.recipe.zfssnap":
                continue
            section = raw.get(part) or {}
            for name in SCRIPTS:
                value = (section.get(name + "-script") or default_script_name(part, name)
                         ).strip()
                if value == script:
                    return part
        return None

    def install(self):
        # The recipe's own distribution is installed already (buildout runs it): its working
        # set comes from where buildout put it, with no zc.recipe.egg, whose newest release
        # needs zc.buildout 6, between a zc.buildout 5 buildout and the part. The eggs
        # directory as a destination, not a path: zc.buildout 5 keeps eggs there in a format
        # only its installer reads. Never newer: bin/buildout chose the recipe's version.
        b = self.buildout["buildout"]
        ws = zc.buildout.easy_install.install(
            ["collective.recipe.zfssnap"], b["eggs-directory"],
            path=[b["develop-eggs-directory"]], newest=False, index=b.get("index"),
            links=b.get("find-links", "").split(),
            allow_hosts=[h.strip() for h in b.get("allow-hosts", "*").split("\n") if h.strip()])
        config = dict(self.config)
        config["version"] = next((d.version for d in ws
                                  if d.project_name == "collective.recipe.zfssnap"), "")
        entries = [(os.path.basename(config["scripts"][s]), "collective.recipe.zfssnap.main", s)
                   for s in SCRIPTS]
        paths = []
        for script, _, name in entries:
            paths += zc.buildout.easy_install.scripts(
                [(script, "collective.recipe.zfssnap.main", name)], ws,
                self.buildout["buildout"]["executable"], self.bin, arguments=repr(config),
                initialization=CWD_GUARD % repr(
                    "%s: this shell's working directory is gone (a rollback with --keep put "
                    "another dataset in its place): type cd %s, then run it again; nothing was "
                    "done\n" % (script, config["directory"])))
        return paths

    update = install
