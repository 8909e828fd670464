from setuptools import find_namespace_packages
from setuptools import setup


version = "0.1.0.dev0"


def read(*names):
    with open("/".join(names), encoding="utf-8") as f:
        return f.read()


setup(
    name="collective.recipe.zfssnap",
    version=version,
    description="zc.buildout recipe: ZFS snapshots before a release, one-command rollback "
    "with the site's supervisor programs stopped and started again",
    long_description=read("README.rst") + "\n\n" + read("CHANGES.rst"),
    long_description_content_type="text/x-rst",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Framework :: Buildout",
        "Framework :: Buildout :: Recipe",
        "Framework :: Plone",
        "Framework :: Zope",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Operating System :: POSIX :: BSD :: FreeBSD",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        # Not Archiving :: Backup: snapshots on the same pool are no backup (README).
        "Topic :: System :: Filesystems",
        "Topic :: System :: Systems Administration",
    ],
    keywords="buildout recipe zfs snapshot rollback release plone zope supervisor",
    author="The collective.recipe.zfssnap developers",
    # The list of the Plone community's developers, as collective packages give (no address of
    # our own that could bounce).
    author_email="plone-developers@lists.sourceforge.net",
    url="https://github.com/collective/collective.recipe.zfssnap",
    project_urls={
        "Documentation": "https://collectiverecipezfssnap.readthedocs.io/",
        "Source": "https://github.com/collective/collective.recipe.zfssnap",
        "Issues": "https://github.com/collective/collective.recipe.zfssnap/issues",
        "Changelog": "https://github.com/collective/collective.recipe.zfssnap/blob/main/"
                     "CHANGES.rst",
    },
    # PEP 639: an SPDX expression and the licence file (setuptools 77 or later).
    license_expression="GPL-2.0-only",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_namespace_packages("src", include=["collective.*"]),
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        # 5 is the floor: what Plone 6.2 sites pin; see the README on 4.x.
        "zc.buildout>=5",
    ],
    extras_require={
        "test": [
            "collective.recipe.supervisor",
            "supervisor",
            "ZODB",
            "zope.testing",
            "zope.testrunner",
        ],
    },
    entry_points={
        "console_scripts": ["zfssnap = collective.recipe.zfssnap.cli:run"],
        "zc.buildout": ["default = collective.recipe.zfssnap.recipe:Recipe"],
        "zc.buildout.extension": ["default = collective.recipe.zfssnap.extension:extension"],
        "zc.buildout.unloadextension": [
            "default = collective.recipe.zfssnap.extension:unload"],
    },
)
