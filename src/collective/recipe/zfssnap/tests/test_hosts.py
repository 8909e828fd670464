"""A release across three hosts, snapshotted, refused, rolled back and killed half-way, through
the collection's playbooks run by ansible-core over SSH (lab guest only, on the series of
layers.STACK_SERIES): see hosts.py for the hosts."""
import os
import re
import signal
import subprocess
import unittest

from collective.recipe.zfssnap.tests import hosts
from collective.recipe.zfssnap.tests.hosts import CLIENTS
from collective.recipe.zfssnap.tests.hosts import HOSTS
from collective.recipe.zfssnap.tests.hosts import SERVER
from collective.recipe.zfssnap.tests.hosts import client
from collective.recipe.zfssnap.tests.hosts import playbook
from collective.recipe.zfssnap.tests.layers import GIT
from collective.recipe.zfssnap.tests.layers import run_in_site
from collective.recipe.zfssnap.tests.layers import script_config
from collective.recipe.zfssnap.tests.layers import sh
from collective.recipe.zfssnap.tests.layers import snapshots
from collective.recipe.zfssnap.tests.layers import stack_series_only
from collective.recipe.zfssnap.tests.layers import supervisorctl
from collective.recipe.zfssnap.tests.layers import wait_for

CRASH_LOG = "/run/zeo-crash.log"
# What ZEO clients say when their cache is newer than the server (ZEO 5.2.3+, then older).
NEWER_CACHE = re.compile(r"out of sync|server behind client|newer transactions", re.I)


def newer_cache_events(since):
    """The clients' ZEO messages of a cache newer than the server, from event number `since`."""
    return [e for e in hosts.events()[since:] if e[2].startswith("zeo-")
            and NEWER_CACHE.search(e[4])]


def record(host):
    """The host's rollback record (its path from the part's lock file), or None."""
    from collective.recipe.zfssnap import state
    path = state.Places(script_config(site=host.buildout)).record
    return path if os.path.exists(path) else None


@stack_series_only
class HostsTest(unittest.TestCase):
    layer = hosts.Hosts

    # -- what the tests look at ----------------------------------------------------------------
    def site(self):
        """What each client serves and what the server's Data.fs holds."""
        return {"clients": {host.name: {k: v for k, v in client(host).items() if k != "pid"}
                            for host in CLIENTS},
                "datafs": hosts.last_tid_on_disk()}

    def all_snapshots(self):
        return {dataset: snapshots(dataset) for host in HOSTS for dataset in host.datasets}

    def running_pids(self):
        """{host: pid of its program} from supervisord (None where it is not running)."""
        found = {}
        for host in HOSTS:
            words = supervisorctl("pid", host.program, site=host.buildout).split()
            found[host.name] = words[0] if words and words[0].isdigit() else None
        return found

    def coordinated_snapshot(self, label, again=False):
        """The snapshot playbook: one set with the label on every host, every dataset in it;
        `again`: the playbook run a second time takes nothing more."""
        rc, out = playbook("snapshot", "zfssnap_label=" + label)
        self.assertEqual(rc, 0, out)
        taken = {}
        for host in HOSTS:
            names = {dataset: [s.split("@")[1] for s in snapshots(dataset)
                               if s.endswith("-" + label)] for dataset in host.datasets}
            first = names[next(iter(host.datasets))]
            self.assertEqual(len(first), 1, (host, names))
            self.assertTrue(first[0].startswith("zfssnap-"), first)
            for dataset in host.datasets:  # one set: the same name on each dataset
                self.assertEqual(names[dataset], first, (host, names))
            # The playbook names each host's set and its datasets.
            shown = re.search(r'\[%s\] => \{\s*"msg": "%s \(([^)]*)\)"'
                              % (host.name, re.escape(first[0])), out)
            self.assertTrue(shown, out)
            self.assertEqual(sorted(shown.group(1).split(", ")), sorted(host.datasets))
            taken[host.name] = first[0]
        if not again:
            return taken
        rc, out = playbook("snapshot", "zfssnap_label=" + label)
        self.assertEqual(rc, 0, out)
        for host in HOSTS:
            for dataset in host.datasets:
                self.assertEqual([s for s in snapshots(dataset) if s.endswith("-" + label)],
                                 ["%s@%s" % (dataset, taken[host.name])])
        return taken

    def bad_release(self, version):
        """A new tag on every host, the clients restarted on it and writing through it."""
        for host in HOSTS:
            with open(host.buildout + "/VERSION", "w") as f:
                f.write(version + "\n")
            sh(*GIT, "-C", host.buildout, "commit", "-q", "-a", "-m", "Release " + version)
            sh(*GIT, "-C", host.buildout, "tag", version)
        for host in CLIENTS:
            supervisorctl("restart", "client", site=host.buildout)
            wait_for(lambda: client(host)["version"] == version, timeout=300,
                     what="%s on %s" % (version, host.name))
        for host in CLIENTS:
            client(host, "/write", "POST")

    def assert_rolled_back(self, before, marks):
        """Every host back at the snapshot's state, in the order a ZEO site needs: every
        client stopped before the server, started after the server's last start, and no
        client ever saw a server older than its cache."""
        self.assertEqual(self.site(), before)
        for host in HOSTS:
            with open(host.buildout + "/VERSION") as f:
                self.assertEqual(f.read(), "1.0\n", host)
            self.assertIsNone(record(host), host)
        logs = {host.name: hosts.supervisor_events(host, marks["logs"][host.name])
                for host in HOSTS}
        server_stops = [t for t, verb, _ in logs[SERVER.name] if verb == "stopped"]
        server_starts = [t for t, verb, _ in logs[SERVER.name] if verb == "spawned"]
        self.assertTrue(server_stops and server_starts, logs)
        for host in CLIENTS:
            stops = [t for t, verb, _ in logs[host.name] if verb == "stopped"]
            starts = [t for t, verb, _ in logs[host.name] if verb == "spawned"]
            self.assertTrue(stops and starts, logs)
            self.assertLess(max(stops), min(server_stops), logs)
            self.assertGreater(min(starts), max(server_starts), logs)
        self.assertEqual(newer_cache_events(marks["events"]), [])
        # The site works on: a client writes, the other sees it.
        written = client(CLIENTS[1], "/write", "POST")
        wait_for(lambda: client(CLIENTS[0])["last_tid"] == written["last_tid"], timeout=60,
                 what="client1 to see client2's write")

    def marks(self):
        return {"logs": hosts.log_sizes(), "events": len(hosts.events())}

    # -- the tests ---------------------------------------------------------------------------
    def unchanged_recap(self, out):
        for host in HOSTS:
            self.assertRegex(out, r"\n%s\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0"
                             % re.escape(host.name), out)

    def test_release_across_hosts_refused_then_rolled_back_then_cleaned_up(self):
        before = self.site()
        # Check mode predicts the set each host would take, and takes none.
        sets = self.all_snapshots()
        rc, out = playbook("snapshot", "zfssnap_label=pre-2.0", check=True)
        self.assertEqual(rc, 0, out)
        for host in HOSTS:
            self.assertRegex(out, r"\n%s\s+: ok=\d+\s+changed=1\s" % re.escape(host.name), out)
        self.assertEqual(self.all_snapshots(), sets)
        taken = self.coordinated_snapshot("pre-2.0", again=True)
        self.bad_release("2.0")
        after_release = self.site()
        self.assertNotEqual(after_release, before)

        # A process outside supervisor holds a file on client2's dataset: the preflight
        # refuses there, and nothing changes anywhere.
        holder = subprocess.Popen(["tail", "-f", CLIENTS[1].buildout + "/VERSION"],
                                  stdout=subprocess.DEVNULL)
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        wait_for(lambda: os.path.exists("/proc/%d/fd/3" % holder.pid), timeout=30,
                 what="tail to open the file")
        pids, sets, marks = self.running_pids(), self.all_snapshots(), self.marks()
        rc, out = playbook("rollback", "zfssnap_label=pre-2.0")
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"client2 failed in phase (planned|none): bin/rollback: .*tail")
        self.assertEqual(self.running_pids(), pids)
        self.assertEqual(self.all_snapshots(), sets)
        self.assertEqual(self.site(), after_release)
        self.assertEqual({h.name: hosts.supervisor_events(h, marks["logs"][h.name])
                          for h in HOSTS}, {h.name: [] for h in HOSTS})
        self.assertEqual([record(h) for h in HOSTS], [None] * len(HOSTS))
        holder.send_signal(signal.SIGTERM)
        holder.wait(30)

        marks = self.marks()
        rc, out = playbook("rollback", "zfssnap_label=pre-2.0")
        self.assertEqual(rc, 0, out)
        self.assert_rolled_back(before, marks)
        for host in HOSTS:
            self.assertEqual(sh("git", "-C", host.buildout, "describe", "--tags").strip(),
                             "1.0")

        # The playbook run again: every host was rolled back to that set already and has run
        # since, so nothing is stopped or rolled back, and no write is lost.
        written = client(CLIENTS[0], "/write", "POST")
        marks, sets = self.marks(), self.all_snapshots()
        rc, out = playbook("rollback", "zfssnap_label=pre-2.0")
        self.assertEqual(rc, 0, out)
        self.unchanged_recap(out)
        self.assertEqual({h.name: hosts.supervisor_events(h, marks["logs"][h.name])
                          for h in HOSTS}, {h.name: [] for h in HOSTS})
        self.assertEqual(self.all_snapshots(), sets)
        wait_for(lambda: client(CLIENTS[1])["last_tid"] == written["last_tid"], timeout=60,
                 what="client2 to see client1's write, kept")

        # The control: the server rolled back alone while its clients run (what the playbook's
        # order prevents) gives the symptom assert_rolled_back looks for in every client.
        start = len(hosts.events())
        rc, out, err = run_in_site(SERVER.buildout + "/bin/rollback", "--yes", "pre-2.0",
                                   site=SERVER.buildout)
        self.assertEqual(rc, 3, out + err)  # rolled back to it already: asked for
        self.assertIn("pass --again to roll back to it again", err)
        rc, out, err = run_in_site(SERVER.buildout + "/bin/rollback", "--yes", "--again",
                                   "pre-2.0", site=SERVER.buildout)
        self.assertEqual(rc, 0, out + err)
        wait_for(lambda: {e[1] for e in newer_cache_events(start)} == {h.name for h in CLIENTS},
                 timeout=120, what="both clients to log a cache newer than the server")
        for host in CLIENTS:  # a fresh client process works with the rolled-back server
            supervisorctl("restart", "client", site=host.buildout)
        self.assertEqual(self.site(), before)

        # No label: nothing destroyed anywhere.
        sets = self.all_snapshots()
        rc, out = playbook("cleanup")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("no zfssnap_label was given", out)
        self.assertEqual(self.all_snapshots(), sets)
        rc, out = playbook("cleanup", "zfssnap_label=pre-2.0")
        self.assertEqual(rc, 0, out)
        for dataset, names in self.all_snapshots().items():
            self.assertEqual([n for n in names if n.endswith(taken[
                next(h.name for h in HOSTS if dataset in h.datasets)])], [], dataset)

    def test_server_host_killed_mid_play_then_the_playbook_again(self):
        before = self.site()
        self.coordinated_snapshot("pre-3.0")
        self.bad_release("3.0")
        marks = self.marks()

        # The server host dies right after its sixth action: its first dataset and its
        # Data.fs's dataset rolled back, its blobs' not (sshd's SetEnv gives its scripts the
        # crash point, see crashpoint.py).
        if os.path.exists(CRASH_LOG):
            os.remove(CRASH_LOG)
        os.kill(hosts.sshd_pid(SERVER), signal.SIGTERM)
        wait_for(lambda: not hosts.listening(SERVER.address, 22), timeout=60,
                 what="the server's sshd to stop")
        hosts.start_sshd(SERVER, env={"ZFSSNAP_CRASH_TEST": "1", "ZFSSNAP_CRASH_AFTER": "6",
                                      "ZFSSNAP_CRASH_LOG": CRASH_LOG})
        rc, out = playbook("rollback", "zfssnap_label=pre-3.0")
        self.assertNotEqual(rc, 0, out)
        with open(CRASH_LOG) as f:
            actions = [line.split("\t", 1)[1] for line in f.read().splitlines()]
        os.remove(CRASH_LOG)  # the host's boot below drops the crash point: no new log
        self.assertEqual(len(actions), 6, actions)
        self.assertTrue(actions[5].startswith("zfs rollback data/zeo-"), actions)
        self.assertRegex(out, r"zeo failed in phase unknown: bin/rollback was killed by signal 9")
        for host in CLIENTS:
            self.assertRegex(out, r"%s: rolled-back" % host.name)
            self.assertNotIn("RUNNING", hosts.program_states(host).values())
        self.assertIsNotNone(record(SERVER))

        # The host's boot: everything of it killed, datasets mounted, sshd and supervisord
        # started (the ZEO server too, on half-rolled-back data, with no client to serve).
        hosts.power_cut(SERVER)
        rc, out = playbook("rollback", "zfssnap_label=pre-3.0")
        self.assertEqual(rc, 0, out)
        self.assertFalse(os.path.exists(CRASH_LOG))
        self.assert_rolled_back(before, marks)
