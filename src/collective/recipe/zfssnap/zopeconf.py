"""The storages of a Zope instance's zope.conf or a ZEO server's zeo.conf, read as ZConfig reads
them, without ZConfig (the scripts import nothing of the site) and without a schema.

What is read: `%define` and `$name` / `${name}` / `$(ENV)` / `$$` substitution, `%include`
(relative to the including file), sections (`<type name>` ... `</type>`, `<type/>`), whole-line
comments; `%import` is noted and skipped. Types, names and defines are case-insensitive, as in
ZConfig. What is found: each storage section (filestorage, blobstorage, zeoclient, relstorage
and its adapter, pgjsonb) with its file and line, for the scripts to know where the data is and
whether a ZFS snapshot holds it.
"""
import os
import re


STORAGE_TYPES = ("filestorage", "blobstorage", "zeoclient", "relstorage", "pgjsonb")
ADAPTERS = ("postgresql", "mysql", "oracle", "sqlite3")
# RelStorage's adapters that keep the ZODB in a database server, not in files on a dataset
# (its sqlite3 adapter keeps files on disk, as a Data.fs is).
SERVER_DATABASES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "oracle": "Oracle"}
TRUE = ("true", "yes", "on", "1")
SECTION = re.compile(r"^<(/?)([^\s()<>/]+)(?:\s+([^\s()<>/]+))?\s*(/?)>$")
NAME = r"[A-Za-z_][A-Za-z0-9_]*"
REFERENCE = re.compile(r"\$(?:\$|\{(%s)\}|\(([^)]*)\)|(%s))" % (NAME, NAME))
MAX_INCLUDES = 20


class ConfError(Exception):
    """A file that cannot be read as ZConfig: `message` names the file and the line."""

    def __init__(self, path, line, what):
        self.message = "%s, line %s: %s" % (path, line, what) if line else "%s: %s" % (path, what)
        super().__init__(self.message)


class Storage:
    """One storage section: its `kind` (the section type), its keys (lowercased) and where
    it is (`path`, `line`); `inner`, the storage a blobstorage wraps; `adapter`, a
    relstorage's database section type."""

    def __init__(self, kind, path, line):
        self.kind = kind
        self.path = path
        self.line = line
        self.keys = {}
        self.inner = None
        self.adapter = None

    @property
    def where(self):
        return "the <%s> section of %s, line %d" % (self.kind, self.path, self.line)

    @property
    def database_server(self):
        """'PostgreSQL' ... when the data is in a database server, not in files; else None."""
        if self.kind == "pgjsonb":
            return "PostgreSQL"  # zodb-pgjsonb: its blobs too are in PostgreSQL (or S3)
        if self.kind == "relstorage":
            return SERVER_DATABASES.get(self.adapter)
        return self.inner.database_server if self.inner else None

    @property
    def shared_blobs(self):
        return self.keys.get("shared-blob-dir", "").lower() in TRUE

    @property
    def data_files(self):
        """The files and directories on this machine that hold data: a Data.fs, a blob
        directory (a ZEO client's or a RelStorage's only when shared: else it is a cache),
        a sqlite3 RelStorage's directory."""
        keys = ["path", "data-dir"]
        if self.kind in ("filestorage", "blobstorage") or self.shared_blobs:
            keys.append("blob-dir")
        found = [self.keys[k] for k in keys if self.keys.get(k)]
        return found + (self.inner.data_files if self.inner else [])


def read(path, environ=None):
    """The storages of the file at `path` ([Storage], in the file's order; a blobstorage's
    inner storage is not listed again)."""
    reader = _Reader(os.environ if environ is None else environ)
    reader.read(os.path.abspath(path), depth=0)
    if reader.stack:
        kind, line, where = reader.stack[-1][:3]
        raise ConfError(where, line, "<%s> is never closed" % kind)
    return reader.storages


class _Reader:

    def __init__(self, environ):
        self.environ = environ
        self.defines = {}
        self.stack = []  # (type, line, path, Storage or None)
        self.storages = []

    def read(self, path, depth):
        if depth > MAX_INCLUDES:
            raise ConfError(path, None, "more than %d nested %%include" % MAX_INCLUDES)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ConfError(path, None, "cannot be read (%s)" % (e.strerror or e))
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("%"):
                self.directive(path, number, line, depth)
            elif line.startswith("<"):
                self.section(path, number, line)
            else:
                key, value = (line.split(None, 1) + [""])[:2]
                self.key(path, number, key.lower(), self.substitute(path, number,
                                                                    value.strip()))

    def substitute(self, path, number, text):
        def replace(match):
            if match.group(0) == "$$":
                return "$"
            if match.group(2) is not None:
                # As ZConfig: unset is an error (empty, a path would move to the root).
                if match.group(2) not in self.environ:
                    raise ConfError(path, number, "$(%s) is not set in the environment"
                                    % match.group(2))
                return self.environ[match.group(2)]
            name = (match.group(1) or match.group(3)).lower()
            if name not in self.defines:
                raise ConfError(path, number, "$%s is not defined" % name)
            return self.defines[name]
        rest = REFERENCE.sub(replace, text)
        if "$" in REFERENCE.sub("", text):
            raise ConfError(path, number, "a $ that names nothing (write $$ for a $)")
        return rest

    def directive(self, path, number, line, depth):
        name, arg = (line[1:].split(None, 1) + [""])[:2]
        name, arg = name.lower(), arg.strip()
        if name == "define":
            define, value = (arg.split(None, 1) + [""])[:2]
            if not re.match("^%s$" % NAME, define):
                raise ConfError(path, number, "%%define needs a name, not %r" % define)
            self.defines[define.lower()] = self.substitute(path, number, value.strip())
        elif name == "include":
            target = self.substitute(path, number, arg)
            self.read(os.path.join(os.path.dirname(path), target), depth + 1)
        elif name != "import":
            raise ConfError(path, number, "unknown directive %%%s" % name)

    def section(self, path, number, line):
        m = SECTION.match(line)
        if not m:
            raise ConfError(path, number, "%r is not a section start or end" % line)
        closing, kind, _, empty = m.group(1), m.group(2).lower(), m.group(3), m.group(4)
        if closing:
            if not self.stack or self.stack[-1][0] != kind:
                raise ConfError(path, number, "</%s> closes no <%s>" % (kind, kind))
            self.stack.pop()
            return
        storage = None
        if kind in STORAGE_TYPES:
            storage = Storage(kind, path, number)
            outer = self.enclosing()
            if outer is not None and outer.kind == "blobstorage" and outer.inner is None:
                outer.inner = storage
            else:
                self.storages.append(storage)
        elif kind in ADAPTERS:
            outer = self.enclosing()
            if outer is not None and outer.kind == "relstorage":
                outer.adapter = kind
                storage = outer  # its keys (data-dir of sqlite3) are the relstorage's
        if not empty:
            self.stack.append((kind, number, path, storage))

    def enclosing(self):
        return self.stack[-1][3] if self.stack else None

    def key(self, path, number, key, value):
        storage = self.enclosing()
        if storage is not None:
            # cookiecutter-zope-instance writes data_dir for sqlite3's data-dir.
            storage.keys.setdefault(key.replace("_", "-"), value)
