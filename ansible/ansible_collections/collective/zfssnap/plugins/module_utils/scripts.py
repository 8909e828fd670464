# Copyright: the collective.recipe.zfssnap developers
# GNU General Public License v2.0 only (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""Running a part's scripts on the host: the path from the buildout and the part, an argv list
(never a shell), and the one JSON document the script prints with --json."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os


COMMON_OPTIONS = dict(
    buildout=dict(type="path", required=True),
    part=dict(type="str", default="zfssnap"),
)


def script_path(buildout, part, name):
    """bin/NAME for a part named zfssnap, bin/PART-NAME for any other (as the recipe names
    them)."""
    return os.path.join(buildout, "bin", name if part == "zfssnap" else "%s-%s" % (part, name))


def run_script(module, name, args):
    """(exit code, the script's JSON document) of `bin/NAME --json ARGS`; fails the task when
    the script is missing or prints no JSON (a script of another version, or a crash)."""
    path = script_path(module.params["buildout"], module.params["part"], name)
    if not os.path.isfile(path):
        module.fail_json(msg="%s does not exist: the buildout has no [%s] part of "
                         "collective.recipe.zfssnap, or bin/buildout has not run"
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
