"""A recording stand-in for the ZFS adapter, with just enough of a pool's state (names, guids,
canmount, mountpoints, mounts, origins) to test the order of the --keep steps in the fast
suite: what a boot would mount after each of them, and that a rerun finishes from any of them.

It models ZFS as its manual pages describe it; that it matches real OpenZFS is shown by the
guest suite (test_crash_sweep), never by this file.
"""
import itertools

from collective.recipe.zfssnap import zfs as zfsmod


class Result:
    def __init__(self, stdout="", stderr="", returncode=0):
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


class FakePool(zfsmod.Zfs):
    """Datasets as dicts; `calls` records every argv that changed something."""

    _guids = itertools.count(1000)

    def __init__(self):
        super().__init__(["zfs"])
        self.datasets = {}
        self.snapshots = {}  # name -> dataset guid
        self.calls = []
        self.busy = set()  # mountpoints some process works in: unmount says busy

    def create(self, name, mountpoint, canmount="on", mounted=True, origin="-"):
        self.datasets[name] = {"guid": str(next(self._guids)), "canmount": canmount,
                               "mountpoint": mountpoint, "mounted": mounted, "origin": origin,
                               "user": {}, "readonly": "off"}

    def snapshot(self, name):
        dataset = name.split("@")[0]
        self.snapshots[name] = self.datasets[dataset]["guid"]

    def by_guid(self, guid):
        return [n for n, d in self.datasets.items() if d["guid"] == guid]

    def boot_mounts(self):
        """{mountpoint: [datasets]} that `zfs mount -a` would mount: canmount=on ones."""
        found = {}
        for name, d in sorted(self.datasets.items()):
            if d["canmount"] == "on" and d["mountpoint"] not in ("none", "legacy"):
                found.setdefault(d["mountpoint"], []).append(name)
        return found

    def mount_all(self):
        for name, d in self.datasets.items():
            if d["canmount"] == "on" and not d["mounted"] and not any(
                    o["mounted"] and o["mountpoint"] == d["mountpoint"]
                    for o in self.datasets.values()):
                d["mounted"] = True

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
        if verb == "clone":
            props = dict(a.split("=", 1) for a in args[1:-2] if "=" in a)
            snap, new = args[-2], args[-1]
            if new in self.datasets:
                self.fail("dataset already exists")
            self.create(new, props.get("mountpoint", "/" + new), props.get("canmount", "on"),
                        mounted=props.get("canmount", "on") == "on", origin=snap)
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
        elif verb == "set":
            name = args[-1]
            for pair in args[1:-1]:
                key, value = pair.split("=", 1)
                if ":" in key:
                    self.datasets[name]["user"][key] = value
                else:
                    self.datasets[name][key] = value
        elif verb == "rename":
            old, new = args[-2], args[-1]
            if new in self.datasets:
                self.fail("dataset already exists")
            self.datasets[new] = self.datasets.pop(old)
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
        elif verb == "destroy":
            name = args[-1]
            if any(o["origin"].startswith(name + "@") for o in self.datasets.values()):
                self.fail("filesystem has dependent clones")
            del self.datasets[name]
        else:
            self.fail("fake pool: unsupported %r" % args)
        return Result()

    def _list(self, args):
        """`list -r NAME...` of datasets (children by name), or `list -t all -o
        name,type,userrefs -r NAME` with the snapshots."""
        names = [a for a in args if a in self.datasets]
        found = []
        for top in names:
            for name in sorted(self.datasets):
                if name == top or name.startswith(top + "/"):
                    found.append((name, "filesystem", "-"))
            for snap in sorted(self.snapshots):
                if snap.split("@")[0] == top:
                    found.append((snap, "snapshot", "0"))
        if "name,type,userrefs" in args:
            return Result("".join("%s\t%s\t%s\n" % row for row in found))
        return Result("".join(row[0] + "\n" for row in found if row[1] != "snapshot"))

    def _get(self, args):
        i = args.index("-o")  # get -H -p -o name,property,value PROPS NAME...
        props, names = args[i + 2], args[i + 3:]
        lines, missing = [], []
        for name in names:
            d = self.datasets.get(name)
            if d is None:
                missing.append(name)
                continue
            for prop in props.split(","):
                value = d.get(prop, d["user"].get(prop, "-"))
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
        self.out = Out()
        self.config = {}
        self.scripts = {"cleanup": "/srv/site/bin/cleanup"}

    def permission_message(self, error, permissions):
        return error.message
