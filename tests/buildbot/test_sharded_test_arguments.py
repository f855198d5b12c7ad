"""ShardedTest's and RunShard's arguments, under Buildbot's own step harness.

Configuration errors when master.cfg is loaded, and user errors at run time
(an empty list, a discovery that fails, an unknown scheduler, a forced shard
count above the cap) that must end FAILURE with a clear message, never an
EXCEPTION traceback.
"""

from __future__ import annotations

from unittest import mock

from buildbot.interfaces import ITriggerableScheduler
from buildbot.process.properties import Property
from buildbot.process.results import FAILURE
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from buildbot.test.util.config import ConfigErrorsMixin
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from buildbot_steps.shard import RunShard, ShardedTest
from buildbot_steps.shard.parent_step import DEFAULT_MIN_BATCH_S, WARM_DEFAULT_MIN_BATCH_S

TESTS = ["tests/test_a.py::test_one", "tests/test_a.py::test_two"]

ASK_FEWER = "ask for fewer shards, or raise max_shards in the ShardedTest step"


class ShardedTestConfigTests(ConfigErrorsMixin, unittest.TestCase):
    def test_template_without_tests_placeholder(self):
        with self.assertRaisesConfigError("exactly one element that is '{tests}'"):
            ShardedTest(shard_scheduler="shards", test_command=["pytest", "--junitxml={junit}"])

    def test_template_with_tests_inside_an_argument(self):
        with self.assertRaisesConfigError("exactly one element that is '{tests}'"):
            ShardedTest(shard_scheduler="shards", test_command=["pytest", "--junitxml={junit}", "-k {tests}"])

    def test_template_without_junit_placeholder(self):
        with self.assertRaisesConfigError("must contain '{junit}'"):
            ShardedTest(shard_scheduler="shards", test_command=["pytest", "{tests}"])

    def test_template_as_shell_string(self):
        with self.assertRaisesConfigError("argument vector"):
            ShardedTest(shard_scheduler="shards", test_command="pytest --junitxml={junit} {tests}")

    def test_missing_scheduler(self):
        with self.assertRaisesConfigError("shard_scheduler must name a Triggerable"):
            ShardedTest(shard_scheduler="")

    def test_unknown_mode(self):
        with self.assertRaisesConfigError("mode must be one of"):
            ShardedTest(shard_scheduler="shards", mode="random")

    def test_a_quarantine_given_as_one_string_is_refused(self):
        # A string is a list of one-character patterns: '*' would quarantine every test.
        with self.assertRaisesConfigError("quarantine must be a list of test ids or patterns"):
            ShardedTest(shard_scheduler="shards", quarantine="tests/test_net.py::*")
        # A list whose items render later is a list.
        ShardedTest(shard_scheduler="shards", quarantine=[Property("flaky_test"), "a.py::t"])

    def test_batch_settings_are_seconds_and_flags(self):
        for bad in (-1.0, float("nan"), float("inf"), "5", True):
            with self.assertRaisesConfigError("min_batch_s must be seconds"):
                ShardedTest(shard_scheduler="shards", min_batch_s=bad)
        for bad in (0, -5, float("nan"), "60"):
            with self.assertRaisesConfigError("batch_timeout must be seconds"):
                ShardedTest(shard_scheduler="shards", batch_timeout=bad)
        with self.assertRaisesConfigError("speculate must be True or False"):
            ShardedTest(shard_scheduler="shards", speculate="no")
        ShardedTest(shard_scheduler="shards", min_batch_s=0, batch_timeout=None, speculate=False)

    def test_bad_attempts(self):
        with self.assertRaisesConfigError("max_attempts must be an integer >= 1"):
            ShardedTest(shard_scheduler="shards", max_attempts=0)

    def test_bad_shard_count(self):
        with self.assertRaisesConfigError("shards must be an integer 1..1024"):
            ShardedTest(shard_scheduler="shards", shards=0)

    def test_shard_count_above_the_absolute_cap(self):
        with self.assertRaisesConfigError("shards must be an integer 1..1024"):
            ShardedTest(shard_scheduler="shards", shards=10**9)

    def test_bad_max_shards(self):
        for bad in (0, -1, True, 1025, "16"):
            with self.assertRaisesConfigError("max_shards must be an integer 1..1024"):
                ShardedTest(shard_scheduler="shards", max_shards=bad)

    def test_static_shards_above_max_shards(self):
        with self.assertRaisesConfigError("shards=20 is more than max_shards=8"):
            ShardedTest(shard_scheduler="shards", shards=20, max_shards=8)

    def test_tests_not_a_list_of_strings(self):
        with self.assertRaisesConfigError("tests must be a list of test id strings"):
            ShardedTest(shard_scheduler="shards", tests=[1, 2])

    def test_warm_runner_needs_the_dynamic_mode(self):
        with self.assertRaisesConfigError("warm_runner=True needs mode='dynamic'"):
            ShardedTest(shard_scheduler="shards", mode="static", warm_runner=True)

    def test_warm_runner_needs_a_pytest_command(self):
        with self.assertRaisesConfigError("warm_runner=True needs a pytest test_command"):
            ShardedTest(
                shard_scheduler="shards", warm_runner=True, test_command=["tox", "{tests}", "{junit}"]
            )

    def test_the_batch_floor_defaults_to_what_a_batch_costs(self):
        # Cold: a batch pays a runner start-up; warm: a round trip and its collection.
        self.assertEqual(ShardedTest(shard_scheduler="shards").min_batch_s, DEFAULT_MIN_BATCH_S)
        warm = ShardedTest(shard_scheduler="shards", warm_runner=True)
        self.assertEqual(warm.min_batch_s, WARM_DEFAULT_MIN_BATCH_S)
        self.assertEqual(
            ShardedTest(shard_scheduler="shards", warm_runner=True, min_batch_s=2).min_batch_s, 2
        )

    def test_run_shard_bad_template(self):
        with self.assertRaisesConfigError("RunShard: test_command must"):
            RunShard(test_command=["pytest"])


@implementer(ITriggerableScheduler)
class FakeTriggerable:
    name = "shards"
    builderNames = ["tests-shard"]

    def trigger(self, *args, **kwargs):  # pragma: no cover - these tests fail before triggering
        raise AssertionError("no shard should be triggered")


class ShardedTestStepTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()
        self.master.scheduler_manager = mock.Mock(namedServices={"shards": FakeTriggerable()})

    @defer.inlineCallbacks
    def test_empty_test_list_is_a_failure_not_an_exception(self):
        self.setup_step(ShardedTest(shard_scheduler="shards", tests=[]))
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary({"step": "no tests to run (the list is empty or discovery found none)"})
        yield self.run_step()

    @defer.inlineCallbacks
    def test_discovery_that_fails_is_a_failure(self):
        self.setup_step(ShardedTest(shard_scheduler="shards", discover_command=["collect"]))
        self.expect_commands(ExpectShell(workdir="wkdir", command=["collect"], log_environ=False).exit(4))
        self.expect_outcome(result=FAILURE)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_discovery_that_finds_nothing_is_a_failure(self):
        self.setup_step(ShardedTest(shard_scheduler="shards", discover_command=["collect"]))
        self.expect_commands(
            ExpectShell(workdir="wkdir", command=["collect"], log_environ=False)
            .stdout("\nno tests ran in 0.01s\n")
            .exit(0)
        )
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary({"step": "no tests to run (the list is empty or discovery found none)"})
        yield self.run_step()

    @defer.inlineCallbacks
    def test_a_warm_runner_without_the_www_plugin_is_refused_before_anything_runs(self):
        self.setup_step(ShardedTest(shard_scheduler="shards", tests=TESTS, warm_runner=True))
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary(
            {
                "step": "warm_runner=True needs the 'buildbot_cd' www plugin: add "
                'c["www"]["plugins"]["buildbot_cd"] = {} to master.cfg'
            }
        )
        yield self.run_step()  # FakeTriggerable fails the test if a shard is triggered

    @defer.inlineCallbacks
    def test_unknown_scheduler_is_a_failure(self):
        self.setup_step(ShardedTest(shard_scheduler="nowhere", tests=TESTS))
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary(
            {"step": "shard_scheduler 'nowhere' is not a Triggerable scheduler of this master"}
        )
        yield self.run_step()

    def with_shard_workers(self, count: int) -> None:
        workers = [f"shard{i}" for i in range(count)]
        self.master.botmaster.builders = {"tests-shard": mock.Mock(config=mock.Mock(workernames=workers))}

    @defer.inlineCallbacks
    def test_a_forced_shard_count_above_the_default_cap_is_refused_before_anything_runs(self):
        """shards=300 from a force form: refused (4 per worker), no discovery, no trigger."""
        self.with_shard_workers(4)
        self.setup_step(
            ShardedTest(shard_scheduler="shards", discover_command=["collect"], shards=Property("n"))
        )
        self.build.setProperty("n", 300, "Force Build Form")
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary(
            {"step": f"refusing 300 shards: at most 16 (4 per shard worker, 4 workers); {ASK_FEWER}"}
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_an_explicit_max_shards_is_the_cap_at_run_time(self):
        self.setup_step(
            ShardedTest(shard_scheduler="shards", tests=TESTS, shards=Property("n"), max_shards=2)
        )
        self.build.setProperty("n", 3, "Force Build Form")
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary({"step": f"refusing 3 shards: at most 2 (max_shards); {ASK_FEWER}"})
        yield self.run_step()

    @defer.inlineCallbacks
    def test_a_rendered_shard_count_that_is_not_an_integer_is_refused(self):
        self.setup_step(ShardedTest(shard_scheduler="shards", tests=TESTS, shards=Property("n")))
        self.build.setProperty("n", "300; drop", "Force Build Form")
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary({"step": "shards must be a positive integer, not '300; drop'"})
        yield self.run_step()
