"""The release workflow as an operator types it, on a throwaway site in the lab guest.

Run by `make demo` (lab.py demo): builds the test site (buildout, supervisor, a ZODB app on
three datasets), then runs bin/snapshot, a release, bin/rollback (answering its prompt on a
terminal) and bin/cleanup, and a few wrong inputs, printing each command and its output.
"""
import os
import pty
import sys
import time

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import SITE
from collective.recipe.zfssnap.tests.layers import app


def show(argv, answer=None):
    """Run a command in the site directory on a terminal; print it as a transcript."""
    print("$ " + " ".join(a if a and " " not in a else repr(a) for a in argv), flush=True)
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal pty.fork made
        os.chdir(SITE)
        path = argv[0] if "/" in argv[0] else os.path.join(SITE, argv[0])
        try:
            os.execv(path, [path] + list(argv[1:]))
        finally:
            os._exit(127)
    output = b""
    answered = False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if answer and not answered and b"Type yes" in output:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    text = output.decode("utf-8", "replace").replace("\r\n", "\n")
    sys.stdout.write(text)
    print("[exit code %d, %.1f s]\n" % (os.waitstatus_to_exitcode(status),
                                        time.monotonic() - started), flush=True)


class DemoSite(layers.Site):
    # The part knows the site's Data.fs: the rollback plan says what it undoes in ZODB terms.
    extra_zfssnap = "filestorages = ${buildout:directory}/var/filestorage/Data.fs"


def main():
    print("Building a throwaway site (datasets %s)..." % ", ".join(layers.DATASETS), flush=True)
    layers.GuestPool.setUp()
    DemoSite.setUp()
    print("The site runs: %s\n" % app(), flush=True)

    show(["bin/snapshot", "pre-2.0", "-m", "before the 2.0 release"])
    show(["bin/snapshot", "--list"])

    print("# the release: tag 2.0, bin/buildout, new ZODB transactions and blobs", flush=True)
    with open(SITE + "/VERSION", "w") as f:
        f.write("2.0\n")
    layers.sh(*layers.GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release 2.0")
    layers.sh(*layers.GIT, "-C", SITE, "tag", "2.0")
    show(["/usr/bin/git", "checkout", "-q", "2.0"])
    show(["/opt/venv/bin/buildout", "-q"])
    app("/write?blob=release-2.0&user=admin&note=/Plone/@@upgrade-2.0", "POST")
    app("/write?blob=news&user=editor&note=/Plone/news/edit", "POST")
    print("The site after the release (and an editor's change): %s\n" % app(), flush=True)

    print("# wrong inputs first", flush=True)
    show(["bin/snapshot", "pre/2.0"])
    show(["bin/rollback", "no-such-snapshot"])
    show(["bin/rollback"], answer="no")

    show(["bin/rollback", "--dry-run"])
    show(["bin/rollback"], answer="yes")
    print("The site after the rollback: %s\n" % layers.wait_for(app), flush=True)

    show(["bin/snapshot", "--list"])
    show(["bin/cleanup", "--dry-run"])
    show(["bin/cleanup"])
    show(["bin/snapshot", "--list"])
    DemoSite.tearDown()
    layers.GuestPool.tearDown()


if __name__ == "__main__":
    main()
