"""The command line of bin/snapshot, bin/rollback and bin/cleanup.

The generated scripts call `snapshot(config)`, `rollback(config)` or `cleanup(config)` with the
part's options as plain data. Nothing here imports the buildout machinery: a script starts in
the time Python does. bin/rollback imports everything it uses before its first step, since the
rollback replaces bin/ and the eggs under the running script.
"""
import argparse
import os
import signal
import sys

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.output import Output
from collective.recipe.zfssnap.site import BAD_INPUT
from collective.recipe.zfssnap.site import FAILED
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Site
from collective.recipe.zfssnap.site import Stop


MAX_AGE = 100 * 366 * 86400  # --older-than beyond a century is a typo, not a policy


def parse_age(text):
    import re
    m = re.match(r"^(\d{1,12})([smhdw])$", text)
    if not m:
        raise argparse.ArgumentTypeError("not an age: %r (use e.g. 90m, 12h, 7d, 2w)" % text)
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[
        m.group(2)]
    if seconds > MAX_AGE:
        raise argparse.ArgumentTypeError("%r is more than a hundred years" % text)
    return seconds


INTERRUPTED = 130  # what shells expect of a command stopped by Ctrl-C
EXIT_CODES = {
    0: "0 done", 1: "1 failed (the message says what happened to the site)",
    2: "2 bad usage or input", 3: "3 refused, nothing changed",
    4: "4 rollback incomplete (run bin/rollback again to finish)",
    130: "130 interrupted (Ctrl-C)"}
# Only bin/rollback leaves work that a rerun finishes.
SCRIPT_EXIT_CODES = {"snapshot": (0, 1, 2, 3, 130), "cleanup": (0, 1, 2, 3, 130),
                     "rollback": (0, 1, 2, 3, 4, 130)}


def exit_codes(name, standalone=False):
    text = "exit codes: " + "; ".join(EXIT_CODES[c] for c in SCRIPT_EXIT_CODES.get(
        name, sorted(EXIT_CODES)))
    return text.replace("bin/rollback", "zfssnap rollback") if standalone else text


def parser_for(script, description, config=None, name=None):
    config = config or {}
    datasets = config.get("datasets") or []
    standalone = config.get("standalone", False)
    directory = config.get("directory", "?")
    what, none = (("The site %s" % directory, "the site directory is not on ZFS") if standalone
                  else ("The part [%s] of %s" % (config.get("part", "?"), directory),
                        "not on ZFS when bin/buildout ran"))
    epilog = "%s: datasets %s. %s." % (what, ", ".join(datasets) if datasets else
                                       "none found (%s)" % none, exit_codes(name, standalone))
    parser = argparse.ArgumentParser(prog=script, description=description, epilog=epilog)
    parser.add_argument("--version", action="version", version="%s (collective.recipe.zfssnap "
                        "%s)" % (script, config.get("version") or "?"))
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact commands and change nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with the outcome")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="also show every command that is run")
    return parser


def run(config, name, description, add_arguments, work, argv=None, read_only=None,
        precheck=None):
    """Parse arguments, lock, open the log, do `work`, map failures to exit codes.
    `precheck(args)`: what is refused from the configuration alone, before the site (and
    any zfs call)."""
    script = config.get("scripts", {}).get(name, name)
    parser = parser_for(os.path.basename(script), description, config, name)
    add_arguments(parser)
    args = parser.parse_args(argv)
    out = Output(os.path.basename(script), args.json, 0 if args.quiet else 2 if args.verbose
                 else 1)
    lock = site = None
    try:
        if precheck is not None:
            precheck(args)
        site = Site(config, out)
        state.trust_owner_of(site.directory)
        if not args.dry_run and not (read_only and read_only(args)):
            lock = site.take_locks()
            out.open_log(site.places.log)
        work(site, args)
        return out.finish(0)
    except Stop as e:
        out.error(e.message)
        return out.finish(e.code, e.message)
    except state.StateError as e:
        message, code = unfinished(e.message, name, site, FAILED)
        out.error(message)
        return out.finish(code, message)
    except zfsmod.NoZfsCommand as e:
        out.error(e.message)
        return out.finish(BAD_INPUT, e.message)
    except zfsmod.ZfsError as e:  # one no step of the rollback caught: still a rerun's job
        message, code = unfinished(e.message, name, site, FAILED)
        out.error(message)
        return out.finish(code, message)
    except KeyboardInterrupt:
        # Only outside a rollback's critical section, where signals are deferred.
        message, code = unfinished("interrupted", name, site, INTERRUPTED)
        out.error(message)
        return out.finish(code, message)
    except Exception as e:  # a bug, or an adapter's error: still one clear sentence
        message = getattr(e, "message", None)
        if message is None:
            if args.verbose:
                import traceback  # only here: a standard module the rollback does not replace
                traceback.print_exc()
            message = ("unexpected %s: %s; this is a bug in collective.recipe.zfssnap: please "
                       "report it (run with -v for the traceback)" % (type(e).__name__, e))
        message, code = unfinished(message, name, site, FAILED)
        out.error(message)
        return out.finish(code, message)
    finally:
        if lock is not None:
            lock.close()


def unfinished(message, name, site, code):
    """(message, exit code) of a rollback that failed in a way of its own: while its record
    exists the rollback is unfinished, and the way on is to run it again (exit 4), as after
    every other failure mid-way."""
    if name != "rollback" or site is None:
        return message, code
    path = site.rollback_record().path
    if not os.path.lexists(path):
        return message, code
    return ("%s; the rollback is not finished (its record %s is kept): run %s again to finish "
            "it" % (message, path, site.scripts.get("rollback", "bin/rollback")), INCOMPLETE)


def snapshot(config, argv=None):
    from collective.recipe.zfssnap import inputs
    from collective.recipe.zfssnap import snapshot as snapshotmod

    def arguments(parser):
        parser.add_argument("label", nargs="?", help="a label for the snapshot, added to its "
                            "name (letters, digits and _ - . :)")
        parser.add_argument("-m", "--message", help="a note stored with the snapshot")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--list", action="store_true",
                          help="list this part's snapshots instead of taking one")
        what.add_argument("--if-changed", action="store_true",
                          help="take it only when the install inputs (the git revision and "
                          "the files of the install-inputs option) differ from those of the "
                          "last snapshot --if-changed took: in a deploy script, after the "
                          "checkout is updated and before the install")

    def work(site, args):
        if args.list:
            snapshotmod.list_snapshots(site)
        elif args.if_changed:
            inputs.if_changed(site, args.label, args.message, dry_run=args.dry_run)
        else:
            snapshotmod.take_snapshot(site, args.label, args.message, dry_run=args.dry_run)

    def precheck(args):
        if not args.list:
            snapshotmod.refuse_external_database(config)

    return run(config, "snapshot", "Take one ZFS snapshot of this buildout's datasets before a "
               "release (atomic within each pool).", arguments, work, argv,
               read_only=lambda args: args.list, precheck=precheck)


def terminal_confirmation(out, question, what_yes_does):
    """The `confirm` of a script that asks before it acts: a 'yes' typed on the terminal, and
    without a terminal a refusal that names --yes."""
    def confirm():
        if not sys.stdin.isatty():
            raise Stop("no terminal to ask for confirmation: pass --yes %s" % what_yes_does,
                       REFUSED)
        return out.ask(question)
    return confirm


class Deferred:
    """Signal handlers for a rollback's critical section: an interrupt is noted, and the
    rollback stops at its next safe point (rollback.Run.checkpoint), its record kept.

    Handlers, not SIG_IGN: a handler is reset to the default in every child at exec, so
    hooks and the supervisord started during the rollback can be stopped as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)

    def __init__(self, out):
        self.out = out
        self.received = []
        self.originals = {}

    def __call__(self):
        for signum in self.SIGNALS:
            self.originals[signum] = signal.signal(signum, self.handle)

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        self.received.append(name)
        self.out.warn("%s received: the rollback stops at its next safe point (after the "
                      "step it is doing), keeping its record for a rerun to finish; once the "
                      "datasets are rolled back, it finishes starting the site first" % name)

    def restore(self):
        for signum, handler in self.originals.items():
            signal.signal(signum, handler)


def rollback(config, argv=None):
    # Everything a rollback uses, imported now: the rollback replaces the eggs under us (and
    # a virtualenv inside the buildout with them).
    from collective.recipe.zfssnap import forget as forgetmod
    from collective.recipe.zfssnap import health
    from collective.recipe.zfssnap import keep  # noqa: F401
    from collective.recipe.zfssnap import processes  # noqa: F401
    from collective.recipe.zfssnap import rollback as rollbackmod
    from collective.recipe.zfssnap import supervisor  # noqa: F401
    from collective.recipe.zfssnap import zodb  # noqa: F401
    health.prepare(config.get("health_check"))

    def arguments(parser):
        parser.add_argument("snapshot", nargs="?",
                            help="name or label of one of this part's snapshots "
                            "(default: the newest)")
        parser.add_argument("-y", "--yes", action="store_true",
                            help="do not ask for confirmation")
        parser.add_argument("--force", action="store_true",
                            help="roll back even if processes still have files open on the "
                            "datasets")
        parser.add_argument("--again", action="store_true",
                            help="roll back to the snapshot the last finished rollback went "
                            "back to, again, losing what was written since (asked for on a "
                            "terminal; needed with --yes)")
        parser.add_argument("--diff", action="store_true",
                            help="summarise what changed since the snapshot (zfs diff)")
        parser.add_argument("--keep", action=argparse.BooleanOptionalAction,
                            default=config.get("keep_rolled_away", False),
                            help="keep the state rolled away from (and newer snapshots) as "
                            "datasets of their own instead of destroying it (default: the "
                            "part's keep-rolled-away option)")
        phase = parser.add_mutually_exclusive_group()
        phase.add_argument("--forget", action="store_true",
                           help="forget the record of an unfinished rollback (after showing "
                           "it) instead of rolling back")
        phase.add_argument("--no-start", action="store_true",
                           help="stop and roll back, but start nothing: the record stays, and "
                           "--start starts what ran before (a release across several hosts)")
        phase.add_argument("--start", action="store_true",
                           help="start what ran before a rollback made with --no-start, from "
                           "its record (nothing recorded: nothing to do)")

    def work(site, args):
        out = site.out
        if args.forget:
            if args.snapshot:
                raise Stop("--forget takes no snapshot", BAD_INPUT)
            return forgetmod.forget(site, rollbackmod.describe_record, dry_run=args.dry_run,
                                    yes=args.yes, confirm=terminal_confirmation(
                                        out, "Type yes to forget it: ",
                                        "to forget it (nothing was changed)"))
        question, what = ("Type yes to start what ran before: ", "to start") if args.start \
            else ("Type yes to stop the site and roll back: ", "to roll back")
        confirm = terminal_confirmation(out, question, what + " (nothing was changed)")
        deferred = Deferred(out)
        try:
            rollbackmod.rollback(site, args.snapshot, yes=args.yes, dry_run=args.dry_run,
                                 force=args.force, diff=args.diff, confirm=confirm,
                                 critical=deferred, keep=args.keep, start=not args.no_start,
                                 start_only=args.start, again=args.again)
        finally:
            deferred.restore()

    return run(config, "rollback", "Stop the site, roll its datasets back to a snapshot of "
               "this part, start it again.", arguments, work, argv)


def cleanup(config, argv=None):
    from collective.recipe.zfssnap import cleanup as cleanupmod

    def arguments(parser):
        parser.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                            help="names or labels of this part's snapshots to destroy "
                            "(default: all but the newest 'retain' ones)")
        parser.add_argument("--older-than", type=parse_age, metavar="AGE",
                            help="only snapshots older than AGE (e.g. 12h, 7d, 2w)")
        parser.add_argument("-y", "--yes", action="store_true",
                            help="do not ask for confirmation (it asks before destroying more "
                            "than one snapshot set or kept state)")

    def work(site, args):
        if args.snapshots and args.older_than is not None:
            raise Stop("give snapshot names or --older-than, not both", BAD_INPUT)
        confirm = terminal_confirmation(site.out, "Type yes to destroy them: ",
                                        "to destroy them (nothing was destroyed)")
        cleanupmod.cleanup(site, args.snapshots, args.older_than, dry_run=args.dry_run,
                           yes=args.yes, confirm=confirm)

    return run(config, "cleanup", "Destroy this part's snapshots (never another tool's).",
               arguments, work, argv)
