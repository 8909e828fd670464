"""zope.conf and zeo.conf read for their storages (zopeconf.py), on files laid out as
cookiecutter-zope-instance, plone.recipe.zope2instance and plone.recipe.zeoserver write them
(fast suite)."""
import os
import shutil
import tempfile
import textwrap
import unittest

from collective.recipe.zfssnap import zopeconf


class ZopeConfTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zfssnap-zopeconf-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def read(self, text, **kw):
        return zopeconf.read(self.write("instance/etc/zope.conf", text), **kw)

    def test_a_filestorage_with_its_blobs_as_cookiecutter_writes_it(self):
        [storage] = self.read("""\
            # generated
            %define INSTANCEHOME /srv/site/instance
            instancehome $INSTANCEHOME
            %define CLIENTHOME /srv/site/instance/var
            clienthome $CLIENTHOME
            <zodb_db main>
                mount-point /
                <filestorage>
                    path ${clienthome}/filestorage/Data.fs
                    blob-dir $CLIENTHOME/blobs
                    pack-keep-old true
                </filestorage>
            </zodb_db>
            """)
        self.assertEqual((storage.kind, storage.line, storage.database_server), (
            "filestorage", 8, None))
        self.assertEqual(storage.data_files, ["/srv/site/instance/var/filestorage/Data.fs",
                                              "/srv/site/instance/var/blobs"])
        self.assertEqual(storage.where, "the <filestorage> section of %s/instance/etc/"
                         "zope.conf, line 8" % self.tmp)

    def test_a_blobstorage_around_a_filestorage_as_the_zope2instance_recipe_writes_it(self):
        storages = self.read("""\
            <zodb_db main>
                # Blob-enabled FileStorage database
                <blobstorage>
                  blob-dir /srv/site/var/blobstorage
                  <filestorage>
                    path /srv/site/var/filestorage/Data.fs
                  </filestorage>
                </blobstorage>
            </zodb_db>
            <zodb_db temporary>
                <temporarystorage>
                  name temporary storage
                </temporarystorage>
            </zodb_db>
            """)
        self.assertEqual([s.kind for s in storages], ["blobstorage"])
        self.assertEqual(storages[0].data_files, ["/srv/site/var/blobstorage",
                                                  "/srv/site/var/filestorage/Data.fs"])

    def test_relstorage_on_postgresql_sqlite_and_pgjsonb(self):
        storages = self.read("""\
            <zodb_db main>
                %import relstorage
                <RelStorage>
                    shared-blob-dir true
                    blob-dir /srv/site/instance/var/blobs
                    <postgresql>
                        dsn host='db' dbname='plone' user='plone' password='$$ecret'
                    </postgresql>
                </relstorage>
            </zodb_db>
            <zodb_db local>
                <relstorage>
                    blob-dir /srv/site/var/blobcache
                    <sqlite3>
                        driver sqlite3
                        data_dir /srv/site/var/sqlite3
                        <pragma>
                            journal_mode wal
                        </pragma>
                    </sqlite3>
                </relstorage>
            </zodb_db>
            <zodb_db json>
                %import zodb_pgjsonb
                <pgjsonb>
                    dsn dbname='zodb'
                </pgjsonb>
            </zodb_db>
            """)
        self.assertEqual([(s.kind, s.adapter, s.database_server) for s in storages], [
            ("relstorage", "postgresql", "PostgreSQL"), ("relstorage", "sqlite3", None),
            ("pgjsonb", None, "PostgreSQL")])
        self.assertEqual(storages[0].keys["dsn"],
                         "host='db' dbname='plone' user='plone' password='$ecret'")
        self.assertEqual(storages[0].data_files, ["/srv/site/instance/var/blobs"])
        # Not shared: the blob directory is a cache; the sqlite3 files are the data.
        self.assertEqual(storages[1].data_files, ["/srv/site/var/sqlite3"])
        self.assertEqual(storages[2].data_files, [])

    def test_a_zeo_client_holds_no_data_but_a_shared_blob_dir(self):
        storages = self.read("""\
            <zodb_db main>
                <zeoclient>
                    blob-dir /srv/site/var/blobcache
                    server localhost:8100
                </zeoclient>
            </zodb_db>
            <zodb_db other>
                <zeoclient>
                    shared-blob-dir on
                    blob-dir /srv/site/var/blobstorage
                    server localhost:8100
                </zeoclient>
            </zodb_db>
            """)
        self.assertEqual([s.data_files for s in storages], [[], ["/srv/site/var/blobstorage"]])

    def test_tabs_between_the_key_and_the_value(self):
        [storage] = self.read("%define\tVAR /srv/site/var\n<filestorage>\n"
                              "\tpath\t$VAR/Data.fs\n</filestorage>\n")
        self.assertEqual(storage.data_files, ["/srv/site/var/Data.fs"])

    def test_a_zeo_server_conf_as_the_zeoserver_recipe_writes_it(self):
        path = self.write("parts/zeoserver/etc/zeo.conf", """\
            %define INSTANCE /srv/site/parts/zeoserver

            <zeo>
              address 8100
              pid-filename /srv/site/var/zeoserver.pid
            </zeo>

            <filestorage 1>
              path /srv/site/var/filestorage/Data.fs
              blob-dir /srv/site/var/blobstorage
            </filestorage>

            <runner>
              program $INSTANCE/bin/runzeo
            </runner>
            """)
        [storage] = zopeconf.read(path)
        self.assertEqual(storage.data_files, ["/srv/site/var/filestorage/Data.fs",
                                              "/srv/site/var/blobstorage"])

    def test_include_relative_to_the_file_environment_and_empty_sections(self):
        self.write("instance/etc/db.conf", """\
            <filestorage>
              path $(SITE_VAR)/Data.fs
            </filestorage>
            """)
        [storage] = self.read("""\
            <zodb_db main>
                %include db.conf
                <demostorage/>
            </zodb_db>
            """, environ={"SITE_VAR": "/data/site"})
        self.assertEqual(storage.data_files, ["/data/site/Data.fs"])
        self.assertEqual(storage.path, os.path.join(self.tmp, "instance/etc/db.conf"))

    def test_what_zconfig_refuses_is_one_sentence_with_the_file_and_line(self):
        conf = os.path.join(self.tmp, "instance/etc/zope.conf")
        for text, what in (
                ("<zodb_db main>\n<filestorage>\n</zodb_db>\n",
                 "line 3: </zodb_db> closes no <zodb_db>"),
                ("<zodb_db main>\n", "line 1: <zodb_db> is never closed"),
                ("path $nowhere/Data.fs\n", "line 1: $nowhere is not defined"),
                ("path $(ZODB_DIR)/Data.fs\n", "line 1: $(ZODB_DIR) is not set in the "
                 "environment"),
                ("path /a$\n", "line 1: a $ that names nothing (write $$ for a $)"),
                ("%includes x\n", "line 1: unknown directive %includes"),
                ("<zodb_db main\n", "line 1: '<zodb_db main' is not a section start or end"),
                ("%include missing.conf\n", "missing.conf: cannot be read (No such file or "
                 "directory)")):
            with self.assertRaises(zopeconf.ConfError) as caught:
                self.read(text, environ={})
            self.assertTrue(caught.exception.message.endswith(what), caught.exception.message)
            if "missing" not in text:
                self.assertTrue(caught.exception.message.startswith(conf + ", line "))
