"""The health check of a rollback: a URL that answers below 400, or a command that exits 0,
tried until it passes or the time is up."""
import subprocess
import time


def prepare(check):
    """Import what the check needs now, before the rollback replaces the eggs; urllib (with
    http.client, email and ssl) only for a URL: a third of bin/rollback's imports."""
    if check and check.get("url"):
        import urllib.request  # noqa: F401


def describe(check):
    return check.get("url") or " ".join(check["command"])


def probe(check, directory):
    """(passed, why not) of one try: a URL (a status below 400) or a command run in the
    buildout directory (exit code 0)."""
    if check.get("url"):
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(check["url"], timeout=5) as response:
                return response.status < 400, "HTTP %d" % response.status
        except urllib.error.HTTPError as e:
            return False, "HTTP %d" % e.code
        except (OSError, ValueError) as e:
            return False, str(getattr(e, "reason", e))
    try:
        proc = subprocess.run(check["command"], cwd=directory, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, start_new_session=True)
    except subprocess.TimeoutExpired:
        return False, "it did not finish within 30 s"
    except OSError as e:
        return False, e.strerror
    return proc.returncode == 0, "exit %d" % proc.returncode


def wait(check, directory, timeout, interval=0.2):
    """(passed, why not, seconds taken): tries until one passes or `timeout` is over."""
    started = time.monotonic()
    while True:
        ok, why = probe(check, directory)
        if ok or time.monotonic() - started > timeout:
            return ok, why, time.monotonic() - started
        time.sleep(interval)
