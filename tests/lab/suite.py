"""The whole guest suite, as shards booted side by side (`lab.py suite`), and its time table.

One guest running every test of a series leaves most of the machine idle: the tests wait on
supervisord, on programs starting and on ZFS, and the emulated guest keeps about one host core
busy. So each series' suite is cut into shards (groups of test classes, by zope-testrunner's
-t patterns), and the shards run in their own guests, `--jobs` at a time, the longest first.
The last shard of each series takes every test the others do not name, so a new test always
runs somewhere. Each shard's output is streamed with its name in front; at the end a table
says where the time went: images, venv disks, each guest's boot, layer set-ups, test
families (written to --times as JSON, for `make test`'s table).
"""
import json
import os
import re
import resource
import sys
import threading
import time

import lab

POWER_CUTS = "power-cuts"

# (shard name, -t patterns; None for "every test the other shards of the series do not name",
# the seconds its guest took in a measured run of the whole suite, used only to start the
# longest first). Measured 2026-12-07 in a warm make test, 2 guests at a time.
SHARDS = {
    "2.1": [
        ("workflow", [r"\.test_functional\."], 690),
        ("guard", [r"\.ReleaseGuardTest\.", r"\.KilledRunTest\.", r"\.Buildout5Test\."], 420),
        ("sweeps", [r"\.CrashSweepTest\."], 300),
        ("rest", None, 390),
    ],
    "2.3": [
        ("hosts", [r"\.HostsTest\."], 820),
        ("keep-sweep-1", [r"\.CrashSweepTest\.test_rollback_keep_first\b"], 450),
        ("keep-sweep-2", [r"\.CrashSweepTest\.test_rollback_keep_second\b"], 460),
        ("pip-site", [r"\.PipSiteTest\."], 400),
        # Not zope-testrunner: overlay/power_cut.py, one boot per cut (lab.py powercut).
        (POWER_CUTS, [], 620),
        ("rest", None, 720),
    ],
}

TEST_LINE = re.compile(r"^ (\w+) \(([\w.]+)\.(\w+)\)")
TEST_TIME = re.compile(r"\((\d+\.\d+) s\)\s*$")
SET_UP = re.compile(r"Set up ([\w.]+)")
SET_UP_TIME = re.compile(r"in (?:(\d+) minutes )?([\d.]+) seconds\.\s*$")
VENV_READY = re.compile(r"lab: guest venv ready in (\d+) s")
FAILED_TEST = re.compile(r"^(?:Failure|Error) in test (\w+) \(([\w.]+)\.\w+\)")
RAN = re.compile(r"Ran (\d+) tests with (\d+) failures, (\d+) errors and (\d+) skipped")
# The power-cut sweep (overlay/power_cut.py): not zope-testrunner, a guest booted once per cut.
POWER_LINE = re.compile(r"^power cut after (.*): (ok|FAILED .*)$")
POWER_DONE = re.compile(r"^power cuts: (\d+) points, (\d+) failed")


def testrunner_args(series, name):
    for shard, patterns, _ in SHARDS[series]:
        if shard == name:
            if patterns is not None:
                return [a for p in patterns for a in ("-t", p)]
            others = [p for s, ps, _ in SHARDS[series] if ps is not None and s != POWER_CUTS
                      for p in ps]
            return [a for p in others for a in ("-t", "!" + p)]
    raise lab.LabError("no shard %r on OpenZFS %s: the shards are %s" % (
        name, series, ", ".join(s for s, _, _ in SHARDS[series])))


class Output:
    """A shard's console: each line to the shared stdout with the shard's name in front,
    and read for its timings."""

    lock = threading.Lock()

    def __init__(self, label):
        self.label = label
        self.partial = ""
        self.test = None  # (family, test) whose time is still to come
        self.layer = None
        self.families = {}  # family: seconds
        self.layers = {}  # layer: seconds
        self.venv_ready = None
        self.summary = None
        self.started = None  # the last test that started, as "test (Class)"
        self.failures = []  # tests zope-testrunner reported as failed or in error

    def write(self, text):
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self.line(line)

    def flush(self):
        pass

    def log(self, message):
        self.line("lab: " + message)

    def line(self, line):
        with self.lock:
            sys.stdout.write("%s | %s\n" % (self.label, line))
            sys.stdout.flush()
        m = TEST_LINE.match(line)
        if m:
            self.test = (m.group(2).rsplit(".", 1)[-1], m.group(1))
            self.started = "%s (%s)" % (m.group(1), self.test[0])
        m = FAILED_TEST.match(line)
        if m:
            failed = "%s (%s)" % (m.group(1), m.group(2).rsplit(".", 1)[-1])
            if failed not in self.failures:
                self.failures.append(failed)
        m = TEST_TIME.search(line)
        if m and self.test:
            family = self.test[0]
            self.families[family] = self.families.get(family, 0.0) + float(m.group(1))
            self.test = None
        m = SET_UP.search(line)
        if m:
            self.layer = m.group(1).rsplit(".", 1)[-1]
        m = SET_UP_TIME.search(line)
        if m and self.layer:
            self.layers[self.layer] = int(m.group(1) or 0) * 60 + float(m.group(2))
            self.layer = None
        m = VENV_READY.search(line)
        if m:
            self.venv_ready = int(m.group(1))
        m = POWER_LINE.match(line)
        if m and m.group(2) != "ok":
            self.failures.append("power cut after " + m.group(1))
        m = POWER_DONE.match(line)
        if m:
            self.summary = (int(m.group(1)), int(m.group(2)), 0, 0)
        m = RAN.search(line)
        if m:  # one line per layer: the shard's summary is their sum
            self.summary = tuple(a + int(b) for a, b in zip(self.summary or (0, 0, 0, 0),
                                                            m.groups()))


class Suite:
    def __init__(self, series, jobs, timeout, shards=None):
        self.series = series
        self.jobs = jobs
        self.timeout = timeout
        self.only = shards  # names to run, or None for all
        self.times = {"prepare": {}, "shards": []}
        self.ready = []  # (weight, series, shard) whose series is prepared
        self.preparing = set(series)
        self.cond = threading.Condition()
        self.failed = []

    def prepare(self, series):
        """Image and venv disk of one series (built at the host's speed where missing)."""
        try:
            started = time.monotonic()
            image = lab.ensure_image(series)
            self.times["prepare"]["image " + series] = round(time.monotonic() - started)
            started = time.monotonic()
            lock = lab.venv_disk_lock(series, image, lab.ensure_wheelhouse(),
                                      lab.venv_disk(series))
            if lock:  # not root: the series' first guest makes it
                lock.close()
            self.times["prepare"]["venv disk " + series] = round(time.monotonic() - started)
        except lab.LabError as e:
            lab.say(str(e))
            self.failed.append((series, "prepare", lab.EXIT_LAB_BROKEN))
            with self.cond:
                self.preparing.discard(series)
                self.cond.notify_all()
            return
        with self.cond:
            for name, _, weight in SHARDS[series]:
                if self.only is None or name in self.only:
                    self.ready.append((weight, series, name))
            self.ready.sort(reverse=True)
            self.preparing.discard(series)
            self.cond.notify_all()

    def shard_timeout(self, series, name):
        """A shard is killed after three times its measured length (at least 15 minutes),
        not after the whole suite's --timeout: a hung test then costs CI minutes, not the run,
        and the table names the test that was running."""
        weight = dict((n, w) for n, _, w in SHARDS[series])[name]
        return min(self.timeout, max(900, 3 * weight))

    def worker(self):
        while True:
            with self.cond:
                while not self.ready and self.preparing:
                    self.cond.wait()
                if not self.ready:
                    return
                _, series, name = self.ready.pop(0)
            self.run_shard(series, name)

    def run_shard(self, series, name):
        out = Output("%s %s" % (series, name))
        power = name == POWER_CUTS
        script = lab.guest_venv_script(series, lab.GUEST_POWER_CUT_COMMAND) if power else \
            lab.test_script(series, testrunner_args(series, name))
        guest = lab.Guest(series, script, self.shard_timeout(series, name), init="systemd",
                          venv=lab.venv_disk(series), log=out.log,
                          cuts=lab.POWER_CUTS if power else 0)
        started = time.monotonic()
        try:
            rc = guest.run(out=out)
        except lab.LabError as e:
            out.log(str(e))
            rc = lab.EXIT_LAB_BROKEN
        out.write("\n")
        self.times["shards"].append({
            "series": series, "shard": name, "exit": rc,
            "seconds": round(time.monotonic() - started),
            "boot": round(guest.ready_after or 0, 1), "venv": out.venv_ready,
            "layers": {k: round(v, 1) for k, v in out.layers.items()},
            "families": {k: round(v, 1) for k, v in out.families.items()},
            "summary": out.summary, "timeout": guest.timeout,
            "last_started": out.started, "failures": out.failures})
        if rc != 0:
            self.failed.append((series, name, rc))

    def run(self):
        started = time.monotonic()
        lab.ensure_wheelhouse()
        self.times["prepare"]["wheelhouse"] = round(time.monotonic() - started)
        # Series whose image and venv disk are cached are ready at once, before any guest
        # starts: their shards then all start longest first, whichever series they are of.
        cached = [s for s in self.series if os.path.exists(os.path.join(
            lab.image_dir(s), "root.img")) and os.path.exists(lab.venv_disk(s))]
        for series in cached:
            self.prepare(series)
        threads = [threading.Thread(target=self.prepare, args=(s,)) for s in self.series
                   if s not in cached]
        threads += [threading.Thread(target=self.worker) for _ in range(self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.times["total"] = round(time.monotonic() - started)
        # CPU of every guest (and of the host's helpers), against the wall clock: how full the
        # machine's cores were kept.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.times["cpu"] = round(usage.ru_utime + usage.ru_stime)
        self.times["jobs"] = self.jobs
        return self.failed


def table(times, fast=None):
    """Where the time went, as lines of text."""
    rows = [("what", "seconds")]
    for what, seconds in times.get("prepare", {}).items():
        rows.append((what, seconds))
    for shard in sorted(times.get("shards", []), key=lambda s: (s["series"], s["shard"])):
        label = "%s %s" % (shard["series"], shard["shard"])
        summary = tuple(shard.get("summary") or ())
        result = ("%d tests, %d failures, %d errors, %d skipped" % summary) if summary else \
            "no summary"
        rows.append(("guest %s (exit %d; %s)" % (label, shard["exit"], result), shard["seconds"]))
        rows.append(("  boot to zfs ready", shard["boot"]))
        if shard.get("venv") is not None:
            rows.append(("  venv ready", shard["venv"]))
        for layer, seconds in shard.get("layers", {}).items():
            rows.append(("  set-up " + layer, seconds))
        for family, seconds in sorted(shard.get("families", {}).items(),
                                      key=lambda kv: -kv[1]):
            rows.append(("  " + family, seconds))
    rows.append(("guest suite, wall clock (%s guests at a time)" % times.get("jobs", "?"),
                 times.get("total", 0)))
    if "cpu" in times:
        rows.append(("guest suite, CPU of the guests and helpers", times["cpu"]))
    if fast is not None:
        rows.append(("fast suite beside it, wall clock", fast))
    width = max(len(str(r[0])) for r in rows)
    return ["%-*s  %8s" % (width, w, s) for w, s in rows] + failed_lines(times)


def failed_lines(times):
    """What failed, last: CI shows the end of the output."""
    lines = []
    for shard in sorted(times.get("shards", []), key=lambda s: (s["series"], s["shard"])):
        if shard["exit"] == 0:
            continue
        why = {lab.EXIT_TIMEOUT: "killed after %s s" % shard.get("timeout", "?"),
               lab.EXIT_NOT_READY: "the guest never got ready, twice",
               lab.EXIT_LAB_BROKEN: "the guest crashed or never ran the tests"}.get(
                   shard["exit"], "exit %d" % shard["exit"])
        lines.append("FAILED: OpenZFS %s %s: %s" % (shard["series"], shard["shard"], why))
        if shard["exit"] == lab.EXIT_TIMEOUT and shard.get("last_started"):
            lines.append("  the last test started: " + shard["last_started"])
        for test in (shard.get("failures") or [])[:10]:
            lines.append("  failed: " + test)
    return lines


def main(args):
    series = [args.zfs] if args.zfs else list(lab.SERIES)
    suite = Suite(series, args.jobs, args.timeout,
                  shards=set(args.shard) if args.shard else None)
    failed = suite.run()
    if args.times:
        with open(args.times, "w") as f:
            json.dump(suite.times, f, indent=1)
    print("\n".join(table(suite.times)), flush=True)
    for series, name, rc in failed:
        if name == "prepare":
            lab.say("FAILED: OpenZFS %s: its image or venv disk (exit %d)" % (series, rc))
    return max((rc for _, _, rc in failed), default=0) and 1
