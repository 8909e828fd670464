"""A site without buildout (pip, uv, a Cookieplone backend): the configuration its scripts run
with, made from its own configuration file (configfile.py) and what the site has, as the recipe
makes it from a buildout: the same options, defaults and checks (options.py).

What the site tells, where its configuration does not say: the storages of its Zope instance's
and ZEO server's configuration (cookiecutter-zope-instance writes instance/etc/zope.conf), read
by zopeconf.py; its supervisord from a supervisord.conf in the site directory.
"""
import configparser
import os
import shutil
import socket
import sys

from collective.recipe.zfssnap import configfile
from collective.recipe.zfssnap import supervisor
from collective.recipe.zfssnap import zopeconf
from collective.recipe.zfssnap.options import SCRIPTS
from collective.recipe.zfssnap.options import PartOptions

PART = "zfssnap"
# Relative to the site directory, where cookiecutter-zope-instance and hand-made layouts keep
# them; the first that exist are read.
ZOPE_CONFS = ("instance/etc/zope.conf", "instance/etc/zeo.conf", "etc/zope.conf",
              "etc/zeo.conf", "zeo/etc/zeo.conf")
SUPERVISOR_CONFS = ("supervisord.conf", "etc/supervisord.conf")


class SiteOptions(PartOptions):
    """`config`: the site's configfile.Config, or None (nothing but what the site has)."""

    def __init__(self, directory, config=None, bin_directory=None):
        self.file = config
        self.site = os.path.realpath(directory)
        self.storages = []
        self.confs = [os.path.join(self.site, p) for p in ZOPE_CONFS
                      if os.path.isfile(os.path.join(self.site, p))]
        options = dict(config.options) if config else {}
        super().__init__(PART, options, self.site, bin_directory or
                         os.path.dirname(os.path.abspath(sys.argv[0])))
        # One command with the three as its subcommands: the hints name it so.
        self.config["scripts"] = {s: "zfssnap " + s for s in SCRIPTS}
        self.config["options_in"] = "in %s" % (
            config.path if config else os.path.join(self.site, configfile.CFG))
        self.config["standalone"] = True
        self.config["remote_zeo_servers"] = self.remote_zeo_servers()

    def where(self, option):
        if self.file is None:
            return "%s (no %s or [tool.%s] in pyproject.toml)" % (
                self.site, configfile.CFG, configfile.SECTION)
        return self.file.where(option)

    def error(self, option, message):
        return configfile.ConfigError("%s: %s: %s" % (self.where(option), option, message))

    # -- what the site tells ------------------------------------------------------------------
    def read_storages(self):
        if not self.storages:
            for path in self.confs:
                try:
                    self.storages += zopeconf.read(path)
                except zopeconf.ConfError as e:
                    raise configfile.ConfigError("cannot read the storages of %s" % e.message)
        return self.storages

    def sections(self):
        """Every storage section of the site's configurations, a blobstorage's inner one too."""
        return [s for storage in self.read_storages() for s in (storage, storage.inner)
                if s is not None]

    def find_filestorages(self):
        return [s.keys["path"] for s in self.sections()
                if s.kind == "filestorage" and s.keys.get("path")]

    def find_external_databases(self):
        return [{"kind": s.database_server, "where": s.where} for s in self.read_storages()
                if s.database_server]

    def remote_zeo_servers(self):
        """The ZEO servers of zope.conf's zeoclient sections that are not on this machine's
        loopback or a unix socket: their Data.fs is on the machine they run on."""
        found = []
        for s in self.sections():
            far = [a for a in s.keys.get("server", "").split() if not is_local(a)] \
                if s.kind == "zeoclient" else []
            if far:
                found.append({"server": " ".join(far), "where": s.where})
        return found

    def find_supervisor(self):
        """supervisor-conf when set, else a supervisord.conf of the site directory: its
        supervisord is started again with that file (-c), and its pid file, log and unix
        socket say whether it has to go down with the datasets."""
        self.supervisor_files = []
        conf = self.options.get("supervisor-conf", "").strip()
        if not conf:
            conf = next((os.path.join(self.site, p) for p in SUPERVISOR_CONFS
                         if os.path.isfile(os.path.join(self.site, p))), "")
        self.options.setdefault("supervisor-conf", conf)
        if not conf:
            self.options.setdefault("supervisorctl", "none")
            self.options.setdefault("supervisord", "none")
            return
        daemon = self.program("supervisord")
        ctl = self.program("supervisorctl")
        self.options.setdefault("supervisord", "%s -c %s" % (daemon, conf) if daemon else "none")
        self.options.setdefault("supervisorctl", "%s -c %s" % (ctl, conf) if ctl else "none")
        self.supervisor_files = supervisord_files(conf)

    def program(self, name):
        """supervisord or supervisorctl of the site's virtualenv, else of this Python's, else
        on PATH. Not the site's bin/: a buildout's bin/supervisord there (made by
        collective.recipe.supervisor) has its -c built in, and refuses a second one."""
        for directory in (os.path.join(self.site, ".venv", "bin"),
                          os.path.dirname(sys.executable)):
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK):
                return path
        return shutil.which(name)


def is_local(address):
    """A ZEO client's server address on this machine: a unix socket, a port alone, or a
    loopback or this host's name before the port."""
    if address.startswith("/") or address.isdigit():
        return True
    host = address.rsplit(":", 1)[0].strip("[]").lower() if ":" in address else address.lower()
    return host in ("localhost", "::1", "", socket.gethostname().lower()) or \
        host.startswith("127.")


def supervisord_files(conf):
    """supervisord's pid file, log and unix socket as its configuration names them (with
    supervisor's defaults, %(here)s and %(ENV_X)s expanded)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(conf, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise configfile.ConfigError("cannot read the supervisord configuration %s: %s"
                                     % (conf, getattr(e, "strerror", None) or e))
    here = os.path.dirname(os.path.abspath(conf))

    def value(section, name, default):
        if not parser.has_option(section, name):
            return default
        return os.path.join(here, supervisor.expand(parser.get(section, name), here))

    files = [value("supervisord", "pidfile", os.path.join(here, "supervisord.pid")),
             value("supervisord", "logfile", os.path.join(here, "supervisord.log"))]
    if parser.has_section("unix_http_server"):
        files.append(value("unix_http_server", "file", os.path.join(here, "supervisor.sock")))
    return files


def load(directory, bin_directory=None):
    """The scripts' configuration for the site in `directory`; ConfigError when there is
    none to be had (a message naming the file, the line and the option)."""
    if not os.path.isdir(directory):
        raise configfile.ConfigError("the site directory %s does not exist: run zfssnap in "
                                     "the site directory, or name it with -C" % directory)
    path = configfile.find(directory)
    config = configfile.read(path) if path else None
    if config is None and not any(os.path.isfile(os.path.join(directory, p))
                                  for p in ZOPE_CONFS):
        raise configfile.ConfigError(
            "%s has no %s, no [tool.%s] in pyproject.toml and no instance/etc/zope.conf: "
            "run zfssnap in the site directory, or write its %s" % (
                directory, configfile.CFG, configfile.SECTION, configfile.CFG))
    result = SiteOptions(directory, config, bin_directory).config
    result["version"] = package_version()
    return result


def package_version():
    from importlib import metadata
    try:
        return metadata.version("collective.recipe.zfssnap")
    except metadata.PackageNotFoundError:  # run from a checkout
        return ""
