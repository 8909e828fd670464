"""`zfssnap`, the command of sites without buildout: `zfssnap snapshot | rollback | cleanup`,
each with the options, output, --json and exit codes of bin/snapshot, bin/rollback and
bin/cleanup, since it calls the same functions (main.py) with a configuration made the same way
(standalone.py: the site's zfssnap.cfg or [tool.zfssnap], and its zope.conf).
"""
import os
import sys

USAGE = """\
usage: zfssnap [-C DIRECTORY] {snapshot,rollback,cleanup} [ARGUMENTS]

The release safety net of a Zope or Plone site on ZFS: snapshot before a release, roll back a
bad one, clean up after a good one. Run it in the site directory (or name it with -C); it
reads the site's zfssnap.cfg, or the [tool.zfssnap] table of its pyproject.toml, and its
instance/etc/zope.conf. zfssnap COMMAND --help shows each command's arguments.
"""
COMMANDS = ("snapshot", "rollback", "cleanup")
BAD_INPUT, REFUSED = 2, 3  # as site.py's exit codes: this module imports nothing before


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        os.getcwd()
    except OSError:
        # In a directory a rollback with --keep replaced: nothing can be resolved from here.
        sys.stderr.write("zfssnap: this shell's working directory is gone (a rollback with "
                         "--keep put another dataset in its place): cd to the site "
                         "directory, then run it again; nothing was done\n")
        return REFUSED
    directory = "."
    if argv[:1] in (["-C"], ["--directory"]):
        if len(argv) < 2:
            return usage_error("-C needs the site directory")
        directory, argv = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--directory="):
        directory, argv = argv[0].split("=", 1)[1], argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else BAD_INPUT
    if argv[0] == "--version":
        from collective.recipe.zfssnap.standalone import package_version
        sys.stdout.write("zfssnap (collective.recipe.zfssnap %s)\n" % package_version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return usage_error("%r is not a command: give snapshot, rollback or cleanup" % command)
    from collective.recipe.zfssnap import configfile
    from collective.recipe.zfssnap import main as mainmod
    from collective.recipe.zfssnap import standalone
    try:
        config = standalone.load(os.path.abspath(directory))
    except configfile.ConfigError as e:
        if "-h" not in rest and "--help" not in rest:
            sys.stderr.write("zfssnap %s: error: %s\n" % (command, e.message))
            return BAD_INPUT
        # The help of a command, also where there is no site to configure it.
        config = {"part": standalone.PART, "directory": os.path.abspath(directory),
                  "datasets": [], "scripts": {c: "zfssnap " + c for c in COMMANDS}}
    return getattr(mainmod, command)(config, rest)


def usage_error(message):
    sys.stderr.write(USAGE.split("\n\n")[0] + "\nzfssnap: error: %s\n" % message)
    return BAD_INPUT


def run():
    sys.exit(main())
