#!/usr/bin/python
# Copyright: (c) 2026, the collective.recipe.zfssnap developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

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
  - Nothing is destroyed unless the task names what to destroy, by O(snapshots) or
    O(older_than), or asks for every set with O(destroy_all).
  - In check mode it runs C(bin/cleanup --dry-run), which changes nothing, and reports as
    changed what the real run would destroy.
options:
  snapshots:
    description:
      - Names or labels of the part's snapshots (or kept states) to destroy; those not there
        any more are left out, so that a playbook run again does not fail on them.
    type: list
    elements: str
  older_than:
    description:
      - The part's snapshots and kept states older than this age (C(90m), C(12h), C(7d),
        C(2w)), but the newest C(retain) ones (the part's option).
    type: str
  destroy_all:
    description:
      - Destroy every snapshot set of the part but the newest C(retain) ones (the part's
        option, 0 by default), and every kept state. Without it, a task that names nothing
        fails and destroys nothing.
    type: bool
    default: false
extends_documentation_fragment:
  - collective.zfssnap.scripts
author:
  - collective.recipe.zfssnap developers (@collective)
"""

EXAMPLES = r"""
- name: The release is good, destroy its snapshots
  collective.zfssnap.cleanup:
    buildout: /srv/plone
    snapshots: [pre-2.0]

- name: Destroy what is older than two weeks
  collective.zfssnap.cleanup:
    buildout: /srv/plone
    older_than: 2w
"""

RETURN = r"""
destroyed:
  description: The snapshot sets and kept states destroyed (in check mode, those that would
    be).
  returned: success
  type: list
  elements: str
  sample: [zfssnap-20261202T101500Z-pre-2.0]
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
        argument_spec=dict(COMMON_OPTIONS, snapshots=dict(type="list", elements="str"),
                           older_than=dict(type="str"),
                           destroy_all=dict(type="bool", default=False)),
        mutually_exclusive=[["snapshots", "older_than"], ["snapshots", "destroy_all"],
                            ["older_than", "destroy_all"]],
        supports_check_mode=True)
    p = module.params
    wanted = list(p["snapshots"] or [])
    if not wanted and p["older_than"] is None and not p["destroy_all"]:
        # bin/cleanup --yes with nothing named destroys every set: never by default.
        module.fail_json(msg="nothing to destroy was named: give snapshots (the release's "
                         "label), older_than, or destroy_all=true to destroy every snapshot "
                         "set and kept state of the part; nothing was destroyed")
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
    if wanted:
        args += ["--"] + wanted
    rc, doc = run_script(module, "cleanup", args)
    if rc != 0:
        fail(module, "cleanup", rc, doc)
    # The dry run reports what it would destroy under the same keys.
    destroyed = list(doc.get("destroyed_kept", [])) + list(doc.get("destroyed", []))
    module.exit_json(changed=bool(destroyed), destroyed=destroyed, cleanup=doc)


if __name__ == "__main__":
    main()
