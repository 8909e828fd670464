"""The Ansible collection on this machine, without ZFS: built and installed as a user would,
its documentation read with ansible-doc, its modules and playbooks run by ansible-core against
buildouts whose bin/ scripts are stand-ins that record how they were called and answer with
the JSON the real ones print. (The real scripts, over SSH, on OpenZFS: the lab guest.)

Run by tests/check-ansible.sh with the tools' virtualenv (ansible-core from tests/tools.txt).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.join(os.path.dirname(HERE), "ansible_collections", "collective", "zfssnap")
BIN = os.path.dirname(sys.executable)

# A stand-in for bin/snapshot, bin/rollback and bin/cleanup: it appends its name and argv to
# CALLS, and prints the answer ANSWERS has for the first of its arguments that has one (else
# for "*"): {"exit": N, "doc": {...}}.
STAND_IN = """#!%s
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.environ["ZFSSNAP_CALLS"], "a") as f:
    f.write(json.dumps([time.time(), os.path.dirname(here), os.path.basename(__file__),
                        sys.argv[1:]]) + "\\n")
with open(os.path.join(here, "answers.json")) as f:
    answers = json.load(f).get(os.path.basename(__file__), {})
answer = next((answers[a] for a in sys.argv[1:] if a in answers), answers.get("*", {}))
doc = dict({"format": 1, "ok": answer.get("exit", 0) == 0,
            "exit_code": answer.get("exit", 0), "error": None, "warnings": []},
           **answer.get("doc", {}))
print(json.dumps(doc))
sys.exit(answer.get("exit", 0))
"""


def task_results(out, name):
    """{status: sorted hosts} of the task `name` in ansible-playbook's default output."""
    results = {}
    for block in out.split("\nTASK [")[1:]:
        title, _, body = block.partition("\n")
        if not title.split("] ")[0].endswith(name):
            continue
        for m in re.finditer(r"^(ok|changed|failed|skipping|fatal): \[([^\]]+)\]", body, re.M):
            results.setdefault(m.group(1), []).append(m.group(2))
    return {k: sorted(v) for k, v in results.items()}


class CollectionTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="zfssnap-ansible-")
        cls.collections = os.path.join(cls.tmp, "collections")
        out = os.path.join(cls.tmp, "dist")
        cls.run_tool("ansible-galaxy", "collection", "build", COLLECTION, "--output-path", out)
        tarballs = os.listdir(out)
        assert tarballs == ["collective-zfssnap-0.1.0.tar.gz"], tarballs
        cls.tarball = os.path.join(out, tarballs[0])
        cls.run_tool("ansible-galaxy", "collection", "install", "--offline",
                     os.path.join(out, tarballs[0]), "-p", cls.collections)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def env(cls, **extra):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=cls.collections,
                   ANSIBLE_LOCAL_TEMP=os.path.join(cls.tmp, "ansible-local"),
                   ANSIBLE_REMOTE_TEMP=os.path.join(cls.tmp, "ansible-remote"),
                   ANSIBLE_HOME=os.path.join(cls.tmp, "ansible-home"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                   PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        env.update(extra)
        return env

    @classmethod
    def run_tool(cls, tool, *args, check=True, env=None):
        proc = subprocess.run([os.path.join(BIN, tool)] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env or cls.env(),
                              cwd=cls.tmp)
        if check and proc.returncode != 0:
            raise AssertionError("%s %s: exit %d\n%s\n%s" % (tool, args, proc.returncode,
                                                              proc.stdout, proc.stderr))
        return proc

    def setUp(self):
        self.calls = os.path.join(self.tmp, "calls-%s.jsonl" % self.id().rsplit(".", 1)[-1])

    def site(self, name, answers=None, part="zfssnap"):
        """A buildout directory whose part's scripts are stand-ins."""
        top = os.path.join(self.tmp, "sites", self.id().rsplit(".", 1)[-1], name)
        os.makedirs(os.path.join(top, "bin"), exist_ok=True)
        for script in ("snapshot", "rollback", "cleanup"):
            path = os.path.join(top, "bin", script if part == "zfssnap" else
                                "%s-%s" % (part, script))
            with open(path, "w") as f:
                f.write(STAND_IN % sys.executable)
            os.chmod(path, 0o755)
        with open(os.path.join(top, "bin", "answers.json"), "w") as f:
            json.dump({(s if part == "zfssnap" else "%s-%s" % (part, s)): a
                       for s, a in (answers or {}).items()}, f)
        return top

    def recorded(self):
        """[(site name, script, argv)] in the order they ran."""
        if not os.path.exists(self.calls):
            return []
        with open(self.calls) as f:
            rows = [json.loads(line) for line in f]
        return [(os.path.basename(top), script, argv) for _, top, script, argv in rows]

    def module(self, name, args, check=False):
        """One task on localhost: (ansible's exit code, the task's result)."""
        argv = ["localhost", "-i", "localhost,", "-c", "local", "-m",
                "collective.zfssnap." + name, "-a", json.dumps(args)] + (
                    ["--check"] if check else [])
        tree = tempfile.mkdtemp(dir=self.tmp)  # ansible -t: each host's whole result
        proc = self.run_tool("ansible", *argv + ["-t", tree], check=False,
                             env=self.env(ZFSSNAP_CALLS=self.calls))
        self.assertTrue(os.path.exists(os.path.join(tree, "localhost")),
                        proc.stdout + proc.stderr)
        with open(os.path.join(tree, "localhost")) as f:
            return proc.returncode, json.load(f)

    # -- the collection as built -----------------------------------------------------------
    def test_the_tarball_has_its_licence_and_changelog_and_no_test_output(self):
        with tarfile.open(self.tarball) as tar:
            names = tar.getnames()
        for name in ("LICENSE", "README.md", "MANIFEST.json", "FILES.json",
                     "changelogs/changelog.yaml", "meta/runtime.yml",
                     "roles/release/meta/argument_specs.yml"):
            self.assertIn(name, names)
        self.assertEqual([n for n in names if n.startswith("tests/output")
                          or "__pycache__" in n], [])

    def test_every_module_is_documented(self):
        for name in ("snapshot", "rollback", "cleanup"):
            proc = self.run_tool("ansible-doc", "-t", "module", "collective.zfssnap." + name)
            self.assertIn("buildout", proc.stdout)
            self.assertIn("EXAMPLES", proc.stdout)
        proc = self.run_tool("ansible-doc", "-t", "module", "collective.zfssnap.rollback")
        for choice in ("full", "stop", "start"):
            self.assertIn(choice, proc.stdout)

    def test_the_role_documents_and_checks_its_arguments(self):
        proc = self.run_tool("ansible-doc", "-t", "role", "collective.zfssnap.release")
        for word in ("zfssnap_action", "rollback_preflight", "zfssnap_buildout",
                     "zfssnap_force"):
            self.assertIn(word, proc.stdout)
        playbook = os.path.join(self.tmp, "role-play.yml")
        with open(playbook, "w") as f:
            f.write("- hosts: localhost\n  gather_facts: false\n  roles:\n"
                    "    - role: collective.zfssnap.release\n      zfssnap_action: rollback\n"
                    "      zfssnap_buildout: /nowhere\n")
        proc = self.run_tool("ansible-playbook", "-i", "localhost,", "-c", "local", playbook,
                             check=False, env=self.env(ZFSSNAP_CALLS=self.calls))
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("zfssnap_action", proc.stdout + proc.stderr)
        self.assertIn("rollback_preflight", proc.stdout + proc.stderr)  # the choices named
        self.assertEqual(self.recorded(), [])

    # -- the modules -----------------------------------------------------------------------
    def test_rollback_phases_and_check_mode_map_to_the_script(self):
        top = self.site("one", {"rollback": {
            "--no-start": {"doc": {"phase": "rolled-back", "recorded_stage": None,
                                   "to_start": ["instance1"]}},
            "--start": {"doc": {"phase": "done", "recorded_stage": "rolled back"}},
            "--dry-run": {"doc": {"phase": "planned", "recorded_stage": None}}}})
        rc, r = self.module("rollback", {"buildout": top, "snapshot": "pre-2.0",
                                         "phase": "stop"})
        self.assertEqual(rc, 0, r)
        self.assertEqual((r["changed"], r["phase"], r["to_start"]),
                         (True, "rolled-back", ["instance1"]))
        rc, r = self.module("rollback", {"buildout": top, "phase": "start"})
        self.assertEqual((rc, r["changed"], r["phase"]), (0, True, "done"))
        # Check mode: the preflight planned a rollback, which the real run would do.
        rc, r = self.module("rollback", {"buildout": top, "snapshot": "-odd", "keep": True},
                            check=True)
        self.assertEqual((rc, r["changed"], r["phase"]), (0, True, "planned"))
        self.assertEqual([argv for _, _, argv in self.recorded()], [
            ["--json", "--yes", "--no-start", "--", "pre-2.0"],
            ["--json", "--yes", "--start"],
            ["--json", "--yes", "--dry-run", "--keep", "--", "-odd"]])

    def test_a_refusal_fails_the_task_with_the_scripts_sentence(self):
        top = self.site("one", {"rollback": {"*": {"exit": 3, "doc": {
            "phase": "none", "error": "refusing to roll back: tank/site@x is held"}}}})
        rc, r = self.module("rollback", {"buildout": top, "snapshot": "x"})
        self.assertNotEqual(rc, 0)
        self.assertEqual(r["msg"], "bin/rollback: refusing to roll back: tank/site@x is held", r)
        self.assertEqual((r["rc"], r["phase"]), (3, "none"))

    def test_a_missing_script_or_no_json_is_one_sentence(self):
        rc, r = self.module("cleanup", {"buildout": os.path.join(self.tmp, "nowhere"),
                                        "destroy_all": True})
        self.assertIn("/nowhere/bin/cleanup does not exist: the buildout has no [zfssnap] "
                      "part", r["msg"])
        top = self.site("two")
        with open(os.path.join(top, "bin", "snapshot"), "w") as f:
            f.write("#!/bin/sh\necho Traceback >&2\nexit 1\n")
        rc, r = self.module("snapshot", {"buildout": top})
        self.assertEqual(r["msg"], "%s/bin/snapshot printed no JSON document (exit 1): "
                         "Traceback" % top)
        # A host that died half-way (here the script killed by SIGKILL): what to do next.
        with open(os.path.join(top, "bin", "rollback"), "w") as f:
            f.write("#!/bin/sh\nkill -9 $$\n")
        rc, r = self.module("rollback", {"buildout": top, "snapshot": "pre-2.0"})
        self.assertEqual(r["msg"], "bin/rollback was killed by signal 9 before it finished: "
                         "run it (or the playbook) again, it finishes what the host's record "
                         "says")
        self.assertEqual((r["rc"], r["phase"]), (-9, "unknown"))

    def test_snapshot_with_a_label_already_there_is_not_taken_again(self):
        top = self.site("one", {"snapshot": {
            "--list": {"doc": {"snapshots": [
                {"name": "zfssnap-0-half", "label": "half", "datasets": ["tank/site"],
                 "missing": ["data/archive"], "complete": False},
                {"name": "zfssnap-1-pre", "label": "pre", "datasets": ["tank/site"],
                 "missing": [], "complete": True}]}},
            "*": {"doc": {"snapshot": "zfssnap-2-new", "datasets": ["tank/site"]}}}},
            part="site")
        rc, r = self.module("snapshot", {"buildout": top, "part": "site", "label": "pre"})
        self.assertEqual((rc, r["changed"], r["snapshot"]), (0, False, "zfssnap-1-pre"))
        # A set with the label but missing on a dataset is taken again (the script destroys it).
        rc, r = self.module("snapshot", {"buildout": top, "part": "site", "label": "half"})
        self.assertEqual((rc, r["changed"], r["snapshot"]), (0, True, "zfssnap-2-new"))
        rc, r = self.module("snapshot", {"buildout": top, "part": "site", "label": "new",
                                         "note": "before 2.0"})
        self.assertEqual((rc, r["changed"], r["snapshot"]), (0, True, "zfssnap-2-new"))
        # Check mode: the set the real run would take is a change.
        rc, r = self.module("snapshot", {"buildout": top, "part": "site", "label": "new"},
                            check=True)
        self.assertEqual((rc, r["changed"], r["snapshot"]), (0, True, "zfssnap-2-new"))
        self.assertEqual([(s, argv) for _, s, argv in self.recorded()], [
            ("site-snapshot", ["--json", "--list"]),
            ("site-snapshot", ["--json", "--list"]),
            ("site-snapshot", ["--json", "--", "half"]),
            ("site-snapshot", ["--json", "--list"]),
            ("site-snapshot", ["--json", "--message", "before 2.0", "--", "new"]),
            ("site-snapshot", ["--json", "--list"]),
            ("site-snapshot", ["--json", "--dry-run", "--", "new"])])

    def test_cleanup_leaves_out_what_is_gone_already(self):
        top = self.site("one", {"snapshot": {"--list": {"doc": {"snapshots": [
            {"name": "zfssnap-1-pre", "label": "pre"}], "kept": []}}},
            "cleanup": {"*": {"doc": {"destroyed": ["zfssnap-1-pre"],
                                      "destroyed_kept": []}}}})
        rc, r = self.module("cleanup", {"buildout": top, "snapshots": ["gone", "pre"]})
        self.assertEqual((rc, r["changed"], r["destroyed"]), (0, True, ["zfssnap-1-pre"]))
        rc, r = self.module("cleanup", {"buildout": top, "snapshots": ["gone"]})
        self.assertEqual((rc, r["changed"]), (0, False))
        self.assertEqual([argv for _, s, argv in self.recorded() if s == "cleanup"],
                         [["--json", "--yes", "--", "pre"]])

    def test_cleanup_destroys_nothing_unless_told_what(self):
        top = self.site("one", {"cleanup": {"*": {"doc": {"destroyed": ["zfssnap-1-a"],
                                                          "destroyed_kept": []}}}})
        rc, r = self.module("cleanup", {"buildout": top})
        self.assertNotEqual(rc, 0)
        self.assertEqual(r["msg"], "nothing to destroy was named: give snapshots (the "
                         "release's label), older_than, or destroy_all=true to destroy every "
                         "snapshot set and kept state of the part; nothing was destroyed")
        rc, r = self.module("cleanup", {"buildout": top, "snapshots": ["a"],
                                        "older_than": "7d"})
        self.assertIn("mutually exclusive", r["msg"])
        self.assertEqual(self.recorded(), [])
        rc, r = self.module("cleanup", {"buildout": top, "destroy_all": True}, check=True)
        self.assertEqual((rc, r["changed"], r["destroyed"]), (0, True, ["zfssnap-1-a"]))
        rc, r = self.module("cleanup", {"buildout": top, "older_than": "7d"})
        self.assertEqual((rc, r["changed"]), (0, True))
        self.assertEqual([argv for _, _, argv in self.recorded()], [
            ["--json", "--yes", "--dry-run"], ["--json", "--yes", "--older-than", "7d"]])

    def test_a_second_rollback_to_the_same_set_is_ok_and_changes_nothing(self):
        finished = {"target": "zfssnap-1-pre", "finished": "2026-12-07T03:00:00Z",
                    "transactions": 12, "written": 4096}
        top = self.site("one", {"rollback": {
            "--again": {"doc": {"phase": "done", "recorded_stage": None}},
            "--dry-run": {"doc": {"phase": "planned", "finished_rollback": finished}},
            "*": {"exit": 3, "doc": {"phase": "none", "finished_rollback": finished,
                                     "error": "a rollback to zfssnap-1-pre finished at ..."}}}})
        for check in (False, True):
            rc, r = self.module("rollback", {"buildout": top, "snapshot": "pre"}, check=check)
            self.assertEqual((rc, r["changed"], r["phase"]), (0, False, "done"), r)
            self.assertEqual(r["finished_rollback"], finished)
            self.assertIn("rolled back to zfssnap-1-pre already", r["msg"])
        rc, r = self.module("rollback", {"buildout": top, "snapshot": "pre", "force": True})
        self.assertEqual((rc, r["changed"]), (0, True), r)
        self.assertEqual([argv for _, _, argv in self.recorded()], [
            ["--json", "--yes", "--", "pre"], ["--json", "--yes", "--dry-run", "--", "pre"],
            ["--json", "--yes", "--again", "--", "pre"]])

    def test_a_json_format_it_does_not_know_is_refused(self):
        top = self.site("one", {"snapshot": {"*": {"doc": {"format": 2, "snapshot": "x"}}}})
        rc, r = self.module("snapshot", {"buildout": top})
        self.assertNotEqual(rc, 0)
        self.assertEqual(r["msg"], "%s/bin/snapshot answers in JSON format 2, which this "
                         "collection does not read (it reads 1): install the release of "
                         "collective.zfssnap that goes with the host's "
                         "collective.recipe.zfssnap" % top)

    def test_scripts_a_part_names_itself(self):
        top = self.site("one", {"snapshot": {"*": {"doc": {"snapshot": "zfssnap-1"}}}})
        os.rename(os.path.join(top, "bin", "snapshot"), os.path.join(top, "bin", "before"))
        os.rename(os.path.join(top, "bin", "answers.json"), os.path.join(top, "bin", "a.json"))
        with open(os.path.join(top, "bin", "a.json")) as f:
            answers = json.load(f)
        with open(os.path.join(top, "bin", "answers.json"), "w") as f:
            json.dump({"before": answers["snapshot"]}, f)
        rc, r = self.module("snapshot", {"buildout": top, "scripts": {"snapshot": "before"}})
        self.assertEqual((rc, r["snapshot"]), (0, "zfssnap-1"), r)
        self.assertEqual([s for _, s, _ in self.recorded()], ["before"])
        rc, r = self.module("snapshot", {"buildout": top, "scripts": {"snap": "before"}})
        self.assertEqual(r["msg"], "scripts has snap, which is not one of the part's scripts "
                         "(snapshot, rollback, cleanup)")

    # -- the playbooks ---------------------------------------------------------------------
    def playbook(self, name, sites, extra=(), label="pre-2.0"):
        """Run playbooks/NAME.yml on hosts zeo (the server) and client1, client2 (local
        connections, one buildout each); (exit code, output)."""
        inventory = os.path.join(self.tmp, "inventory-%s.ini" % self.id().rsplit(".", 1)[-1])
        with open(inventory, "w") as f:
            f.write("[zeo_servers]\nzeo zfssnap_buildout=%s\n[zeo_clients]\n" % sites["zeo"])
            for host in ("client1", "client2"):
                f.write("%s zfssnap_buildout=%s\n" % (host, sites[host]))
            f.write("[all:vars]\nansible_connection=local\nansible_python_interpreter=%s\n"
                    % sys.executable)
        proc = self.run_tool("ansible-playbook", "-i", inventory,
                             "collective.zfssnap." + name,
                             *(["-e", "zfssnap_label=" + label] if label else []),
                             *extra, check=False,
                             env=self.env(ZFSSNAP_CALLS=self.calls,
                                          ANSIBLE_STDOUT_CALLBACK="default"))
        return proc.returncode, proc.stdout + proc.stderr

    def rollback_answers(self):
        return {"rollback": {
            "--dry-run": {"doc": {"phase": "planned", "recorded_stage": None}},
            "--no-start": {"doc": {"phase": "rolled-back", "recorded_stage": None}},
            "--start": {"doc": {"phase": "done", "recorded_stage": "rolled back"}},
            "*": {"doc": {"phase": "done", "recorded_stage": None}}}}

    def test_rollback_playbook_orders_the_hosts(self):
        sites = {h: self.site(h, self.rollback_answers()) for h in ("zeo", "client1",
                                                                     "client2")}
        rc, out = self.playbook("rollback", sites)
        self.assertEqual(rc, 0, out)
        calls = [(host, argv[2:]) for host, script, argv in self.recorded()]
        phase = [next(a for a in argv if a in ("--dry-run", "--no-start", "--start", "--"))
                 for _, argv in calls]
        # Every preflight first; every client stopped before the server; the server rolled
        # back (and started) before any client starts.
        self.assertEqual(phase[:3], ["--dry-run"] * 3)
        order = [(h, p) for (h, _), p in zip(calls, phase)][3:]
        self.assertEqual(sorted(order[:2]), [("client1", "--no-start"),
                                             ("client2", "--no-start")])
        self.assertEqual(order[2], ("zeo", "--"))
        self.assertEqual(sorted(order[3:]), [("client1", "--start"), ("client2", "--start")])
        # The preflight is a check: ok, not changed, in the recap too.
        self.assertEqual(task_results(out, "Can this host roll back to the label?"),
                         {"ok": ["client1", "client2", "zeo"]})

    def test_snapshot_playbook_in_check_mode_predicts_one_change_per_host(self):
        answers = {"snapshot": {"*": {"doc": {"snapshot": "zfssnap-1-pre-2.0",
                                              "datasets": ["tank/site"]}}}}
        sites = {h: self.site(h, answers) for h in ("zeo", "client1", "client2")}
        rc, out = self.playbook("snapshot", sites, extra=["--check"])
        self.assertEqual(rc, 0, out)
        self.assertEqual(task_results(out, "Preflight (bin/snapshot --dry-run)"),
                         {"ok": ["client1", "client2", "zeo"]})
        for host in ("zeo", "client1", "client2"):
            self.assertRegex(out, r"%s\s+: ok=\d+\s+changed=1\s" % host)
        self.assertEqual([argv for _, _, argv in self.recorded()
                          if "--dry-run" not in argv and "--list" not in argv], [])

    def sites_where(self, odd_host, argument, answer):
        """The three buildouts, `odd_host`'s bin/rollback answering `answer` to
        `argument`."""
        sites = {}
        for host in ("zeo", "client1", "client2"):
            answers = self.rollback_answers()
            if host == odd_host:
                answers["rollback"][argument] = answer
            sites[host] = self.site(host, answers)
        return sites

    def test_one_host_refusing_in_the_preflight_changes_nothing_anywhere(self):
        sites = self.sites_where("client2", "--dry-run", {"exit": 3, "doc": {
            "phase": "none", "error": "refusing to roll back: newer snapshots are held"}})
        rc, out = self.playbook("rollback", sites)
        self.assertNotEqual(rc, 0)
        self.assertEqual({tuple(a for a in argv if a == "--dry-run")
                          for _, _, argv in self.recorded()}, {("--dry-run",)})
        self.assertIn("client2: none (bin/rollback: refusing to roll back: newer snapshots "
                      "are held)", out)
        self.assertIn("client2 failed in phase none", out)

    def test_a_server_failing_mid_way_is_reported_and_the_clients_stay_stopped(self):
        sites = self.sites_where("zeo", "*", {"exit": 4, "doc": {
            "phase": "stopped", "error": "the rollback failed half-way: run it again"}})
        rc, out = self.playbook("rollback", sites)
        self.assertNotEqual(rc, 0)
        self.assertFalse([argv for _, _, argv in self.recorded() if "--start" in argv])
        for line in ("zeo: stopped (bin/rollback: the rollback failed half-way",
                     "client1: rolled-back", "client2: rolled-back"):
            self.assertIn(line, out)


    def test_cleanup_playbook_destroys_the_label_and_nothing_without_one(self):
        answers = {"snapshot": {"--list": {"doc": {"snapshots": [
            {"name": "zfssnap-1-pre-2.0", "label": "pre-2.0"}], "kept": []}}}}
        sites = {h: self.site(h, answers) for h in ("zeo", "client1", "client2")}
        rc, out = self.playbook("cleanup", sites, label=None)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("no zfssnap_label was given", out)
        self.assertEqual(self.recorded(), [])
        rc, out = self.playbook("cleanup", sites, ["-e", "zfssnap_cleanup_all=true"],
                                label=None)
        self.assertEqual(rc, 0, out)
        self.assertEqual(sorted((h, argv) for h, _, argv in self.recorded()),
                         [(h, ["--json", "--yes"]) for h in ("client1", "client2", "zeo")])
        calls = len(self.recorded())
        rc, out = self.playbook("cleanup", sites)  # zfssnap_label=pre-2.0
        self.assertEqual(rc, 0, out)
        self.assertEqual(sorted((h, argv) for h, s, argv in self.recorded()[calls:]
                                if s == "cleanup"),
                         [(h, ["--json", "--yes", "--", "pre-2.0"])
                          for h in ("client1", "client2", "zeo")])

    def already_answers(self, already=True):
        finished = {"target": "zfssnap-1-pre-2.0", "finished": "2026-12-07T03:00:00Z",
                    "transactions": 3, "written": 65536}
        if not already:
            return self.rollback_answers()
        return {"rollback": {
            "--dry-run": {"doc": {"phase": "planned", "recorded_stage": None,
                                  "finished_rollback": finished}},
            "--start": {"doc": {"phase": "done", "recorded_stage": None}},
            "--again": {"doc": {"phase": "done", "recorded_stage": None}},
            "*": {"exit": 3, "doc": {"phase": "none", "recorded_stage": None,
                                     "finished_rollback": finished,
                                     "error": "a rollback to zfssnap-1-pre-2.0 finished"}}}}

    def test_rollback_playbook_run_again_changes_nothing(self):
        sites = {h: self.site(h, self.already_answers()) for h in ("zeo", "client1",
                                                                    "client2")}
        rc, out = self.playbook("rollback", sites)
        self.assertEqual(rc, 0, out)
        for host in ("zeo", "client1", "client2"):
            self.assertRegex(out, r"%s\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0"
                             % host)
        self.assertFalse([argv for _, _, argv in self.recorded() if "--again" in argv])

    def test_rollback_playbook_refuses_hosts_at_different_states(self):
        sites = {h: self.site(h, self.already_answers(h == "zeo"))
                 for h in ("zeo", "client1", "client2")}
        rc, out = self.playbook("rollback", sites)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("zeo rolled back to pre-2.0 already, client1, client2 not: run again "
                      "with -e zfssnap_force=true", out)
        self.assertEqual({a for _, _, argv in self.recorded() for a in argv
                          if a.startswith("--") and a not in ("--json", "--yes", "--")},
                         {"--dry-run"})
        rc, out = self.playbook("rollback", sites, ["-e", "zfssnap_force=true"])
        self.assertEqual(rc, 0, out)
        self.assertIn(("zeo", ["--json", "--yes", "--again", "--", "pre-2.0"]),
                      [(h, argv) for h, _, argv in self.recorded()])

    def test_rollback_playbook_run_again_after_a_client_failed_to_start_finishes(self):
        # The server and client1 finished; client2's --start failed and its record stays.
        sites = {h: self.site(h, self.already_answers()) for h in ("zeo", "client1")}
        answers = self.rollback_answers()
        answers["rollback"]["--dry-run"] = {"doc": {"phase": "planned",
                                                    "recorded_stage": "rolled back"}}
        answers["rollback"]["--no-start"] = {"doc": {"phase": "rolled-back",
                                                     "recorded_stage": "rolled back"}}
        sites["client2"] = self.site("client2", answers)
        rc, out = self.playbook("rollback", sites)
        self.assertEqual(rc, 0, out)
        self.assertIn(("client2", ["--json", "--yes", "--start"]),
                      [(h, argv) for h, _, argv in self.recorded()])
        self.assertFalse([argv for _, _, argv in self.recorded() if "--again" in argv])

    def test_rollback_playbook_keeps_to_zfssnap_hosts(self):
        sites = {h: self.site(h, self.rollback_answers()) for h in ("zeo", "client1",
                                                                     "client2")}
        rc, out = self.playbook("rollback", sites, ["-e", "zfssnap_hosts=zeo:client1"])
        self.assertEqual(rc, 0, out)
        self.assertEqual({h for h, _, _ in self.recorded()}, {"zeo", "client1"})

if __name__ == "__main__":
    unittest.main()
