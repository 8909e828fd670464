"""What the process manager adapters share (supervisor.py; systemd.py for the units): their
error, one sentence for the operator, and how they run a command of the site's."""
import subprocess

from collective.recipe.zfssnap import crashpoint


class ManagerError(Exception):
    """A process manager did not do what was asked, or could not be asked."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def run_command(argv, timeout, what, changes=True, env=None, check=True):
    """Run a command of the site's (supervisord, systemctl) in a session of its own: a
    signal to bin/rollback does not reach it half-way. Each one that changes something is a
    crash point. `check` False: its output whatever its exit code (systemctl status)."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", stdin=subprocess.DEVNULL, timeout=timeout,
                              start_new_session=True, env=env)
    except subprocess.TimeoutExpired:
        raise ManagerError("'%s' (%s) did not return within %d s" % (" ".join(argv), what,
                                                                         timeout))
    except OSError as e:
        raise ManagerError("'%s' (%s) could not run: %s" % (argv[0], what, e.strerror))
    finally:
        if changes:
            crashpoint.done(" ".join(argv))
    if check and proc.returncode != 0:
        raise ManagerError("'%s' (%s) failed: %s" % (" ".join(argv), what,
                                                         proc.stdout.strip() or
                                                         "exit %d" % proc.returncode))
    return proc.stdout
