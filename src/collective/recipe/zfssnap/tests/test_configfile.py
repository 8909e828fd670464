"""A site's own configuration file (configfile.py): zfssnap.cfg or [tool.zfssnap] in
pyproject.toml, read into the part's options with the line of each (fast suite)."""
import importlib.util
import os
import shutil
import tempfile
import textwrap
import unittest
from unittest import mock

from collective.recipe.zfssnap import configfile

# Python 3.10 without tomli: the sentence is tested, not the reading.
TOML = any(importlib.util.find_spec(m) for m in ("tomllib", "tomli"))
needs_toml = unittest.skipUnless(TOML, "no tomllib (Python 3.10) and no tomli")


class ConfigFileTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-configfile-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def error(self, name, text):
        with self.assertRaises(configfile.ConfigError) as caught:
            configfile.read(self.write(name, text))
        return caught.exception.message

    def test_cfg_as_buildout_reads_an_ini_file(self):
        path = self.write("zfssnap.cfg", """\
            # the site's release safety net
            [other]
            dataset = ignored

            [zfssnap]
            dataset = tank/site
            extra-datasets =
                tank/site-filestorage
                # the blobs
                tank/site-blobstorage
            Retain: 2
            hook-timeout=
            """)
        config = configfile.read(path)
        self.assertEqual(config.options, {
            "dataset": "tank/site", "extra-datasets":
            "\ntank/site-filestorage\ntank/site-blobstorage", "retain": "2",
            "hook-timeout": ""})
        self.assertEqual(config.lines, {"dataset": 6, "extra-datasets": 7, "retain": 11,
                                        "hook-timeout": 12})
        self.assertEqual(config.where("retain"), path + ", line 11")
        self.assertEqual(configfile.find(self.tmp), path)

    def test_cfg_errors_name_the_file_and_the_line(self):
        for text, what in (
                ("dataset = x\n", "line 1: an option before any section: put the options in "
                 "a [zfssnap] section"),
                ("[zfssnap]\ndataset = a\ndataset = b\n", "line 3: dataset is set twice "
                 "(first on line 2)"),
                ("[zfssnap]\njust words\n", "line 2: 'just words' is not 'option = value'"),
                ("[site]\ndataset = a\n", "has no [zfssnap] section")):
            message = self.error("zfssnap.cfg", text)
            self.assertTrue(message.startswith(os.path.join(self.tmp, "zfssnap.cfg")), message)
            self.assertTrue(message.endswith(what), message)

    @needs_toml
    def test_pyproject_table(self):
        path = self.write("pyproject.toml", """\
            [project]
            name = "site"

            [tool.zfssnap]
            dataset = "tank/site"
            extra-datasets = ["tank/site-filestorage", "tank/site-blobstorage"]
            retain = 2
            keep-rolled-away = true

            [tool.other]
            dataset = "no"
            """)
        self.assertEqual(configfile.find(self.tmp), path)
        config = configfile.read(path)
        self.assertEqual(config.options, {
            "dataset": "tank/site", "extra-datasets":
            "tank/site-filestorage\ntank/site-blobstorage", "retain": "2",
            "keep-rolled-away": "true"})
        self.assertEqual(config.lines, {"dataset": 5, "extra-datasets": 6, "retain": 7,
                                        "keep-rolled-away": 8})

    @needs_toml
    def test_pyproject_errors(self):
        self.assertIn("cannot be read as TOML", self.error("pyproject.toml", "[tool.zfssnap\n"))
        message = self.error("pyproject.toml", "[tool.zfssnap]\nhooks = {a = 1}\n")
        self.assertTrue(message.endswith("pyproject.toml, line 2: hooks must be a string, a "
                                         "number, true or false, or a list of strings"),
                        message)
        self.assertIn("has no [tool.zfssnap] table",
                      self.error("pyproject.toml", "[tool]\nzfssnap = 1\n"))

    @needs_toml
    def test_pyproject_table_in_other_toml_forms(self):
        # Dotted keys and an inline table are the same table to TOML: found, read, and an
        # error names the file (no header line to name).
        for text in ('[tool]\nzfssnap.retain = 2\nzfssnap.programs = ["instance"]\n',
                     'tool.zfssnap = {retain = 2, programs = ["instance"]}\n'):
            path = self.write("pyproject.toml", text)
            self.assertEqual(configfile.find(self.tmp), path)
            self.assertEqual(configfile.read(path).options, {"retain": "2",
                                                             "programs": "instance"})
        path = self.write("pyproject.toml", 'tool.zfssnap = {hooks = {a = 1}}\n')
        self.assertEqual(self.error("pyproject.toml", 'tool.zfssnap = {hooks = {a = 1}}\n'),
                         "%s: hooks must be a string, a number, true or false, or a list of "
                         "strings" % path)

    def test_a_pyproject_without_the_table_is_not_the_configuration(self):
        self.write("pyproject.toml", "[project]\nname = 'site'\n")
        self.assertIsNone(configfile.find(self.tmp))
        cfg = self.write("zfssnap.cfg", "[zfssnap]\n")
        self.assertEqual(configfile.find(self.tmp), cfg)  # the cfg first

    def test_python_310_without_tomli_is_one_sentence(self):
        path = self.write("pyproject.toml", "[tool.zfssnap]\n")
        real_import = __import__

        def no_toml(name, *args, **kw):
            if name in ("tomllib", "tomli"):
                raise ImportError(name)
            return real_import(name, *args, **kw)

        with mock.patch("builtins.__import__", no_toml):
            with self.assertRaises(configfile.ConfigError) as caught:
                configfile.read(path)
        self.assertEqual(caught.exception.message, "%s: reading pyproject.toml needs Python "
                         "3.11 or the tomli package: install tomli, or put the options in %s"
                         % (path, os.path.join(self.tmp, "zfssnap.cfg")))
