"""The command line of bin/snapshot, bin/rollback and bin/cleanup.

The generated scripts call `snapshot(config)`, `rollback(config)` or `cleanup(config)` with the
part's options as plain data. Every module a rollback uses is imported here, at start-up: the
rollback replaces bin/ and the eggs under the running script.
"""
import argparse
import datetime
import fcntl
import json
import os
import re
import signal
import socket
import sys
import traceback

from collective.recipe.zfssnap import processes  # noqa: F401 (imported before any rollback)
from collective.recipe.zfssnap import release
from collective.recipe.zfssnap import supervisor
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.release import BAD_INPUT
from collective.recipe.zfssnap.release import FAILED
from collective.recipe.zfssnap.release import REFUSED
from collective.recipe.zfssnap.release import Stop


class Output:
    """Messages for the operator (or one JSON document), and the log file's lines."""

    def __init__(self, script, json_mode=False, verbosity=1):
        self.script = script
        self.json = json_mode
        self.verbosity = verbosity
        self.data = {}
        self.warnings = []
        self.log_file = None
        self.user = release.current_user()
        self.host = socket.gethostname()

    def _print(self, text, level=1, stream=None):
        if self.json or self.verbosity < level:
            return
        try:
            print(text, file=stream or sys.stdout, flush=True)
        except OSError:
            pass  # the terminal went away: the work goes on, the log file keeps the record

    def say(self, text):
        self._print(text)

    def note(self, text):
        self._print("Note: " + text)

    def action(self, text):
        self._print("> " + text)

    def command(self, argv):
        self._print(" ".join(quote(a) for a in argv))
        self.data.setdefault("commands", []).append(list(argv))

    def trace(self, argv):
        self._print("$ " + " ".join(quote(a) for a in argv), level=2)

    def warn(self, text):
        self.warnings.append(text)
        if not self.json:
            self._print("WARNING: " + text, level=0, stream=sys.stderr)

    def error(self, text):
        if not self.json:
            self._print("%s: error: %s" % (self.script, text), level=0, stream=sys.stderr)

    def open_log(self, path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.log_file = open(path, "a")
        except OSError as e:
            raise Stop("cannot open the log file %s (%s): set the part's log-file option to a "
                       "path this user may write, outside the datasets" % (path, e.strerror),
                       FAILED)

    def log(self, text):
        if self.log_file is None:
            return
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.log_file.write("%s %s@%s %s: %s\n" % (stamp, self.user, self.host,
                                                        self.script, text))
            self.log_file.flush()
        except OSError as e:
            self.log_file = None  # a full disk must not stop a rollback half-way
            self.warn("cannot write the log file any more (%s): going on without it"
                      % e.strerror)

    def finish(self, code, error=None):
        if self.json:
            doc = {"script": self.script, "ok": code == 0, "exit_code": code,
                   "error": error, "warnings": self.warnings}
            doc.update(self.data)
            print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return code


def quote(word):
    # For display only: nothing here is ever given to a shell.
    return word if re.match(r"^[\w@%+=:,./-]+$", word) else "'%s'" % word.replace("'", "'\\''")


def parse_age(text):
    m = re.match(r"^(\d+)([smhdw])$", text)
    if not m:
        raise argparse.ArgumentTypeError("not an age: %r (use e.g. 90m, 12h, 7d, 2w)" % text)
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def parser_for(script, description):
    parser = argparse.ArgumentParser(prog=script, description=description)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact commands and change nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with the outcome")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="also show every command that is run")
    return parser


def run(config, name, description, add_arguments, work, argv=None):
    """Parse arguments, lock, open the log, do `work`, map failures to exit codes."""
    script = config.get("scripts", {}).get(name, name)
    parser = parser_for(os.path.basename(script), description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    out = Output(os.path.basename(script), args.json, 0 if args.quiet else 2 if args.verbose
                 else 1)
    lock = None
    try:
        site = release.Site(config, out, trace=out.trace)
        if not args.dry_run and not getattr(args, "list", False):
            lock = take_lock(config["lock_file"], out.script)
            out.open_log(config["log_file"])
        work(site, args)
        return out.finish(0)
    except Stop as e:
        out.error(e.message)
        return out.finish(e.code, e.message)
    except (zfsmod.ZfsError, supervisor.SupervisorError) as e:
        out.error(e.message)
        return out.finish(FAILED, e.message)
    except KeyboardInterrupt:
        out.error("interrupted")
        return out.finish(FAILED, "interrupted")
    except Exception as e:  # a bug: still one clear sentence, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        message = ("unexpected %s: %s; this is a bug in collective.recipe.zfssnap: please "
                   "report it (run with -v for the traceback)" % (type(e).__name__, e))
        out.error(message)
        return out.finish(FAILED, message)
    finally:
        if lock is not None:
            lock.close()


def take_lock(path, script):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "a")
    except OSError as e:
        raise Stop("cannot open the lock file %s (%s): set the part's lock-file option to a "
                   "path this user may write, outside the datasets" % (path, e.strerror),
                   FAILED)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise Stop("another snapshot, rollback or cleanup of this buildout is running (lock "
                   "%s): wait until it has finished" % path, FAILED)
    return f


def ask(question):
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip() == "yes"
    except EOFError:
        return False


def snapshot(config, argv=None):
    def arguments(parser):
        parser.add_argument("label", nargs="?", help="a label for the snapshot, added to its "
                            "name (letters, digits and _ - . :)")
        parser.add_argument("-m", "--message", help="a note stored with the snapshot")
        parser.add_argument("--list", action="store_true",
                            help="list this part's snapshots instead of taking one")

    def work(site, args):
        if args.list:
            release.list_snapshots(site)
        else:
            release.take_snapshot(site, args.label, args.message, dry_run=args.dry_run)

    return run(config, "snapshot", "Take one atomic ZFS snapshot of this buildout's datasets "
               "before a release.", arguments, work, argv)


def rollback(config, argv=None):
    def arguments(parser):
        parser.add_argument("snapshot", nargs="?",
                            help="name or label of one of this part's snapshots "
                            "(default: the newest)")
        parser.add_argument("-y", "--yes", action="store_true",
                            help="do not ask for confirmation")
        parser.add_argument("--force", action="store_true",
                            help="roll back even if processes still have files open on the "
                            "datasets")
        parser.add_argument("--diff", action="store_true",
                            help="summarise what changed since the snapshot (zfs diff)")

    def work(site, args):
        def confirm():
            if not sys.stdin.isatty():
                raise Stop("no terminal to ask for confirmation: pass --yes to roll back "
                           "(nothing was changed)", REFUSED)
            return ask("Type yes to stop the site and roll back: ")

        # From the confirmation on, an interrupt would leave the site half-done.
        originals = {s: signal.getsignal(s)
                     for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
        try:
            release.rollback(site, args.snapshot, yes=args.yes, dry_run=args.dry_run,
                             force=args.force, diff=args.diff,
                             confirm=confirm, committed=ignore_interrupts)
        finally:
            for signum, handler in originals.items():
                signal.signal(signum, handler)

    return run(config, "rollback", "Stop the site, roll its datasets back to a snapshot of "
               "this part, start it again.", arguments, work, argv)


def ignore_interrupts():
    # Ctrl-C, a lost ssh session or a stray kill must not end a rollback between two steps.
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def cleanup(config, argv=None):
    def arguments(parser):
        parser.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                            help="names or labels of this part's snapshots to destroy "
                            "(default: all but the newest 'keep' ones)")
        parser.add_argument("--older-than", type=parse_age, metavar="AGE",
                            help="only snapshots older than AGE (e.g. 12h, 7d, 2w)")

    def work(site, args):
        if args.snapshots and args.older_than is not None:
            raise Stop("give snapshot names or --older-than, not both", BAD_INPUT)
        release.cleanup(site, args.snapshots, args.older_than, dry_run=args.dry_run)

    return run(config, "cleanup", "Destroy this part's snapshots (never another tool's).",
               arguments, work, argv)
