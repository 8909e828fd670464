#!/usr/bin/python
# Copyright: (c) 2026, the collective.recipe.zfssnap developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take a snapshot set of a buildout's datasets before a release
description:
  - Runs the C(bin/snapshot) that the C([zfssnap]) part of collective.recipe.zfssnap generated
    in O(buildout), one atomic ZFS snapshot of the buildout's dataset and of its Data.fs and
    blobstorage datasets.
  - With a O(label), a set with that label already there is reported, not taken again, so that
    a playbook run again after a failure on another host takes only the missing ones. A set
    with that label that is missing on one of the datasets is not counted, and the set is
    taken again (the script first destroys one that a run stopped between two pools left).
  - In check mode it runs C(bin/snapshot --dry-run), which refuses what the real snapshot
    refuses (datasets not mounted as when bin/buildout ran, a bad label) and changes nothing;
    the task reports as changed the set the real run would take.
options:
  label:
    description:
      - A label added to the snapshot's name; letters, digits and C(_ - . :).
      - Use the same label on every host of the site, then roll back to it by that label.
    type: str
  note:
    description: A note stored with the snapshot (one line), the script's C(--message).
    type: str
extends_documentation_fragment:
  - collective.zfssnap.scripts
notes:
  - The task fails with the script's own message and exit code (2 bad input, 3 refused; see
    the README of collective.recipe.zfssnap).
author:
  - collective.recipe.zfssnap developers (@collective)
"""

EXAMPLES = r"""
- name: Snapshot before the 2.0 release
  collective.zfssnap.snapshot:
    buildout: /srv/plone
    label: pre-2.0
    note: before the 2.0 release
"""

RETURN = r"""
snapshot:
  description: The name of the snapshot set (taken, found by its label, or, in check mode,
    that would be taken).
  returned: success
  type: str
  sample: zfssnap-20261202T101500Z-pre-2.0
datasets:
  description: The datasets of the set.
  returned: success
  type: list
  elements: str
  sample: [tank/plone, data/plone-filestorage]
warnings_from_script:
  description: What the script warned about (older snapshots kept, space held).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.collective.zfssnap.plugins.module_utils.scripts import (
    COMMON_OPTIONS, fail, run_script)


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_OPTIONS, label=dict(type="str"), note=dict(type="str")),
        supports_check_mode=True)
    label = module.params["label"]
    if label:
        rc, doc = run_script(module, "snapshot", ["--list"])
        if rc != 0:
            fail(module, "snapshot", rc, doc)
        # A set missing on a dataset is not the snapshot asked for: bin/snapshot takes it
        # again (and destroys first one that a run stopped between two pools left).
        found = [s for s in doc.get("snapshots", []) if s.get("label") == label
                 and not s.get("missing")]
        if len(found) > 1:
            module.fail_json(msg="the label %s is on %d snapshots here (%s): name one, or clean "
                             "up the others" % (label, len(found),
                                                ", ".join(s["name"] for s in found)))
        if found:
            module.exit_json(changed=False, snapshot=found[0]["name"],
                             datasets=found[0].get("datasets", []), warnings_from_script=[])
    args = ["--dry-run"] if module.check_mode else []
    if module.params["note"] is not None:
        args += ["--message", module.params["note"]]
    if label:
        args += ["--", label]
    rc, doc = run_script(module, "snapshot", args)
    if rc != 0:
        fail(module, "snapshot", rc, doc)
    # Taken, or in check mode to be taken: a change either way.
    module.exit_json(changed=True, snapshot=doc.get("snapshot"),
                     datasets=doc.get("datasets", []),
                     warnings_from_script=doc.get("warnings", []))


if __name__ == "__main__":
    main()
