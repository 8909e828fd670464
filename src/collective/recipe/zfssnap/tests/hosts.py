"""A site over three hosts in the lab guest, driven by Ansible over real SSH.

One guest plays three hosts, each on a loopback address of its own with an sshd of its own:
the ZEO server host `zeo` (127.0.0.2: its buildout on tank/zeo, Data.fs and blobs on datasets
of the data pool) and two client hosts `client1` and `client2` (127.0.0.3 and .4: a buildout
each, on tank/client1 and tank/client2, running a ZEO client app). Each host has its own
buildout, its own [zfssnap] part and its own supervisord; the keys and host keys are made here.
ansible-core (in /opt/ansible, from the cached venv disk) runs the collection built from the
checkout (/mnt/src) and installed as an operator would install it.

Used by test_hosts, on the series of layers.STACK_SERIES (whose venv disk has the eggs).
"""
import os
import signal
import subprocess
import time

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.layers import sh


class Host:
    def __init__(self, name, address, group, datasets, program):
        self.name = name
        self.address = address
        self.group = group
        self.buildout = "/srv/" + name
        # {dataset: mountpoint}, the buildout's first.
        self.datasets = {dataset: self.buildout + path for dataset, path in datasets}
        self.program = program
        self.supervisord_log = "/var/log/%s-supervisord.log" % name
        self.sshd_config = os.path.join(WORK, "sshd-%s.conf" % name)
        self.sshd_pid = "/run/lab-sshd-%s.pid" % name

    def __repr__(self):
        return self.name


WORK = "/tmp/hosts"
ZEO_PORT = 8100
HTTP_PORT = 8080
SERVER = Host("zeo", "127.0.0.2", "zeo_servers",
              [("tank/zeo", ""), ("data/zeo-filestorage", "/var/filestorage"),
               ("data/zeo-blobstorage", "/var/blobstorage")], "zeoserver")
CLIENTS = (Host("client1", "127.0.0.3", "zeo_clients", [("tank/client1", "")], "client"),
           Host("client2", "127.0.0.4", "zeo_clients", [("tank/client2", "")], "client"))
HOSTS = (SERVER,) + CLIENTS
ZEO_ADDRESS = "%s:%d" % (SERVER.address, ZEO_PORT)
DATAFS = SERVER.buildout + "/var/filestorage/Data.fs"
EVENTS = "/run/hosts-events.log"
ANSIBLE = "/opt/ansible/bin/"
COLLECTION = "/mnt/src/ansible/ansible_collections/collective/zfssnap"
EGGS = "/opt/eggs"  # the Zope stack's eggs on the cached venv disk: ZEO, supervisor, recipes

BUILDOUT_CFG = """\
[buildout]
parts = {program} supervisor zfssnap
find-links = {find_links}
index = file://{index}
newest = false
# Outside the datasets, shared between buildouts, as ~/.buildout/eggs often is.
eggs-directory = {eggs}

{program_part}

[supervisor]
recipe = collective.recipe.supervisor
http-socket = unix
file = ${{buildout:directory}}/var/supervisord.sock
# Outside the datasets: the order of the stops and starts must outlive the rollback.
logfile = {supervisord_log}
programs =
    {programs}

[zfssnap]
recipe = collective.recipe.zfssnap
stop-timeout = 30
"""
SERVER_PART = """\
[zeoserver]
recipe = zc.recipe.egg
eggs = ZEO
scripts = runzeo"""
SERVER_PROGRAMS = ("10 zeoserver ${buildout:bin-directory}/runzeo "
                   "[-C ${buildout:directory}/zeo.conf] ${buildout:directory} true")
CLIENT_PART = """\
[client]
recipe = zc.recipe.egg
eggs = ZEO
interpreter = py"""
CLIENT_PROGRAMS = ("10 client (startsecs=2) ${buildout:bin-directory}/py "
                   "[${buildout:directory}/client.py ${buildout:directory} %s %d %s] "
                   "${buildout:directory} true")
ZEO_CONF = """\
<zeo>
  address {address}
</zeo>
<filestorage 1>
  path {datafs}
  blob-dir {blobs}
</filestorage>
"""
SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {work}/ssh-{name}/host_key
PidFile {pid}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {work}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
{extra}
"""
ANSIBLE_CFG = """\
[defaults]
inventory = {work}/inventory.ini
collections_path = {work}/collections
private_key_file = {work}/id_ed25519
interpreter_python = /usr/bin/python3
forks = 5
retry_files_enabled = false
timeout = 60

[ssh_connection]
pipelining = true
# No shared connection outlives a task: a host killed by the test loses its sessions too.
ssh_args = -o ControlMaster=no -o UserKnownHostsFile={work}/known_hosts -o IdentitiesOnly=yes
"""


def buildout_cfg(host):
    links = layers.find_links()
    if host is SERVER:
        part, programs = SERVER_PART, SERVER_PROGRAMS
    else:
        part, programs = CLIENT_PART, CLIENT_PROGRAMS % (host.address, HTTP_PORT, ZEO_ADDRESS)
    return BUILDOUT_CFG.format(program=host.program, find_links="\n    ".join(links),
                               index=links[0], eggs=EGGS, program_part=part,
                               supervisord_log=host.supervisord_log,
                               programs=programs)


def inventory():
    lines = []
    for group in ("zeo_servers", "zeo_clients"):
        lines.append("[%s]" % group)
        for host in HOSTS:
            if host.group == group:
                health = (" zfssnap_health_url=http://%s:%d/state" % (host.address, HTTP_PORT)
                          if host in CLIENTS else "")
                lines.append("%s ansible_host=%s zfssnap_buildout=%s%s"
                             % (host.name, host.address, host.buildout, health))
    lines += ["[all:vars]", "ansible_user=root", "zfssnap_health_retries=90", ""]
    return "\n".join(lines)


# -- the hosts' sshd: started, killed with the host, started again at its boot -------------------
def start_sshd(host, env=None):
    """The host's sshd; `env`: variables its sessions get (sshd's SetEnv), as a host-wide
    setting would (the test's crash point for one host's scripts)."""
    extra = "SetEnv %s" % " ".join("%s=%s" % item for item in sorted(env.items())) if env else ""
    with open(host.sshd_config, "w") as f:
        f.write(SSHD_CONFIG.format(address=host.address, work=WORK, name=host.name,
                                   pid=host.sshd_pid, extra=extra))
    sh("/usr/sbin/sshd", "-f", host.sshd_config)
    layers.wait_for(lambda: listening(host.address, 22), timeout=60,
                    what="%s's sshd to listen" % host.name)


def listening(address, port):
    import socket
    with socket.socket() as s:
        return s.connect_ex((address, port)) == 0


def sshd_pid(host):
    try:
        with open(host.sshd_pid) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def host_pids(host):
    """The processes of a host: its sshd with its sessions, and every process run from its
    buildout (supervisord, the programs, a bin/rollback)."""
    pids = []
    pending = [sshd_pid(host)] if sshd_pid(host) else []
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending += children(pid)
    prefix = (host.buildout + "/").encode()
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if any(w.startswith(prefix) for w in words[:3]) and int(entry) not in pids:
            pids.append(int(entry))
    return pids


def power_cut(host):
    """Every process of the host killed at once, then its boot: its datasets unmounted and
    mounted again as `zfs mount -a` does, its sshd and its supervisord started."""
    for pid in host_pids(host):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    layers.wait_for(lambda: not [p for p in host_pids(host) if os.path.exists("/proc/%d" % p)
                                 and state_of(p) != "Z"], timeout=60,
                    what="%s's processes to die" % host.name)
    for dataset in reversed(list(host.datasets)):
        sh("zfs", "unmount", dataset, check=False)
    sh("zfs", "mount", "-a")
    start_sshd(host)
    if os.path.exists(host.buildout + "/bin/supervisord"):
        sh(host.buildout + "/bin/supervisord")


def state_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# -- the programs ----------------------------------------------------------------------------
def program_states(host):
    return layers.program_states(site=host.buildout)


def client(host, path="/state", method="GET", timeout=120):
    """A client's answer (its JSON); a client not listening yet is asked again."""
    return layers.app(path, method, timeout, address=host.address, port=HTTP_PORT)


def start(host):
    sh(host.buildout + "/bin/supervisord")
    layers.wait_for(lambda: program_states(host) == {host.program: "RUNNING"}, timeout=300,
                    what="%s RUNNING on %s" % (host.program, host.name))
    if host is SERVER:
        layers.wait_for(lambda: listening(SERVER.address, ZEO_PORT), timeout=300,
                        what="the ZEO server to listen")
    else:
        client(host, timeout=300)


def last_tid_on_disk():
    import ZODB.FileStorage
    fs = ZODB.FileStorage.FileStorage(DATAFS, read_only=True)
    try:
        return fs.lastTransaction().hex()
    finally:
        fs.close()


def supervisor_events(host, since=0):
    """[(time, 'spawned'|'stopped'|'exited', program)] in the host's supervisord log, from
    byte offset `since`."""
    import datetime
    import re
    found = []
    with open(host.supervisord_log) as f:
        f.seek(since)
        for line in f:
            m = re.match(r"(\S+ \S+),(\d+) INFO (spawned|stopped|exited): '?([\w-]+)'?", line)
            if m:
                stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
                found.append((stamp.timestamp() + int(m.group(2)) / 1000, m.group(3),
                              m.group(4)))
    return found


def log_sizes():
    return {host.name: os.path.getsize(host.supervisord_log) for host in HOSTS}


def events():
    """[(time, host, what, pid, text)] of the clients' events file."""
    found = []
    try:
        with open(EVENTS) as f:
            for line in f:
                words = line.rstrip("\n").split(" ", 4)
                found.append((float(words[0]), words[1], words[2], int(words[3]),
                              words[4] if len(words) > 4 else ""))
    except FileNotFoundError:
        pass
    return found


def playbook(name, *extra, timeout=layers.COMMAND_TIMEOUT, check=False):
    """(exit code, output) of `ansible-playbook collective.zfssnap.NAME` with -e pairs
    (--check with `check`)."""
    argv = [ANSIBLE + "ansible-playbook", "collective.zfssnap." + name] + (
        ["--check"] if check else [])
    for item in extra:
        argv += ["-e", item]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(WORK, "ansible.cfg"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    started = time.monotonic()
    proc = layers.bounded(argv, timeout, cwd=WORK, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    print("\n  ansible-playbook %s%s %s: exit %d in %.0f s" % (
        name, " --check" if check else "", " ".join(extra), proc.returncode,
        time.monotonic() - started), end="", flush=True)
    return proc.returncode, proc.stdout


def setup_ssh():
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab-controller",
       "-f", os.path.join(WORK, "id_ed25519"))
    with open(os.path.join(WORK, "id_ed25519.pub")) as f:
        controller_key = f.read()
    with open(os.path.join(WORK, "authorized_keys"), "w") as f:
        f.write(controller_key)
    known = []
    for host in HOSTS:
        keys = os.path.join(WORK, "ssh-" + host.name)
        os.makedirs(keys)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name,
           "-f", os.path.join(keys, "host_key"))
        with open(os.path.join(keys, "host_key.pub")) as f:
            known.append("%s %s" % (host.address, " ".join(f.read().split()[:2])))
        start_sshd(host)
    with open(os.path.join(WORK, "known_hosts"), "w") as f:
        f.write("\n".join(known) + "\n")


def install_collection():
    """The collection built from the checkout and installed, as an operator does."""
    dist = os.path.join(WORK, "dist")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(WORK, "ansible.cfg"))
    proc = layers.bounded([ANSIBLE + "ansible-galaxy", "collection", "build", COLLECTION,
                           "--output-path", dist], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    assert proc.returncode == 0, "ansible-galaxy collection build failed:\n" + proc.stdout
    tarball = [os.path.join(dist, n) for n in os.listdir(dist) if n.endswith(".tar.gz")][0]
    proc = layers.bounded([ANSIBLE + "ansible-galaxy", "collection", "install", "--offline",
                           "-p", os.path.join(WORK, "collections"), tarball], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, "ansible-galaxy collection install failed:\n" + proc.stdout


def build_host(host):
    """The host's datasets, buildout directory (a git checkout at tag 1.0); bin/buildout is
    started, not waited for."""
    for dataset, mountpoint in host.datasets.items():
        sh("zfs", "create", "-p", "-o", "mountpoint=" + mountpoint, dataset)
    os.makedirs(host.buildout + "/var/log", exist_ok=True)
    with open(host.buildout + "/buildout.cfg", "w") as f:
        f.write(buildout_cfg(host))
    with open(host.buildout + "/VERSION", "w") as f:
        f.write("1.0\n")
    if host is SERVER:
        with open(host.buildout + "/zeo.conf", "w") as f:
            f.write(ZEO_CONF.format(address=ZEO_ADDRESS, datafs=DATAFS,
                                    blobs=host.buildout + "/var/blobstorage"))
    else:
        with open(os.path.join(layers.TEMPLATES, "client.py")) as src, \
                open(host.buildout + "/client.py", "w") as dest:
            dest.write(src.read())
    with open(host.buildout + "/.gitignore", "w") as f:
        f.write("/bin/\n/parts/\n/develop-eggs/\n/var/\n/.installed.cfg\n")
    layers.first_release(host.buildout)
    return subprocess.Popen(["/opt/venv/bin/buildout"], cwd=host.buildout,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def first_server_start():
    """A FileStorage that creates its Data.fs also removes its blob directory, which a
    dataset's mountpoint refuses (see zope_site.zeo_alone): the server's first start dies
    once the file exists; supervisord starts it again, and that start opens the file."""
    sh(SERVER.buildout + "/bin/supervisord")
    layers.wait_for(lambda: listening(SERVER.address, ZEO_PORT), timeout=300,
                    what="the ZEO server to listen")
    layers.wait_for(lambda: program_states(SERVER) == {"zeoserver": "RUNNING"}, timeout=120,
                    what="zeoserver RUNNING")


class Hosts(layers.GuestPool):
    """The three hosts built and running, the site written to once through client1."""

    @classmethod
    def setUp(cls):
        os.makedirs(WORK, exist_ok=True)
        with open(os.path.join(WORK, "ansible.cfg"), "w") as f:
            f.write(ANSIBLE_CFG.format(work=WORK))
        with open(os.path.join(WORK, "inventory.ini"), "w") as f:
            f.write(inventory())
        # The server's buildout first, alone: it installs the part's egg into the shared
        # eggs directory, which the clients' buildouts, side by side, then only link to.
        first = build_host(SERVER)
        setup_ssh()
        install_collection()
        for builds in ([(SERVER, first)], [(host, build_host(host)) for host in CLIENTS]):
            for host, proc in builds:
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise AssertionError("bin/buildout of %s failed:\n%s" % (host.name, out))
        first_server_start()
        for host in CLIENTS:
            start(host)
        client(CLIENTS[0], "/write", "POST")

    @classmethod
    def tearDown(cls):
        for host in HOSTS:
            for pid in host_pids(host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(1)
