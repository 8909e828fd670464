"""Where a site's ZODB lives, read from what the site has: the Zope instance and ZEO server
parts of a buildout. The scripts need the Data.fs files (the rollback's plan counts their
transactions) and whether the data is in a database server instead, which a ZFS snapshot
does not hold."""
import os

from collective.recipe.zfssnap.zopeconf import SERVER_DATABASES


ZODB_RECIPES = ("plone.recipe.zope2instance", "plone.recipe.zeoserver")
EXTERNAL_DATABASE = ("refuse", "by-hand")


def filestorages_of(sections, directory):
    """The Data.fs files of Zope instance or ZEO server parts (their options by part name)."""
    found = []
    for section in sections.values():
        if (section.get("rel-storage") or "").strip():
            continue  # its ZODB is RelStorage's: no Data.fs
        var = os.path.join(directory, section.get("var") or section.get("zeo-var") or "var")
        # A relative file-storage is relative to var, as those recipes read it.
        path = os.path.join(var, section.get("file-storage") or
                            os.path.join("filestorage", "Data.fs"))
        if path not in found:
            found.append(path)
    return found


def external_databases_of(sections):
    """[{kind, where}] of the Zope instance parts whose ZODB is in a database server:
    plone.recipe.zope2instance's rel-storage option, whose `type` is postgresql when not
    given."""
    found = []
    for part, section in sections.items():
        value = (section.get("rel-storage") or "").strip()
        if not value:
            continue
        keys = dict((line.split(None, 1) + [""])[:2] for line in value.splitlines()
                    if line.strip())
        kind = keys.get("type", "").strip().lower() or "postgresql"
        if kind in SERVER_DATABASES:
            found.append({"kind": SERVER_DATABASES[kind],
                          "where": "the rel-storage option of the [%s] part" % part})
    return found
