"""A recording stand-in for the ZFS adapter, with just enough of a pool's state (names, guids,
canmount, mountpoints, mounts, origins) to test the order of the --keep steps in the fast
suite: what a boot would mount after each of them, and that a rerun finishes from any of them.

It models ZFS as its manual pages describe it; that it matches real OpenZFS is shown by the
guest suite (test_crash_sweep), never by this file.
"""
import itertools

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import mounts as mountsmod
from collective.recipe.zfssnap import site as sitemod
from collective.recipe.zfssnap import zfs as zfsmod


class Result:
    def __init__(self, stdout="", stderr="", returncode=0):
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


class FakePool(zfsmod.Zfs):
    """Datasets as dicts; `calls` records every argv that changed something."""

    _guids = itertools.count(1000)
    _txgs = itertools.count(100)

    def __init__(self):
        super().__init__(["zfs"])
        self.datasets = {}
        self.snapshot_info = {}  # name -> {guid (its dataset's), createtxg, content, properties}
        self.written = {}  # dataset -> what written@SNAPSHOT reports (0 when unset)
        self.calls = []
        self.busy = set()  # mountpoints some process works in: unmount says busy
        self.mount_order = itertools.count()

    def create(self, name, mountpoint, canmount="on", mounted=True, origin="-", content=None):
        self.datasets[name] = {"guid": str(next(self._guids)), "canmount": canmount,
                               "mountpoint": mountpoint, "mounted": mounted, "origin": origin,
                               "user": {}, "readonly": "off", "content": content,
                               "seq": next(self.mount_order)}

    def snapshot(self, name, properties=None, recursive=False):
        """A snapshot made by the test (`name`, unprefixed properties), or, given a list of
        names as the adapter is, one `zfs snapshot` of the code under test."""
        if isinstance(name, list):
            return super().snapshot(name, properties, recursive)
        dataset = name.split("@")[0]
        self.snapshot_info[name] = {"guid": self.datasets[dataset]["guid"],
                                    "createtxg": next(self._txgs), "properties": properties or {},
                                    "content": self.datasets[dataset]["content"]}

    def snapshots_of(self, dataset):
        """The snapshot names of `dataset` (by its guid: a rename takes them along)."""
        guid = self.datasets[dataset]["guid"]
        names = [n for n, i in self.snapshot_info.items() if i["guid"] == guid]
        return sorted(names, key=lambda n: self.snapshot_info[n]["createtxg"])

    def _move_snapshot(self, name, dataset):
        """Snapshot `name` now belongs to `dataset` (a rename, or a promote)."""
        info = self.snapshot_info.pop(name)
        info["guid"] = self.datasets[dataset]["guid"]
        self.snapshot_info[dataset + "@" + name.split("@")[1]] = info

    def mounts(self):
        """The mount table (mountsmod.Mount), in the order the mounts were made."""
        mounted = [(d["seq"], n, d["mountpoint"]) for n, d in self.datasets.items()
                   if d["mounted"]]
        return [mountsmod.Mount(n, m) for _, n, m in sorted(mounted)]

    # -- the reading side of the adapter, at its own level (parsing is tested elsewhere) ----
    def snapshots(self, datasets, own_properties=()):
        result = {d: [] for d in datasets}
        for d in datasets:
            for name in self.snapshots_of(d) if d in self.datasets else ():
                info = self.snapshot_info[name]
                result[d].append(zfsmod.Snapshot(
                    name, str(info["createtxg"]), userrefs=str(info.get("userrefs", 0)),
                    properties=dict(info["properties"])))
        return result, {d: 0 for d in datasets}

    def newer(self, datasets, createtxgs):
        found, _ = self.snapshots(datasets)
        return {d: [s for s in found[d] if s.createtxg > createtxgs[d]] for d in datasets}

    def sync_pools(self, pools):
        self.synced = sorted(pools)  # nothing lags in the model

    def by_guid(self, guid):
        return [n for n, d in self.datasets.items() if d["guid"] == guid]

    def boot_mounts(self):
        """{mountpoint: [datasets]} that `zfs mount -a` would mount: canmount=on ones."""
        found = {}
        for name, d in sorted(self.datasets.items()):
            if d["canmount"] == "on" and d["mountpoint"] not in ("none", "legacy"):
                found.setdefault(d["mountpoint"], []).append(name)
        return found

    def boot(self):
        """A power cut and a boot: nothing mounted, then what `zfs mount -a` mounts (canmount=on,
        the outermost first, one dataset per mountpoint)."""
        for d in self.datasets.values():
            d["mounted"] = False
        for name, d in sorted(self.datasets.items(), key=lambda i: i[1]["mountpoint"]):
            if d["canmount"] == "on" and d["mountpoint"] not in ("none", "legacy") and not any(
                    o["mounted"] and o["mountpoint"] == d["mountpoint"]
                    for o in self.datasets.values()):
                d["mounted"] = True
                d["seq"] = next(self.mount_order)

    def fail(self, message):
        raise zfsmod.ZfsError(message)

    def run(self, *args, check=True):
        args = list(args)
        verb = args[0]
        if verb == "get":
            return self._get(args)
        if verb == "list":
            return self._list(args)
        self.calls.append(args)
        result = self._change(args, check)
        if result.returncode == 0:
            # As Zfs.run does: the crash-point sweeps count this action.
            crashpoint.done("zfs " + " ".join(args))
        return result

    def _change(self, args, check):
        verb = args[0]
        if verb == "clone":
            props = dict(a.split("=", 1) for a in args[1:-2] if "=" in a)
            snap, new = args[-2], args[-1]
            if new in self.datasets:
                self.fail("dataset already exists")
            self.create(new, props.get("mountpoint", "/" + new), props.get("canmount", "on"),
                        mounted=props.get("canmount", "on") == "on", origin=snap,
                        content=self.snapshot_info.get(snap, {}).get("content"))
            for key, value in props.items():
                if ":" in key:
                    self.datasets[new]["user"][key] = value
                elif key not in ("mountpoint", "canmount"):
                    self.datasets[new][key] = value
        elif verb == "unmount":
            d = self.datasets[args[-1]]
            if not d["mounted"]:
                self.fail("not currently mounted")
            if d["mountpoint"] in self.busy:
                if check:
                    self.fail("umount: target is busy")
                return Result(stderr="cannot unmount '%s': pool or dataset is busy" % args[-1],
                              returncode=1)
            d["mounted"] = False
        elif verb == "mount":
            d = self.datasets[args[-1]]
            if d["mounted"]:
                self.fail("filesystem already mounted")
            if any(o["mounted"] and o["mountpoint"] == d["mountpoint"]
                   for o in self.datasets.values()):
                self.fail("mountpoint is busy")  # as overlay=off would
            d["mounted"] = True
            d["seq"] = next(self.mount_order)
        elif verb == "set":
            pairs = [a.split("=", 1) for a in args[1:] if "=" in a]
            names = sorted(a for a in args[1:] if "=" not in a)  # as zfs does: by name
            for i, name in enumerate(names):
                if i:
                    # A power cut may stop one command between two of its datasets.
                    crashpoint.done("zfs set (part: %s) %s" % (names[i - 1], " ".join(args[1:])))
                for key, value in pairs:
                    if ":" in key:
                        self.datasets[name]["user"][key] = value
                    else:
                        self.datasets[name][key] = value
        elif verb == "rename":
            old, new = args[-2], args[-1]
            if new in self.datasets:
                self.fail("dataset already exists")
            self.datasets[new] = self.datasets.pop(old)
            for snap in self.snapshots_of(new):
                self._move_snapshot(snap, new)
            for d in self.datasets.values():
                if d["origin"].startswith(old + "@"):
                    d["origin"] = new + d["origin"][len(old):]
        elif verb == "promote":
            name = args[-1]
            d = self.datasets[name]
            origin_ds = d["origin"].split("@")[0]
            snap_short = d["origin"].split("@")[1]
            d["origin"] = "-"
            self.datasets[origin_ds]["origin"] = "%s@%s" % (name, snap_short)
            # The origin snapshot and the older ones move to the promoted clone.
            limit = self.snapshot_info[origin_ds + "@" + snap_short]["createtxg"]
            for snap in self.snapshots_of(origin_ds):
                if self.snapshot_info[snap]["createtxg"] <= limit:
                    self._move_snapshot(snap, name)
        elif verb == "snapshot":
            names = [a for a in args[1:] if "@" in a and "=" not in a]
            props = {a.split("=", 1)[0][len(zfsmod.PROPERTY_PREFIX):]: a.split("=", 1)[1]
                     for a in args[1:] if a.startswith(zfsmod.PROPERTY_PREFIX)}
            if any(n in self.snapshot_info for n in names):
                message = "cannot create snapshot '%s': dataset already exists" % names[0]
                raise zfsmod.ZfsError(message, args, stderr=message)
            for n in names:  # one transaction group: all of them, or none
                self.snapshot(n, properties=props)
        elif verb == "destroy":
            name = args[-1]
            if "@" in name:
                dataset, shorts = name.split("@")
                for short in shorts.split(","):
                    self.snapshot_info.pop(dataset + "@" + short, None)
                return Result()
            if any(o["origin"].startswith(name + "@") for o in self.datasets.values()):
                self.fail("filesystem has dependent clones")
            for snap in self.snapshots_of(name):
                del self.snapshot_info[snap]
            del self.datasets[name]
        elif verb == "rollback":
            snap = args[-1]
            dataset = snap.split("@")[0]
            if snap not in self.snapshot_info:
                self.fail("could not find any snapshots to destroy; check snapshot names.")
            txg = self.snapshot_info[snap]["createtxg"]
            newer = [n for n in self.snapshots_of(dataset)
                     if self.snapshot_info[n]["createtxg"] > txg]
            if newer and "-r" not in args:
                self.fail("cannot rollback to '%s': more recent snapshots or bookmarks exist"
                          % snap)
            for n in newer:
                del self.snapshot_info[n]
            self.datasets[dataset]["content"] = self.snapshot_info[snap]["content"]
        else:
            self.fail("fake pool: unsupported %r" % args)
        return Result()

    def _list(self, args):
        """`list -r NAME...` of datasets (children by name), or `list -t all -o
        name,type,userrefs -r NAME` with the snapshots."""
        names = [a for a in args if a in self.datasets or any(
            n.startswith(a + "/") for n in self.datasets)]  # a pool's root: its children
        found = []
        for top in names:
            for name in sorted(self.datasets):
                if name == top or name.startswith(top + "/"):
                    found.append((name, "filesystem", "-"))
            for snap in sorted(self.snapshot_info):
                if snap.split("@")[0] == top:
                    found.append((snap, "snapshot", "0"))
        if "name,type,userrefs" in args:
            return Result("".join("%s\t%s\t%s\n" % row for row in found))
        return Result("".join(row[0] + "\n" for row in found if row[1] != "snapshot"))

    def _get(self, args):
        args = list(args)
        local = "-s" in args
        if local:  # get -H -p -o name,property,value -s local all NAME...: the user properties
            del args[args.index("-s"):args.index("-s") + 2]
        i = args.index("-o")  # get -H -p -o name,property,value PROPS NAME...
        props, names = args[i + 2], args[i + 3:]
        if local:
            return Result("".join("%s\t%s\t%s\n" % (n, k, v) for n in names
                                  for k, v in sorted(self.datasets[n]["user"].items())))
        lines, missing = [], []
        for name in names:
            d = self.datasets.get(name)
            info = self.snapshot_info.get(name)
            if d is None and info is not None and props == "guid":
                # A snapshot's own guid: its dataset's and its transaction group, unique here.
                lines.append("%s\tguid\t%s%06d" % (name, info["guid"], info["createtxg"]))
                continue
            if d is None:
                missing.append(name)
                continue
            for prop in props.split(","):
                value = d.get(prop, d["user"].get(prop, "-"))
                if prop.startswith("written@"):
                    value = str(self.written.get(name, 0))
                if prop == "mounted":
                    value = "yes" if d["mounted"] else "no"
                lines.append("%s\t%s\t%s" % (name, prop, value))
        return Result("\n".join(lines) + "\n", returncode=1 if missing else 0)


class Out:
    """The parts of Output the keep module uses, collecting what it says."""

    def __init__(self):
        self.lines = []

    def action(self, text):
        self.lines.append("> " + text)

    def command(self, argv):
        self.lines.append("$ " + " ".join(argv))

    def log(self, text):
        self.lines.append("log: " + text)

    def say(self, text):
        self.lines.append(text)

    def note(self, text):
        self.lines.append("note: " + text)

    def warn(self, text):
        self.lines.append("warning: " + text)


class FakeSite:
    part = "zfssnap"
    directory = "/srv/site"

    def __init__(self, zfs, datasets):
        self.zfs = zfs
        self.datasets = datasets
        self.primary = datasets[0]
        self.out = Out()
        self.config = {}
        self.scripts = {"cleanup": "/srv/site/bin/cleanup"}

    rollback_record = sitemod.Site.rollback_record  # the real one, from places

    @property
    def places(self):
        """Where the fake site's files are: beside config["lock_file"] (the tests' own)."""
        import types
        lock = self.config.get("lock_file", "/nonexistent/zfssnap/lock")
        return types.SimpleNamespace(record=lock + ".rollback.json", lock=lock,
                                     buildout_record=lock + ".buildout.json")

    def permission_message(self, error, permissions):
        return error.message
