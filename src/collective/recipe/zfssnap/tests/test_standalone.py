"""The configuration of a site without buildout (standalone.py), laid out as
cookiecutter-zope-instance lays it out, with a stand-in zfs that says which dataset is
mounted where (fast suite; the scripts on such a site run in the guest)."""
import os
import shutil
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

from collective.recipe.zfssnap import configfile
from collective.recipe.zfssnap import standalone

FAKE_ZFS = os.path.join(os.path.dirname(__file__), "fake_zfs.py")
# A Zope instance whose ZODB is RelStorage on PostgreSQL (its section on line 3).
RELSTORAGE = """\
<zodb_db main>
    %import relstorage
    <relstorage>
        <postgresql>
            dsn dbname='zodb'
        </postgresql>
    </relstorage>
</zodb_db>
"""


class StandaloneTest(unittest.TestCase):

    def setUp(self):
        self.site = os.path.realpath(tempfile.mkdtemp(prefix="zfssnap-standalone-"))
        self.addCleanup(shutil.rmtree, self.site, ignore_errors=True)
        var = os.path.join(self.site, "instance", "var")
        for d in ("instance/etc", "instance/var/filestorage", "instance/var/blobs"):
            os.makedirs(os.path.join(self.site, d))
        env = mock.patch.dict(os.environ, FAKE_ZFS_DATASETS=";".join([
            "tank/site=" + self.site, "tank/site-filestorage=%s/filestorage" % var,
            "tank/site-blobs=%s/blobs" % var]))
        env.start()
        self.addCleanup(env.stop)
        self.zope_conf("""\
            %define CLIENTHOME {var}
            <zodb_db main>
                <filestorage>
                    path $CLIENTHOME/filestorage/Data.fs
                    blob-dir $CLIENTHOME/blobs
                </filestorage>
            </zodb_db>
            """.format(var=var))
        self.zfs = "%s %s" % (sys.executable, FAKE_ZFS)

    def write(self, name, text):
        with open(os.path.join(self.site, name), "w") as f:
            f.write(textwrap.dedent(text))

    def zope_conf(self, text):
        self.write("instance/etc/zope.conf", text)

    def cfg(self, *lines):
        self.write("zfssnap.cfg", "[zfssnap]\nzfs = %s\n%s" % (self.zfs, "".join(
            line + "\n" for line in lines)))

    def test_a_cookiecutter_site_with_its_configuration_file(self):
        # In the guest the mount table shows the datasets mounted inside the site; this
        # machine's has none, so they are named here.
        self.cfg("programs = instance", "extra-datasets =",
                 "    %s/instance/var/filestorage" % self.site,
                 "    %s/instance/var/blobs" % self.site)
        self.write("supervisord.conf", """\
            [unix_http_server]
            file = %(here)s/var/supervisor.sock
            [supervisord]
            pidfile = %(here)s/var/supervisord.pid
            [supervisorctl]
            serverurl = unix://%(here)s/var/supervisor.sock
            [program:instance]
            command = .venv/bin/runwsgi instance/etc/zope.ini
            """)
        config = standalone.load(self.site, bin_directory="/usr/local/bin")
        self.assertEqual(config["datasets"], ["tank/site", "tank/site-filestorage",
                                              "tank/site-blobs"])
        self.assertEqual(config["filestorages"], [
            self.site + "/instance/var/filestorage/Data.fs"])
        self.assertEqual(config["external_databases"], [])
        self.assertEqual(config["programs"], ["instance"])
        self.assertEqual(config["supervisor_conf"], self.site + "/supervisord.conf")
        self.assertEqual(config["supervisord_files"], [
            self.site + "/var/supervisord.pid", self.site + "/supervisord.log",
            self.site + "/var/supervisor.sock"])
        self.assertEqual(config["scripts"], {"snapshot": "zfssnap snapshot",
                                             "rollback": "zfssnap rollback",
                                             "cleanup": "zfssnap cleanup"})
        self.assertEqual(config["part"], "zfssnap")

    def test_supervisord_of_the_virtualenv_not_of_a_buildout_bin(self):
        # A buildout's bin/supervisord (collective.recipe.supervisor's) has its -c built in:
        # given another, it refuses to start, and a rollback would leave the site down.
        self.cfg()
        self.write("supervisord.conf", "[supervisord]\n")
        for directory in ("bin", ".venv/bin"):
            os.makedirs(os.path.join(self.site, directory))
            path = os.path.join(self.site, directory, "supervisord")
            self.write(path, "#!/bin/sh\n")
            os.chmod(path, 0o755)
        config = standalone.load(self.site)
        self.assertEqual(config["supervisord"], [
            self.site + "/.venv/bin/supervisord", "-c", self.site + "/supervisord.conf"])
        os.remove(os.path.join(self.site, ".venv/bin/supervisord"))
        config = standalone.load(self.site)
        self.assertNotEqual((config["supervisord"] or ["none"])[0],
                            self.site + "/bin/supervisord")
        self.assertTrue(config["standalone"])

    def test_a_zeo_server_on_another_machine(self):
        self.cfg()
        self.zope_conf("""\
            <zodb_db main>
                <zeoclient>
                    server db.example.org:8100
                </zeoclient>
            </zodb_db>
            <zodb_db catalog>
                <zeoclient>
                    server 127.0.0.1:8100 localhost:8101 8102 /run/zeo.sock [::1]:8103
                </zeoclient>
            </zodb_db>
            """)
        config = standalone.load(self.site)
        self.assertEqual(config["remote_zeo_servers"], [{
            "server": "db.example.org:8100", "where": "the <zeoclient> section of %s/instance/"
            "etc/zope.conf, line 2" % self.site}])
        self.assertEqual(config["external_databases"], [])  # warned about, not refused

    def test_relstorage_in_zope_conf_is_named_with_its_file_and_line(self):
        self.cfg()
        self.zope_conf(RELSTORAGE)
        config = standalone.load(self.site)
        self.assertEqual(config["external_databases"], [{
            "kind": "PostgreSQL", "where": "the <relstorage> section of %s/instance/etc/"
            "zope.conf, line 3" % self.site}])
        self.assertEqual(config["filestorages"], [])

    def test_a_wrong_option_names_the_file_the_line_and_the_option(self):
        self.cfg("programs = instance", "extra-dataset = tank/other")
        with self.assertRaises(configfile.ConfigError) as caught:
            standalone.load(self.site)
        self.assertEqual(caught.exception.message, "%s/zfssnap.cfg, line 4: extra-dataset: "
                         "unknown option; did you mean extra-datasets? (the options are "
                         "listed in the README)" % self.site)
        self.cfg("retain = many")
        with self.assertRaises(configfile.ConfigError) as caught:
            standalone.load(self.site)
        self.assertEqual(caught.exception.message, "%s/zfssnap.cfg, line 3: retain: must be "
                         "a whole number of at least 0, not 'many'" % self.site)

    def test_no_configuration_file_is_zope_conf_alone(self):
        # The zfs option's default, zfs on PATH: this machine has none, so no dataset (the
        # scripts refuse to run then, saying that the directory is not on ZFS).
        with mock.patch.dict(os.environ, PATH=self.site):
            config = standalone.load(self.site)
        self.assertEqual((config["datasets"], config["filestorages"]), (
            [], [self.site + "/instance/var/filestorage/Data.fs"]))
        os.remove(os.path.join(self.site, "instance", "etc", "zope.conf"))
        with self.assertRaises(configfile.ConfigError) as caught:
            standalone.load(self.site)
        self.assertEqual(caught.exception.message, "%s has no zfssnap.cfg, no [tool.zfssnap] "
                         "in pyproject.toml and no instance/etc/zope.conf: run zfssnap in the "
                         "site directory, or write its zfssnap.cfg" % self.site)

    def test_a_zope_conf_that_cannot_be_read(self):
        self.cfg()
        self.zope_conf("<zodb_db main>\n")
        with self.assertRaises(configfile.ConfigError) as caught:
            standalone.load(self.site)
        self.assertEqual(caught.exception.message, "cannot read the storages of %s/instance/"
                         "etc/zope.conf, line 1: <zodb_db> is never closed" % self.site)
