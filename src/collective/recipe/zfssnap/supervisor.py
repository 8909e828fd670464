"""The supervisor adapter: the site's programs through its own bin/supervisorctl and supervisord.

supervisorctl is driven as an argv list and its `status` table parsed; that is the interface a
site operator uses too, and it carries the site's configuration file in its generated script.
"""
import subprocess
import time


STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")


class SupervisorError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


def parse_status(output):
    """{program: state} from `supervisorctl status` (group members as group:name)."""
    states = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in STATES:
            states[words[0]] = words[1]
    return states


class Supervisor:

    def __init__(self, ctl, daemon=None, programs=(), timeout=60):
        self.ctl = list(ctl)
        self.daemon = list(daemon) if daemon else None
        self.programs = list(programs)  # empty: every program
        self.timeout = timeout

    def ctl_run(self, *args, timeout=None):
        argv = self.ctl + list(args)
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise SupervisorError("'%s' was not found: run bin/buildout, or set the "
                                  "supervisorctl option" % self.ctl[0])
        except subprocess.TimeoutExpired:
            raise SupervisorError("'%s' did not finish within %d s"
                                  % (" ".join(argv), timeout or self.timeout))

    def status(self):
        """{program: state}, or None when supervisord does not answer."""
        proc = self.ctl_run("status")
        states = parse_status(proc.stdout)
        if not states and proc.returncode != 0:
            return None
        return states

    def selected(self, states):
        if not self.programs:
            return sorted(states)
        # A group name selects its members, as supervisorctl does with "group:*".
        chosen = []
        for name in sorted(states):
            group = name.split(":", 1)[0]
            if name in self.programs or group in self.programs:
                chosen.append(name)
        return chosen

    def daemon_pid(self):
        proc = self.ctl_run("pid")
        text = proc.stdout.strip()
        return int(text) if proc.returncode == 0 and text.isdigit() else None

    def stop(self, names):
        """Stop programs and wait until none of them runs; the names still running on failure."""
        if not names:
            return []
        self.ctl_run("stop", *names, timeout=self.timeout + 10)
        return self.wait(names, lambda state: state not in RUNNING_STATES + ("STOPPING",))

    def start(self, names):
        """Start programs, wait until RUNNING; the names that did not get there."""
        if not names:
            return []
        self.ctl_run("start", *names, timeout=self.timeout + 10)
        return self.wait(names, lambda state: state == "RUNNING")

    def wait(self, names, done):
        deadline = time.monotonic() + self.timeout
        while True:
            states = self.status() or {}
            late = [n for n in names if not done(states.get(n, "UNKNOWN"))]
            if not late or time.monotonic() > deadline:
                return late
            time.sleep(0.5)

    def shutdown(self):
        """Shut supervisord down (stopping every program) and wait until it is gone."""
        self.ctl_run("shutdown", timeout=self.timeout + 10)
        deadline = time.monotonic() + self.timeout
        while self.status() is not None:
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord did not shut down within %d s"
                                      % self.timeout)
            time.sleep(0.5)

    def start_daemon(self):
        if not self.daemon:
            raise SupervisorError("no supervisord command to start it again: set the "
                                  "supervisord option")
        try:
            proc = subprocess.run(self.daemon, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL, timeout=self.timeout)
        except FileNotFoundError:
            raise SupervisorError("'%s' was not found" % self.daemon[0])
        if proc.returncode != 0:
            raise SupervisorError("'%s' failed: %s" % (" ".join(self.daemon),
                                                        proc.stdout.strip()))
        deadline = time.monotonic() + self.timeout
        while self.status() is None:
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord did not answer within %d s after it was "
                                      "started" % self.timeout)
            time.sleep(0.5)
