"""The release workflow as an operator types it, on a throwaway site in the lab guest.

Run by `make demo` (lab.py demo): builds the Zope stack of zope_site (a ZEO server and two Zope
clients under supervisor, Data.fs and blobs on datasets of their own), then runs bin/snapshot, a
release that writes through Zope, bin/rollback (answering its prompt on a terminal) and
bin/cleanup, and a few wrong inputs, printing each command and its output.
"""
import os
import pty
import sys
import time

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests import zope_site
from collective.recipe.zfssnap.tests.zope_site import SITE


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


def main():
    print("Building a throwaway Zope site: a ZEO server and two Zope clients under supervisor, "
          "on datasets %s..." % ", ".join(zope_site.DATASETS), flush=True)
    layers.GuestPool.setUp()
    zope_site.ZopeStack.setUp()
    rc, out, err = zope_site.run(SITE + "/bin/cleanup", "--yes", "new-site")  # the test's
    if rc != 0:
        sys.exit("bin/cleanup new-site failed (exit %d): %s%s" % (rc, out, err))
    print("The site runs: %s; both clients answer (ports %s).\n" % (
        ", ".join("%s %s" % i for i in sorted(zope_site.program_states().items())),
        ", ".join(map(str, zope_site.HTTP_PORTS))), flush=True)

    show(["bin/snapshot", "pre-2.0", "-m", "before the 2.0 release"])
    show(["bin/snapshot", "--list"])

    print("# the release: tag 2.0, bin/buildout, objects added through Zope", flush=True)
    with open(SITE + "/VERSION", "w") as f:
        f.write("2.0\n")
    layers.sh(*layers.GIT, "-C", SITE, "commit", "-q", "-a", "-m", "Release 2.0")
    layers.sh(*layers.GIT, "-C", SITE, "tag", "2.0")
    show(["/usr/bin/git", "checkout", "-q", "2.0"])
    show([zope_site.BUILDOUT, "-q"])
    zope_site.add_folder(zope_site.HTTP_PORTS[0], "release-2-0", "the upgrade of 2.0")
    zope_site.add_folder(zope_site.HTTP_PORTS[1], "news", "an editor's change")
    print("Added through Zope: /release-2-0 (client 1) and /news (client 2).\n", flush=True)

    print("# wrong inputs first", flush=True)
    show(["bin/snapshot", "pre/2.0"])
    show(["bin/rollback", "no-such-snapshot"])
    show(["bin/rollback"], answer="no")

    show(["bin/rollback", "--dry-run"])
    show(["bin/rollback"], answer="yes")
    layers.wait_for(zope_site.answering, timeout=300, what="both Zope clients to answer")
    print("After the rollback: %s; /before %s, /release-2-0 %s, /news %s; git at %s.\n" % (
        ", ".join("%s %s" % i for i in sorted(zope_site.program_states().items())),
        *(" and ".join("there" if zope_site.has_folder(port, name) else "gone"
                       for port in zope_site.HTTP_PORTS)
          for name in ("before", "release-2-0", "news")),
        layers.sh("git", "-C", SITE, "describe", "--tags").strip()), flush=True)

    show(["bin/snapshot", "--list"])
    show(["bin/cleanup", "--dry-run"])
    show(["bin/cleanup"], answer="yes")
    show(["bin/snapshot", "--list"])
    zope_site.ZopeStack.tearDown()
    layers.GuestPool.tearDown()


if __name__ == "__main__":
    main()
