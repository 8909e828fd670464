"""Test layers that need real OpenZFS: they run only inside the lab guest (tests/lab/lab.py).

Each layer gets pools of its own on fresh file vdevs in the guest's scratch disk (itself a new
sparse file on the host for every boot), and destroys them when it is torn down: nothing a layer
does can leak into another layer or another run.
"""
import os
import subprocess


SCRATCH = os.environ.get("ZFSSNAP_LAB_SCRATCH", "/scratch")


def sh(*argv, check=True):
    """Run a command of the test's own set-up (argv list); its output for the assertion."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (exit %d):\n%s" % (argv, proc.returncode, proc.stdout))
    return proc.stdout


class GuestPool:
    """Pool `tank` (mounted at /tank) on a fresh 2 GiB file vdev."""

    pools = ("tank",)

    @classmethod
    def setUp(cls):
        if not os.environ.get("ZFSSNAP_LAB"):
            raise RuntimeError("the GuestPool layers need real OpenZFS: they run in the lab "
                               "guest (make test-lab), not on this machine")
        for pool in cls.pools:
            vdev = os.path.join(SCRATCH, "%s-%s.img" % (cls.__name__, pool))
            with open(vdev, "wb") as f:
                f.truncate(2 << 30)
            sh("zpool", "create", "-f", "-m", "/" + pool, pool, vdev)

    @classmethod
    def tearDown(cls):
        for pool in cls.pools:
            sh("zpool", "destroy", "-f", pool, check=False)
            vdev = os.path.join(SCRATCH, "%s-%s.img" % (cls.__name__, pool))
            if os.path.exists(vdev):
                os.remove(vdev)


SITE = "/srv/site"
# The site's datasets, the buildout's first: Data.fs and blobs on datasets of their own.
DATASETS = {
    "tank/site": SITE,
    "tank/site-filestorage": SITE + "/var/filestorage",
    "tank/site-blobstorage": SITE + "/var/blobstorage",
}
PORT = 8080
TEMPLATES = os.path.join(os.path.dirname(__file__), "site")
BASELINE = "lab-baseline"  # another tool's snapshot: the state every test starts from
GIT = ["git", "-c", "user.name=Lab", "-c", "user.email=lab@example.invalid"]


def buildout_cfg(extra_buildout="", extra_zfssnap="", extra_supervisor=""):
    links = os.environ.get("ZFSSNAP_LAB_FIND_LINKS", "/mnt/wheels /tmp/dist").split()
    with open(os.path.join(TEMPLATES, "buildout.cfg.in")) as f:
        return f.read().format(find_links="\n    ".join(links), index=links[0], port=PORT,
                               extra_buildout=extra_buildout, extra_zfssnap=extra_zfssnap,
                               extra_supervisor=extra_supervisor)


def run_in_site(*argv, input=None, env=None):
    """(exit code, stdout, stderr) of a command run in the site directory."""
    proc = subprocess.run(argv, cwd=SITE, input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env,
                          stdin=None if input is not None else subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def supervisorctl(*args):
    return run_in_site(SITE + "/bin/supervisorctl", *args)[1]


def program_states():
    from collective.recipe.zfssnap.supervisor import parse_status
    return parse_status(supervisorctl("status"))


def wait_for(predicate, timeout=90, what="a condition"):
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(0.5)


def app(path="/state", method="GET"):
    import json
    import urllib.request
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (PORT, path), method=method,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def start_site():
    run_in_site(SITE + "/bin/supervisord")
    wait_for(lambda: program_states() == {"app": "RUNNING", "worker": "RUNNING"},
             what="app and worker RUNNING")
    return wait_for(app, what="the app to answer")


def supervisord_pids():
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if any(w.endswith(b"/bin/supervisord") for w in words[:2]):
            pids.append(int(entry))
    return pids


def stop_site():
    """Stop whatever supervisord runs (a test may have moved its socket), and its programs."""
    for pid in supervisord_pids():
        os.kill(pid, 15)
    wait_for(lambda: not supervisord_pids(), what="supervisord to shut down")
    subprocess.run(["pkill", "-f", SITE + "/(app|worker|stubborn).py"])


def edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, "%r not in %s" % (old, path)
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def rebuild():
    rc, out, err = run_in_site("/opt/venv/bin/buildout")
    assert rc == 0, "bin/buildout failed:\n" + out + err
    return out + err


def last_tid_on_disk():
    """The Data.fs's last transaction id, read from the file (read-only: no lock taken)."""
    import ZODB.FileStorage
    fs = ZODB.FileStorage.FileStorage(SITE + "/var/filestorage/Data.fs", read_only=True)
    try:
        return fs.lastTransaction().hex()
    finally:
        fs.close()


class Site(GuestPool):
    """A real site on three datasets: buildout, Data.fs and blobs written by ZODB, supervisor.

    Built once (bin/buildout takes minutes under emulation); every test starts from the
    baseline snapshot through `reset()`.
    """

    @classmethod
    def setUp(cls):
        for dataset, mountpoint in DATASETS.items():
            sh("zfs", "create", "-o", "mountpoint=" + mountpoint, dataset)
        os.makedirs(SITE + "/var/log", exist_ok=True)
        for name in ("app.py", "worker.py", "stubborn.py"):
            with open(os.path.join(TEMPLATES, name)) as src, \
                    open(os.path.join(SITE, name), "w") as dest:
                dest.write(src.read())
        with open(SITE + "/VERSION", "w") as f:
            f.write("1.0\n")
        with open(SITE + "/buildout.cfg", "w") as f:
            f.write(buildout_cfg())
        with open(SITE + "/.gitignore", "w") as f:
            f.write("/bin/\n/eggs/\n/parts/\n/develop-eggs/\n/var/\n/.installed.cfg\n")
        sh("git", "-C", SITE, "init", "-q", "-b", "main")
        sh(*GIT, "-C", SITE, "add", "-A")
        sh(*GIT, "-C", SITE, "commit", "-q", "-m", "Release 1.0")
        sh(*GIT, "-C", SITE, "tag", "1.0")
        rc, out, err = run_in_site("/opt/venv/bin/buildout")
        if rc != 0:
            raise AssertionError("bin/buildout of the test site failed:\n%s%s" % (out, err))
        start_site()
        app("/write?blob=first", "POST")
        sh("zfs", "snapshot", *["%s@%s" % (d, BASELINE) for d in DATASETS])

    @classmethod
    def tearDown(cls):
        stop_site()

    @staticmethod
    def reset():
        """Back to the baseline: stopped, rolled back by hand (not by the code under test)."""
        stop_site()
        for dataset in DATASETS:
            sh("zfs", "rollback", "-r", "%s@%s" % (dataset, BASELINE))
        return start_site()
