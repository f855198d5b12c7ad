"""ShardedTest end to end under Buildbot's own step harness, with shards scripted in process.

What the parent makes of its shards' outcomes: the gate (failed, flaky,
quarantined, skipped), the results it stores for the next build's plan, the
learnt start-up beside the bounds, and static mode's lists.
"""

from __future__ import annotations

from unittest import mock

from buildbot.interfaces import ITriggerableScheduler
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from buildbot_steps._core import AssignmentKind
from buildbot_steps.shard import ShardedTest
from buildbot_steps.shard import history as shard_history
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard.junit import JUnitTestResult

TESTS = ["tests/test_a.py::test_one", "tests/test_a.py::test_two"]

SKIP = "skip"


def packed_durations(tests) -> str:
    """The durations row of tests all scripted at 2.5 s, as history.py packs it."""
    return "{" + ",".join(f'"{test}":2.500000' for test in sorted(tests)) + "}"


def scripted_result(test: str, outcome: bool | str) -> JUnitTestResult:
    if outcome == SKIP:
        return JUnitTestResult(test, False, 2.5, "skipped: scripted skip", skipped=True)
    return JUnitTestResult(test, bool(outcome), 2.5, "scripted failure")


@implementer(ITriggerableScheduler)
class ScriptedShards:
    """Runs each triggered shard at once, in process, with scripted outcomes.

    `script`: test id -> outcome of each attempt in order (True = passed,
    SKIP = the runner skipped it).
    """

    name = "shards"
    builderNames = ["tests-shard"]

    def __init__(self, script: dict[str, list[bool]], startup_s: float | None = None):
        self.script = {test: list(outcomes) for test, outcomes in script.items()}
        self.triggered = []
        self.startup_s = startup_s  # given: batches report a wall time of start-up + tests

    def trigger(self, waited_for, sourcestamps, set_props, parent_buildid, parent_relationship):
        index = set_props.getProperty("shard_index")
        self.triggered.append(dict(set_props.asDict()))
        session = shard_session.lookup_session(parent_buildid)
        puller = f"worker{index}#1"
        while (assignment := session.next_batch(puller, index)).kind == AssignmentKind.run:
            results = [scripted_result(test, self.script[test].pop(0)) for test in assignment.batch.tests]
            wall_s = None if self.startup_s is None else self.startup_s + sum(r.seconds for r in results)
            session.report(puller, assignment.batch.id, results, wall_s)
        session.worker_lost(puller)  # the shard build ends
        brids = {100: 500 + index}
        return defer.succeed((1, brids)), defer.succeed((SUCCESS, brids))


class ShardedTestRunTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """The parent step end to end, with shards scripted in process."""

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def setup_sharded(self, script, startup_s=None, **kwargs):
        shards = ScriptedShards(script, startup_s)
        self.master.scheduler_manager = mock.Mock(namedServices={"shards": shards})
        # max_shards: the default cap counts the shard workers, which this fake master has none of.
        self.setup_step(
            ShardedTest(shard_scheduler="shards", tests=list(script), shards=2, max_shards=4, **kwargs)
        )
        self.build.getBuilderId = lambda: defer.succeed(100)  # FakeBuild lacks it
        return shards

    def expect_stored(self, verdicts: dict[str, str]) -> None:
        """The three result sets, each test's rows (all scripted at 2.5 s), and the durations
        packed into one row. What later builds plan from first, the pass/fail set last."""
        self.expect_test_result_sets(
            [
                ("sharded tests durations", "performance", "json"),
                ("sharded tests flaky", "fail_only", "boolean"),
                ("sharded tests", "pass_fail", "boolean"),
            ]
        )
        clamped = 2**31 - 1  # 2.5 s does not fit PostgreSQL's int4 duration_ns
        rows = [
            (1001, "0", test, None, None, None) for test, verdict in verdicts.items() if verdict == "flaky"
        ]
        rows.append((1000, packed_durations(verdicts), "durations 0", None, None, None))
        for test, verdict in verdicts.items():
            passed = "1" if verdict in ("passed", "flaky") else "0"
            if verdict != "skipped":  # neither a pass nor a failure
                rows.append((1002, passed, test, None, None, clamped))
        self.expect_test_results(rows)

    @defer.inlineCallbacks
    def test_flaky_test_makes_warnings_and_every_result_is_stored(self):
        self.setup_sharded({TESTS[0]: [True], TESTS[1]: [False, True]})
        self.expect_outcome(result=WARNINGS)
        self.expect_property("tests_flaky", 1)
        self.expect_property("tests_flaky_names", [TESTS[1]])
        self.expect_property("tests_passed", 1)
        self.expect_property("shard_estimates_from_history", 0)
        self.expect_stored({TESTS[0]: "passed", TESTS[1]: "flaky"})
        yield self.run_step()
        summary = self.get_nth_step(0).getResultSummary()["step"]
        self.assertIn(f"flaky: {TESTS[1]}", summary)

    @defer.inlineCallbacks
    def test_failing_test_fails_the_build_unless_quarantined(self):
        self.setup_sharded({TESTS[0]: [True], TESTS[1]: [False, False]})
        self.expect_stored({TESTS[0]: "passed", TESTS[1]: "failed"})
        self.expect_outcome(result=FAILURE)
        self.expect_property("tests_failed", 1)
        yield self.run_step()
        self.assertIn(f"failed: {TESTS[1]}", self.get_nth_step(0).getResultSummary()["step"])
        self.assertIn("scripted failure", self.get_nth_step(0).logs["failures"].stdout)

    @defer.inlineCallbacks
    def test_learnt_start_up_is_stored_and_shown_beside_both_bounds(self):
        self.setup_sharded({TESTS[0]: [True], TESTS[1]: [True]}, startup_s=3.0)
        self.expect_test_result_sets(
            [
                ("sharded tests durations", "performance", "json"),
                ("sharded tests flaky", "fail_only", "boolean"),
                ("sharded tests batch overhead", "performance", "s"),
                ("sharded tests", "pass_fail", "boolean"),
            ]
        )
        clamped = 2**31 - 1
        self.expect_test_results(
            [
                (1000, packed_durations(TESTS), "durations 0", None, None, None),
                (1002, "3.000000", "worker0#1", None, None, None),  # one row per puller
                (1003, "1", TESTS[0], None, None, clamped),
                (1003, "1", TESTS[1], None, None, clamped),
            ]
        )
        self.expect_outcome(result=SUCCESS)
        self.expect_property("tests_batch_overhead_s", 3.0)
        self.expect_property("tests_lower_bound_s", 2.5)
        self.expect_property("tests_lower_bound_with_startups_s", 5.5)
        yield self.run_step()
        step = self.get_nth_step(0)
        self.assertIn("(5.5 s with start-ups)", step.getResultSummary()["step"])

    @defer.inlineCallbacks
    def test_quarantined_failure_does_not_gate(self):
        self.setup_sharded({TESTS[0]: [True], TESTS[1]: [False, False]}, quarantine=["*::test_two"])
        self.expect_stored({TESTS[0]: "passed", TESTS[1]: "failed"})
        self.expect_outcome(result=WARNINGS)
        yield self.run_step()
        self.assertIn("quarantined failures", self.get_nth_step(0).getResultSummary()["step"])

    @defer.inlineCallbacks
    def test_static_mode_sends_each_shard_its_list(self):
        shards = self.setup_sharded({TESTS[0]: [True], TESTS[1]: [True]}, mode="static")
        self.expect_stored({TESTS[0]: "passed", TESTS[1]: "passed"})
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        lists = [props["shard_tests"][0] for props in shards.triggered]
        self.assertEqual(sorted(t for tests in lists for t in tests), sorted(TESTS))

    @defer.inlineCallbacks
    def test_skipped_test_is_counted_apart_and_does_not_gate(self):
        self.setup_sharded({TESTS[0]: [True], TESTS[1]: [SKIP]})
        self.expect_stored({TESTS[0]: "passed", TESTS[1]: "skipped"})
        self.expect_outcome(result=SUCCESS)
        self.expect_property("tests_passed", 1)
        self.expect_property("tests_skipped", 1)
        self.expect_property("tests_failed", 0)
        yield self.run_step()
        step = self.get_nth_step(0)
        self.assertIn("1 passed, 0 failed, 0 flaky, 1 skipped", step.getResultSummary()["step"])


class StoppedShardedTestTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """A parent stopped before or while its shards start: none starts after
    the stop, and the build leaves no history for later builds to plan from."""

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def setup_stopped(self, shards: ScriptedShards) -> None:
        self.master.scheduler_manager = mock.Mock(namedServices={"shards": shards})
        self.setup_step(ShardedTest(shard_scheduler="shards", tests=list(TESTS), shards=2, max_shards=4))
        self.build.getBuilderId = lambda: defer.succeed(100)
        self.expect_outcome(result=CANCELLED)
        self.expect_test_result_sets([])  # nothing stored: no history from a stopped build
        self.expect_test_results([])

    @defer.inlineCallbacks
    def test_stopped_while_reading_its_history_it_starts_no_shard(self):
        shards = ScriptedShards({test: [True] for test in TESTS})
        self.setup_stopped(shards)
        read = shard_history.TestHistory.read

        async def read_then_stop(history, builderid):
            await self.get_nth_step(0).interrupt("stopped by the user")
            return await read(history, builderid)

        self.patch(shard_history.TestHistory, "read", read_then_stop)
        yield self.run_step()
        self.assertEqual(shards.triggered, [])

    @defer.inlineCallbacks
    def test_stopped_while_triggering_it_starts_no_more_and_cancels_the_one_in_flight(self):
        step_of = self.get_nth_step

        class StoppingShards(ScriptedShards):
            def trigger(self, *args, **kwargs):
                step_of(0).interrupt("stopped by the user")
                self.triggered.append(kwargs["set_props"].asDict())
                brids = {100: 500 + len(self.triggered)}
                return defer.succeed((1, brids)), defer.succeed((CANCELLED, brids))

        shards = StoppingShards({test: [True] for test in TESTS})
        self.setup_stopped(shards)
        self.master.data.control = mock.Mock(return_value=defer.succeed(None))
        yield self.run_step()
        self.assertEqual(len(shards.triggered), 1)
        self.master.data.control.assert_called_with(
            "cancel", {"reason": "parent build was interrupted"}, ("buildrequests", 501)
        )
