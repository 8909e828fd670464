"""bin/rollback's stages, killed after every action and resumed, in the fast suite (fake_world:
a modelled pool and supervisord, the real record and rollback code).

For the plain rollback and --keep, with supervisord shut down (its files on the datasets) or
only its programs stopped: a first run counts the actions; then for every N a run is killed
after action N (the crash points of crashpoint.py, raised instead of SIGKILL), optionally a
power cut and a boot follow, and `bin/rollback` typed again must finish the job: every dataset
at the target's content, what ran before running, no record left, the other tool's snapshots
there, and with --keep the rolled-away state kept, read-only, never mounted at boot.
"""
import contextlib
import io
import json
import os
import sys
import unittest

from collective.recipe.zfssnap import cleanup as cleanupmod
from collective.recipe.zfssnap import forget as forgetmod
from collective.recipe.zfssnap import rollback as rollbackmod
from collective.recipe.zfssnap import snapshot as snapshotmod
from collective.recipe.zfssnap import state
from collective.recipe.zfssnap import zfs as zfsmod
from collective.recipe.zfssnap.site import INCOMPLETE
from collective.recipe.zfssnap.site import REFUSED
from collective.recipe.zfssnap.site import Stop
from collective.recipe.zfssnap.tests.fake_world import Crash
from collective.recipe.zfssnap.tests.fake_world import World


def actions(keep, shutdown):
    world = World(shutdown=shutdown)
    try:
        return actions_in(world, keep)
    finally:
        world.close()


def actions_in(world, keep):
    """The actions of a normal run in `world` (which it changes)."""
    log = []
    result = world.rollback(keep=keep, log=log)
    assert result is None, "the counting run failed: %s" % result
    return log


def keep_killed_after_the_start(test, prepare=lambda world: None):
    """A world whose bin/rollback --keep was killed right after it started the site again,
    with the renames and the settling still to do. `prepare` changes the world first (the
    run that counts the actions gets the same change)."""
    counting = World()
    test.addCleanup(counting.close)
    prepare(counting)
    steps = actions_in(counting, keep=True)
    world = World()
    test.addCleanup(world.close)
    prepare(world)
    result = world.rollback(keep=True, crash_after=steps.index(
        "supervisord start supervisord") + 1)
    test.assertIsInstance(result, Crash)
    return world


class StageSweepTest(unittest.TestCase):

    def sweep(self, keep, shutdown, boot):
        steps = actions(keep, shutdown)
        self.assertGreater(len(steps), 3)
        for n, action in enumerate(steps, 1):
            world = World(shutdown=shutdown)
            self.addCleanup(world.close)
            where = "killed after %d (%s)%s" % (n, action, ", then a boot" if boot else "")
            result = world.rollback(keep=keep, crash_after=n)
            self.assertIsInstance(result, Crash, where)
            if boot:
                mounted, empty = world.power_cut()
                for mountpoint, dataset in mounted.items():
                    self.assertNotIn("-rolled-away-", dataset, where)
                if not keep:
                    self.assertEqual(empty, [], where)
                # Never the buildout mounted over an empty data directory.
                self.assertTrue(not empty or world.top not in mounted, where)
                if keep and world.top in mounted:
                    # The site starts at boot: on one state, not a mix (a plain rollback
                    # killed half-way leaves a mix, which the rerun finishes).
                    self.assertEqual(len({world.pool.datasets[d]["content"]
                                          for d in mounted.values()}), 1, (where, mounted))
                world.mount_by_name([d for d, m in world.layout if m in empty])
            # What the operator may type first: the dry run changes nothing.
            before = (list(world.pool.calls), list(world.sup.calls), world.record())
            result = world.rollback(keep=keep, dry_run=True)
            self.assertIsNone(result, "%s: the dry run said %s" % (where, result))
            self.assertEqual((world.pool.calls, world.sup.calls, world.record()), before, where)
            result = world.rollback(keep=keep)
            self.assertIsNone(result, "%s: the rerun said %s" % (where, result))
            # Killed after its very last action the run was complete: the rerun is asked for
            # a second rollback to the same set, and with nothing written since it does none.
            self.assertEqual("finished_rollback" in world.data, n == len(steps), where)
            self.check_finished(world, keep, where)

    def check_finished(self, world, keep, where):
        pool = world.pool
        for name, mountpoint in world.layout:
            d = pool.datasets[name]
            self.assertEqual(d["content"], "v1", "%s: %s" % (where, name))
            self.assertTrue(d["mounted"], where)
            self.assertEqual(d["mountpoint"], mountpoint, where)
            self.assertEqual(d["canmount"], "on", where)
            self.assertEqual(d["user"].get("org.example:tag"), "theirs", where)
            self.assertIn(name + "@other-tool", pool.snapshots_of(name), where)
            self.assertEqual(pool.snapshots_of(name)[-1], name + "@" + world.target, where)
        self.assertTrue(world.sup.up, where)
        self.assertEqual({n: p.state for n, p in world.sup.programs.items()},
                         {"app": "RUNNING", "worker": "RUNNING"}, where)
        self.assertIsNone(world.record(), where)
        self.assertEqual([n for n in pool.datasets if "-rollback-" in n], [], where)
        kept = world.kept()
        if not keep:
            self.assertEqual(kept, [], where)
            return
        self.assertEqual(len(kept), len(world.layout), (where, kept))
        for name in kept:
            d = pool.datasets[name]
            self.assertEqual((d["readonly"], d["mountpoint"], d["canmount"], d["mounted"]),
                             ("on", "none", "noauto", False), (where, name))
            self.assertEqual(d["content"], "v2", (where, name))
            self.assertEqual(d["user"].get("collective.recipe.zfssnap:kind"), "rolled-away")
        self.assertTrue(any(pool.datasets[k]["content"] == "v2" for k in kept), where)

    def test_rollback_supervisord_shut_down(self):
        self.sweep(keep=False, shutdown=True, boot=False)

    def test_rollback_supervisord_shut_down_then_a_boot(self):
        self.sweep(keep=False, shutdown=True, boot=True)

    def test_rollback_programs_stopped(self):
        self.sweep(keep=False, shutdown=False, boot=False)

    def test_rollback_programs_stopped_then_a_boot(self):
        self.sweep(keep=False, shutdown=False, boot=True)

    def test_keep_supervisord_shut_down(self):
        self.sweep(keep=True, shutdown=True, boot=False)

    def test_keep_supervisord_shut_down_then_a_boot(self):
        self.sweep(keep=True, shutdown=True, boot=True)

    def test_keep_programs_stopped_then_a_boot(self):
        self.sweep(keep=True, shutdown=False, boot=True)

    def test_a_snapshot_before_the_rerun_of_a_keep_killed_after_the_start_names_it(self):
        world = keep_killed_after_the_start(self)
        with world.patched():
            with self.assertRaises(Stop) as caught:
                snapshotmod.take_snapshot(world.site(), "during")
        self.assertIn("refusing to take a snapshot: an unfinished rollback to zfssnap-T-pre is "
                      "recorded (stage 'rolled back', record ", caught.exception.message)
        self.assertIn("run %s/bin/rollback to finish it first" % world.top,
                      caught.exception.message)
        self.assertIsNone(world.rollback(keep=True))
        self.check_finished(world, keep=True, where="the rerun")

    def test_a_noauto_buildout_mounted_by_name_after_a_boot_is_swapped_again(self):
        # The buildout's dataset is mounted by other means than zfs mount -a (canmount=noauto):
        # killed after the start, with the renames still to do, a boot mounts neither it nor
        # its clone, and mounting it by its name mounts the state rolled away from.
        def noauto(world):
            world.pool.datasets["tank/site"]["canmount"] = "noauto"
        world = keep_killed_after_the_start(self, noauto)
        mounted, empty = world.power_cut()
        self.assertNotIn(world.top, mounted)
        world.mount_by_name(["tank/site"])
        self.assertEqual(world.pool.datasets["tank/site"]["content"], "v2")  # the old state
        self.assertIsNone(world.rollback(keep=True))
        site = world.pool.datasets["tank/site"]
        self.assertEqual((site["content"], site["mounted"]), ("v1", True))
        self.assertIsNone(world.record())
        self.assertEqual({n: p.state for n, p in world.sup.programs.items()},
                         {"app": "RUNNING", "worker": "RUNNING"})

    def test_forget_after_the_start_of_a_keep_gives_the_commands_left(self):
        world = keep_killed_after_the_start(self)
        recorded = json.loads(world.record())
        calls = len(world.pool.calls)
        # --dry-run: shown in full, nothing changed (the record stays, no zfs call changes).
        shown = io.StringIO()
        with world.patched(), contextlib.redirect_stderr(shown):
            site = world.site()
            forgetmod.forget(site, rollbackmod.describe_record, dry_run=True)
        self.assertEqual(json.loads(world.record()), recorded)
        self.assertEqual([c for c in world.pool.calls[calls:]
                          if c[0] not in ("get", "list")], [])
        said = shown.getvalue()
        for swap in recorded["keep"]:
            self.assertIn("%s (guid %s): its clone of %s is %s (guid %s)" % (
                swap["dataset"], swap["old_guid"], swap["snapshot"], swap["new"],
                swap["new_guid"]), said)
        # Asked and not confirmed: nothing changed either.
        with world.patched():
            with self.assertRaises(Stop) as raised:
                forgetmod.forget(world.site(), rollbackmod.describe_record,
                                 confirm=lambda: False)
        self.assertEqual(raised.exception.code, REFUSED)
        self.assertEqual(json.loads(world.record()), recorded)
        with world.patched():
            site = world.site()
            forgetmod.forget(site, rollbackmod.describe_record, yes=True)
        said = "\n".join(site.out.data.get("left_to_do", []))
        self.assertIsNone(world.record())
        with open(site.out.data["forgotten_to"]) as f:  # moved aside, not deleted
            self.assertEqual(json.load(f), recorded)
        for name, _ in world.layout:
            self.assertIn("zfs rename -u %s %s-rolled-away-" % (name, name), said)
            self.assertIn("zfs promote %s" % name, said)

    def test_forget_dry_run_before_a_keep_swap_began_destroys_no_clone(self):
        counting = World()
        self.addCleanup(counting.close)
        steps = actions_in(counting, keep=True)
        world = World()
        self.addCleanup(world.close)
        clone = [n for n, a in enumerate(steps, 1) if a.startswith("zfs clone")][-1]
        self.assertIsInstance(world.rollback(keep=True, crash_after=clone), Crash)
        clones = sorted(n for n in world.pool.datasets if "-rollback-" in n)
        self.assertTrue(clones)
        with world.patched(), contextlib.redirect_stderr(io.StringIO()):
            forgetmod.forget(world.site(), rollbackmod.describe_record, dry_run=True)
        self.assertEqual(sorted(n for n in world.pool.datasets if "-rollback-" in n), clones)
        self.assertIsNotNone(world.record())
        with world.patched(), contextlib.redirect_stderr(io.StringIO()):
            forgetmod.forget(world.site(), rollbackmod.describe_record, yes=True)
        self.assertEqual(sorted(n for n in world.pool.datasets if "-rollback-" in n), [])
        self.assertIsNone(world.record())

    def test_a_snapshot_dry_run_refuses_what_the_snapshot_refuses(self):
        world = World()
        self.addCleanup(world.close)
        world.pool.run("unmount", "data/site-blobstorage")
        for dry_run in (True, False):
            with world.patched():
                with self.assertRaises(Stop) as caught:
                    snapshotmod.take_snapshot(world.site(), "pre", dry_run=dry_run)
            self.assertIn("data/site-blobstorage is not mounted", caught.exception.message)
        self.assertEqual([c for c in world.pool.calls if c[0] == "snapshot"], [])

    def test_a_keep_swap_that_fails_before_any_handover_puts_everything_back(self):
        world = World()
        self.addCleanup(world.close)
        real = world.pool.run

        def failing(*args, check=True):
            if args[0] == "mount" and "-rollback-" in args[-1] and "data/" in args[-1]:
                world.pool.fail("cannot mount: mountpoint is busy")
            return real(*args, check=check)
        world.pool.run = failing
        result = world.rollback(keep=True)
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, 1, result.message)
        self.assertIn("rollback aborted, nothing rolled back; now running: app, worker",
                      result.message)
        self.assertIsNone(world.record())
        for name, mountpoint in world.layout:
            d = world.pool.datasets[name]
            self.assertEqual((d["content"], d["mounted"], d["canmount"]), ("v2", True, "on"))
        self.assertEqual([n for n in world.pool.datasets if "-rollback-" in n], [])
        self.assertEqual({n: p.state for n, p in world.sup.programs.items()},
                         {"app": "RUNNING", "worker": "RUNNING"})

    def test_the_actions_of_a_normal_run(self):
        self.assertEqual([a.split(" tank/")[0].split(" data/")[0]
                          for a in actions(keep=False, shutdown=True)],
                         ["record stopping", "supervisord supervisor.shutdown",
                          "record rolling back", "zfs rollback", "record rolling back",
                          "zfs rollback", "record rolling back", "zfs rollback",
                          "record rolling back", "record rolled back", "supervisord start "
                          "supervisord", "record finished", "record removed"])


class CleanupConfirmationTest(unittest.TestCase):
    """bin/cleanup asks before it destroys more than one set or kept state (--yes for
    scripts); one goes without asking, as after a good release."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)

    def add_set(self, short):
        datasets = [n for n, _ in self.world.layout]
        for name in datasets:
            self.world.pool.snapshot(name + "@" + short, properties={
                "part": "zfssnap", "buildout": self.world.top, "label": "",
                "datasets": ",".join(datasets), "created": "2026-12-02T01:00:00Z"})

    def cleanup(self, **kw):
        with self.world.patched():
            try:
                cleanupmod.cleanup(self.world.site(), **kw)
            except Stop as e:
                return e
        return None

    def own(self):
        return sorted({n.split("@")[1] for d, _ in self.world.layout
                       for n in self.world.pool.snapshots_of(d) if "zfssnap-" in n})

    def test_one_set_goes_without_asking(self):
        self.assertIsNone(self.cleanup())
        self.assertEqual(self.own(), [])

    def test_two_sets_are_not_destroyed_unconfirmed(self):
        self.add_set("zfssnap-T2-second")
        for confirm in (None, lambda: False):
            stop = self.cleanup(confirm=confirm)
            self.assertIsInstance(stop, Stop)
            self.assertEqual(stop.code, REFUSED)
            self.assertEqual(self.own(), ["zfssnap-T-pre", "zfssnap-T2-second"])
        self.assertIsNone(self.cleanup(confirm=lambda: True))
        self.assertEqual(self.own(), [])

    def test_yes_does_not_ask(self):
        self.add_set("zfssnap-T2-second")
        self.assertIsNone(self.cleanup(yes=True))
        self.assertEqual(self.own(), [])

    def test_naming_one_set_of_two_does_not_ask_and_destroys_only_it(self):
        self.add_set("zfssnap-T2-second")
        self.assertIsNone(self.cleanup(names=["zfssnap-T2-second"]))
        self.assertEqual(self.own(), ["zfssnap-T-pre"])


class UnreadableRecordTest(unittest.TestCase):
    """A rollback record that cannot be read is never taken as no record: it may protect the
    snapshot an unfinished rollback is rolling back to, or map a half-done --keep swap. bin/
    cleanup refuses (nothing destroyed), naming the file; --list warns and lists."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)
        path = state.Places(self.world.config).record
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b'{"target": "zfssnap-T-pre", "stage": "rolling')  # cut short
        os.close(fd)
        self.path = path

    def test_cleanup_refuses_and_destroys_nothing(self):
        with self.world.patched():
            with self.assertRaises(Stop) as raised:
                cleanupmod.cleanup(self.world.site(), yes=True)
        self.assertEqual(raised.exception.code, REFUSED)
        self.assertIn("refusing to clean up: the record %s cannot be read" % self.path,
                      raised.exception.message)
        self.assertIn("nothing was changed", raised.exception.message)
        for dataset, _ in self.world.layout:
            self.assertIn(dataset + "@zfssnap-T-pre", self.world.pool.snapshots_of(dataset))

    def test_list_warns_and_lists(self):
        site = self.world.site()
        with self.world.patched():
            snapshotmod.list_snapshots(site)
        self.assertTrue(any("the record %s cannot be read" % self.path in w
                            for w in site.out.warnings), site.out.warnings)


class Signalled:
    """main.Deferred as the rollback sees it: `received` fills when the pool has made `after`
    changes (a signal arriving while zfs works)."""

    def __init__(self, pool, after):
        self.pool = pool
        self.after = after
        self.start = None

    def __call__(self):
        self.start = len(self.pool.calls)

    @property
    def received(self):
        done = len(self.pool.calls) - self.start if self.start is not None else 0
        return ["SIGTERM"] if done >= self.after else []


class SignalTest(unittest.TestCase):
    """A signal in the critical section stops the rollback at its next safe point with exit 4,
    the record kept, and the rerun finishes (issue 26, 6)."""

    def check(self, keep, after):
        world = World()
        self.addCleanup(world.close)
        result = world.rollback(keep=keep, critical=Signalled(world.pool, after))
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, INCOMPLETE, result.message)
        self.assertIn("SIGTERM received: the rollback stopped ", result.message)
        self.assertIn("run %s/bin/rollback again to finish it" % world.top, result.message)
        self.assertIsNotNone(world.record())
        self.assertIsNone(world.rollback(keep=keep))
        self.assertIsNone(world.record())
        self.assertEqual({n: p.state for n, p in world.sup.programs.items()},
                         {"app": "RUNNING", "worker": "RUNNING"})
        for name, _ in world.layout:
            self.assertEqual(world.pool.datasets[name]["content"], "v1", name)
        return result.message

    def test_at_once(self):
        self.assertIn("after stopping the site, before any dataset was rolled back",
                      self.check(keep=False, after=0))

    def test_while_the_datasets_are_rolled_back(self):
        self.assertIn("after rolling back tank/site (1 of 3 datasets)",
                      self.check(keep=False, after=1))

    def test_during_a_keep_swap(self):
        self.assertIn("with every dataset rolled back", self.check(keep=True, after=4))


class HungZfsTest(unittest.TestCase):
    """A zfs call that outlives zfs-timeout may still make its change: nothing is undone or
    started around it, exit 4 with the record kept, and the rerun finishes (issue 26, 6)."""

    def check(self, keep, verb, states="STOPPED", said="the site is not started"):
        world = World()
        self.addCleanup(world.close)
        run = world.pool.run
        hung = []

        def slow(*args, **kw):
            result = run(*args, **kw)  # the change is made, after the script stopped waiting
            if args[0] == verb and not hung:
                hung.append(args)
                raise zfsmod.ZfsTimeout("'zfs %s' did not finish within 1 s (the part's "
                                        "zfs-timeout) and is still running as pid 1"
                                        % " ".join(args))
            return result

        world.pool.run = slow
        result = world.rollback(keep=keep)
        world.pool.run = run
        self.assertTrue(hung)
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, INCOMPLETE, result.message)
        self.assertIn(said + " and the record", result.message)
        self.assertIsNotNone(world.record())
        self.assertEqual({n: p.state for n, p in world.sup.programs.items()},
                         {"app": states, "worker": states})
        self.assertIsNone(world.rollback(keep=keep))
        self.assertIsNone(world.record())
        for name, _ in world.layout:
            self.assertEqual(world.pool.datasets[name]["content"], "v1", name)

    def test_the_first_rollback(self):
        self.check(keep=False, verb="rollback")

    def test_an_unmount_of_the_keep_swap(self):
        self.check(keep=True, verb="unmount")

    def test_a_clone_made_for_keep(self):
        self.check(keep=True, verb="clone", states="RUNNING", said="nothing was stopped")


class RecordedRollbackTest(unittest.TestCase):
    """While any rollback is recorded as unfinished (a plain one too), bin/snapshot and the
    release guard refuse, naming the command that finishes it; the guard holds the part's
    locks while bin/buildout runs (issue 26, 2)."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)
        self.path = state.Places(self.world.config).record
        state.Record(self.path).save({"target": "zfssnap-T-pre", "stage": "stopping"})

    def test_snapshot_refuses(self):
        with self.world.patched():
            with self.assertRaises(Stop) as raised:
                snapshotmod.take_snapshot(self.world.site(), "during")
        self.assertEqual(raised.exception.code, REFUSED)
        self.assertIn("refusing to take a snapshot: an unfinished rollback to zfssnap-T-pre is "
                      "recorded (stage 'stopping', record %s): run %s/bin/rollback to finish "
                      "it first" % (self.path, self.world.top), raised.exception.message)
        self.assertEqual(self.world.pool.snapshots_of("tank/site"),
                         ["tank/site@other-tool", "tank/site@zfssnap-T-pre"])

    def test_the_guard_refuses_and_holds_the_locks(self):
        import zc.buildout
        from collective.recipe.zfssnap import extension
        self.addCleanup(extension.release, "zfssnap")
        with self.assertRaises(zc.buildout.UserError) as raised:
            extension.hold("zfssnap", self.world.config)
        self.assertIn("[zfssnap] release guard: refusing to let bin/buildout change the site: "
                      "an unfinished rollback to zfssnap-T-pre is recorded",
                      str(raised.exception))
        os.remove(self.path)
        extension.hold("zfssnap", self.world.config)
        with self.assertRaises(state.StateError) as raised:
            state.Places(self.world.config).take_locks()
        self.assertIn("another snapshot, rollback or cleanup of this buildout is running",
                      raised.exception.message)
        extension.release("zfssnap")
        state.Places(self.world.config).take_locks().close()


class AgainTest(unittest.TestCase):
    """A rollback to the set the last finished rollback went back to (issue 27, 2): nothing to
    do when nothing was written since (unless --again); what it would lose, refused with --yes
    unless --again;
    a new set of the same name is not the one rolled back to."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)
        self.assertIsNone(self.world.rollback())
        self.calls = len(self.world.pool.calls)
        self.sup_calls = len(self.world.sup.calls)

    def changing_calls(self):
        return [c for c in self.world.pool.calls[self.calls:]
                if c[0] in ("rollback", "destroy", "rename", "clone", "snapshot")]

    def test_nothing_written_since_is_nothing_to_do(self):
        self.assertIsNone(self.world.rollback())
        self.assertEqual(self.world.data["finished_rollback"]["target"], "zfssnap-T-pre")
        self.assertEqual(self.world.data["phase"], "none")
        self.assertEqual(self.changing_calls(), [])
        self.assertEqual(self.world.sup.calls[self.sup_calls:], [])  # nothing stopped

    def test_again_with_nothing_written_since_rolls_back(self):
        self.assertIsNone(self.world.rollback(again=True))
        self.assertEqual(self.world.data["phase"], "done")
        self.assertEqual(self.world.data["finished_rollback"]["written"], 0)
        self.assertEqual(len([c for c in self.changing_calls() if c[0] == "rollback"]), 3)
        self.assertNotEqual(self.world.sup.calls[self.sup_calls:], [])  # stopped, started

    def test_written_since_is_refused_with_yes_and_done_with_again(self):
        self.world.pool.written["data/site-filestorage"] = 3 << 20
        result = self.world.rollback()
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, REFUSED)
        self.assertEqual(self.world.sup.calls[self.sup_calls:], [])
        self.assertEqual(result.message, "a rollback to zfssnap-T-pre finished at "
                         "2026-12-02T00:00:00Z; another one loses what was written since: 3.0M "
                         "written to the datasets; pass --again to roll back to it again; "
                         "nothing was changed")
        self.assertEqual(self.changing_calls(), [])
        self.assertIsNone(self.world.rollback(dry_run=True))
        self.assertEqual(self.world.data["phase"], "planned")
        self.assertEqual(self.world.data["finished_rollback"]["written"], 3 << 20)
        self.assertEqual(self.changing_calls(), [])
        self.assertIsNone(self.world.rollback(again=True))
        self.assertEqual(self.world.data["phase"], "done")
        self.assertEqual(len([c for c in self.changing_calls() if c[0] == "rollback"]), 3)

    def test_a_new_set_of_the_same_name_is_rolled_back_to(self):
        datasets = [n for n, _ in self.world.layout]
        for name in datasets:
            snapshot = name + "@" + self.world.target
            properties = dict(self.world.pool.snapshot_info[snapshot]["properties"])
            self.world.pool.run("destroy", snapshot)
            self.world.pool.snapshot(snapshot, properties=properties)
            self.world.pool.written[name] = 1 << 20
        self.calls = len(self.world.pool.calls)
        self.assertIsNone(self.world.rollback())
        self.assertNotIn("finished_rollback", self.world.data)
        self.assertEqual(len([c for c in self.changing_calls() if c[0] == "rollback"]), 3)


class HealthCheckTest(unittest.TestCase):
    """The health check as the README states it: run in the buildout directory, after what ran
    before is RUNNING again, and not when nothing ran before."""

    def setUp(self):
        self.world = World()
        self.addCleanup(self.world.close)
        # Passes only in the buildout directory.
        self.world.config["health_check"] = {"command": [
            sys.executable, "-c", "import os, sys; sys.exit(os.getcwd() != sys.argv[1])",
            os.path.realpath(self.world.top)]}
        self.world.config["stop_timeout"] = 1

    def test_run_in_the_buildout_directory_also_after_keep(self):
        self.assertIsNone(self.world.rollback(keep=True))
        self.assertIsNone(self.world.rollback(keep=False))

    def test_not_run_when_nothing_ran_before(self):
        self.world.config["health_check"] = {"command": ["false"]}
        for program in self.world.sup.programs.values():
            program.state, program.pid = "STOPPED", None
        self.assertIsNone(self.world.rollback())

    def test_a_check_that_does_not_pass_fails_the_rollback(self):
        self.world.config["health_check"] = {"command": ["false"]}
        result = self.world.rollback()
        self.assertIsInstance(result, Stop)
        self.assertIn("did not pass within 1 s", result.message)


class UnsettledKeepTest(unittest.TestCase):
    """While a --keep rollback killed after its swap is not finished, the datasets' names may be
    the old states': bin/cleanup and the release guard refuse, --list warns."""

    def test_cleanup_refuses_until_the_rerun(self):
        world = keep_killed_after_the_start(self)
        with world.patched():
            with self.assertRaises(Stop) as caught:
                cleanupmod.cleanup(world.site(), yes=True)
        self.assertEqual(caught.exception.code, REFUSED)
        self.assertIn("an unfinished bin/rollback --keep is recorded (stage 'rolled back')",
                      caught.exception.message)
        self.assertEqual([c for c in world.pool.calls if c[0] == "destroy"], [])
        with world.patched():
            site = world.site()
            snapshotmod.list_snapshots(site)
        self.assertTrue(any("unfinished bin/rollback --keep" in w for w in site.out.warnings))
        self.assertIsNone(world.rollback(keep=True))
        with world.patched():
            cleanupmod.cleanup(world.site(), yes=True)
        self.assertTrue([c for c in world.pool.calls if c[0] == "destroy"])


class PhasesTest(unittest.TestCase):
    """--no-start and --start, the phases a release across several hosts interleaves: stop and
    roll back here, start there, start here; killed anywhere, the same command again finishes
    its phase. The --json `phase` says how far a run got."""

    def world(self, shutdown=True):
        world = World(shutdown=shutdown)
        self.addCleanup(world.close)
        return world

    def assert_rolled_back_not_started(self, world, where=""):
        """The target's state mounted at each path, and mounted so at boot (with --keep under
        the clones' names until the settling after the start); nothing running."""
        mounted = {m.mountpoint: m.dataset for m in world.pool.mounts()}
        for name, mountpoint in world.layout:
            d = world.pool.datasets[mounted[mountpoint]]
            self.assertEqual((d["content"], d["canmount"]), ("v1", "on"), (where, name))
            self.assertTrue(world.visible(mountpoint), (where, name))
        self.assertFalse(any(p.state == "RUNNING" for p in world.sup.programs.values())
                         and world.sup.up, where)
        self.assertIn('"stage": "rolled back"', world.record(), where)

    def phases(self, keep, shutdown):
        world = self.world(shutdown)
        self.assertIsNone(world.rollback(keep=keep, start=False))
        self.assertEqual(world.data["phase"], "rolled-back")
        self.assertEqual(world.data["to_start"], ["app", "worker"])
        self.assert_rolled_back_not_started(world)
        # Again: nothing to do before the start, and nothing is started.
        calls = (list(world.pool.calls), list(world.sup.calls))
        self.assertIsNone(world.rollback(keep=keep, start=False))
        self.assertEqual((world.pool.calls, world.sup.calls), calls)
        self.assertEqual(world.data["phase"], "rolled-back")
        self.assertIsNone(world.rollback(start_only=True, dry_run=True))
        self.assertEqual(world.data["phase"], "planned")
        self.assertIsNone(world.rollback(start_only=True))
        self.assertEqual(world.data["phase"], "done")
        StageSweepTest.check_finished(self, world, keep, "after --start")
        # A second --start (a playbook run again): nothing recorded, nothing done.
        calls = (list(world.pool.calls), list(world.sup.calls))
        self.assertIsNone(world.rollback(start_only=True))
        self.assertEqual(world.data["phase"], "done")
        self.assertEqual((world.pool.calls, world.sup.calls), calls)

    def test_no_start_then_start(self):
        self.phases(keep=False, shutdown=True)

    def test_no_start_then_start_programs_stopped(self):
        self.phases(keep=False, shutdown=False)

    def test_keep_no_start_then_start(self):
        self.phases(keep=True, shutdown=True)

    def test_keep_no_start_then_start_programs_stopped(self):
        self.phases(keep=True, shutdown=False)

    def test_no_start_killed_after_every_action_then_again(self):
        for keep in (False, True):
            counting = self.world()
            steps = actions_in(counting, keep)
            # The actions before the start: what --no-start does.
            steps = steps[:[i for i, a in enumerate(steps) if "start" in a.split()[1:2]][0]]
            for n, action in enumerate(steps, 1):
                where = "keep=%s, killed after %d (%s)" % (keep, n, action)
                world = self.world()
                self.assertIsInstance(world.rollback(keep=keep, start=False, crash_after=n),
                                      Crash, where)
                result = world.rollback(keep=keep, start=False)
                self.assertIsNone(result, "%s: the rerun said %s" % (where, result))
                self.assert_rolled_back_not_started(world, where)
                self.assertIsNone(world.rollback(start_only=True), where)
                StageSweepTest.check_finished(self, world, keep, where)

    def test_start_killed_after_every_action_then_again(self):
        for keep in (False, True):
            counting = self.world()
            self.assertIsNone(counting.rollback(keep=keep, start=False))
            log = []
            self.assertIsNone(counting.rollback(start_only=True, log=log))
            self.assertEqual(log[0], "supervisord start supervisord")
            for n, action in enumerate(log, 1):
                where = "keep=%s, --start killed after %d (%s)" % (keep, n, action)
                world = self.world()
                self.assertIsNone(world.rollback(keep=keep, start=False), where)
                self.assertIsInstance(world.rollback(start_only=True, crash_after=n), Crash,
                                      where)
                result = world.rollback(start_only=True)
                self.assertIsNone(result, "%s: the rerun said %s" % (where, result))
                StageSweepTest.check_finished(self, world, keep, where)

    def test_start_before_the_datasets_are_rolled_back_is_refused(self):
        world = self.world()
        steps = actions_in(self.world(), keep=False)
        first = [i for i, a in enumerate(steps, 1) if a.startswith("zfs rollback")][0]
        self.assertIsInstance(world.rollback(start=False, crash_after=first - 1), Crash)
        calls = (list(world.pool.calls), list(world.sup.calls))
        result = world.rollback(start_only=True)
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, REFUSED)
        self.assertRegex(result.message, r"has not rolled back the datasets yet \(stage "
                         r"'(stopping|rolling back)'\): run %s/bin/rollback --no-start "
                         r"zfssnap-T-pre to finish that first" % world.top)
        self.assertEqual((world.pool.calls, world.sup.calls), calls)
        self.assertEqual(world.data["phase"], "none")

    def test_the_preflight_plans_and_refuses_what_the_run_refuses(self):
        from collective.recipe.zfssnap.processes import Holder
        world = self.world()
        self.assertIsNone(world.rollback(dry_run=True))
        self.assertEqual(world.data["phase"], "planned")
        calls = (list(world.pool.calls), list(world.sup.calls), world.record())
        outside = [Holder(4242, "python3 backup.py", ["fd 3"])]
        result = world.rollback(dry_run=True, holders=outside)
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, REFUSED)
        self.assertIn("processes outside supervisor have files on the datasets: pid 4242",
                      result.message)
        self.assertEqual(world.data["phase"], "none")
        self.assertEqual((world.pool.calls, world.sup.calls, world.record()), calls)
        self.assertIsInstance(world.rollback(holders=outside), Stop)  # as the run does
        self.assertEqual((world.pool.calls, world.sup.calls, world.record()), calls)

    def test_a_preflight_that_cannot_reach_supervisord_refuses_in_one_sentence(self):
        from collective.recipe.zfssnap.supervisor import SupervisorError

        def denied():
            raise SupervisorError("cannot connect to /srv/site/var/supervisor.sock: "
                                  "Permission denied")
        world = self.world()
        world.sup.running = denied
        result = world.rollback(dry_run=True)
        self.assertIsInstance(result, Stop)
        self.assertEqual(result.code, REFUSED)
        self.assertEqual(result.message, "cannot tell what supervisord runs (cannot connect to "
                         "/srv/site/var/supervisor.sock: Permission denied): the rollback "
                         "would stop there; run it as a user who can reach supervisord; "
                         "nothing was changed")
