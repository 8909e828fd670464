#!/usr/bin/python
# Copyright: (c) 2026, the collective.recipe.zfssnap developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollback
short_description: Roll a buildout's datasets back to a snapshot, in phases across hosts
description:
  - Runs the C(bin/rollback) that the C([zfssnap]) part of collective.recipe.zfssnap generated
    in O(buildout), always with C(--yes) and C(--json).
  - O(phase=full) stops what runs on the datasets, rolls them back and starts it again.
    O(phase=stop) does the same without the start (C(--no-start)), leaving the record for
    O(phase=start) (C(--start)), which starts what ran before from it. A site split over
    several hosts (a ZEO server and its clients) needs the phases, every client stopped
    before the server's data is rolled back, and started only after.
  - Every phase, killed, is finished by running it again; an unfinished rollback recorded on
    the host is finished, never another one started.
  - A host whose last finished rollback went back to this very snapshot set is not rolled
    back again, which would lose everything written since; the task is ok and unchanged,
    and RV(finished_rollback) says when it was and what a second one would lose. Set
    O(force) to roll back again.
  - In check mode it runs C(bin/rollback --dry-run), the preflight, which changes nothing and
    fails where the rollback would refuse before it stops anything (no such snapshot, held or
    cloned newer snapshots, datasets not mounted as when bin/buildout ran, processes that
    neither supervisord nor the part's systemd units run with files on the datasets); the
    task reports as changed what the real run
    would roll back or start.
options:
  snapshot:
    description:
      - The snapshot set to roll back to, by name or label (the newest of the part when
        omitted). Ignored by O(phase=start), which starts what its record says.
    type: str
  phase:
    description:
      - C(full) rolls back and starts; C(stop) rolls back and starts nothing; C(start) starts
        what ran before a C(stop). C(start) with nothing recorded does nothing.
    type: str
    choices: [full, stop, start]
    default: full
  keep:
    description:
      - Keep the state rolled away from as datasets of their own (C(--keep)) instead of
        destroying it; unset, the part's C(keep-rolled-away) option decides.
    type: bool
  force:
    description:
      - Roll back even when the last finished rollback on the host went back to the same
        snapshot set (C(--again)), losing what was written since.
    type: bool
    default: false
  ignore_open_files:
    description: Roll back even when processes that neither supervisord nor the part's systemd
      units run have files on the datasets (C(--force)).
    type: bool
    default: false
extends_documentation_fragment:
  - collective.zfssnap.scripts
notes:
  - The task fails with the script's own message; RV(phase) then says how far the host got,
    and RV(rc) is the script's exit code (1 failed, 2 bad input, 3 refused with nothing
    changed, 4 incomplete, run it again).
author:
  - collective.recipe.zfssnap developers (@collective)
"""

EXAMPLES = r"""
- name: Can every host roll back to pre-2.0? (changes nothing)
  collective.zfssnap.rollback:
    buildout: /srv/plone
    snapshot: pre-2.0
  check_mode: true

- name: Stop the ZEO clients and roll them back, start nothing
  collective.zfssnap.rollback:
    buildout: /srv/plone
    snapshot: pre-2.0
    phase: stop

- name: Start the clients again, from the record
  collective.zfssnap.rollback:
    buildout: /srv/plone
    phase: start
"""

RETURN = r"""
phase:
  description:
    - How far the host got, from the script's C(phase) (C(none), C(planned), C(aborted),
      C(stopped), C(rolled-back), C(started), C(done)).
  returned: always
  type: str
  sample: rolled-back
recorded_stage:
  description: The stage of an unfinished rollback the run found recorded, if any.
  returned: success
  type: str
to_start:
  description: What O(phase=start) will start (after O(phase=stop)).
  returned: when phase is rolled-back
  type: list
  elements: str
finished_rollback:
  description:
    - The host's last finished rollback, when it went back to the same snapshot set, with
      its C(target), when it C(finished), the ZODB C(transactions) and the bytes C(written)
      since (what another rollback would lose).
  returned: when the host was rolled back to that set already
  type: dict
rc:
  description: The script's exit code.
  returned: failure
  type: int
  sample: 3
rollback:
  description: The whole JSON document of C(bin/rollback) (plan, datasets, ZODB view, warnings).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.collective.zfssnap.plugins.module_utils.scripts import (
    COMMON_OPTIONS, fail, run_script)


def main():
    module = AnsibleModule(
        argument_spec=dict(COMMON_OPTIONS, snapshot=dict(type="str"),
                           phase=dict(type="str", choices=["full", "stop", "start"],
                                      default="full"),
                           keep=dict(type="bool"), force=dict(type="bool", default=False),
                           ignore_open_files=dict(type="bool", default=False)),
        supports_check_mode=True)
    p = module.params
    args = ["--yes"]
    if module.check_mode:
        args.append("--dry-run")
    if p["phase"] == "stop":
        args.append("--no-start")
    elif p["phase"] == "start":
        args.append("--start")
    if p["keep"] is not None:
        args.append("--keep" if p["keep"] else "--no-keep")
    if p["ignore_open_files"]:
        args.append("--force")
    if p["force"] and p["phase"] != "start":
        args.append("--again")
    if p["snapshot"] and p["phase"] != "start":
        args += ["--", p["snapshot"]]
    rc, doc = run_script(module, "rollback", args)
    finished = doc.get("finished_rollback")
    if finished and not p["force"] and rc in (0, 3) and doc.get("phase") in ("none", "planned"):
        # Rolled back to this set already: a second rollback is not a rerun but a new outage
        # that loses what was written since. The script refused it (or, in check mode,
        # planned it): nothing is changed.
        module.exit_json(changed=False, phase="done", recorded_stage=None, to_start=[],
                         finished_rollback=finished, rollback=doc,
                         msg="rolled back to %s already (%s); set force to roll back again, "
                         "losing what was written since" % (finished.get("target"),
                                                            finished.get("finished")))
    if rc != 0:
        fail(module, "rollback", rc, doc)
    phase, recorded = doc.get("phase"), doc.get("recorded_stage")
    if p["phase"] == "start":
        changed = recorded is not None  # nothing recorded: nothing (would be) started
    elif p["phase"] == "stop" and recorded == "rolled back":
        changed = False  # rolled back already: nothing (would be) done
    elif module.check_mode:
        changed = phase == "planned"  # the preflight planned a rollback
    else:
        changed = phase not in ("none", "planned")
    module.exit_json(changed=changed, phase=phase, recorded_stage=recorded,
                     to_start=doc.get("to_start", []), rollback=doc)


if __name__ == "__main__":
    main()
