"""The supervisor adapter: the site's programs through its own bin/supervisorctl and supervisord.

supervisorctl is driven as an argv list and its `status` table parsed; that is the interface a
site operator uses too, and it carries the site's configuration file in its generated script.
"""
import os
import subprocess
import time


STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")


class SupervisorError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


# What supervisorctl says when no supervisord listens: its socket file is missing, or nobody
# accepts on it (a stale file). Anything else (authentication, permissions) is an error.
NOT_RUNNING_MARKS = ("no such file", "refused connection")


def parse_status(output):
    """{program: state} from `supervisorctl status` (group members as group:name)."""
    states = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in STATES:
            states[words[0]] = words[1]
    return states


def parse_pids(output):
    """{program: pid} of the running programs in `supervisorctl status` output."""
    pids = {}
    for line in output.splitlines():
        words = line.replace(",", " ").split()
        if len(words) >= 4 and words[1] in STATES and words[2] == "pid" and words[3].isdigit():
            pids[words[0]] = int(words[3])
    return pids


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie (not yet reaped by its parent) has exited: it holds no files any more.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


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
                                  text=True, errors="replace", stdin=subprocess.DEVNULL,
                                  timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise SupervisorError("'%s' was not found: run bin/buildout, or set the "
                                  "supervisorctl option" % self.ctl[0])
        except subprocess.TimeoutExpired:
            raise SupervisorError("'%s' did not finish within %d s"
                                  % (" ".join(argv), timeout or self.timeout))
        except OSError as e:
            raise SupervisorError("'%s' could not run: %s" % (self.ctl[0], e.strerror))

    def status(self, pids=False):
        """{program: state} ({program: pid} with pids=True), or None when no supervisord runs.

        A supervisord that answers with an error (authentication, shutting down) is not "not
        running": that raises SupervisorError, so that nothing runs on under a rollback.
        """
        proc = self.ctl_run("status")
        states = parse_status(proc.stdout)
        if not states and proc.returncode != 0:
            if any(mark in proc.stdout for mark in NOT_RUNNING_MARKS):
                return None
            raise SupervisorError("'%s status' failed: %s" % (
                " ".join(self.ctl), proc.stdout.strip() or "exit %d" % proc.returncode))
        return parse_pids(proc.stdout) if pids else states

    def answers(self):
        try:
            return self.status()
        except SupervisorError:
            return None  # still starting: it refuses requests until it is up

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

    def stop(self, names, every=False):
        """Stop programs within the timeout; the names that had not stopped by then.

        `every`: all programs run by supervisord are to stop; `stop all` stops them in
        supervisor's order (reverse priority: web clients before their ZEO server).
        """
        if not names:
            return []
        # supervisorctl stop returns once the programs have stopped, which for one that
        # ignores SIGTERM is supervisor's stopwaitsecs later: our timeout is the limit.
        try:
            self.ctl_run("stop", *(["all"] if every else names), timeout=self.timeout)
        except SupervisorError:
            pass
        return self.wait(names, lambda state: state not in RUNNING_STATES + ("STOPPING",),
                         timeout=1)

    def settle(self, names, timeout):
        """Wait until none of `names` is STOPPING any more (supervisor kills it in the end)."""
        return self.wait(names, lambda state: state != "STOPPING", timeout=timeout)

    def start(self, names):
        """Start programs, wait until RUNNING; the names that did not get there."""
        if not names:
            return []
        self.ctl_run("start", *names, timeout=self.timeout + 10)
        return self.wait(names, lambda state: state == "RUNNING")

    def wait(self, names, done, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                states = self.status() or {}
            except SupervisorError:
                states = {}
            late = [n for n in names if not done(states.get(n, "UNKNOWN"))]
            if not late or time.monotonic() > deadline:
                return late
            time.sleep(0.5)

    def shutdown(self, pids):
        """Shut supervisord down and wait until the processes `pids` (it and its programs) exit.

        While it shuts down supervisord refuses every request, so supervisorctl cannot tell
        when it is gone: the processes themselves can.
        """
        self.ctl_run("shutdown", timeout=self.timeout + 10)
        deadline = time.monotonic() + self.timeout
        while not all(process_gone(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord did not shut down within %d s"
                                      % self.timeout)
            time.sleep(0.2)

    def start_daemon(self):
        if not self.daemon:
            raise SupervisorError("no supervisord command to start it again: set the "
                                  "supervisord option")
        try:
            proc = subprocess.run(self.daemon, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace", stdin=subprocess.DEVNULL,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise SupervisorError("'%s' did not return within %d s"
                                  % (" ".join(self.daemon), self.timeout))
        except OSError as e:
            raise SupervisorError("'%s' could not run: %s" % (self.daemon[0], e.strerror))
        if proc.returncode != 0:
            raise SupervisorError("'%s' failed: %s" % (" ".join(self.daemon),
                                                        proc.stdout.strip()))
        deadline = time.monotonic() + self.timeout
        while self.answers() is None:
            if time.monotonic() > deadline:
                raise SupervisorError("supervisord did not answer within %d s after it was "
                                      "started" % self.timeout)
            time.sleep(0.5)
