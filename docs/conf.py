"""Sphinx configuration of the collective.recipe.zfssnap documentation.

The version is read from setup.py (the package is not imported: building the documentation
needs neither zc.buildout nor the package installed).
"""
import os
import re


HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, os.pardir, "setup.py"), encoding="utf-8") as f:
    release = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
version = release

project = "collective.recipe.zfssnap"
author = "The collective.recipe.zfssnap developers"
copyright = "2026, " + author
language = "en"

root_doc = "index"
# bench/bench.rst is written by make bench and included in benchmark.rst.
exclude_patterns = ["_build", "bench"]

html_theme = "furo"
html_title = "%s %s" % (project, release)
