"""A site whose processes are systemd units of their own, with no supervisord (lab guest, with
systemd as PID 1): a ZEO server and two ZEO clients (the hosts test's client.py), each a unit
with Restart=on-failure, as hand-written or Ansible-written units of Zope sites are. The
buildout (ZEO from the Zope stack's cached eggs) on tank/units, Data.fs and blobs on datasets
of the data pool; the part names the units (systemd-units).

Used by test_systemd_site. Built once; `reset()` puts it back at the baseline between tests.
"""
import json
import os
import time
import urllib.request

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import sh

SITE = "/srv/units"
DATASETS = {
    "tank/units": SITE,
    "data/units-filestorage": SITE + "/var/filestorage",
    "data/units-blobstorage": SITE + "/var/blobstorage",
}
EGGS = "/opt/eggs"  # the Zope stack's eggs on the cached venv disk: ZEO among them
ZEO_PORT = 8120
CLIENTS = {"client1": 8091, "client2": 8092}
UNITS = ["units-zeo.service", "units-client1.service", "units-client2.service"]
BASELINE = "lab-baseline"
UNIT_DIR = "/etc/systemd/system"

BUILDOUT_CFG = """\
[buildout]
parts = zeo client zfssnap
find-links = {find_links}
index = file://{index}
newest = false
eggs-directory = {eggs}

[zeo]
recipe = zc.recipe.egg
eggs = ZEO
scripts = runzeo

[client]
recipe = zc.recipe.egg
eggs = ZEO
interpreter = py

[zfssnap]
recipe = collective.recipe.zfssnap
extra-datasets =
    ${{buildout:directory}}/var/filestorage
    ${{buildout:directory}}/var/blobstorage
filestorages = var/filestorage/Data.fs
systemd-units = {units}
health-check = http://127.0.0.1:{port}/state
stop-timeout = 30
"""
ZEO_CONF = """\
<zeo>
  address 127.0.0.1:{port}
</zeo>
<filestorage 1>
  path {site}/var/filestorage/Data.fs
  blob-dir {site}/var/blobstorage
</filestorage>
"""
UNIT = """\
[Unit]
Description={what}
{after}
[Service]
WorkingDirectory={site}
ExecStart={command}
Restart=on-failure
RestartSec=1
"""


def unit_files():
    files = {UNITS[0]: UNIT.format(what="units site: the ZEO server", after="", site=SITE,
                                   command="%s/bin/runzeo -C %s/zeo.conf" % (SITE, SITE))}
    for (name, port), unit in zip(CLIENTS.items(), UNITS[1:]):
        files[unit] = UNIT.format(
            what="units site: ZEO client " + name, after="After=" + UNITS[0], site=SITE,
            command="%s/bin/py %s/client.py %s/%s 127.0.0.1 %d 127.0.0.1:%d" % (
                SITE, SITE, SITE, name, port, ZEO_PORT))
    return files


def systemctl(*args, check=True):
    return sh("systemctl", *args, check=check)


def shown(prop, unit):
    return systemctl("show", "--property=" + prop, "--value", unit).strip()


def states():
    return {u: shown("ActiveState", u) for u in UNITS}


def main_pids():
    return {u: int(shown("MainPID", u)) for u in UNITS}


def restarts():
    """How often systemd restarted each unit on its own (Restart=)."""
    return {u: int(shown("NRestarts", u) or 0) for u in UNITS}


def client(name="client1", method="GET", path="/state", timeout=60):
    """A client's answer (a dict); asked again until it listens and answers, or `timeout`."""
    url = "http://127.0.0.1:%d%s" % (CLIENTS[name], path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, data=b"" if method == "POST" else None)
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_units():
    """As a boot starts them (each queued; the clients after the server)."""
    systemctl("start", *UNITS)
    layers.wait_for(lambda: set(states().values()) == {"active"}, timeout=300,
                    what="the units to be active")
    for name in CLIENTS:
        client(name, timeout=300)


def stop_units():
    systemctl("stop", *reversed(UNITS), check=False)
    systemctl("reset-failed", *UNITS, check=False)


def run(*argv, env=None):
    """(exit code, stdout, stderr) of a command run in the site directory."""
    return layers.run_in_site(*argv, site=SITE, env=env)


def release(version="2.0"):
    """A bad release: new code (VERSION) and a transaction written through the clients."""
    for name in CLIENTS:
        with open(os.path.join(SITE, name, "VERSION"), "w") as f:
            f.write(version + "\n")
    return client("client1", "POST", "/write")


class UnitsSite(layers.GuestPool):
    """The site built and its units running, one transaction written, the baseline snapshot
    (another tool's) taken."""

    @classmethod
    def setUp(cls):
        for dataset, mountpoint in DATASETS.items():
            sh("zfs", "create", "-p", "-o", "mountpoint=" + mountpoint, dataset)
        links = layers.find_links()
        with open(SITE + "/buildout.cfg", "w") as f:
            f.write(BUILDOUT_CFG.format(find_links="\n    ".join(links), index=links[0],
                                        eggs=EGGS, units=" ".join(UNITS),
                                        port=CLIENTS["client1"]))
        with open(SITE + "/zeo.conf", "w") as f:
            f.write(ZEO_CONF.format(port=ZEO_PORT, site=SITE))
        with open(os.path.join(layers.TEMPLATES, "client.py")) as src, \
                open(SITE + "/client.py", "w") as dest:
            dest.write(src.read())
        for name in CLIENTS:
            os.makedirs(os.path.join(SITE, name), exist_ok=True)
            with open(os.path.join(SITE, name, "VERSION"), "w") as f:
                f.write("1.0\n")
        with open(SITE + "/.gitignore", "w") as f:
            f.write("/bin/\n/parts/\n/develop-eggs/\n/var/\n/.installed.cfg\n/client*/var/\n")
        layers.first_release(SITE)
        rc, out, err = run("/opt/venv/bin/buildout")
        if rc != 0:
            raise AssertionError("bin/buildout of the units site failed:\n%s%s" % (out, err))
        # The units' failures and kills are the tests' doing: PID 1 need not print each on
        # the console (the suite's log).
        sh("systemd-analyze", "set-log-level", "err", check=False)
        for name, text in unit_files().items():
            with open(os.path.join(UNIT_DIR, name), "w") as f:
                f.write(text)
        systemctl("daemon-reload")
        # The server's first start dies once it has created the Data.fs (its FileStorage
        # would remove the blob directory, a mountpoint): Restart=on-failure starts it again.
        start_units()
        client("client1", "POST", "/write")
        sh("zfs", "snapshot", "%s@%s" % ("tank/units", BASELINE))
        sh("zfs", "snapshot", *["%s@%s" % (d, BASELINE) for d in DATASETS if d.startswith(
            "data/")])

    @classmethod
    def tearDown(cls):
        stop_units()
        for name in unit_files():
            path = os.path.join(UNIT_DIR, name)
            if os.path.exists(path):
                os.remove(path)
        systemctl("daemon-reload", check=False)

    @staticmethod
    def reset():
        """Back at the baseline: the units stopped, the datasets rolled back by hand (not by
        the code under test), the part's records gone, the units started."""
        stop_units()
        listed = sh("zfs", "list", "-H", "-o", "name", "-t", "filesystem").split()
        for name in listed:
            if "-rolled-away-" in name or "-rollback-" in name:
                dataset = name.split("-rolled-away-")[0].split("-rollback-")[0]
                origin = sh("zfs", "get", "-H", "-o", "value", "origin", dataset, check=False)
                if origin.startswith(name + "@"):
                    sh("zfs", "promote", dataset, check=False)
                sh("zfs", "destroy", "-R", name, check=False)
        for dataset in DATASETS:
            sh("zfs", "set", "canmount=on", dataset, check=False)
        sh("zfs", "mount", "-a", check=False)
        for dataset in DATASETS:
            sh("zfs", "rollback", "-r", "%s@%s" % (dataset, BASELINE))
        from collective.recipe.zfssnap import state
        for path in state.Places(layers.script_config(site=SITE)).record_candidates:
            if os.path.lexists(path):
                os.remove(path)
        start_units()
        return client("client1")

