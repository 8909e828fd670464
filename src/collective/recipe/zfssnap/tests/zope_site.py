"""The Zope stack in the lab guest: a ZEO server and two Zope ZEO clients under supervisor,
built by plone.recipe.zeoserver, plone.recipe.zope2instance and collective.recipe.supervisor
from the index (the guest's wheelhouse), as a Plone site deploys them.

Used by test_zope (the guest suite) and by demo (`make demo`). A buildout of Zope's ~90 eggs
and Zope's first imports take minutes under emulation: the guest's cached venv disk carries
them, built and compiled once (`warm`, run when lab.py makes that disk), so a site here only
links to them.
"""
import base64
import compileall
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import sh


SITE = "/srv/plone"
# The buildout's dataset on the system pool, Data.fs and blobs on the data pool.
DATASETS = {
    "tank/plone": SITE,
    "data/plone-filestorage": SITE + "/var/filestorage",
    "data/plone-blobstorage": SITE + "/var/blobstorage",
}
DATAFS = SITE + "/var/filestorage/Data.fs"
EGGS = "/opt/eggs"  # on the cached venv disk
PARTS = "zeoserver instance1 instance2 supervisor zfssnap"
ZEO_PORT = 8100
HTTP_PORTS = (8081, 8082)
USER, PASSWORD = "admin", "lab-secret"
SUPERVISORD_LOG = "/var/log/plone-supervisord.log"
PROGRAMS = {"zeoserver": "RUNNING", "instance1": "RUNNING", "instance2": "RUNNING"}
TEMPLATE = os.path.join(layers.TEMPLATES, "zope.cfg.in")
BUILDOUT = "/opt/venv/bin/buildout"


def buildout_cfg(parts=PARTS, eggs=EGGS):
    links = layers.find_links()
    with open(TEMPLATE) as f:
        return f.read().format(parts=parts, find_links="\n    ".join(links), index=links[0],
                               eggs=eggs, zeo_port=ZEO_PORT, http_port1=HTTP_PORTS[0],
                               http_port2=HTTP_PORTS[1], password=PASSWORD,
                               supervisord_log=SUPERVISORD_LOG)


def warm(eggs=EGGS):
    """Install the stack's eggs into `eggs` and compile them: what every later site reuses."""
    directory = "/tmp/zope-warm"
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "buildout.cfg"), "w") as f:
        f.write(buildout_cfg(parts=PARTS.replace(" zfssnap", ""), eggs=eggs))
    started = time.monotonic()
    proc = layers.bounded([BUILDOUT, "-q"], 1800, cwd=directory)
    if proc.returncode != 0:
        sys.exit("the Zope stack's warm-up buildout failed (exit %d)" % proc.returncode)
    compileall.compile_dir(eggs, quiet=2, workers=2)  # Zope ships broken fixtures
    print("lab: Zope stack eggs in %s, built and compiled in %.0f s"
          % (eggs, time.monotonic() - started), flush=True)


def run(*argv):
    """(exit code, stdout, stderr) of a command run in the stack's directory."""
    return layers.run_in_site(*argv, site=SITE)


def zope(port, path, data=None, timeout=60):
    """(HTTP status, body) of a request to a Zope client as the Zope user; a client that does
    not listen yet is asked again until `timeout`."""
    request = urllib.request.Request(
        "http://127.0.0.1:%d%s" % (port, path),
        data=urllib.parse.urlencode(data).encode() if data is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(
            ("%s:%s" % (USER, PASSWORD)).encode()).decode()})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def add_folder(port, name, title=""):
    """A folder added through the ZMI (Zope commits it as the Zope user, with the request's
    path as its note)."""
    status, body = zope(port, "/manage_addProduct/OFSP/manage_addFolder",
                        {"id": name, "title": title})
    if status != 200:
        raise AssertionError("adding folder %s through Zope on port %d gave HTTP %d:\n%s"
                             % (name, port, status, body[:2000]))


def has_folder(port, name):
    # The folder's ZMI page: 200 for the Manager the Zope user is, 404 when it is not there.
    status, body = zope(port, "/%s/manage_main" % name)
    if status not in (200, 404):
        raise AssertionError("asking Zope on port %d for %s gave HTTP %d:\n%s"
                             % (port, name, status, body[:2000]))
    return status == 200


def answering():
    """Both clients answer the Zope user."""
    return all(zope(port, "/manage_main", timeout=5)[0] == 200 for port in HTTP_PORTS)


def zeo_alone(argv=None, cwd=SITE, port=ZEO_PORT):
    """The ZEO server started alone, then stopped: it leaves a Data.fs with its header and no
    transaction. A FileStorage that creates its file also tries to remove its blob directory,
    which a dataset's mountpoint refuses (EBUSY): that first start dies once the file exists,
    as it does on a real new site, and a second start opens the file and listens. `argv`: the
    server's command (the stack's runzeo)."""
    argv = argv or [SITE + "/parts/zeoserver/bin/runzeo"]
    for attempt in (1, 2):
        with open("/tmp/runzeo.log", "w") as log:
            runzeo = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            # It listens only once the storage is open and its signal handlers are in place.
            layers.wait_for(lambda: listening(port) or runzeo.poll() is not None,
                            timeout=120, what="the ZEO server to listen or exit")
            if runzeo.poll() is None:
                return
        finally:
            if runzeo.poll() is None:
                runzeo.terminate()
            runzeo.wait(60)
    with open("/tmp/runzeo.log") as log:
        raise AssertionError("the ZEO server, started alone, exited twice (%s):\n%s"
                             % (runzeo.returncode, log.read()))


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def supervisord_pids():
    return [pid for pid in layers.processes_named(b"/bin/supervisord")
            if os.readlink("/proc/%d/cwd" % pid).startswith(SITE)]


def program_states():
    return layers.program_states(site=SITE)


def start():
    run(SITE + "/bin/supervisord")
    try:
        layers.wait_for(lambda: program_states() == PROGRAMS, timeout=300,
                        what="the ZEO server and both clients RUNNING")
        layers.wait_for(answering, timeout=300, what="both Zope clients to answer")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, diagnosis())) from None


def diagnosis(status=None, logs=SITE + "/var/log", supervisord_log=SUPERVISORD_LOG):
    """What supervisord says and the ends of the stack's logs: for a test that failed.
    `status`: supervisorctl's status (the stack's)."""
    lines = [layers.supervisorctl("status", site=SITE) if status is None else status]
    paths = [os.path.join(logs, n) for n in sorted(os.listdir(logs))] if os.path.isdir(
        logs) else []
    for path in paths + [supervisord_log]:
        if path.endswith(".log") and os.path.isfile(path):
            with open(path, errors="replace") as f:
                lines.append("== %s\n%s" % (path, f.read()[-3000:]))
    return "\n".join(lines)


def stop():
    layers.supervisorctl("shutdown", site=SITE)
    layers.wait_for(lambda: not supervisord_pids(), timeout=120,
                    what="supervisord to shut down")


def supervisord_log():
    try:
        with open(SUPERVISORD_LOG) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class ZopeStack(layers.GuestPool):
    """The stack built once; the layer leaves it running, with one folder written through Zope
    and with the snapshot `new-site` taken by bin/snapshot when the ZEO server had created its
    Data.fs and no client had written to it yet."""

    new_site_plan = None  # (exit code, output) of bin/rollback --dry-run new-site, then

    @classmethod
    def setUp(cls):
        for dataset, mountpoint in DATASETS.items():
            sh("zfs", "create", "-o", "mountpoint=" + mountpoint, dataset)
        with open(SITE + "/buildout.cfg", "w") as f:
            f.write(buildout_cfg())
        with open(SITE + "/VERSION", "w") as f:
            f.write("1.0\n")
        with open(SITE + "/.gitignore", "w") as f:
            f.write("/bin/\n/parts/\n/develop-eggs/\n/var/\n/.installed.cfg\n")
        layers.first_release(SITE)
        rc, out, err = run(BUILDOUT)
        if rc != 0:
            raise AssertionError("bin/buildout of the Zope stack failed:\n%s%s" % (out, err))
        zeo_alone()
        rc, out, err = run(SITE + "/bin/snapshot", "new-site")
        if rc != 0:
            raise AssertionError("bin/snapshot new-site failed:\n%s%s" % (out, err))
        rc, out, err = run(SITE + "/bin/rollback", "--dry-run", "new-site")
        cls.new_site_plan = (rc, out + err, os.path.getsize(DATAFS))
        start()
        add_folder(HTTP_PORTS[0], "before", "written before the release")

    @classmethod
    def tearDown(cls):
        if supervisord_pids():
            stop()


if __name__ == "__main__":
    if sys.argv[1:2] != ["warm"] or len(sys.argv) != 3:
        sys.exit("usage: python -m collective.recipe.zfssnap.tests.zope_site warm EGGS-DIRECTORY")
    warm(sys.argv[2])
