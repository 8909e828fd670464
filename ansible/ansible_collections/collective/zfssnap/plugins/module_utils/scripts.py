# Copyright: (c) 2026, the collective.recipe.zfssnap developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running a part's scripts on the host: the path from the buildout and the part, an argv list
(never a shell), and the one JSON document the script prints with --json."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os


COMMON_OPTIONS = dict(
    buildout=dict(type="path", required=True),
    part=dict(type="str", default="zfssnap"),
    scripts=dict(type="dict", default={}),
)
SCRIPT_NAMES = ("snapshot", "rollback", "cleanup")
# The layouts of the scripts' --json document this collection reads (their "format" key).
KNOWN_FORMATS = (1,)


def script_path(buildout, part, name, scripts=None):
    """The part's script NAME: where O(scripts) says (a part that sets rollback-script and the
    like), else bin/NAME for a part named zfssnap and bin/PART-NAME for any other (as the
    recipe names them)."""
    given = (scripts or {}).get(name)
    if given:  # a name in bin/, as the part's option has it, or a path
        return os.path.join(buildout, given if "/" in given else os.path.join("bin", given))
    return os.path.join(buildout, "bin", name if part == "zfssnap" else "%s-%s" % (part, name))


def check_scripts_option(module):
    unknown = sorted(set(module.params["scripts"] or {}) - set(SCRIPT_NAMES))
    if unknown:
        module.fail_json(msg="scripts has %s, which is not one of the part's scripts (%s)"
                         % (", ".join(unknown), ", ".join(SCRIPT_NAMES)), phase="none")


def run_script(module, name, args):
    """(exit code, the script's JSON document) of `bin/NAME --json ARGS`; fails the task when
    the script is missing or prints no JSON (a script of another version, or a crash)."""
    check_scripts_option(module)
    path = script_path(module.params["buildout"], module.params["part"], name,
                       module.params["scripts"])
    if not os.path.isfile(path):
        module.fail_json(msg="%s does not exist: the buildout has no [%s] part of "
                         "collective.recipe.zfssnap, or bin/buildout has not run (a part "
                         "that names its scripts: set scripts)"
                         % (path, module.params["part"]), phase="none")
    rc, out, err = module.run_command([path, "--json"] + list(args),
                                      cwd=module.params["buildout"])
    if rc < 0:  # a host that died half-way: its record says where it stopped
        module.fail_json(msg="bin/%s was killed by signal %d before it finished: run it (or "
                         "the playbook) again, it finishes what the host's record says"
                         % (name, -rc), rc=rc, phase="unknown")
    try:
        doc = json.loads(out)
    except ValueError:
        module.fail_json(msg="%s printed no JSON document (exit %d): %s" % (
            path, rc, (err or out).strip()[-2000:]), rc=rc, phase="unknown")
    if not isinstance(doc, dict):
        module.fail_json(msg="%s printed JSON that is not an object (exit %d)" % (path, rc),
                         rc=rc, phase="unknown")
    if doc.get("format") not in KNOWN_FORMATS:
        # Before anything is read from it: a key may mean something else in another format.
        module.fail_json(msg="%s answers in JSON format %s, which this collection does not "
                         "read (it reads %s): install the release of collective.zfssnap that "
                         "goes with the host's collective.recipe.zfssnap" % (
                             path, doc.get("format", "(none)"),
                             ", ".join(str(f) for f in KNOWN_FORMATS)),
                         rc=rc, phase="unknown")
    for warning in doc.get("warnings") or []:
        module.warn("bin/%s: %s" % (name, warning))
    doc["stderr"] = err
    return rc, doc


def fail(module, name, rc, doc):
    """The task fails with the script's own sentence, its exit code and what it reported."""
    result = dict(doc)
    result.pop("ok", None)
    result["warnings_from_script"] = result.pop("warnings", [])  # shown by run_script
    module.fail_json(msg="bin/%s: %s" % (name, doc.get("error") or "exit %d" % rc), rc=rc,
                     **result)
