# Copyright: the collective.recipe.zfssnap developers
# GNU General Public License v2.0 only (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

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
attributes:
  check_mode:
    description: Check mode runs the script with C(--dry-run), which changes nothing.
    support: full
  diff_mode:
    description: No diff.
    support: none
"""
