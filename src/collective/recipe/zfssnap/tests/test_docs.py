"""Doctests of the buildout side: a sample buildout with a [zfssnap] part (zc.buildout.testing)."""
import doctest
import os
import re
import unittest

import zc.buildout.testing
from zope.testing import renormalizing


HERE = os.path.dirname(__file__)
FAKE_ZFS = os.path.join(HERE, "fake_zfs.py")

checker = renormalizing.RENormalizing([
    zc.buildout.testing.normalize_path,
    (re.compile(r"#!\S+python\S*"), "#!PYTHON"),
    # The sample buildout looks for newer eggs in an empty test index: noise, not behaviour.
    # (zc.buildout 5 prints them without the "root: " prefix)
    (re.compile(r"(root: )?(Not found|Couldn't find index page|Scanning index).*\n"), ""),
    (re.compile(r".*UserWarning: Module (zc|collective) was already imported.*\n.*ws\.add.*\n"), ""),
    # zc.buildout 6.0.0 imports its vendored pkg_resources, which newer setuptools warn about.
    (re.compile(r".*UserWarning: pkg_resources is deprecated.*\n.*import pkg_resources.*\n"), ""),
])


def setUp(test):
    zc.buildout.testing.buildoutSetUp(test)
    zc.buildout.testing.install_develop("collective.recipe.zfssnap", test)
    # zc.buildout 5+ keeps eggs in eggs/v5; testing.install's default is eggs/.
    eggs = os.path.join(test.globs["sample_buildout"], "eggs", "v5")
    for project in ("zc.recipe.egg", "collective.recipe.supervisor", "supervisor"):
        zc.buildout.testing.install(project, eggs)
    test.globs["fake_zfs"] = FAKE_ZFS


def test_suite():
    return unittest.TestSuite([
        doctest.DocFileSuite(
            name, setUp=setUp, tearDown=zc.buildout.testing.buildoutTearDown,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, checker=checker)
        for name in sorted(os.listdir(HERE)) if name.endswith(".rst")
    ])
