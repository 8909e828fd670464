#!/usr/bin/python
# Copyright: the collective.recipe.zfssnap developers
# GNU General Public License v2.0 only (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: cleanup
short_description: Destroy a buildout's release snapshots once the release is good
description:
  - Runs the C(bin/cleanup) that the C([zfssnap]) part of collective.recipe.zfssnap generated
    in O(buildout), with C(--yes) and C(--json). It destroys only the part's own snapshots
    (never another tool's) and the states kept by C(bin/rollback --keep).
  - In check mode it runs C(bin/cleanup --dry-run), which lists the commands and changes
    nothing.
options:
  snapshots:
    description:
      - Names or labels of the part's snapshots (or kept states) to destroy; those not there
        any more are left out, so that a playbook run again does not fail on them. Empty,
        all but the newest C(retain) ones (the part's option).
    type: list
    elements: str
    default: []
  older_than:
    description: Only snapshots older than this age (C(90m), C(12h), C(7d), C(2w)).
    type: str
extends_documentation_fragment:
  - collective.zfssnap.scripts
author:
  - collective.recipe.zfssnap developers
"""

EXAMPLES = r"""
- name: The release is good, destroy its snapshots
  collective.zfssnap.cleanup:
    buildout: /srv/plone
    snapshots: [pre-2.0]
"""

RETURN = r"""
destroyed:
  description: The snapshot sets destroyed (none in check mode).
  returned: success
  type: list
  elements: str
cleanup:
  description: The whole JSON document of C(bin/cleanup).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.collective.zfssnap.plugins.module_utils.scripts import (
    COMMON_OPTIONS, fail, run_script)


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_OPTIONS, snapshots=dict(type="list", elements="str",
                                                          default=[]),
                           older_than=dict(type="str")),
        supports_check_mode=True)
    p = module.params
    wanted = list(p["snapshots"])
    if wanted:
        # Named sets that are gone already (a playbook run again) are not an error here.
        rc, doc = run_script(module, "snapshot", ["--list"])
        if rc != 0:
            fail(module, "snapshot", rc, doc)
        here = {s.get("name") for s in doc.get("snapshots", [])} | {
            s.get("label") for s in doc.get("snapshots", []) if s.get("label")}
        here |= {k.get("name") for k in doc.get("kept", [])}
        wanted = [w for w in wanted if w.split("@", 1)[-1] in here]
        if not wanted:
            module.exit_json(changed=False, destroyed=[], cleanup={})
    args = ["--yes"] + (["--dry-run"] if module.check_mode else [])
    if p["older_than"]:
        args += ["--older-than", p["older_than"]]
    args += ["--"] + wanted
    rc, doc = run_script(module, "cleanup", args)
    if rc != 0:
        fail(module, "cleanup", rc, doc)
    destroyed = [] if module.check_mode else list(doc.get("destroyed", []))
    kept = [] if module.check_mode else list(doc.get("destroyed_kept", []))
    module.exit_json(changed=bool(destroyed or kept), destroyed=destroyed + kept, cleanup=doc)


if __name__ == "__main__":
    main()
