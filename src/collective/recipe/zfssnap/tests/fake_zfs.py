"""A stand-in for `zfs` in the fast doctests: answers `zfs list -H -o name,mountpoint PATH`.

FAKE_ZFS_DATASETS (environment) lists 'dataset=mountpoint' pairs separated by ';'; the dataset
holding PATH is the one with the longest mountpoint containing it. Only for parsing and argument
building: the real behaviour of the scripts is tested on OpenZFS in the guest.
"""
import os
import sys


def main(argv):
    table = dict(pair.split("=", 1)[::-1]
                 for pair in os.environ.get("FAKE_ZFS_DATASETS", "").split(";") if pair)
    if argv[:4] == ["list", "-H", "-o", "name,mountpoint"] and len(argv) == 5:
        path = os.path.realpath(argv[4])
        best = max((m for m in table if path == m or path.startswith(m.rstrip("/") + "/")),
                   key=len, default=None)
        if best is None:
            sys.stderr.write("cannot open '%s': not a ZFS filesystem\n" % argv[4])
            return 1
        print("%s\t%s" % (table[best], best))
        return 0
    sys.stderr.write("fake zfs: unsupported arguments %r\n" % (argv,))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
