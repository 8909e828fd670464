"""The supervisor adapter: the site's supervisord, asked directly over its XML-RPC interface.

One connection to the socket named in the site's supervisord configuration (as supervisorctl
finds it, credentials included) answers every question in milliseconds, where a supervisorctl
process per question took a second under load. supervisord run by a systemd unit is stopped and
started through systemctl: behind the unit's back, Restart= would start a second daemon, or none.
"""
import configparser
import http.client
import os
import re
import socket
import time
import xmlrpc.client

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.manager import run_command
from collective.recipe.zfssnap.processes import POLL
from collective.recipe.zfssnap.processes import cmdline
from collective.recipe.zfssnap.processes import listening_inodes
from collective.recipe.zfssnap.processes import socket_owner
from collective.recipe.zfssnap.processes import wait_gone
from collective.recipe.zfssnap.systemd import systemctl_argv
from collective.recipe.zfssnap.systemd import systemctl_env
from collective.recipe.zfssnap.systemd import systemd_unit
from collective.recipe.zfssnap.systemd import unit_shown


STOPPED_STATES = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")
# supervisor's Faults (xmlrpc.py): what a start or stop of a program in that state answers.
ALREADY_STARTED, NOT_RUNNING, BAD_NAME, SHUTDOWN_STATE = 60, 70, 10, 6
# The XML-RPC calls that change what runs (the others only ask): each is a crash point.
CHANGING_CALLS = ("start", "stop", "shutdown", "restart", "signal", "reload", "add", "remove")
START_TIMEOUT = 60  # seconds supervisord may take to start and answer, whatever stop-timeout


class SupervisorError(ManagerError):
    """supervisord could not be asked, or did not do what was asked."""


class NotRunning(SupervisorError):
    """No supervisord answers on the configured socket."""


class Fault(SupervisorError):
    """supervisord answered a request with a fault (its code: supervisor's xmlrpc.Faults)."""

    def __init__(self, method, fault):
        super().__init__("supervisord refused %s: %s" % (method, fault.faultString))
        self.code = fault.faultCode


def expand(text, here):
    """A supervisord configuration's value as supervisor reads it: %(here)s (the file's
    directory) and %(ENV_NAME)s expanded."""
    return re.sub(r"%\((here|ENV_\w+)\)s", lambda m: here if m.group(1) == "here" else
                  os.environ.get(m.group(1)[4:], ""), text)


def read_client_config(path):
    """(serverurl, username, password) from a supervisord configuration's [supervisorctl]."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise SupervisorError("cannot read the supervisord configuration %s (%s): run "
                              "bin/buildout, or set the part's supervisor-conf option"
                              % (path, getattr(e, "strerror", None) or e))
    here = os.path.dirname(os.path.abspath(path))

    def value(name, default=None):
        if not parser.has_option("supervisorctl", name):
            return default
        return expand(parser.get("supervisorctl", name), here)

    url = value("serverurl", "http://localhost:9001")
    if url.startswith("unix://"):
        url = "unix://" + os.path.abspath(os.path.join(here, url[7:]))
    return url, value("username"), value("password")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class _Transport(xmlrpc.client.Transport):
    """HTTP or a unix socket, with basic authentication, one connection kept open."""

    def __init__(self, url, username, password, timeout):
        super().__init__()
        self.url = url
        self.timeout = timeout
        self.auth = None
        if username is not None and password is not None:
            import base64
            self.auth = "Basic " + base64.b64encode(
                ("%s:%s" % (username, password)).encode()).decode()

    def make_connection(self, host):
        if self._connection[1] is None:
            if self.url.startswith("unix://"):
                conn = _UnixConnection(self.url[7:], self.timeout)
            else:
                parsed = re.match(r"^https?://([^/:]+|\[[^]]+\])(?::(\d+))?", self.url)
                if not parsed:
                    raise SupervisorError("cannot use the supervisor server URL %s" % self.url)
                conn = http.client.HTTPConnection(parsed.group(1).strip("[]"),
                                                  int(parsed.group(2) or 80),
                                                  timeout=self.timeout)
            self._connection = (host, conn)
        return self._connection[1]

    def send_headers(self, connection, headers):
        if self.auth:
            headers = list(headers) + [("Authorization", self.auth)]
        super().send_headers(connection, headers)


class Process:
    """A supervisor program: `name` as supervisorctl shows it (group:name within a group)."""

    def __init__(self, info, config=None):
        self.group = info["group"]
        self.short = info["name"]
        self.name = self.short if self.group == self.short else "%s:%s" % (self.group,
                                                                            self.short)
        self.state = info["statename"]
        self.pid = info["pid"] if info.get("pid", 0) > 1 else None
        self.logfile = info.get("stdout_logfile") or ""
        config = config or {}
        self.priority = (config.get("group_prio", 999), config.get("process_prio", 999))
        self.autostart = config.get("autostart", True)
        self.startsecs = config.get("startsecs", 1)

    @property
    def api_name(self):
        return "%s:%s" % (self.group, self.short)

    def __repr__(self):
        return "<Process %s %s>" % (self.name, self.state)


class Supervisor:
    """The site's supervisord: its programs, its own process, and how it is started."""

    def __init__(self, conf, daemon=None, unit=None, programs=(), timeout=60, pidfiles=(),
                 privilege=()):
        self.conf = conf
        self.privilege = list(privilege)  # before systemctl when not root (sudo -n)
        self.pidfiles = [p for p in pidfiles if p.endswith(".pid")]
        self.daemon = list(daemon) if daemon else None
        self.unit = unit or None          # the systemd service running supervisord, if known
        self.programs = list(programs)    # empty: every program
        self.timeout = timeout
        self._proxy = None
        self.reload_config()

    def reload_config(self):
        """Read the server URL again (a rollback may bring back another configuration)."""
        self.url, self.username, self.password = read_client_config(self.conf)
        self._proxy = None

    # -- the connection ---------------------------------------------------------------------
    def call(self, method, *args):
        if self._proxy is None:
            if not self.url.startswith("unix://"):
                self.check_listener()  # before the credentials are sent to it
            transport = _Transport(self.url, self.username, self.password, self.timeout + 10)
            self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport,
                                                    allow_none=True)
        changes = method.rpartition(".")[2].startswith(CHANGING_CALLS)
        try:
            result = getattr(self._proxy, method)(*args)
        except xmlrpc.client.Fault as e:
            if changes:
                crashpoint.done("supervisord %s %s" % (method, " ".join(map(str, args))))
            raise Fault(method, e)
        except xmlrpc.client.ProtocolError as e:
            self._proxy = None
            if e.errcode == 401:
                raise SupervisorError("supervisord at %s refused the credentials of %s: check "
                                      "its [supervisorctl] username and password"
                                      % (self.url, self.conf))
            raise SupervisorError("supervisord at %s answered %s %s" % (self.url, e.errcode,
                                                                        e.errmsg))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self._proxy = None
            raise NotRunning("no supervisord answers at %s (%s)" % (self.url, e.strerror))
        except (OSError, http.client.HTTPException) as e:
            self._proxy = None
            raise SupervisorError("supervisord at %s did not answer: %s" % (self.url, e))
        if changes:
            crashpoint.done("supervisord %s %s" % (method, " ".join(map(str, args))))
        return result

    def check_listener(self):
        """On an inet socket anyone may listen while supervisord is down: refuse to talk to a
        process that is not the site's supervisord (the one whose pid file the site has, or
        one running the site's supervisord script or configuration)."""
        parsed = re.match(r"^https?://([^/:]+|\[[^]]+\])(?::(\d+))?", self.url)
        if not parsed or not os.path.isdir("/proc/self"):
            return  # checked on Linux only; FreeBSD has no /proc to read it from
        port = int(parsed.group(2) or 80)
        inodes = listening_inodes(port)
        if not inodes:
            return  # nobody listens: connecting says so
        pid = socket_owner(inodes)
        if pid is None and set(inodes.values()) <= {0, os.geteuid()}:
            return  # another user's processes are hidden from us, but none of them listens
        if pid is None:
            raise SupervisorError(
                "cannot tell which process listens on port %d (the server URL of %s): run as "
                "root, or give supervisord a unix socket (http-socket = unix)" % (port, self.conf))
        if not self.is_site_supervisord(pid):
            raise SupervisorError(
                "the process listening on port %d (pid %d: %s) is not this site's supervisord "
                "(%s): refusing to trust what it says; stop it, or start the site's supervisord"
                % (port, pid, " ".join(cmdline(pid))[:200] or "?", self.conf))

    def is_site_supervisord(self, pid):
        for path in self.pidfiles:
            try:
                with open(path) as f:
                    if int(f.read().strip() or 0) == pid:
                        return True
            except (OSError, ValueError):
                continue
        words = cmdline(pid)
        wanted = {os.path.realpath(self.conf)} | (
            {os.path.realpath(self.daemon[-1])} if self.daemon else set())
        return any(os.path.realpath(w) in wanted for w in words if w.startswith("/"))

    def running(self):
        """True when supervisord answers, False when none listens; other errors raise.

        One that is shutting down (a killed run asked it to) is waited for: until it is gone,
        its programs may still hold files.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                state = self.call("supervisor.getState").get("statename")
            except NotRunning:
                return False
            except Fault as e:
                if e.code != SHUTDOWN_STATE:
                    raise
                state = "SHUTDOWN"  # it refuses every request while it shuts down
            if state != "SHUTDOWN":
                return True
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord at %s is still shutting down after %d s: "
                                      "wait until it has, then try again" % (self.url,
                                                                             self.timeout))
            time.sleep(POLL)

    def pid(self):
        pid = self.call("supervisor.getPID")
        return pid if isinstance(pid, int) and pid > 1 else None

    def processes(self):
        """{name: Process} of every program supervisord knows, in supervisor's start order."""
        infos = self.call("supervisor.getAllProcessInfo")
        try:
            configs = {(c["group"], c["name"]): c
                       for c in self.call("supervisor.getAllConfigInfo")}
        except Fault:
            configs = {}  # an old supervisor without getAllConfigInfo: no priorities
        procs = [Process(i, configs.get((i["group"], i["name"]))) for i in infos]
        procs.sort(key=lambda p: (p.priority, p.name))
        return {p.name: p for p in procs}

    def states(self):
        return {n: p.state for n, p in self.processes().items()}

    def selected(self, processes):
        """The names among `processes` that the part's `programs` option selects."""
        if not self.programs:
            return list(processes)
        return [n for n, p in processes.items()
                if n in self.programs or p.group in self.programs or p.short in self.programs]

    # -- programs ---------------------------------------------------------------------------
    def _levels(self, names, processes, reverse=False):
        """`names` grouped by priority: supervisor starts lower priorities first."""
        levels = {}
        for n in names:
            levels.setdefault(processes[n].priority, []).append(n)
        return [levels[k] for k in sorted(levels, reverse=reverse)]

    def _wait(self, names, done, deadline):
        while True:
            states = self.states()
            late = [n for n in names if not done(states.get(n, "UNKNOWN"))]
            if not late or time.monotonic() > deadline:
                return late, states
            time.sleep(POLL)

    def stop(self, names, deadline=None):
        """Stop programs, higher priorities first (web clients before their ZEO server);
        the names that had not stopped by the deadline."""
        processes = self.processes()
        names = [n for n in names if n in processes]
        deadline = deadline or time.monotonic() + self.timeout
        for level in self._levels(names, processes, reverse=True):
            for name in level:
                try:
                    self.call("supervisor.stopProcess", processes[name].api_name, False)
                except Fault as e:
                    if e.code != NOT_RUNNING:
                        raise
            late, _ = self._wait(level, lambda s: s in STOPPED_STATES, deadline)
            if late:
                return late + [n for n in names if n not in level and
                               self.states().get(n) not in STOPPED_STATES]
        return []

    def start(self, names, deadline=None):
        """Start programs in supervisor's priority order, each level RUNNING before the next
        starts (a ZEO server before its clients); the names that did not get to RUNNING."""
        processes = self.processes()
        missing = [n for n in names if n not in processes]
        names = [n for n in names if n in processes]
        deadline = deadline or self.start_deadline(names, processes)
        failed = list(missing)
        for level in self._levels(names, processes):
            for name in level:
                try:
                    self.call("supervisor.startProcess", processes[name].api_name, False)
                except Fault as e:
                    if e.code != ALREADY_STARTED:
                        failed.append(name)
            late, states = self._wait([n for n in level if n not in failed],
                                      lambda s: s not in ("STARTING", "BACKOFF"), deadline)
            failed += [n for n in level if n not in failed and states.get(n) != "RUNNING"]
        return failed

    def start_deadline(self, names, processes=None):
        """When starting `names` is late: the timeout, plus the time supervisor itself waits
        before it calls a program RUNNING (startsecs, each priority level in turn)."""
        processes = processes or self.processes()
        levels = self._levels([n for n in names if n in processes], processes)
        wait = sum(max(processes[n].startsecs for n in level) for level in levels)
        return time.monotonic() + self.timeout + wait

    def wait_settled(self, names, deadline):
        """Wait until none of `names` is starting or stopping any more."""
        late, states = self._wait(names, lambda s: s not in ("STARTING", "BACKOFF", "STOPPING"),
                                  deadline)
        return states

    # -- supervisord itself -----------------------------------------------------------------
    def find_unit(self, pid):
        if self.unit is None and pid:
            self.unit = systemd_unit(pid, self.privilege)
        return self.unit

    def shutdown(self, pids, deadline):
        """Shut supervisord down (through its unit when systemd runs it); the pids among `pids`
        (it and its programs) still alive at the deadline."""
        if self.unit:
            run_command(systemctl_argv(self.unit, ["stop"], self.privilege),
                        max(1, deadline - time.monotonic()), "stopping supervisord's unit",
                        env=systemctl_env(self.unit))
        else:
            try:
                self.call("supervisor.shutdown")
            except NotRunning:
                pass
        return wait_gone(pids, deadline)

    def start_daemon(self):
        """Start supervisord (its unit, or the supervisord command) and wait until it answers,
        for at least START_TIMEOUT: stop-timeout is for the programs, and a loaded machine takes
        seconds to start a Python daemon."""
        timeout = max(self.timeout, START_TIMEOUT)
        if self.unit:
            run_command(systemctl_argv(self.unit, ["start"], self.privilege), timeout,
                        "starting supervisord's unit", env=systemctl_env(self.unit))
        elif self.daemon:
            run_command(self.daemon, timeout, "starting supervisord")
        else:
            raise SupervisorError("no supervisord command to start it again: set the part's "
                                  "supervisord option")
        self.reload_config()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.running():
                    return
            except SupervisorError:
                pass  # it refuses requests while it starts
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord did not answer at %s within %d s after it "
                                      "was started" % (self.url, timeout))
            time.sleep(POLL)

    def start_hint(self):
        """How the operator starts supervisord by hand."""
        if self.unit:
            return unit_shown(self.unit, "start")
        return " ".join(self.daemon) if self.daemon else "supervisord"
