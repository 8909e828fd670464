"""The part's datasets, found by bin/buildout: the one mounted at the buildout directory, those
its options name (by name or by mountpoint), and those mounted inside any of them, each with
where it is mounted now; names checked against ZFS's rules."""
import os

from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import zfs as zfsmod

WARNED_NOT_ON_ZFS = set()  # buildout directories warned about: once per bin/buildout run


class PartDatasets:
    """The dataset side of the Recipe (recipe.py): needs its options, directory, zfs, table
    (the mount table), mountpoints, found_dataset, log, error() and boolean()."""

    def dataset_at(self, option, path, what=""):
        """The dataset mounted at `path` (a mountpoint, not a directory inside a dataset)."""
        path = os.path.realpath(path)
        mount = mountsmod.holding(path, self.table)
        if mount is not None:
            dataset, mountpoint = mount.dataset, mount.mountpoint
        else:
            # No mount table (or not mounted there): ask zfs, which also knows mountpoints.
            try:
                dataset, mountpoint = self.zfs.dataset_at(path)
            except zfsmod.NotOnZfs:
                raise
            except zfsmod.NoZfsCommand as e:
                raise zfsmod.NotOnZfs(e.message)
            except zfsmod.ZfsError as e:
                raise self.error(option, e.message)
            if mountpoint in ("legacy", "none", "-"):
                raise self.error(option, "%s%s is on the dataset %s, whose mountpoint is %s, "
                                 "and the kernel's mount table does not say where it is "
                                 "mounted: mount it, or name the dataset in this option"
                                 % (what, path, dataset, mountpoint))
        if os.path.realpath(mountpoint) != path:
            raise self.error(
                option,
                "%s%s is a subdirectory of the dataset %s (mounted at %s), and rolling that back "
                "would roll back more than this buildout: make the directory a dataset of its "
                "own, or name the dataset to use in this option"
                % (what, path, dataset, mountpoint))
        return dataset

    def find_dataset(self):
        """The dataset mounted at the buildout directory; '' on a machine without ZFS."""
        try:
            return self.dataset_at("dataset", self.directory, "the buildout directory ")
        except zfsmod.NotOnZfs as e:
            # A developer's laptop without ZFS still installs; the scripts say what is missing.
            if self.directory not in WARNED_NOT_ON_ZFS:
                WARNED_NOT_ON_ZFS.add(self.directory)
                self.log.warning("%s; the scripts are generated, but they refuse to run "
                                 "until the buildout directory is a ZFS dataset of its own "
                                 "and bin/buildout runs again" % e.message)
            return ""

    def mountpoint_of(self, dataset):
        """Where a dataset is mounted now ('' when it is not): the kernel's table, then zfs."""
        where = mountsmod.where(dataset, self.table)
        if where:
            return where
        try:
            values = self.zfs.get([dataset], ["mountpoint", "mounted"])[dataset]
        except (zfsmod.ZfsError, KeyError):
            return ""
        if values.get("mounted") == "yes" and values.get("mountpoint", "").startswith("/"):
            return values["mountpoint"]
        return ""

    def named(self, option):
        """The datasets an option lists: names, or mountpoints (directories)."""
        names = []
        for line in self.options[option].split("\n"):
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                try:
                    name = self.dataset_at(option, line)
                except zfsmod.NotOnZfs as e:
                    raise self.error(option, e.message)
                self.mountpoints[name] = os.path.realpath(line)
            else:
                name = line
                problem = zfsmod.check_dataset_name(name)
                if problem:
                    raise self.error(option, problem)
            if name in names:
                raise self.error(option, "%s is listed twice" % name)
            names.append(name)
        return names

    def datasets(self):
        primary = self.options["dataset"].strip()
        if not primary:
            return [], []
        problem = zfsmod.check_dataset_name(primary)
        if problem:
            raise self.error("dataset", problem)
        result = [primary]
        self.mountpoints[primary] = self.directory if self.found_dataset else \
            self.mountpoint_of(primary)
        for name in self.named("extra-datasets"):
            if name in result:
                raise self.error("extra-datasets", "%s is listed twice (the buildout's own "
                                 "dataset is always included)" % name)
            result.append(name)
        excluded = self.named("exclude-datasets")
        for name in result:
            self.mountpoints.setdefault(name, self.mountpoint_of(name))
            if name in excluded:
                raise self.error("exclude-datasets", "%s is also one the part snapshots" % name)
        recursive = self.boolean("recursive")
        # Datasets mounted inside the buildout (or inside another of the part's datasets) are
        # part of the site: left out silently, a rollback would roll back the code and not
        # the Data.fs. Included, and said so; exclude-datasets leaves one out deliberately.
        tops = [m for m in self.mountpoints.values() if m]
        for mount in mountsmod.below(tops, self.table):
            name = mount.dataset
            if name in result or name in excluded or (recursive and any(
                    name.startswith(d + "/") for d in result)):
                continue
            self.log.info("also snapshots %s, mounted at %s inside the part's datasets "
                          "(exclude-datasets leaves it out)", name, mount.mountpoint)
            result.append(name)
            self.mountpoints[name] = mount.mountpoint
        pools = sorted({zfsmod.Zfs.pool(d) for d in result})
        if len(pools) > 1:
            self.log.info("the datasets are on %d pools (%s): bin/snapshot takes one snapshot "
                          "per pool, each atomic", len(pools), ", ".join(pools))
        for name in excluded:
            self.mountpoints.setdefault(name, self.mountpoint_of(name))
        return result, excluded
