"""Test layers that need real OpenZFS: they run only inside the lab guest (tests/lab/lab.py).

Each layer gets pools of its own on fresh file vdevs in the guest's scratch disk (itself a new
sparse file on the host for every boot), and destroys them when it is torn down: nothing a layer
does can leak into another layer or another run.
"""
import ast
import faulthandler
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
import xmlrpc.client

from collective.recipe.zfssnap.snapshot import by_pool


SCRATCH = os.environ.get("ZFSSNAP_LAB_SCRATCH", "/scratch")
# The series the ordinary suite runs on whole. The other series runs the crash-point sweep
# (test_crash_sweep) and the core workflow: the families skipped there test the scripts' own
# logic on layouts and faults, which does not change between OpenZFS 2.1 and 2.3, and running
# them twice would not fit CI's time.
FULL_SERIES = os.environ.get("ZFSSNAP_LAB_FULL_SERIES") or "2.1"


def full_series_only(test):
    """Run this test class or method on FULL_SERIES only (everywhere when not told the
    series): the other series runs what depends on OpenZFS's version or the second pool."""
    series = os.environ.get("ZFSSNAP_LAB_SERIES")
    return unittest.skipIf(series not in (None, FULL_SERIES),
                           "runs on OpenZFS %s only (the sweep runs here)" % FULL_SERIES)(test)


# The series whose guest suite runs the stacks (lab.py's STACK_SERIES, whose cached venv disk
# carries the Zope stack's eggs and ansible-core): they test what the part finds, supervisor's
# order and the phases across hosts, not OpenZFS.
STACK_SERIES = os.environ.get("ZFSSNAP_LAB_STACK_SERIES", "2.3")


def stack_series_only(test):
    series = os.environ.get("ZFSSNAP_LAB_SERIES")
    return unittest.skipIf(series not in (None, STACK_SERIES),
                           "the stacks run on OpenZFS %s only" % STACK_SERIES)(test)


# A command a test runs that has not ended after this long hangs (the longest, a buildout of
# the Zope stack, takes 4 minutes): it is killed and the test fails with what the guest's
# processes were doing, instead of the shard waiting for the lab to kill the whole guest.
COMMAND_TIMEOUT = 900
# A test still running after this long gets every thread's stack dumped to the console, again
# each time this passes: the lab's log then says where it waits.
TEST_WATCHDOG = 600


def bounded(argv, timeout=COMMAND_TIMEOUT, input=None, **popen):
    """subprocess.run for a test's commands, killed after `timeout` seconds with an
    AssertionError that shows the guest's processes as they were."""
    stdin = popen.pop("stdin", None)
    with subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else stdin,
                          text=True, **popen) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            forest = subprocess.run(  # every process but the kernel's threads
                ["ps", "--ppid", "2", "-p", "2", "--deselect", "--forest", "-o",
                 "pid,ppid,stat,etimes,wchan:24,args"], stdout=subprocess.PIPE,
                text=True).stdout
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError("%s did not end within %d s: killed it. Its output:\n%s%s\n"
                                 "The guest's processes before the kill:\n%s" % (
                                     list(argv), timeout, out or "", err or "", forest))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def sh(*argv, check=True, input=None, timeout=COMMAND_TIMEOUT):
    """Run a command of the test's own set-up (argv list); its output for the assertion."""
    proc = bounded(argv, timeout, input=input, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (exit %d):\n%s" % (argv, proc.returncode, proc.stdout))
    return proc.stdout


class GuestPool:
    """Pools `tank` and `data` (mounted at /tank and /data), each on a fresh file vdev.

    Two pools, as production sites often have (the system's and a data pool): a snapshot set
    over both is two `zfs snapshot` commands.
    """

    pools = ("tank", "data")
    vdev_size = 2 << 30

    @classmethod
    def setUp(cls):
        if not os.environ.get("ZFSSNAP_LAB"):
            raise RuntimeError("the GuestPool layers need real OpenZFS: they run in the lab "
                               "guest (make test-lab), not on this machine")
        for pool in cls.pools:
            vdev = os.path.join(SCRATCH, "%s-%s.img" % (cls.__name__, pool))
            with open(vdev, "wb") as f:
                f.truncate(cls.vdev_size)
            sh("zpool", "create", "-f", "-m", "/" + pool, pool, vdev)

    @classmethod
    def testSetUp(cls):
        faulthandler.dump_traceback_later(TEST_WATCHDOG, repeat=True, file=sys.__stderr__)

    @classmethod
    def testTearDown(cls):
        faulthandler.cancel_dump_traceback_later()

    @classmethod
    def tearDown(cls):
        for pool in cls.pools:
            sh("zpool", "destroy", "-f", pool, check=False)
            vdev = os.path.join(SCRATCH, "%s-%s.img" % (cls.__name__, pool))
            if os.path.exists(vdev):
                os.remove(vdev)


SITE = "/srv/site"
# The site's datasets, the buildout's first: Data.fs and blobs on datasets of their own.
# On the series that runs the core workflow only, Data.fs and blobs live on the second pool:
# the --keep sweep and the forensics tests run there with a snapshot set over two pools.
STORAGE_POOL = "tank" if os.environ.get("ZFSSNAP_LAB_SERIES") in (None, FULL_SERIES) else "data"
FILESTORAGE = STORAGE_POOL + "/site-filestorage"
BLOBSTORAGE = STORAGE_POOL + "/site-blobstorage"
DATASETS = {
    "tank/site": SITE,
    FILESTORAGE: SITE + "/var/filestorage",
    BLOBSTORAGE: SITE + "/var/blobstorage",
}
PORT = 8080
TEMPLATES = os.path.join(os.path.dirname(__file__), "site")
BASELINE = "lab-baseline"  # another tool's snapshot: the state every test starts from
GIT = ["git", "-c", "user.name=Lab", "-c", "user.email=lab@example.invalid"]
EVENTS = "/run/site-events.log"
SCRIPTS = ("snapshot", "rollback", "cleanup")


def find_links():
    """Where a site's buildout finds its eggs offline (lab.py sets it): the first is its index."""
    return os.environ.get("ZFSSNAP_LAB_FIND_LINKS", "/mnt/wheels /tmp/dist").split()


def buildout_cfg(extra_buildout="", extra_zfssnap="", extra_supervisor="", port=PORT,
                 backups="/scratch/site-backups", versions=""):
    links = find_links()
    with open(os.path.join(TEMPLATES, "buildout.cfg.in")) as f:
        return f.read().format(find_links="\n    ".join(links), index=links[0], port=port,
                               extra_buildout=extra_buildout, extra_zfssnap=extra_zfssnap,
                               extra_supervisor=extra_supervisor, backups=backups,
                               versions=versions)


def run_in_site(*argv, input=None, env=None, user=None, site=SITE, timeout=COMMAND_TIMEOUT):
    """(exit code, stdout, stderr) of a command run in the site directory."""
    if user:
        argv = ("runuser", "-u", user, "--") + argv
    proc = bounded(argv, timeout, input=input, cwd=site, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, env=env,
                   stdin=None if input is not None else subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def bin_(script, *args, **kw):
    return run_in_site(SITE + "/bin/" + script, *args, **kw)


def take_snapshot(label, **kw):
    """bin/snapshot LABEL, which must succeed: the name of the set it took."""
    rc, out, err = bin_("snapshot", label, **kw)
    if rc != 0:
        raise AssertionError("bin/snapshot %s failed (exit %d):\n%s%s" % (label, rc, out, err))
    return out.split()[1]


def on_terminal(argv, answer=None, prompt=b"Type yes", timeout=300, cwd=SITE):
    """(exit code, what the terminal showed) of a command run on a pseudo-terminal; `answer`
    is typed when `prompt` shows."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal pty.fork made
        try:
            os.chdir(cwd)
            os.execv(argv[0], list(argv))
        finally:
            os._exit(127)
    output = b""
    answered = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if answer is not None and not answered and prompt in output:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return (os.waitstatus_to_exitcode(status),
            output.decode("utf-8", "replace").replace("\r\n", "\n"))


def script_config(script="rollback", site=SITE):
    """The part's options as bin/SCRIPT has them (the dict the recipe wrote)."""
    with open(os.path.join(site, "bin", script)) as f:
        text = f.read()
    call = text.rindex("(", 0, text.rindex("))"))
    return ast.literal_eval(text[call + 1:text.rindex("))")])


def configure(**changes):
    """Change options in the generated scripts directly, as bin/buildout would write them.

    What the recipe computes from buildout.cfg is tested through real bin/buildout runs; the
    scripts' behaviour under other settings is tested faster by editing their plain-data
    arguments (bin/ is on tank/site: the next reset() puts the original scripts back).
    """
    for script in SCRIPTS:
        path = os.path.join(SITE, "bin", script)
        with open(path) as f:
            text = f.read()
        end = text.rindex("))")
        start = text.rindex("(", 0, end)
        config = ast.literal_eval(text[start + 1:end])
        config.update(changes)
        with open(path, "w") as f:
            f.write(text[:start + 1] + repr(config) + text[end:])


def write_script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def supervisorctl(*args, site=SITE):
    return run_in_site(site + "/bin/supervisorctl", *args, site=site)[1]


def program_states(site=SITE):
    """{program: state} as `supervisorctl status` shows them ({} when supervisord is down).

    Asked over supervisord's socket from this process (a bin/supervisorctl per poll costs a
    second of emulated CPU, and the tests poll often): supervisord's own answer, through the
    package's reader of the [supervisorctl] section and its transport, not its adapter."""
    from collective.recipe.zfssnap import supervisor
    try:
        url, user, password = supervisor.read_client_config(
            script_config(site=site)["supervisor_conf"])
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=supervisor._Transport(
            url, user, password, 30))
        try:
            infos = proxy.supervisor.getAllProcessInfo()
        finally:
            proxy("close")()  # the transport keeps its connection open otherwise
    except OSError:
        return {}
    except (supervisor.SupervisorError, xmlrpc.client.ProtocolError):
        return program_states_by_supervisorctl(site)
    return {(i["name"] if i["group"] == i["name"] else "%s:%s" % (i["group"], i["name"])):
            i["statename"] for i in infos}


def program_states_by_supervisorctl(site=SITE):
    states = {}
    for line in supervisorctl("status", site=site).splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in ("STOPPED", "STARTING", "RUNNING", "BACKOFF",
                                            "STOPPING", "EXITED", "FATAL", "UNKNOWN"):
            states[words[0]] = words[1]
    return states


def wait_for(predicate, timeout=90, what="a condition"):
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
        time.sleep(0.2)


def app(path="/state", method="GET", bind_timeout=60, address="127.0.0.1", port=PORT):
    # supervisord calls the app RUNNING once it has lived startsecs; on a loaded TCG guest its
    # interpreter may not have reached bind() by then. A refused connection means the request
    # was never sent, so it is safe to try again, even for a POST.
    req = urllib.request.Request("http://%s:%d%s" % (address, port, path), method=method,
                                 data=b"" if method == "POST" else None)
    deadline = time.monotonic() + bind_timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


RUNNING = {"app": "RUNNING", "worker": "RUNNING"}


def start_site(user=None, expected=RUNNING):
    if user:
        run_in_site(SITE + "/bin/supervisord", user=user)
    else:
        run_in_site(SITE + "/bin/supervisord")
    wait_for(lambda: program_states() == expected, what="%s RUNNING" % ", ".join(expected))
    return wait_for(app, what="the app to answer")


def processes_named(suffix):
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if any(w.endswith(suffix) for w in words[:2]):
            pids.append(int(entry))
    return pids


def supervisord_pids():
    return processes_named(b"/bin/supervisord")


def program_pids():
    """Pids of the site's programs (SITE/*.py run by bin/py)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if any(w.startswith(SITE.encode() + b"/") and w.endswith(b".py") for w in words[1:3]):
            pids.append(int(entry))
    return pids


def stop_site():
    """Stop whatever supervisord runs (a test may have moved its socket), and its programs."""
    for pid in supervisord_pids():
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not supervisord_pids(), what="supervisord to shut down")
    for pid in program_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not program_pids(), what="the programs to exit")


def edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, "%r not in %s" % (old, path)
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def rebuild(user=None):
    rc, out, err = run_in_site("/opt/venv/bin/buildout", user=user)
    assert rc == 0, "bin/buildout failed:\n" + out + err
    return out + err


def first_release(site):
    """The site directory as a git checkout, its files committed and tagged 1.0."""
    sh("git", "-C", site, "init", "-q", "-b", "main")
    sh(*GIT, "-C", site, "add", "-A")
    sh(*GIT, "-C", site, "commit", "-q", "-m", "Release 1.0")
    sh(*GIT, "-C", site, "tag", "1.0")


def last_tid_on_disk():
    """The Data.fs's last transaction id, read from the file (read-only: no lock taken)."""
    import ZODB.FileStorage
    fs = ZODB.FileStorage.FileStorage(SITE + "/var/filestorage/Data.fs", read_only=True)
    try:
        return fs.lastTransaction().hex()
    finally:
        fs.close()


def snapshots(dataset):
    return sh("zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name", "-s", "createtxg",
              dataset).split()


def events():
    try:
        with open(EVENTS) as f:
            return [tuple(line.split()[:2]) for line in f]
    except FileNotFoundError:
        return []


class Site(GuestPool):
    """A real site on three datasets: buildout, Data.fs and blobs written by ZODB, supervisor.

    Built once (bin/buildout takes minutes under emulation); every test starts from the
    baseline snapshot through `reset()`.
    """

    extra_zfssnap = ""  # more options of the [zfssnap] part

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
            f.write(buildout_cfg(extra_zfssnap=cls.extra_zfssnap))
        with open(SITE + "/.gitignore", "w") as f:
            f.write("/bin/\n/eggs/\n/parts/\n/develop-eggs/\n/var/\n/.installed.cfg\n")
        first_release(SITE)
        rc, out, err = run_in_site("/opt/venv/bin/buildout")
        if rc != 0:
            raise AssertionError("bin/buildout of the test site failed:\n%s%s" % (out, err))
        start_site()
        app("/write?blob=first", "POST")
        for _, names in by_pool(["%s@%s" % (d, BASELINE) for d in DATASETS]):
            sh("zfs", "snapshot", *names)  # one zfs snapshot takes one pool's

    @classmethod
    def tearDown(cls):
        stop_site()

    @staticmethod
    def reset(start=True):
        """Back to the baseline: stopped, rolled back by hand (not by the code under test)."""
        stop_site()
        # What a failed test may have left: the datasets replaced by clones (--keep), their
        # kept states, datasets a killed --keep left with canmount off, unmounted datasets.
        # One zfs list for all of it: each zfs call costs here, before every test.
        listed = [line.split("\t") for line in sh(
            "zfs", "list", "-H", "-o", "name,canmount,mounted", "-t", "filesystem").splitlines()]
        leftovers = False
        for name, _, _ in listed:
            if "-rolled-away-" in name or "-rollback-" in name:
                leftovers = True
                dataset = name.split("-rolled-away-")[0].split("-rollback-")[0]
                origin = sh("zfs", "get", "-H", "-o", "value", "origin", dataset, check=False)
                if origin.startswith(name + "@"):
                    sh("zfs", "promote", dataset, check=False)
                sh("zfs", "destroy", "-R", name, check=False)
        ours = {name: (canmount, mounted) for name, canmount, mounted in listed
                if name in DATASETS}
        for name, (canmount, _) in ours.items():
            if canmount != "on":
                sh("zfs", "set", "canmount=on", name, check=False)
        if leftovers or set(ours) != set(DATASETS) or any(
                value != ("on", "yes") for value in ours.values()):
            sh("zfs", "mount", "-a", check=False)
        for dataset in DATASETS:
            sh("zfs", "rollback", "-r", "%s@%s" % (dataset, BASELINE))
        for path in (EVENTS,):
            if os.path.exists(path):
                os.remove(path)
        # What the scripts keep outside the datasets: no test inherits another's record.
        from collective.recipe.zfssnap import state
        for path in state.Places(script_config()).record_candidates:
            if os.path.lexists(path):
                os.remove(path)
        return start_site() if start else None
