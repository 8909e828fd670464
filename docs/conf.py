"""Sphinx configuration of the collective.recipe.zfssnap documentation.

The version is read from setup.py (the package is not imported: building the documentation
needs neither zc.buildout nor the package installed).
"""
import os
import re

from sphinx import addnodes
from sphinx.errors import ExtensionError


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


# Each option and script gets an anchor and an index entry. Their descriptions stay in
# README.rst, which is also the package's index page and so takes plain reStructuredText only:
# the definition-list items of its options and scripts sections become object descriptions
# (confval, script) only as Sphinx includes them.

README = os.path.join(HERE, os.pardir, "README.rst")
# Section of README.rst -> object type its items become.
OBJECT_TYPES = {"options": "confval", "scripts": "script"}
OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")
# A script's name, or its name and the one flag that makes it another command (--list).
SCRIPT_NAME = re.compile(r"bin/[a-z][a-z0-9-]*( --[a-z][a-z-]*)?\Z")


def _lines(text):
    # As docutils hands an included text on, so that a section compares equal to its include.
    lines = [line.expandtabs(8).rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        del lines[0]
    while lines and not lines[-1]:
        del lines[-1]
    return lines


def _readme_section(section):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = ".. %s-start\n" % section, "\n.. %s-end\n" % section
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ExtensionError("README.rst: no single %r ... %r pair of markers"
                             % (start.strip(), end.strip()))
    return _lines(text[text.index(start) + len(start):text.index(end)])


def _split_items(section, lines):
    """Splits a section into its prose before the definition list, the list's items as
    (term, name(s), body lines), and its prose after the list."""
    before, items, after = [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        is_term = (line and not line[0].isspace() and (i == 0 or not lines[i - 1])
                   and i + 1 < len(lines) and lines[i + 1][:1].isspace())
        if not is_term:
            (after if items else before).append(line)
            i += 1
            continue
        if any(after):
            raise ExtensionError("README.rst, %s section: the definition list is interrupted "
                                 "before %r" % (section, line))
        i += 1
        body = []
        while i < len(lines) and (not lines[i] or lines[i][0].isspace()):
            body.append(lines[i])
            i += 1
        while not body[-1]:
            del body[-1]
        if section == "options":
            names = line.split(", ")
            pattern = OPTION_NAME
        else:
            names = [line.split(" [", 1)[0]]
            pattern = SCRIPT_NAME
        if not all(pattern.match(name) for name in names):
            raise ExtensionError("README.rst, %s section: %r is not what the documentation "
                                 "build makes targets of (see docs/conf.py)" % (section, line))
        items.append((line, names, body))
    if not items:
        raise ExtensionError("README.rst, %s section: no definition list found" % section)
    names = [name for item in items for name in item[1]]
    if len(set(names)) != len(names):
        raise ExtensionError("README.rst, %s section: a name is described twice" % section)
    return before, items, after


def _as_descriptions(section, lines):
    before, items, after = _split_items(section, lines)
    out = list(before)
    for term, names, body in items:
        # An options term that names several options gives one signature per option; a script's
        # signature keeps its arguments (the name is split off by _script_signature).
        signatures = names if section == "options" else [term]
        out.append(".. %s:: %s" % (OBJECT_TYPES[section], signatures[0]))
        out.extend("    " + signature for signature in signatures[1:])
        # Not in the table of contents: index.rst's toctree would list every option.
        out.extend(["    :no-contents-entry:", ""])
        out.extend(body)
        out.append("")
    out.extend(after)
    return "\n".join(out) + "\n"


def _on_include_read(app, relative_path, parent_docname, content):
    if os.path.realpath(os.path.join(app.srcdir, relative_path)) != os.path.realpath(README):
        return
    lines = _lines(content[0])
    for section in OBJECT_TYPES:
        if lines == _readme_section(section):
            content[0] = _as_descriptions(section, lines)


def _check_targets(app, env):
    # An include that no longer matches a section (other markers, :start-line:) would otherwise
    # leave the options or scripts without targets, and the build silent.
    objects = env.domains.standard_domain.objects
    missing = [name for section, objtype in OBJECT_TYPES.items()
               for _, names, _ in _split_items(section, _readme_section(section))[1]
               for name in names if (objtype, name) not in objects]
    if missing:
        raise ExtensionError("no target for %s: README.rst's options and scripts sections must "
                             "be included whole (see docs/conf.py)" % ", ".join(missing))


def _script_signature(env, signature, signode):
    signode += addnodes.desc_name(signature, signature)
    return signature.split(" [", 1)[0]


def setup(app):
    app.add_object_type("script", "script", indextemplate="pair: %s; script",
                        parse_node=_script_signature)
    app.connect("include-read", _on_include_read)
    app.connect("env-check-consistency", _check_targets)
