"""The systemd adapter (procman_systemd) at host speed: the argv it builds, how it reads
`systemctl show`, the order it stops and starts in, what it refuses, and a rollback of the fast
suite's world through it, killed after every action (and a power cut) and run again.

systemctl here is a model (the adapter's run_command replaced), as the fast suite's zfs is:
it shows the sequence is right. That it works with a real systemd as PID 1, real units and
Restart=on-failure is shown in the systemd guest (test_systemd_site).
"""
import contextlib
import os
import unittest
from unittest import mock

from collective.recipe.zfssnap import crashpoint
from collective.recipe.zfssnap import procman_systemd
from collective.recipe.zfssnap.manager import ManagerError
from collective.recipe.zfssnap.procman import Refused
from collective.recipe.zfssnap.procman_systemd import Units
from collective.recipe.zfssnap.procman_systemd import parse_show
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.systemd import systemctl_argv
from collective.recipe.zfssnap.tests.fake_world import Crash
from collective.recipe.zfssnap.tests.fake_world import FakeSupervisor
from collective.recipe.zfssnap.tests.fake_world import World

UNITS = ["zeo.service", "instance1.service", "instance2.service"]


class FakeSystemctl:
    """systemd's side of systemctl: each unit active or not, its main pid, and what triggers
    it. A stop or start is a crash point, as in the adapter's run_command."""

    def __init__(self, units=UNITS):
        self.units = {n: {"ActiveState": "active", "MainPID": str(4000 + i),
                          "TriggeredBy": "", "fails": False}
                      for i, n in enumerate(units)}
        self.calls = []
        self.pid = 5000

    def __call__(self, argv, timeout, what, changes=True, env=None, check=True):
        words = argv[argv.index("systemctl") + 1:]
        assert "--no-ask-password" in words, argv
        names = [w for w in words if w.endswith(".service")]
        verbs = [w for w in words if w in ("show", "status", "stop", "start", "reset-failed")]
        verb = verbs[0]
        if verb == "show":
            blocks = []
            for n in names:
                u = self.units.get(n)
                if u is None:
                    blocks.append("Id=%s\nLoadState=not-found\nActiveState=inactive\n"
                                  "MainPID=0\n" % n)
                    continue
                blocks.append("Id=%s\nLoadState=loaded\nActiveState=%s\nSubState=x\n"
                              "MainPID=%s\nControlGroup=\nTriggeredBy=%s\n" % (
                                  n, u["ActiveState"], u["MainPID"], u["TriggeredBy"]))
            return "\n".join(blocks)
        if verb == "status":
            u = self.units[names[0]]
            return "* %s - a unit\n   Active: %s\n" % (names[0], u["ActiveState"])
        self.calls.append("%s %s" % (verb, names[0]))
        u = self.units[names[0]]
        if verb == "reset-failed":
            assert u["ActiveState"] == "failed", argv
            u["ActiveState"] = "inactive"
            crashpoint.done(" ".join(argv))
            return ""
        assert "--no-block" in words, argv
        if verb == "stop":
            u["ActiveState"], u["MainPID"] = "inactive", "0"
        elif u["fails"]:
            u["ActiveState"], u["MainPID"] = "failed", "0"
        else:
            self.pid += 1
            u["ActiveState"], u["MainPID"] = "active", str(self.pid)
        crashpoint.done(" ".join(argv))
        return ""

    def states(self):
        return {n: u["ActiveState"] for n, u in self.units.items()}

    def power_cut(self, boot=True):
        """Everything gone; at boot the enabled units start again (their ExecStart in the
        buildout: only if the buildout's dataset is mounted)."""
        for u in self.units.values():
            u["ActiveState"], u["MainPID"] = "inactive", "0"
        if boot:
            for u in self.units.values():
                self.pid += 1
                u["ActiveState"], u["MainPID"] = "active", str(self.pid)


def modelled(systemctl):
    """The adapter's systemctl replaced by the model, and its waits made instant."""
    return (mock.patch.object(procman_systemd, "run_command", systemctl),
            mock.patch.object(procman_systemd, "STEADY", 0),
            mock.patch.object(procman_systemd, "POLL", 0))


class Modelled(unittest.TestCase):

    def setUp(self):
        self.systemctl = FakeSystemctl()
        for patch in modelled(self.systemctl):
            patch.start()
            self.addCleanup(patch.stop)


class ArgvTest(unittest.TestCase):

    def test_a_system_unit_as_root_and_through_the_prefix(self):
        with mock.patch.object(os, "geteuid", lambda: 0):
            self.assertEqual(systemctl_argv("zeo.service", ["--no-block", "stop"], ["sudo", "-n"]),
                             ["systemctl", "--no-ask-password", "--no-block", "stop",
                              "zeo.service"])
        with mock.patch.object(os, "geteuid", lambda: 1000):
            self.assertEqual(systemctl_argv("zeo.service", ["--no-block", "start"],
                                            ["sudo", "-n"]),
                             ["sudo", "-n", "systemctl", "--no-ask-password", "--no-block",
                              "start", "zeo.service"])

    def test_queries_need_no_privilege_but_changes_use_it(self):
        seen = []
        units = Units(["zeo.service"], privilege=["sudo", "-n"])
        with mock.patch.object(os, "geteuid", lambda: 1000), mock.patch.object(
                procman_systemd, "run_command",
                lambda argv, *a, **k: seen.append(argv) or
                "Id=zeo.service\nLoadState=loaded\nActiveState=active\nMainPID=7\n"):
            units.show()
            units.systemctl(["--no-block", "stop"], ["zeo.service"], "stopping")
        self.assertEqual(seen[0][:2], ["systemctl", "--no-ask-password"])
        self.assertEqual(seen[1][:3], ["sudo", "-n", "systemctl"])

    def test_a_user_manager_of_another_user(self):
        import pwd
        me = pwd.getpwuid(os.getuid()).pw_name
        units = Units(["app.service"], user=me)
        self.assertEqual(units.unit_id("app.service"), "user/%d/app.service" % os.getuid())
        self.assertEqual(units.shown(["app.service"], "start"), "systemctl --user start "
                         "app.service")
        self.assertIn("not a user of this machine",
                      Units(["a.service"], user="no-such-user-zfssnap").problem)


class ShowTest(unittest.TestCase):

    def test_blocks_in_the_order_asked(self):
        text = ("Id=zeo.service\nActiveState=active\nMainPID=10\n\n"
                "Id=web.service\nActiveState=inactive\nMainPID=0\n")
        shown = parse_show(text, ["zeo.service", "web.service"])
        self.assertEqual(shown["web.service"]["ActiveState"], "inactive")
        self.assertEqual(shown["zeo.service"]["MainPID"], "10")
        with self.assertRaises(ManagerError):
            parse_show(text, ["zeo.service"])


class SequenceTest(Modelled):

    def test_stopped_in_reverse_started_in_order_only_what_ran(self):
        self.systemctl.units["instance2.service"]["ActiveState"] = "inactive"
        units = Units(UNITS)
        survey = units.survey()
        self.assertEqual(survey.running, ["zeo.service", "instance1.service"])
        self.assertEqual(survey.pids, [4000, 4001, 4002])
        plan = units.plan_stop(survey, [], survey.running, [])
        self.assertEqual(plan.names, ["instance1.service", "zeo.service"])
        self.assertEqual(plan.record, {"running_before": ["zeo.service", "instance1.service"]})
        outcome = units.stop(plan)
        self.assertEqual((outcome.late, outcome.stuck), (None, None))
        out = mock.Mock()
        self.assertEqual(units.start(plan.record["running_before"], out), [])
        self.assertEqual(self.systemctl.calls, ["stop instance1.service", "stop zeo.service",
                                                "start zeo.service", "start instance1.service"])
        self.assertEqual(self.systemctl.states()["instance2.service"], "inactive")

    def test_a_unit_still_stopping_is_stopped_and_waited_for_but_not_started_after(self):
        self.systemctl.units["instance2.service"]["ActiveState"] = "deactivating"
        units = Units(UNITS)
        survey = units.survey()
        plan = units.plan_stop(survey, [], survey.running, [])
        self.assertEqual(plan.names, UNITS[::-1])
        self.assertEqual(plan.record["running_before"], UNITS[:2])
        # Unless the killed run that stopped it had recorded it.
        plan = units.plan_stop(survey, [], survey.running, ["instance2.service"])
        self.assertEqual(plan.record["running_before"], UNITS)

    def test_a_recorded_unit_the_option_no_longer_names_is_not_started(self):
        units = Units(UNITS[:2])
        self.assertEqual(units.start(UNITS, mock.Mock()), ["instance2.service"])

    def test_a_unit_that_fails_to_start_is_named_with_its_status(self):
        units = Units(UNITS, timeout=0)
        self.systemctl.units["zeo.service"]["ActiveState"] = "inactive"
        self.systemctl.units["zeo.service"]["fails"] = True
        self.assertEqual(units.start(["zeo.service"], mock.Mock()), ["zeo.service"])
        self.assertIn("systemctl status zeo.service: * zeo.service - a unit | Active: failed",
                      units.logs_hint(["zeo.service"]))
        # Fixed, the rerun clears what systemd remembers of the failure (its start limit)
        # before it starts the unit again.
        self.systemctl.units["zeo.service"]["fails"] = False
        self.assertEqual(units.start(["zeo.service"], mock.Mock()), [])
        self.assertEqual(self.systemctl.calls, ["start zeo.service", "reset-failed zeo.service",
                                                "start zeo.service"])

    def test_a_unit_another_unit_triggers_is_refused(self):
        self.systemctl.units["zeo.service"]["TriggeredBy"] = "zeo.socket"
        units = Units(UNITS)
        survey = units.survey()
        self.assertIn("zeo.socket can start the part's units again", units.refusal(survey))
        with self.assertRaises(Refused) as caught:
            units.plan_stop(survey, [], survey.running, [])
        self.assertIn("add it to the part's systemd-units", caught.exception.message)

    def test_a_trigger_of_the_part_is_stopped_first_and_started_first(self):
        units = Units(["zeo.socket"] + UNITS)
        self.assertEqual(units.stop_order(["zeo.socket", "zeo.service", "instance1.service"]),
                         ["zeo.socket", "instance1.service", "zeo.service"])

    def test_after_a_unit_that_does_not_start_the_next_ones_are_not_started(self):
        units = Units(UNITS, timeout=0)
        for u in self.systemctl.units.values():
            u["ActiveState"] = "inactive"
        self.systemctl.units["zeo.service"]["fails"] = True
        self.assertEqual(units.start(UNITS, mock.Mock()), UNITS)
        self.assertEqual(self.systemctl.calls, ["start zeo.service"])

    def test_a_unit_systemd_does_not_know_is_a_sentence(self):
        with self.assertRaises(ManagerError) as caught:
            Units(UNITS + ["typo.service"]).survey()
        self.assertEqual(caught.exception.message, "systemd cannot run typo.service (not-found): "
                         "check the part's systemd-units")


class SystemdWorld(World):
    """The fast suite's world with the site's processes as systemd units."""

    def __init__(self):
        super().__init__(shutdown=False)
        del self.config["supervisor_conf"]
        self.config["systemd_units"] = list(UNITS)
        self.systemctl = FakeSystemctl()
        self.sup = None

    @contextlib.contextmanager
    def patched(self, crash_after=None, log=None):
        with contextlib.ExitStack() as stack:
            for patch in modelled(self.systemctl):
                stack.enter_context(patch)
            stack.enter_context(super().patched(crash_after, log))
            yield

    def power_cut(self):
        self.pool.boot()
        mounted = {m.mountpoint: m.dataset for m in self.pool.mounts()}
        empty = [n for n, m in self.layout if m not in mounted]
        self.systemctl.power_cut(boot=self.top in mounted)
        return mounted, empty


class SystemdRollbackTest(unittest.TestCase):

    def actions(self, keep=False):
        world = SystemdWorld()
        self.addCleanup(world.close)
        log = []
        self.assertIsNone(world.rollback(log=log, keep=keep))
        return log

    def test_the_actions_of_a_normal_run(self):
        steps = [a.split(" --no-block ")[-1] if "systemctl" in a else a.split(" tank/")[0]
                 .split(" data/")[0] for a in self.actions()]
        self.assertEqual(steps, [
            "record stopping", "record stopping", "stop instance2.service",
            "stop instance1.service", "stop zeo.service", "record rolling back",
            "zfs rollback", "record rolling back", "zfs rollback", "record rolling back",
            "zfs rollback", "record rolling back", "record rolled back", "start zeo.service",
            "start instance1.service", "start instance2.service", "record finished",
            "record removed"])

    def test_killed_after_every_action_then_run_again(self):
        for keep, boot in ((False, False), (False, True), (True, False), (True, True)):
            steps = self.actions(keep)
            for n, action in enumerate(steps, 1):
                world = SystemdWorld()
                self.addCleanup(world.close)
                where = "%skilled after %d (%s)%s" % ("--keep " if keep else "", n, action,
                                                      ", then a boot" if boot else "")
                self.assertIsInstance(world.rollback(crash_after=n, keep=keep), Crash, where)
                if boot:
                    mounted, empty = world.power_cut()
                    world.mount_by_name([d for d, m in world.layout if m in empty])
                result = world.rollback(keep=keep)
                self.assertIsNone(result, "%s: the rerun said %s" % (where, result))
                for name, _ in world.layout:
                    self.assertEqual(world.pool.datasets[name]["content"], "v1", where)
                self.assertEqual(set(world.systemctl.states().values()), {"active"}, where)
                self.assertIsNone(world.record(), where)
                self.assertEqual(len(world.kept()), 3 if keep else 0, where)

    def test_what_the_units_refuse_is_refused_by_the_dry_run_too(self):
        for dry_run in (True, False):
            world = SystemdWorld()
            self.addCleanup(world.close)
            world.systemctl.units["zeo.service"]["TriggeredBy"] = "zeo.socket"
            result = world.rollback(dry_run=dry_run)
            self.assertEqual(result.code, REFUSED)
            self.assertIn("refusing to roll back: zeo.socket can start the part's units again",
                          result.message)
            self.assertEqual(world.systemctl.calls, [])
            self.assertIsNone(world.record())

    def test_a_unit_systemd_does_not_know_refuses_before_anything_changes(self):
        for dry_run in (True, False):
            world = SystemdWorld()
            self.addCleanup(world.close)
            world.config["systemd_units"] = UNITS + ["typo.service"]
            result = world.rollback(dry_run=dry_run)
            self.assertEqual((result.code, result.message), (
                REFUSED, "systemd cannot run typo.service (not-found): check the part's "
                "systemd-units; nothing was changed"))
            self.assertEqual(world.systemctl.calls, [])

    def test_a_record_of_supervisord_is_not_finished_through_systemd(self):
        # Killed after the stop, and with every dataset rolled back (only the start left).
        for after in (3, 12):
            world = SystemdWorld()
            self.addCleanup(world.close)
            systemd = dict(world.config)
            world.config.pop("systemd_units")
            world.config["supervisor_conf"] = world.top + "/parts/supervisor/supervisord.conf"
            world.sup = FakeSupervisor()
            log = []
            self.assertIsInstance(world.rollback(crash_after=after, log=log), Crash)
            world.config = systemd
            result = world.rollback()
            self.assertEqual(result.code, REFUSED, (log, result))
            self.assertIn("stopped app, worker through supervisord, but the part now names "
                          "systemd: put the part's process manager back", result.message)
            self.assertEqual(world.systemctl.calls, [])
            self.assertIsNotNone(world.record())
