"""What the scripts tell the operator (text, or one JSON document) and write to their log."""
import json
import os
import re
import sys

from collective.recipe.zfssnap import state
from collective.recipe.zfssnap.site import current_user

# The version of the --json document's layout: the Ansible collection refuses a format it does
# not know. Raised when a key changes meaning or goes away, not when one is added.
JSON_FORMAT = 1

def quote(word):
    # For display only: nothing here is ever given to a shell.
    return word if re.match(r"^[\w@%+=:,./-]+$", word) else "'%s'" % word.replace("'", "'\\''")


class Output:
    """Messages for the operator (or one JSON document), and the log file's lines."""

    def __init__(self, script, json_mode=False, verbosity=1):
        self.script = script
        self.json = json_mode
        self.verbosity = verbosity
        self.data = {}
        self.warnings = []
        self.log_file = None
        self.user = current_user()
        self.host = os.uname().nodename

    def _print(self, text, level=1, stream=None):
        if self.verbosity < level:
            return
        try:
            print(text, file=stream or sys.stdout, flush=True)
        except OSError:
            pass  # the terminal went away: the work goes on, the log file keeps the record

    def say(self, text):
        if not self.json:
            self._print(text)

    def plan(self, text):
        """What the operator must see before confirming: shown even with -q; with --json it
        goes to stderr, so that stdout stays one JSON document."""
        self._print(text, level=0, stream=sys.stderr if self.json else None)

    def note(self, text):
        self.say("Note: " + text)

    def action(self, text):
        self.say("> " + text)

    def command(self, argv):
        self.say(" ".join(quote(a) for a in argv))
        self.data.setdefault("commands", []).append(list(argv))

    def trace(self, argv):
        if not self.json:
            self._print("$ " + " ".join(quote(a) for a in argv), level=2)

    def warn(self, text):
        self.warnings.append(text)
        if not self.json:
            self._print("WARNING: " + text, level=0, stream=sys.stderr)

    def error(self, text):
        if not self.json:
            self._print("%s: error: %s" % (self.script, text), level=0, stream=sys.stderr)

    def ask(self, question):
        """A literal 'yes' typed on the terminal; the prompt never goes to a JSON stdout."""
        stream = sys.stderr if self.json else sys.stdout
        try:
            stream.write(question)
            stream.flush()
            return sys.stdin.readline().strip() == "yes"
        except (OSError, EOFError):
            return False

    def open_log(self, path):
        self.log_file = state.open_log(path)

    def log(self, text):
        if self.log_file is None:
            return
        try:
            self.log_file.write("%s %s@%s %s[%d]: %s\n" % (state.utc_stamp(), self.user,
                                                           self.host, self.script, os.getpid(),
                                                           text))
            self.log_file.flush()
        except OSError as e:
            self.log_file = None  # a full disk must not stop a rollback half-way
            self.warn("cannot write the log file any more (%s): going on without it"
                      % e.strerror)

    def finish(self, code, error=None):
        if self.json:
            doc = {"format": JSON_FORMAT, "script": self.script, "ok": code == 0,
                   "exit_code": code, "error": error, "warnings": self.warnings}
            doc.update(self.data)
            print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return code
