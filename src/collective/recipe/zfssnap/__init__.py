"""collective.recipe.zfssnap: ZFS snapshots before a release, one-command rollback.

The buildout side is in recipe.py; the scripts start in main.py and import nothing of
buildout (this package must stay light to import).
"""
