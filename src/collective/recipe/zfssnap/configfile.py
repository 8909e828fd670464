"""The configuration of a site without buildout: the [zfssnap] part's options, with the same
names and meanings, in the site directory's `zfssnap.cfg` (a [zfssnap] section, as in a
buildout.cfg) or in a `[tool.zfssnap]` table of its `pyproject.toml`.

Read into {option: text} as buildout would hand them to the recipe (a TOML list becomes one
value per line, a boolean true or false), with the line of each option, so that an error names
the file, the line and the option.
"""
import os
import re


CFG = "zfssnap.cfg"
PYPROJECT = "pyproject.toml"
SECTION = "zfssnap"
# The header of the [tool.zfssnap] table, as pyproject.toml may space it.
TABLE_HEADER = re.compile(r"^\[\s*tool\s*\.\s*zfssnap\s*\]")
HEADER = re.compile(r"^\[\s*([^\]]+?)\s*\]\s*([#;].*)?$")
ASSIGNMENT = re.compile(r"^([A-Za-z0-9_.-]+)\s*[=:]\s?(.*)$")


class ConfigError(Exception):
    """A configuration that cannot be used: `message` is one sentence naming where."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class Config:
    """The options read from `path`: `options` {name: text}, `lines` {name: line number}."""

    def __init__(self, path, options, lines):
        self.path = path
        self.options = options
        self.lines = lines

    def where(self, option=None):
        line = self.lines.get(option)
        return "%s, line %d" % (self.path, line) if line else self.path


def find(directory):
    """The configuration file of the site in `directory`: zfssnap.cfg, else a pyproject.toml
    with a [tool.zfssnap] table; None when there is neither."""
    cfg = os.path.join(directory, CFG)
    if os.path.exists(cfg):
        return cfg
    pyproject = os.path.join(directory, PYPROJECT)
    if os.path.exists(pyproject) and has_table(pyproject):
        return pyproject
    return None


def read(path):
    return read_pyproject(path) if os.path.basename(path) == PYPROJECT else read_cfg(path)


def text_of(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("%s cannot be read: %s" % (path, getattr(e, "strerror", None) or e))


def read_cfg(path):
    """The [zfssnap] section of an INI file as buildout reads one: `name = value`, more lines
    of the value indented, comments (# or ;) on lines of their own."""
    options, lines = {}, {}
    section = current = None
    seen = False
    for number, raw in enumerate(text_of(path).splitlines(), 1):
        stripped = raw.strip()
        if raw[:1] in (" ", "\t") and current is not None:
            if stripped and not stripped.startswith(("#", ";")):
                options[current] += "\n" + stripped
            continue
        current = None
        if not stripped or stripped.startswith(("#", ";")):
            continue
        header = HEADER.match(stripped)
        if header:
            section = header.group(1)
            seen = seen or section == SECTION
            continue
        if section != SECTION:
            if section is None:
                raise ConfigError("%s, line %d: an option before any section: put the "
                                  "options in a [%s] section" % (path, number, SECTION))
            continue
        m = ASSIGNMENT.match(stripped)
        if not m:
            raise ConfigError("%s, line %d: %r is not 'option = value'" % (path, number,
                                                                           stripped))
        name = m.group(1).lower()
        if name in options:
            raise ConfigError("%s, line %d: %s is set twice (first on line %d)" % (
                path, number, name, lines[name]))
        options[name], lines[name] = m.group(2).strip(), number
        current = name
    if not seen:
        raise ConfigError("%s has no [%s] section" % (path, SECTION))
    return Config(path, options, lines)


def has_table(path):
    """Whether pyproject.toml has a tool.zfssnap table, however TOML writes it (a [tool.zfssnap]
    header, dotted keys, an inline table); by its header alone where TOML cannot be read here
    (Python 3.10 without tomli) or the file is not valid TOML."""
    text = text_of(path)
    try:
        tomllib = toml_reader(path)
        return isinstance(tomllib.loads(text).get("tool", {}).get(SECTION), dict)
    except (ConfigError, ValueError):  # TOMLDecodeError is a ValueError
        return any(TABLE_HEADER.match(line.strip())
                   for line in text.splitlines())


def toml_reader(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("%s: reading pyproject.toml needs Python 3.11 or the tomli "
                              "package: install tomli, or put the options in %s"
                              % (path, os.path.join(os.path.dirname(path), CFG)))
    return tomllib


def read_pyproject(path):
    """The [tool.zfssnap] table: strings as they are, lists one item per line, booleans true
    or false, numbers as written."""
    tomllib = toml_reader(path)
    text = text_of(path)
    try:
        table = tomllib.loads(text).get("tool", {}).get(SECTION)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s cannot be read as TOML: %s" % (path, e))
    if not isinstance(table, dict):
        raise ConfigError("%s has no [tool.%s] table" % (path, SECTION))
    lines = table_lines(text)
    options = {}
    for name, value in table.items():
        # A key written in another form (dotted, inline) has no line found.
        where = "%s, line %d" % (path, lines[name]) if name in lines else path
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "\n".join(value)
        elif not isinstance(value, str):
            raise ConfigError("%s: %s must be a string, a number, true or false, or a list of "
                              "strings" % (where, name))
        options[name.lower()] = value
    return Config(path, options, {k.lower(): v for k, v in lines.items()})


def table_lines(text):
    """{key: line} of the keys of the [tool.zfssnap] table (up to the next table)."""
    found, inside = {}, False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = bool(TABLE_HEADER.match(stripped))
            continue
        m = re.match(r"^[\"']?([A-Za-z0-9_-]+)[\"']?\s*=", stripped) if inside else None
        if m:
            found.setdefault(m.group(1), number)
    return found
