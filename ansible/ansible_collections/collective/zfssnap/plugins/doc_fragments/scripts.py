# Copyright: (c) 2026, the collective.recipe.zfssnap developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # What every module has: where the part's scripts are, and check mode as --dry-run.
    DOCUMENTATION = r"""
options:
  buildout:
    description: The buildout directory, whose C(bin/) has the part's scripts.
    type: path
    required: true
  part:
    description:
      - The name of the C([zfssnap]) part. A part named C(zfssnap) has C(bin/snapshot),
        C(bin/rollback) and C(bin/cleanup); a part with another name prefixes them with it
        (C([site]) has C(bin/site-rollback)).
    type: str
    default: zfssnap
  scripts:
    description:
      - Where the part's scripts are, for a part that names them itself (its
        C(snapshot-script), C(rollback-script) and C(cleanup-script) options), as a mapping
        of C(snapshot), C(rollback) or C(cleanup) to the option's value, a name in the
        buildout's C(bin/) (or a path, relative to O(buildout) or absolute). The scripts not
        given are found from O(part).
    type: dict
    default: {}
attributes:
  check_mode:
    description: Check mode runs the script with C(--dry-run), which changes nothing.
    support: full
  diff_mode:
    description: No diff.
    support: none
"""
