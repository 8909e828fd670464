"""A Zope site deployed without buildout (lab guest, STACK_SERIES): a virtualenv made with pip,
the instance laid out as cookiecutter-zope-instance lays it out (instance/etc/zope.conf,
zope.ini, site.zcml, inituser; data under instance/var), a ZEO server with its own zeo.conf,
and the two run by runzeo and runwsgi under a plain supervisord.conf, as an operator writes
it. The site's package set comes from requirements.txt; the site's own package
(pip-site-policy) is a wheel the release changes.

The virtualenv is made once, by pip, on the guest's cached venv disk (/opt/pip-site, lab.py's
STACK_WARM): a pip install of Zope's ~60 wheels and their compiled files under emulation took
minutes. The site gets a copy of it on its dataset, moved to its place as `virtualenv
--relocatable` did (the scripts' first lines), then pip installs the rest into it.

Used by test_pip_site.
"""
import base64
import hashlib
import os
import shutil
import zipfile

from collective.recipe.zfssnap.tests import layers
from collective.recipe.zfssnap.tests.units_site import UNIT
from collective.recipe.zfssnap.tests import zope_site
from collective.recipe.zfssnap.tests.layers import sh

SITE = "/srv/pip-site"
VENV = SITE + "/.venv"
CACHED_VENV = "/opt/pip-site"
DATASETS = {
    "tank/pip-site": SITE,
    "data/pip-site-filestorage": SITE + "/instance/var/filestorage",
    "data/pip-site-blobstorage": SITE + "/instance/var/blobstorage",
}
DATAFS = SITE + "/instance/var/filestorage/Data.fs"
ZEO_PORT = 8130
HTTP_PORT = 8083
USER, PASSWORD = "admin", "lab-secret"
SUPERVISORD_LOG = "/var/log/pip-site-supervisord.log"
PROGRAMS = {"zeo": "RUNNING", "instance": "RUNNING"}
UNITS = ["pip-site-zeo.service", "pip-site-instance.service"]
WHEELS = "/scratch/pip-site-wheels"  # the site's own package, one wheel per release
POLICY = "pip-site-policy"

REQUIREMENTS = """\
Zope==6.3
ZEO==6.2
supervisor==4.3.0
{policy}=={version}
"""
ZEO_CONF = """\
<zeo>
  address 127.0.0.1:{port}
</zeo>
<filestorage 1>
  path {site}/instance/var/filestorage/Data.fs
  blob-dir {site}/instance/var/blobstorage
</filestorage>
"""
# What cookiecutter-zope-instance writes for db_storage = zeo (absolute paths, as it writes
# them), trimmed to what Zope needs.
ZOPE_CONF = """\
%define INSTANCEHOME {site}/instance
instancehome $INSTANCEHOME
%define CLIENTHOME {site}/instance/var
clienthome $CLIENTHOME
debug-mode off
security-policy-implementation C
verbose-security off
default-zpublisher-encoding utf-8
<environment>
    CHAMELEON_CACHE {site}/instance/var/cache
</environment>
<zodb_db main>
    mount-point /
    cache-size 30000
    <zeoclient>
        shared-blob-dir false
        blob-dir {site}/instance/var/blobcache
        server 127.0.0.1:{port}
        name zeostorage
        cache-size 128MB
    </zeoclient>
</zodb_db>
"""
ZOPE_INI = """\
[app:zope]
use = egg:Zope#main
zope_conf = %(here)s/zope.conf

[server:main]
use = egg:waitress#main
listen = 127.0.0.1:{port}
threads = 2

[pipeline:main]
pipeline =
    egg:Zope#httpexceptions
    zope
"""
SITE_ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope"
           xmlns:five="http://namespaces.zope.org/five">
  <include package="Zope2.App" />
  <five:loadProducts file="meta.zcml"/>
  <five:loadProducts />
  <five:loadProductsOverrides />
</configure>
"""
SUPERVISORD_CONF = """\
; The site's supervisord, started with: .venv/bin/supervisord -c supervisord.conf
[unix_http_server]
file = %(here)s/var/supervisor.sock

[supervisord]
logfile = {log}
pidfile = %(here)s/var/supervisord.pid
childlogdir = %(here)s/var/log
directory = %(here)s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://%(here)s/var/supervisor.sock

[program:zeo]
command = %(here)s/.venv/bin/runzeo -C %(here)s/zeo/etc/zeo.conf
priority = 10
startsecs = 3

[program:instance]
command = %(here)s/.venv/bin/runwsgi %(here)s/instance/etc/zope.ini
priority = 20
startsecs = 5
"""
GITIGNORE = "/.venv/\n/var/\n/instance/var/\n"


def run(*argv, env=None):
    """(exit code, stdout, stderr) of a command run in the site directory."""
    return layers.run_in_site(*argv, site=SITE, env=env)


def zfssnap(*args, env=None):
    """The site's own `zfssnap`, installed by pip into its virtualenv."""
    return run(VENV + "/bin/zfssnap", *args, env=env)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def policy_wheel(version):
    """The site's own package as a wheel of that version (pip installs it as any other)."""
    os.makedirs(WHEELS, exist_ok=True)
    name = POLICY.replace("-", "_")
    path = os.path.join(WHEELS, "%s-%s-py3-none-any.whl" % (name, version))
    info = "%s-%s.dist-info" % (name, version)
    files = {
        name + ".py": "VERSION = %r\n" % version,
        info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (POLICY, version),
        info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: lab\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append("%s,sha256=%s,%d" % (arcname, digest.decode(), len(data)))
            whl.writestr(arcname, data)
        whl.writestr(info + "/RECORD", "\n".join(record + [info + "/RECORD,,"]) + "\n")
    return path


def pip_install(*args):
    """pip of the site's virtualenv, offline: the guest's wheelhouse and the site's wheels."""
    links = [a for link in layers.find_links() + [WHEELS] for a in ("--find-links", link)]
    rc, out, err = run(VENV + "/bin/pip", "install", "-q", "--disable-pip-version-check",
                       "--no-index", *links, *args)
    if rc != 0:
        raise AssertionError("pip install %s failed (exit %d):\n%s%s"
                             % (" ".join(args), rc, out, err))


def release_requirements(version):
    write(SITE + "/requirements.txt", REQUIREMENTS.format(policy=POLICY, version=version))


def installed_policy():
    rc, out, err = run(VENV + "/bin/python", "-c", "import pip_site_policy; "
                       "print(pip_site_policy.VERSION)")
    return out.strip() if rc == 0 else "not importable: " + err.strip()[-300:]


def relocated_venv():
    """The cached virtualenv copied onto the site's dataset and moved to VENV: its scripts'
    first lines and activate scripts name VENV."""
    sh("cp", "-a", CACHED_VENV + "/.", VENV)
    old, new = CACHED_VENV.encode(), VENV.encode()
    for directory in (os.path.join(VENV, "bin"),):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if old in data:
                with open(path, "wb") as f:
                    f.write(data.replace(old, new))
    with open(VENV + "/pyvenv.cfg") as f:
        text = f.read()
    write(VENV + "/pyvenv.cfg", text.replace(CACHED_VENV, VENV))


def zope(path, data=None, timeout=60):
    return zope_site.zope(HTTP_PORT, path, data, timeout)


def add_folder(name, title=""):
    status, body = zope("/manage_addProduct/OFSP/manage_addFolder", {"id": name, "title": title})
    if status != 200:
        raise AssertionError("adding folder %s through Zope gave HTTP %d:\n%s"
                             % (name, status, body[:2000]))


def has_folder(name):
    status, body = zope("/%s/manage_main" % name)
    if status not in (200, 404):
        raise AssertionError("asking Zope for %s gave HTTP %d:\n%s" % (name, status, body[:2000]))
    return status == 200


def answering():
    return zope("/manage_main", timeout=5)[0] == 200


def zeo_alone():
    zope_site.zeo_alone([VENV + "/bin/runzeo", "-C", SITE + "/zeo/etc/zeo.conf"], cwd=SITE,
                        port=ZEO_PORT)


# -- supervisord ---------------------------------------------------------------------------
def supervisorctl(*args):
    return run(VENV + "/bin/supervisorctl", "-c", SITE + "/supervisord.conf", *args)[1]


def program_states():
    states = {}
    for line in supervisorctl("status").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in PROGRAMS:
            states[words[0]] = words[1]
    return states


def supervisord_pids():
    return [pid for pid in layers.processes_named(b"/bin/supervisord")
            if os.readlink("/proc/%d/cwd" % pid).startswith(SITE)]


def start_supervisord():
    rc, out, err = run(VENV + "/bin/supervisord", "-c", SITE + "/supervisord.conf")
    if rc != 0:
        raise AssertionError("supervisord did not start:\n%s%s" % (out, err))
    wait_running()


def wait_running():
    try:
        layers.wait_for(lambda: program_states() == PROGRAMS, timeout=300,
                        what="the ZEO server and the instance RUNNING")
        layers.wait_for(answering, timeout=300, what="Zope to answer")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, diagnosis())) from None


def stop_supervisord():
    supervisorctl("shutdown")
    layers.wait_for(lambda: not supervisord_pids(), timeout=120,
                    what="supervisord to shut down")


def diagnosis():
    return zope_site.diagnosis(supervisorctl("status"), SITE + "/var/log", SUPERVISORD_LOG)


def supervisord_log():
    try:
        with open(SUPERVISORD_LOG) as f:
            return f.read()
    except FileNotFoundError:
        return ""


# -- systemd -------------------------------------------------------------------------------
def unit_files():
    return {
        UNITS[0]: UNIT.format(what="the pip site's ZEO server", after="", site=SITE,
                              command="%s/bin/runzeo -C %s/zeo/etc/zeo.conf" % (VENV, SITE)),
        UNITS[1]: UNIT.format(what="the pip site's Zope instance", after="After=" + UNITS[0],
                              site=SITE,
                              command="%s/bin/runwsgi %s/instance/etc/zope.ini" % (VENV, SITE)),
    }


def systemctl(*args, check=True):
    return sh("systemctl", *args, check=check)


def unit_states():
    return {u: systemctl("show", "--property=ActiveState", "--value", u).strip()
            for u in UNITS}


def install_units():
    for name, text in unit_files().items():
        write(os.path.join("/etc/systemd/system", name), text)
    systemctl("daemon-reload")


def start_units():
    systemctl("start", *UNITS)
    layers.wait_for(lambda: set(unit_states().values()) == {"active"}, timeout=300,
                    what="the units to be active")
    layers.wait_for(answering, timeout=300, what="Zope to answer")


def remove_units():
    systemctl("stop", *reversed(UNITS), check=False)
    for name in UNITS:
        path = os.path.join("/etc/systemd/system", name)
        if os.path.exists(path):
            os.remove(path)
    systemctl("daemon-reload", check=False)


class PipSite(layers.GuestPool):
    """The site installed by pip, its instance started once (Zope made its root objects and
    its user from inituser), running under supervisord with one folder written through Zope.
    """

    @classmethod
    def setUp(cls):
        for dataset, mountpoint in DATASETS.items():
            sh("zfs", "create", "-p", "-o", "mountpoint=" + mountpoint, dataset)
        relocated_venv()
        policy_wheel("1.0")
        release_requirements("1.0")
        write(SITE + "/zeo/etc/zeo.conf", ZEO_CONF.format(port=ZEO_PORT, site=SITE))
        write(SITE + "/instance/etc/zope.conf", ZOPE_CONF.format(port=ZEO_PORT, site=SITE))
        write(SITE + "/instance/etc/zope.ini", ZOPE_INI.format(port=HTTP_PORT))
        write(SITE + "/instance/etc/site.zcml", SITE_ZCML)
        digest = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
        write(SITE + "/instance/inituser", "%s:{SHA}%s\n" % (USER, digest))
        os.makedirs(SITE + "/instance/var/cache", exist_ok=True)
        os.makedirs(SITE + "/var/log", exist_ok=True)
        write(SITE + "/supervisord.conf", SUPERVISORD_CONF.format(log=SUPERVISORD_LOG))
        write(SITE + "/.gitignore", GITIGNORE)
        layers.first_release(SITE)
        pip_install("-r", SITE + "/requirements.txt")
        # zfssnap as the README tells a pip site to install it: into the site's virtualenv.
        pip_install("collective.recipe.zfssnap")
        zeo_alone()
        start_supervisord()
        add_folder("before", "written before the release")

    @classmethod
    def tearDown(cls):
        remove_units()
        if supervisord_pids():
            stop_supervisord()
        shutil.rmtree(WHEELS, ignore_errors=True)
