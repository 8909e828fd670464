#!/usr/bin/env python3
"""The OpenZFS lab: real OpenZFS in a QEMU guest (TCG), for the functional suite.

This machine's kernel cannot load zfs.ko, so the guest carries its own kernel, built from Debian
12 packages by build-image.sh and cached outside the checkout. lab.py boots it with the checkout's
package sources and a wheelhouse shared over 9p, runs a command inside and hands back its output
and exit code. Standard library only: it runs before any virtualenv exists.

    lab.py build [--zfs 2.1]                  build (or reuse) the guest image
    lab.py run   [--zfs 2.1] -- CMD [ARG...]  run a command in a fresh guest
    lab.py test  [--zfs 2.1] [-- TESTRUNNER-ARGS]   the guest suite (zope.testrunner)
    lab.py demo  [--zfs 2.1]                  the release workflow typed on a throwaway site
    lab.py bench [--zfs 2.1] [--sizes 10,100,1024] [--runs 3] [--sets 500] [--profile]
                                              snapshot/rollback/cleanup times against repozo
    lab.py shell-script [--zfs 2.1] FILE      run a bash script in a fresh guest
"""
import argparse
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
SERIES = ("2.1", "2.3")
DEFAULT_SERIES = "2.1"
HOST_TOOLS = {  # command: Debian package
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "mke2fs": "e2fsprogs",
}
# What the guest's python installs, offline: made on the host with pip for CPython 3.11.
WHEELHOUSE_REQUIREMENTS = os.path.join(HERE, "wheelhouse.txt")
WHEELHOUSE_EXTRA = (os.path.join(HERE, "wheelhouse-buildout5.txt"),
                    os.path.join(HERE, "wheelhouse-zope.txt"),
                    os.path.join(HERE, "wheelhouse-ansible.txt"),
                    os.path.join(HERE, "wheelhouse-pip-site.txt"))
# The series whose guest suite runs the stacks: the Zope stack (test_zope, also shown by
# `make demo`) and the site over three hosts driven by Ansible (test_hosts). Its cached venv
# disk also carries the Zope stack's eggs, built and compiled once, and ansible-core's venv.
STACK_SERIES = "2.3"
# What that disk holds follows from these: a site whose buildout.cfg asks for more installs
# the rest.
STACK_FILES = (os.path.join(HERE, "wheelhouse-zope.txt"),
               os.path.join(HERE, "wheelhouse-ansible.txt"),
               os.path.join(HERE, "wheelhouse-pip-site.txt"))
# The venv disk of BUILDOUT5_SERIES carries the zc.buildout 5 site's venv and eggs (its
# guest test runs there only), following from this file the same way.
BUILDOUT5_SERIES = "2.1"
BUILDOUT5_FILES = (os.path.join(HERE, "wheelhouse-buildout5.txt"),)
# The package's sources, built into the wheel the guest installs.
PACKAGE_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.rst",
                 "CHANGES.rst", "LICENSE", "src")
# The lab's benchmark and demo drivers and its test site: added to the tests package of the
# wheel the guest installs (build_wheel), not in the package's own sources.
OVERLAY = os.path.join(HERE, "overlay")
TESTS_PACKAGE = "collective.recipe.zfssnap.tests"
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")
EXIT_TIMEOUT = 124
EXIT_LAB_BROKEN = 125
EXIT_NOT_READY = 126  # the guest never reached "zfs ready": booted again once, then this
# A guest is ready 15-30 s after its boot (TCG, 2 cores busy); one that is not after this long
# hangs in its kernel or its init (seen once in CI: the shard then waited out its whole timeout).
READY_TIMEOUT = 300
POWER_OFF_TIMEOUT = 120  # from the exit code written to qemu gone


class LabError(Exception):
    """A problem of the lab itself (not of the code under test): one sentence for the user."""


def say(message):
    print("lab: " + message, flush=True)


def cache_dir():
    default = os.path.join(os.path.expanduser("~"), ".cache", "collective.recipe.zfssnap-lab")
    return os.environ.get("ZFSSNAP_LAB_CACHE") or default


def digest(*paths, extra=""):
    h = hashlib.sha256(extra.encode())
    for path in paths:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


APT_LOCK = "/var/lock/collective.recipe.zfssnap-apt.lock"


def ensure_host_tools(commands=tuple(HOST_TOOLS)):
    missing = sorted({HOST_TOOLS[cmd] for cmd in commands if not shutil.which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs the Debian packages %s: install them as root (apt-get install %s) "
            "or run the tests as root" % (", ".join(missing), " ".join(missing)))
    say("installing host packages with apt-get: " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # make test runs the fast suite beside this: its bootstrap may install python3-venv at the
    # same moment (tests/bootstrap-venv.sh takes the same lock); apt waits for other users.
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for argv in (["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"],
                     ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
                      "--no-install-recommends"] + missing):
            if subprocess.run(argv, env=env, stdout=subprocess.DEVNULL).returncode != 0:
                raise LabError("'%s' failed: install %s by hand, then try again"
                               % (" ".join(argv), " ".join(missing)))


def apt_mirrors():
    """The host's own Debian mirror and security mirror, from its apt sources."""
    entries = []  # (uri, suite)
    sources_d = "/etc/apt/sources.list.d"
    paths = ["/etc/apt/sources.list"]
    if os.path.isdir(sources_d):
        paths += [os.path.join(sources_d, n) for n in sorted(os.listdir(sources_d))]
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            text = f.read()
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        entries.append((uri, suite))
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    entries.append(m.groups())
    main = [u for u, s in entries if not s.endswith(("-security", "/updates"))]
    security = [u for u, s in entries if s.endswith(("-security", "/updates"))]
    if not main:
        raise LabError("no Debian mirror found in /etc/apt/sources.list*: add one, then try again")
    main_uri = main[0].rstrip("/")
    security_uri = security[0].rstrip("/") if security else main_uri + "-security"
    return main_uri, security_uri


def image_dir(series):
    key = digest(os.path.join(HERE, "build-image.sh"), os.path.join(HERE, "guest-init"),
                 extra=series)
    return os.path.join(cache_dir(), "images", "zfs-%s-%s" % (series, key))


def ensure_image(series):
    """The guest image for an OpenZFS series: from the cache, or built (minutes) and cached."""
    out = image_dir(series)
    if all(os.path.exists(os.path.join(out, n)) for n in ("root.img", "vmlinuz", "initrd.img")):
        return out
    ensure_host_tools()
    if os.geteuid() != 0:
        raise LabError("building the guest image needs root (debootstrap, chroot): "
                       "run once as root, or point ZFSSNAP_LAB_CACHE at a cache that has it")
    mirror, security = apt_mirrors()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    lock = open(out + ".lock", "w")
    # Two runs at once would build the same image twice: the second waits, then reuses it.
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(out, "root.img")):
        return out
    say("building the OpenZFS %s guest image in %s (about 6 minutes)" % (series, out))
    started = time.monotonic()
    rc = subprocess.run(["bash", os.path.join(HERE, "build-image.sh"),
                         series, mirror, security, out]).returncode
    if rc != 0:
        raise LabError("building the OpenZFS %s guest image failed (exit %d): see the lines "
                       "above" % (series, rc))
    say("built the OpenZFS %s guest image in %.0f s" % (series, time.monotonic() - started))
    return out


def ensure_wheelhouse():
    """Wheels of everything the guest installs (it has no network), cached by requirements."""
    out = os.path.join(cache_dir(), "wheelhouse-" + digest(WHEELHOUSE_REQUIREMENTS,
                                                           *WHEELHOUSE_EXTRA))
    if os.path.exists(os.path.join(out, ".complete")):
        return out
    say("making the guest's wheelhouse in " + out)
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    # One pip run per file: their pins are each consistent, not with each other.
    for requirements in (WHEELHOUSE_REQUIREMENTS,) + WHEELHOUSE_EXTRA:
        rc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                             "--disable-pip-version-check", "-w", partial, "-r",
                             requirements]).returncode
        if rc != 0:
            raise LabError("pip could not make the guest's wheelhouse from %s (exit %d): see "
                           "above" % (os.path.basename(requirements), rc))
    # pip and setuptools are installed in the guest from here too: keep them as wheels.
    open(os.path.join(partial, ".complete"), "w").close()
    shutil.rmtree(out, ignore_errors=True)
    os.rename(partial, out)
    return out


def unpack_wheel(dist, dest):
    """The package's wheel in `dist` installed into the directory `dest` (compiled by this
    Python, which makes the guest's wheelhouse too: the same CPython 3.11)."""
    wheels = [os.path.join(dist, n) for n in os.listdir(dist) if n.endswith(".whl")]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-index", "--disable-pip-version-check", "--target", dest]
                          + wheels, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise LabError("unpacking the package's wheel failed:\n" + proc.stdout)


def build_wheel(dest):
    """The package's wheel, built from the working tree as users get it from the index, with
    the lab's drivers and test site (OVERLAY) added to its tests package."""
    with tempfile.TemporaryDirectory(prefix="zfssnap-src-") as tmp:
        # A copy: setuptools writes build/ and *.egg-info into the tree it builds.
        for name in PACKAGE_FILES:
            src = os.path.join(CHECKOUT, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name), ignore=shutil.ignore_patterns(
                    "__pycache__", "*.egg-info", "*.pyc"))
            elif os.path.exists(src):
                shutil.copy2(src, tmp)
        # The guest imports them as collective.recipe.zfssnap.tests.bench, .demo and finds
        # the site's templates beside layers.py; the package itself does not have them.
        shutil.copytree(OVERLAY, os.path.join(tmp, "src", *TESTS_PACKAGE.split(".")),
                        dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with open(os.path.join(tmp, "MANIFEST.in"), "a") as f:  # the templates are data
            f.write("\nrecursive-include src/%s/site *\n" % TESTS_PACKAGE.replace(".", "/"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--disable-pip-version-check", "-w", dest, tmp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise LabError("building the package's wheel failed:\n" + proc.stdout)


# The venv disk made in the image's own tree with chroot, at the host's speed (the guest,
# under emulation, took 5 to 15 minutes for it): the same steps as the guest's "make" branch.
VENV_CHROOT_SCRIPT = """\
set -e
root=$1 opt=$2 tmp=$3 share=$4 wheels=$5 src=$6
mount --bind "$opt" "$root/opt"
mount --bind "$tmp" "$root/tmp"
mount --bind "$share" "$root/mnt/share"
mount -o bind,ro "$wheels" "$root/mnt/wheels"
mount -o bind,ro "$src" "$root/mnt/src"
mount -t proc proc "$root/proc"
exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 bash -c "$7"
"""
# The venv and what the tests install in it, offline (the guest script's "make" step too).
VENV_INSTALL = ("python3 -m venv /opt/venv && /opt/venv/bin/pip install -q "
                "--disable-pip-version-check --no-index --find-links /mnt/share/dist "
                "--find-links /mnt/wheels 'collective.recipe.zfssnap[test]' ZODB")
VENV_MAKE_STEPS = """\
set -e
export ZFSSNAP_LAB=1 ZFSSNAP_LAB_SERIES={series} ZFSSNAP_LAB_STACK_SERIES={stack_series}
export ZFSSNAP_LAB_FIND_LINKS="/mnt/wheels /mnt/share/dist"
{install}
cd /tmp
{warm}
"""


def make_venv_on_host(series, image, wheels, path, log=say):
    """Make the venv disk `path` in the image's tree with chroot; False where that cannot be
    done here (not root, an image without its tree), and the guest makes it instead."""
    root = os.path.join(image, "root")
    if os.geteuid() != 0 or not os.path.isdir(os.path.join(root, "opt")) \
            or not shutil.which("unshare"):
        return False
    log("making the guest's venv disk for OpenZFS %s in the image's tree (chroot)" % series)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="venv-", dir=os.path.dirname(path)) as tmp:
        opt, scratch, share = (os.path.join(tmp, n) for n in ("opt", "tmp", "share"))
        for d in (opt, scratch, share):
            os.makedirs(d)
        os.chmod(scratch, 0o1777)
        build_wheel(os.path.join(share, "dist"))
        steps = VENV_MAKE_STEPS.format(series=series, stack_series=STACK_SERIES,
                                       install=VENV_INSTALL, warm=venv_warm_steps(series))
        # A mount namespace of its own: the bind mounts go away with it, even if killed.
        rc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             VENV_CHROOT_SCRIPT, "venv", root, opt, scratch, share, wheels,
                             CHECKOUT, steps]).returncode
        if rc != 0:
            raise LabError("making the guest's venv in the image's tree failed (exit %d): see "
                           "the lines above" % rc)
        partial = path + ".partial"
        proc = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", opt, partial, "4G"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise LabError("mke2fs of the venv disk failed: " + proc.stdout.strip())
        os.rename(partial, path)
    log("made the venv disk for OpenZFS %s in %.0f s" % (series, time.monotonic() - started))
    return True


def venv_disk_lock(series, image, wheels, path, log=say):
    """None once the venv disk `path` exists, made on the host where it can be; otherwise
    (not root) the held lock of the guest that makes it, to close when that boot ends: guests
    of one series booted side by side make its venv disk once."""
    if os.path.exists(path):
        return None
    lock = open(path + ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(path) or make_venv_on_host(series, image, wheels, path, log):
        lock.close()
        return None
    return lock


class Guest:
    """One boot of the guest: fresh disks, a share directory, a command; then it powers off."""

    def __init__(self, series, script, timeout, disks=1, disk_size="16G", memory=3072,
                 init="shell", venv=None, collect=None, log=say, cuts=0):
        self.series = series
        self.script = script
        self.timeout = timeout
        self.disks = disks
        self.disk_size = disk_size
        self.memory = memory
        self.init = init
        self.venv = venv  # the cached venv disk (made on first use), or None
        self.collect = collect  # (file names in the share, directory): copied out after
        self.log = log
        self.ready_after = None  # seconds from the boot to zfs.ko loaded, once known
        # Power cuts the command may make (the power-cut sweep): after each, the guest boots
        # again on the same disks, its root's changes kept in an overlay, until it writes its
        # exit code. 0: one boot, on throwaway disks.
        self.cuts = cuts

    def run(self, out=sys.stdout):
        image = ensure_image(self.series)
        wheels = ensure_wheelhouse()
        ensure_host_tools(["qemu-system-x86_64"])
        lock = venv_disk_lock(self.series, image, wheels, self.venv, self.log) \
            if self.venv else None
        try:
            rc = self._run(image, wheels, out)
            if rc == EXIT_NOT_READY:  # nothing of the command ran: a new boot is a clean retry
                self.log("booting again, once")
                rc = self._run(image, wheels, out)
            return rc
        finally:
            if lock:
                lock.close()

    def _run(self, image, wheels, out):
        with tempfile.TemporaryDirectory(prefix="zfssnap-lab-") as tmp:
            share = os.path.join(tmp, "share")
            build_wheel(os.path.join(share, "dist"))
            if self.venv and os.path.exists(self.venv):
                unpack_wheel(os.path.join(share, "dist"), os.path.join(share, "pkg"))
            shutil.copy(os.path.join(HERE, "guest-boot.sh"), os.path.join(share, "boot"))
            run = os.path.join(share, "run")
            with open(run, "w") as f:
                f.write(self.script)
            os.chmod(run, 0o755)
            with open(os.path.join(share, "venv-state"), "w") as f:
                f.write("ready" if self.venv and os.path.exists(self.venv) else
                        "make" if self.venv else "none")
            argv = self.qemu_argv(image, tmp, share, wheels)
            rc = self.boot(argv, share, out)
            for cut in range(self.cuts):
                if os.path.exists(os.path.join(share, "rc")) or \
                        not os.path.exists(os.path.join(share, "cut")):
                    break
                # The guest cut its own power (it said so first): the next boot is expected.
                os.remove(os.path.join(share, "cut"))
                self.log("power cut %d: booting again on the same disks" % (cut + 1))
                rc = self.boot(argv, share, out)
            if self.collect:
                names, dest = self.collect
                os.makedirs(dest, exist_ok=True)
                for name in names:
                    if os.path.exists(os.path.join(share, name)):
                        shutil.copy(os.path.join(share, name), dest)
            if self.venv and os.path.exists(os.path.join(share, "venv-made")):
                os.rename(self.venv + ".partial", self.venv)
                self.log("cached the guest's venv in " + self.venv)
            elif self.venv and os.path.exists(self.venv + ".partial"):
                os.remove(self.venv + ".partial")
            return rc

    def qemu_argv(self, image, tmp, share, wheels):
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory), "-smp", "2",
                "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
                "-kernel", os.path.join(image, "vmlinuz"),
                "-initrd", os.path.join(image, "initrd.img"),
                "-drive", self.root_drive(image, tmp)]
        for i in range(self.disks):
            # A new sparse file per boot: no pool state survives from one run to the next.
            disk = os.path.join(tmp, "disk%d.img" % i)
            with open(disk, "wb") as f:
                f.truncate(parse_size(self.disk_size))
            argv += ["-drive", "file=%s,format=raw,if=virtio,cache=unsafe" % disk]
        if self.venv:
            ready = os.path.exists(self.venv)
            path = self.venv if ready else self.venv + ".partial"
            if not ready:
                with open(path, "wb") as f:
                    f.truncate(parse_size("4G"))
            # A ready venv disk stays as it is: each boot writes to a throwaway overlay.
            argv += ["-drive", "file=%s,format=raw,if=virtio,%s" % (
                path, "snapshot=on" if ready else "cache=unsafe")]
        for tag, path, ro in (("share", share, False), ("src", CHECKOUT, True),
                              ("wheels", wheels, True)):
            argv += ["-virtfs", "local,path=%s,mount_tag=%s,security_model=none%s"
                     % (path, tag, ",readonly=on" if ro else "")]
        argv += ["-append", "console=ttyS0 root=/dev/vda rw quiet loglevel=3 init=/sbin/lab-init "
                 # Debian's kernel zeroes every page it hands out: emulated, that costs
                 # about 5% of a run; the guest's pages hold nothing secret.
                 "init_on_alloc=0 "
                 "panic=-1 LAB_SERIES=%s%s" % (
                     self.series, " lab.init=systemd systemd.show_status=0"
                     if self.init == "systemd" else "")]
        return argv

    def root_drive(self, image, tmp):
        """The root disk: the image itself, each boot's writes thrown away; with power cuts,
        a sparse copy of it that every boot of the run shares."""
        root = os.path.join(image, "root.img")
        if not self.cuts:
            return "file=%s,format=raw,if=virtio,snapshot=on" % root
        copy = os.path.join(tmp, "root.img")
        proc = subprocess.run(["cp", "--sparse=always", "--reflink=auto", root, copy],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise LabError("could not copy the guest's root disk for the power cuts: "
                           + proc.stdout.strip())
        return "file=%s,format=raw,if=virtio,cache=unsafe" % copy

    def boot(self, argv, share, out):
        started = time.monotonic()
        self.log("booting the OpenZFS %s guest (TCG)" % self.series)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        ready = []
        console = []  # what the guest printed before its command ran: shown if it never does
        done = []

        def pump():
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").replace("\r", "")
                if not ready:
                    if "lab-init: zfs ready" in line:
                        ready.append(time.monotonic() - started)
                        self.ready_after = ready[0]
                        self.log("guest ready (zfs.ko loaded) %.1f s after boot" % ready[0])
                    else:
                        console.append(line)
                    continue
                if "sysrq: Power Off" in line:
                    done.append(True)
                # The power-off leaves the kernel complaining on the console: not ours.
                if done or KERNEL_LINE.match(line):
                    continue
                out.write(line)
                out.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc_file = os.path.join(share, "rc")
        finished = None  # when the guest's exit code appeared in the share
        while True:
            try:
                proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - started
            if finished is None and os.path.exists(rc_file):
                finished = elapsed
            if finished is not None and elapsed - finished > POWER_OFF_TIMEOUT:
                # The command ended and said so: a guest stuck in its power-off has nothing
                # more to say, and its exit code stands.
                proc.kill()
                proc.wait()
                self.log("the guest wrote its exit code but did not power off within %d s: "
                         "killed it" % POWER_OFF_TIMEOUT)
                break
            if not ready and elapsed > READY_TIMEOUT:
                proc.kill()
                proc.wait()
                reader.join(5)
                out.write("".join(console[-40:]))
                self.log("the guest was not ready %d s after its boot: killed it (its last "
                         "console lines are above)" % READY_TIMEOUT)
                return EXIT_NOT_READY
            if elapsed > self.timeout:
                proc.kill()
                proc.wait()
                reader.join(5)
                self.log("the guest did not finish within %d s: killed it (raise --timeout if "
                         "the work is just slow)" % self.timeout)
                return EXIT_TIMEOUT
        reader.join(5)
        elapsed = time.monotonic() - started
        if not os.path.exists(rc_file) and os.path.exists(os.path.join(share, "cut")):
            self.log("the guest cut its power %.0f s after its boot" % elapsed)
            return EXIT_LAB_BROKEN  # unless the run allows a boot after it (cuts)
        if not os.path.exists(rc_file):
            if not ready:
                out.write("".join(console))
            self.log("the guest stopped after %.0f s without an exit code (qemu exit %d): it "
                     "crashed or never ran the command; see its console above"
                     % (elapsed, proc.returncode))
            return EXIT_LAB_BROKEN
        with open(rc_file) as f:
            rc = int(f.read().strip() or EXIT_LAB_BROKEN)
        self.log("guest finished in %.0f s, exit code %d%s" % (
            elapsed, rc, "" if finished is None else
            " (powered off %.0f s after writing it)" % (elapsed - finished)))
        return rc


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


# The guest side of `lab.py test` and `lab.py demo`: a venv from the wheelhouse with the
# package's wheel (built from the working tree, as users get it), then the given command.
# The series that runs the tests of the suite's logic (layers.FULL_SERIES): another one given by
# hand (ZFSSNAP_LAB_FULL_SERIES=2.3 lab.py test --zfs 2.3 ...) runs them there too.
FULL_SERIES = os.environ.get("ZFSSNAP_LAB_FULL_SERIES", "2.1")
GUEST_VENV_SCRIPT = """\
#!/bin/bash
set -e
export ZFSSNAP_LAB=1 ZFSSNAP_LAB_SERIES={series} ZFSSNAP_LAB_STACK_SERIES={stack_series}
export ZFSSNAP_LAB_FULL_SERIES={full_series}
export ZFSSNAP_LAB_FIND_LINKS="/mnt/wheels /mnt/share/dist"
echo "lab: guest $(uname -r), $(zfs version 2>/dev/null | head -1), $(python3 --version)"
mkdir -p /scratch
if [ -e /mnt/share/scratch-made ]; then
    mount /dev/vdb /scratch  # a boot after a power cut: the disk as the cut left it
else
    mkfs.ext4 -q -F /dev/vdb && mount /dev/vdb /scratch && touch /mnt/share/scratch-made
fi
t0=$(date +%s)
case "$(cat /mnt/share/venv-state)" in
ready)  # the cached venv (vdc): only this checkout's package is new, unpacked on the host
    # (/mnt/share/pkg, compiled there): pip under emulation took 10 to 25 s of every boot.
    mount /dev/vdc /opt
    purelib=$(echo /opt/venv/lib/python3*/site-packages)
    rm -rf "$purelib"/collective/recipe/zfssnap \\
        "$purelib"/collective[._]recipe[._]zfssnap-*.dist-info
    cp -a /mnt/share/pkg/. "$purelib"/ ;;
make)  # not root on the host (lab.make_venv_on_host): made here, slowly
    mkfs.ext4 -q -F /dev/vdc && mount /dev/vdc /opt
    {install}
    {warm}
    sync && touch /mnt/share/venv-made ;;
*)
    {install} ;;
esac
echo "lab: guest venv ready in $(( $(date +%s) - t0 )) s"
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cd /tmp
{command}
"""
GUEST_TEST_COMMAND = ("exec /opt/venv/bin/zope-testrunner --test-path \"$site\" "
                      "--package collective.recipe.zfssnap --layer {layers} -vvv {args}")
# The Zope stack's layer only where its eggs are cached: a skipped test's layer is still set up.
GUEST_LAYERS = "zfssnap.tests.layers"
STACK_LAYERS = "'zfssnap.tests.(layers|zope_site|hosts|units_site|pip_site)'"
STACK_WARM = (
    "/opt/venv/bin/python -m collective.recipe.zfssnap.tests.zope_site warm /opt/eggs\n"
    "    python3 -m venv /opt/ansible\n"
    "    /opt/ansible/bin/pip install -q --disable-pip-version-check --no-index "
    "--find-links /mnt/wheels -r /mnt/src/tests/lab/wheelhouse-ansible.txt\n"
    # The pip site's virtualenv (test_pip_site), compiled by pip as it installs.
    "    python3 -m venv /opt/pip-site\n"
    "    /opt/pip-site/bin/pip install -q --disable-pip-version-check --no-index "
    "--find-links /mnt/wheels -r /mnt/src/tests/lab/wheelhouse-pip-site.txt")
BUILDOUT5_WARM = "/opt/venv/bin/python -m collective.recipe.zfssnap.tests.test_buildout5 warm"
GUEST_DEMO_COMMAND = "exec /opt/venv/bin/python -m collective.recipe.zfssnap.tests.demo"
GUEST_POWER_CUT_COMMAND = ("exec /opt/venv/bin/python -m "
                           "collective.recipe.zfssnap.tests.power_cut")
POWER_CUTS = 30  # boots after a cut a power-cut run may need, at most
GUEST_BENCH_COMMAND = ("BENCH_SIZES={sizes} BENCH_RUNS={runs} BENCH_SETS={sets} "
                       "BENCH_PROFILE={profile} "
                       "BENCH_OUT=/mnt/share/bench.csv "
                       "exec /opt/venv/bin/python -m collective.recipe.zfssnap.tests.bench")


def venv_warm_steps(series):
    # The venv disk of STACK_SERIES also carries the Zope stack's eggs and ansible-core
    # (see STACK_FILES); that of BUILDOUT5_SERIES the zc.buildout 5 site's venv and eggs.
    return {STACK_SERIES: STACK_WARM, BUILDOUT5_SERIES: BUILDOUT5_WARM}.get(series, ":")


def guest_venv_script(series, command):
    return GUEST_VENV_SCRIPT.format(series=series, stack_series=STACK_SERIES,
                                    full_series=shlex.quote(FULL_SERIES),
                                    install=VENV_INSTALL, warm=venv_warm_steps(series),
                                    command=command)


def test_script(series, testrunner_args):
    """The guest's script for zope-testrunner with these arguments, on that series' layers."""
    command = GUEST_TEST_COMMAND.format(
        layers=STACK_LAYERS if series == STACK_SERIES else GUEST_LAYERS,
        args=" ".join(shlex.quote(a) for a in testrunner_args))
    return guest_venv_script(series, command)


def venv_disk(series):
    """The path of the series' cached venv disk (made on first use)."""
    path = os.path.join(cache_dir(), "venvs", "venv-%s-%s.img" % (series, digest(
        WHEELHOUSE_REQUIREMENTS, os.path.join(CHECKOUT, "setup.py"),
        *(STACK_FILES if series == STACK_SERIES else ()),
        *(BUILDOUT5_FILES if series == BUILDOUT5_SERIES else ()),
        extra=os.path.basename(ensure_image(series)))))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "run", "test", "demo", "bench", "shell-script", "powercut"):
        p = sub.add_parser(name)
        p.add_argument("--zfs", choices=SERIES, default=DEFAULT_SERIES,
                       help="OpenZFS series of the guest (default %(default)s)")
        if name != "build":
            p.add_argument("--timeout", type=int, default=10800 if name == "bench" else 3600,
                           help="kill the guest after this many seconds (default %(default)s)")
        if name == "shell-script":
            p.add_argument("file")
        if name == "bench":
            p.add_argument("--sizes", default="10,100,1024",
                           help="MiB of Data.fs and blobs, in turn (default %(default)s)")
            p.add_argument("--runs", type=int, default=3, help="runs of each measurement "
                           "(default %(default)s)")
            p.add_argument("--sets", type=int, default=500, help="snapshot sets for the "
                           "--list and cleanup measurements (default %(default)s)")
            p.add_argument("--out", default=os.path.join(CHECKOUT, "docs", "bench"),
                           help="where bench.csv, bench.rst and bench.png go (default "
                           "%(default)s)")
            p.add_argument("--profile", action="store_true", help="instead of the figures, "
                           "where each script's time goes: its imports and the commands it "
                           "runs, timed (to profile.txt in --out)")
            p.add_argument("--plot-python", default=sys.executable,
                           help="a Python with matplotlib, for the plot (default: this one)")
        if name != "build":
            p.add_argument("--init", choices=("shell", "systemd"), default=None,
                           help="PID 1 of the guest: a shell script, or systemd (default: "
                           "systemd for test, demo and bench, shell for run)")
        if name in ("run", "test"):
            p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("suite", help="the whole guest suite, in shards booted side by side")
    p.add_argument("--zfs", choices=SERIES, default=None,
                   help="one OpenZFS series only (default: every series)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("LAB_JOBS", "2")),
                   help="guests at a time (default $LAB_JOBS or 2)")
    p.add_argument("--shard", action="append", help="only this shard (repeatable)")
    p.add_argument("--timeout", type=int, default=3600,
                   help="kill a guest after this many seconds (default %(default)s)")
    p.add_argument("--times", help="write where the time went to this file (JSON)")
    p = sub.add_parser("times", help="the table of a suite's --times file")
    p.add_argument("file")
    p.add_argument("--fast", type=int, help="seconds the fast suite took beside it")
    args = parser.parse_args(argv)
    try:
        if args.command in ("suite", "times"):
            import suite
            if args.command == "suite":
                return suite.main(args)
            with open(args.file) as f:
                print("\n".join(suite.table(__import__("json").load(f), fast=args.fast)))
            return 0
        if args.command == "build":
            say("image ready: " + ensure_image(args.zfs))
            return 0
        rest = list(getattr(args, "args", []))
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if args.command == "run":
            script = "#!/bin/bash\nexec %s\n" % " ".join(shlex.quote(a) for a in rest)
        elif args.command == "shell-script":
            with open(args.file) as f:
                script = f.read()
        elif args.command == "demo":
            script = guest_venv_script(args.zfs, GUEST_DEMO_COMMAND)
        elif args.command == "powercut":
            script = guest_venv_script(args.zfs, GUEST_POWER_CUT_COMMAND)
        elif args.command == "bench":
            if not re.match(r"^\d+(,\d+)*$", args.sizes):
                raise LabError("--sizes takes MiB separated by commas, not %r" % args.sizes)
            script = guest_venv_script(args.zfs, GUEST_BENCH_COMMAND.format(
                sizes=args.sizes, runs=args.runs, sets=args.sets,
                profile="1" if args.profile else ""))
        else:
            script = test_script(args.zfs, rest)
        init = args.init or ("shell" if args.command in ("run", "shell-script") else "systemd")
        venv = venv_disk(args.zfs) if args.command in ("test", "demo", "bench",
                                                         "powercut") else None
        collect = ((["profile.txt"] if args.profile else ["bench.csv"]), args.out) \
            if args.command == "bench" else None
        rc = Guest(args.zfs, script, args.timeout, init=init, venv=venv, collect=collect,
                   cuts=POWER_CUTS if args.command == "powercut" else 0).run()
        if args.command == "bench" and rc == 0 and not args.profile:
            rc = subprocess.run([args.plot_python, os.path.join(HERE, "report_bench.py"),
                                 os.path.join(args.out, "bench.csv"), args.out,
                                 "OpenZFS " + args.zfs]).returncode
        return rc
    except LabError as e:
        say(str(e))
        return EXIT_LAB_BROKEN
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
