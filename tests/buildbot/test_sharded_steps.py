"""ShardedTest and RunShard under Buildbot's own step harness.

Configuration errors, user errors that must end FAILURE with a clear message
(never an EXCEPTION traceback), and hostile JUnit XML coming back from a
worker.
"""

from __future__ import annotations

from unittest import mock

from buildbot.interfaces import ITriggerableScheduler
from buildbot.process import remotetransfer
from buildbot.process.properties import Property
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import (
    ExpectDownloadFile,
    ExpectMkdir,
    ExpectRemoteRef,
    ExpectRmdir,
    ExpectShell,
    ExpectUploadFile,
    TestBuildStepMixin,
)
from buildbot.test.util.config import ConfigErrorsMixin
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from buildbot_steps._core import AssignmentKind, Verdict
from buildbot_steps.shard import RunShard, ShardedTest
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard.junit import MAX_REPORT_BYTES, JUnitTestResult
from buildbot_steps.shard.shard_step import _BytesWriter

TEMPLATE = ["python", "-m", "pytest", "--junitxml={junit}", "{tests}"]
TESTS = ["tests/test_a.py::test_one", "tests/test_a.py::test_two"]

GOOD_REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
<testcase classname="tests.test_a" name="test_one" time="0.5"/>
<testcase classname="tests.test_a" name="test_two" time="3.25"/>
</testsuite></testsuites>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<testsuites><testsuite><testcase classname="x" name="&lol3;"/></testsuite></testsuites>"""

ASK_FEWER = "ask for fewer shards, or raise max_shards in the ShardedTest step"

TRUNCATED_REPORT = GOOD_REPORT[: len(GOOD_REPORT) // 2]

# 100,000 nested elements: 700 kB, inside the size cap, refused by depth.
DEEPLY_NESTED = "<testsuites>" + "<a>" * 100_000 + "</a>" * 100_000 + "</testsuites>"

ONE_SKIPPED = """<testsuites><testsuite>
<testcase classname="tests.test_a" name="test_one" time="0.5"/>
<testcase classname="tests.test_a" name="test_two" time="0.0"><skipped message="no GPU"/></testcase>
</testsuite></testsuites>"""

# Each time is finite, their sum (pytest's second entry for teardown) is not.
TIMES_SUM_TO_INFINITY = """<testsuites><testsuite>
<testcase classname="tests.test_a" name="test_one" time="1e308"/>
<testcase classname="tests.test_a" name="test_one" time="1e308"/>
<testcase classname="tests.test_a" name="test_two" time="0.5"/>
</testsuite></testsuites>"""


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


def shell_for(tests: list[str], report: str) -> ExpectShell:
    argv = ["python", "-m", "pytest", f"--junitxml={report}", *tests]
    return ExpectShell(workdir="wkdir", command=argv, log_environ=False)


def upload_of(report: str) -> ExpectUploadFile:
    return ExpectUploadFile(
        workdir="wkdir", workersrc=report, blocksize=64 * 1024, maxsize=MAX_REPORT_BYTES + 1,
        keepstamp=False, writer=ExpectRemoteRef(_BytesWriter),
    )  # fmt: skip


class RunShardStandaloneTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """A static shard without its parent on this master runs its fixed list alone."""

    REPORTS = ".shard-reports-92"

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def setup_shard(self, tests=TESTS, template=TEMPLATE):
        self.setup_step(RunShard(test_command=template))
        self.build.getWorkerName = lambda: "linux"  # FakeBuild lacks it
        self.build.setProperty("shard_parent_buildid", 1234, "test")
        self.build.setProperty("shard_index", 0, "test")
        self.build.setProperty("shard_tests", tests, "test")

    def batch(self, number: int, tests=TESTS) -> str:
        return f"{self.REPORTS}/batch-{number}.xml"

    @defer.inlineCallbacks
    def test_good_report_passes(self):
        self.setup_shard()
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(GOOD_REPORT).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_a_tests_file_carries_the_ids_and_the_log_shows_a_count(self):
        self.setup_shard(template=["python", "-m", "pytest", "--junitxml={junit}", "@{tests_file}"])
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            ExpectDownloadFile(
                workdir="wkdir",
                workerdest=f"{self.REPORTS}/batch-1.tests",
                blocksize=64 * 1024,
                maxsize=None,
                mode=None,
                reader=ExpectRemoteRef(remotetransfer.StringFileReader),
            ).exit(0),  # fmt: skip
            ExpectShell(
                workdir="wkdir",
                command=[
                    "python",
                    "-m",
                    "pytest",
                    f"--junitxml={self.batch(1)}",
                    f"@{self.REPORTS}/batch-1.tests",
                ],
                log_environ=False,
            ).exit(0),
            upload_of(self.batch(1)).upload_string(GOOD_REPORT).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        self.assertIn(f"batch 1: 2 tests ({TESTS[0]}, {TESTS[1]})", self.get_nth_step(0).logs["stdio"].header)

    @defer.inlineCallbacks
    def test_a_tests_file_that_cannot_be_written_fails_the_batch_not_the_step(self):
        self.setup_shard(template=["python", "-m", "pytest", "--junitxml={junit}", "@{tests_file}"])
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            *[
                ExpectDownloadFile(
                    workdir="wkdir",
                    workerdest=f"{self.REPORTS}/batch-{n}.tests",
                    blocksize=64 * 1024,
                    maxsize=None,
                    mode=None,
                    reader=ExpectRemoteRef(remotetransfer.StringFileReader),
                ).exit(1)  # fmt: skip
                for n in (1, 2)
            ],
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("could not write the batch's tests file", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_truncated_report_fails_that_batch_then_rerun_passes(self):
        self.setup_shard()
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(TRUNCATED_REPORT).exit(0),
            shell_for(TESTS, self.batch(2)).exit(0),
            upload_of(self.batch(2)).upload_string(GOOD_REPORT).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=WARNINGS)
        yield self.run_step()
        stderr = self.get_nth_step(0).logs["stdio"].stderr
        self.assertIn("not well-formed XML (truncated?)", stderr)

    @defer.inlineCallbacks
    def test_billion_laughs_is_refused_and_fails_the_tests(self):
        self.setup_shard()
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(BILLION_LAUGHS).exit(0),
            shell_for(TESTS, self.batch(2)).exit(0),
            upload_of(self.batch(2)).upload_string(BILLION_LAUGHS).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("unsafe XML", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_deeply_nested_report_is_refused_and_fails_the_tests(self):
        self.setup_shard()
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(DEEPLY_NESTED).exit(0),
            shell_for(TESTS, self.batch(2)).exit(0),
            upload_of(self.batch(2)).upload_string(DEEPLY_NESTED).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("nested over 64 deep", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_skipped_test_is_resolved_without_a_rerun(self):
        self.setup_shard()
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(ONE_SKIPPED).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        self.assertIn("0 failed attempts", self.get_nth_step(0).getResultSummary()["step"])

    @defer.inlineCallbacks
    def test_missing_report_is_a_failed_batch(self):
        self.setup_shard(tests=TESTS[:1])
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS[:1], self.batch(1)).exit(139),
            upload_of(self.batch(1)).exit(1),
            shell_for(TESTS[:1], self.batch(2)).exit(139),
            upload_of(self.batch(2)).exit(1),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("runner exit code 139", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_no_parent_and_no_static_list_is_a_clear_failure(self):
        self.setup_step(RunShard())
        self.build.setProperty("shard_parent_buildid", 1234, "test")
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("no running ShardedTest parent build", self.get_nth_step(0).logs["stdio"].stderr)

    def tearDown(self):
        self.assertEqual(shard_session._sessions, {})


FAILED_ONE = """<testsuites><testsuite>
<testcase classname="tests.test_a" name="test_one" time="0.5">
<failure message="boom">trace</failure></testcase>
</testsuite></testsuites>"""


class RunShardDynamicTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """A shard pulling from its parent's dispatcher (the compiled core)."""

    REPORTS = ".shard-reports-92"
    PARENT = 4321

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def register(self, workers: int, tests=TESTS[:1], min_batch_s: float = 0.0) -> shard_session.ShardSession:
        from buildbot_steps import _core

        estimates = _core.estimate_durations(tests, [])
        dispatcher = _core.Dispatcher(estimates, workers=workers, speculate=False, min_batch_s=min_batch_s)
        settings = shard_session.ShardCommandSettings(TEMPLATE, None, {}, 1200, MAX_REPORT_BYTES)
        session = shard_session.ShardSession(
            shard_session.DynamicBatches(dispatcher), settings, self.reactor.seconds
        )
        shard_session.register_session(self.PARENT, session)
        self.addCleanup(shard_session.unregister_session, self.PARENT)
        self.setup_step(RunShard())
        self.build.getWorkerName = lambda: "linux"  # FakeBuild lacks it
        self.build.setProperty("shard_parent_buildid", self.PARENT, "test")
        self.build.setProperty("shard_index", 0, "test")
        return session

    def batch(self, number: int) -> str:
        return f"{self.REPORTS}/batch-{number}.xml"

    @defer.inlineCallbacks
    def test_failure_rerun_on_the_only_worker_makes_it_flaky(self):
        session = self.register(workers=1)
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS[:1], self.batch(1)).exit(1),
            upload_of(self.batch(1)).upload_string(FAILED_ONE).exit(0),
            shell_for(TESTS[:1], self.batch(2)).exit(0),
            upload_of(self.batch(2)).upload_string(GOOD_REPORT).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=WARNINGS)
        yield self.run_step()
        (outcome,) = session.batches.outcomes()
        self.assertEqual(outcome.verdict, Verdict.flaky)
        self.assertEqual([a.worker for a in outcome.attempts], ["linux#13", "linux#13"])
        self.assertIn("boom", outcome.attempts[0].message)

    @defer.inlineCallbacks
    def test_a_test_this_shard_ran_that_failed_for_good_makes_the_shard_red(self):
        session = self.register(workers=1)
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS[:1], self.batch(1)).exit(1),
            upload_of(self.batch(1)).upload_string(FAILED_ONE).exit(0),
            shell_for(TESTS[:1], self.batch(2)).exit(1),
            upload_of(self.batch(2)).upload_string(FAILED_ONE).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        (outcome,) = session.batches.outcomes()
        self.assertEqual(outcome.verdict, Verdict.failed)
        self.assertIn(f"failed: {TESTS[0]}", self.get_nth_step(0).getResultSummary()["step"])

    @defer.inlineCallbacks
    def test_times_summing_to_infinity_fail_the_batch_and_every_test_reruns(self):
        # Before: the core refused the sum after taking the batch out of
        # flight; its tests were never re-queued and ended "not run" after
        # the two-minute stall.
        session = self.register(workers=1, tests=TESTS, min_batch_s=10.0)
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(TESTS, self.batch(1)).exit(0),
            upload_of(self.batch(1)).upload_string(TIMES_SUM_TO_INFINITY).exit(0),
            shell_for(TESTS, self.batch(2)).exit(0),
            upload_of(self.batch(2)).upload_string(GOOD_REPORT).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=WARNINGS)
        running = self.run_step()
        for _ in range(200):  # simulated seconds: a stall would show as "not run"
            self.reactor.advance(1)
        yield running
        verdicts = {o.id: o.verdict for o in session.batches.outcomes()}
        self.assertEqual(verdicts, {TESTS[0]: Verdict.flaky, TESTS[1]: Verdict.flaky})
        self.assertIn("took 1e+308 s", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_waiting_for_a_worker_that_never_comes_gives_up_instead_of_hanging(self):
        session = self.register(workers=2, tests=TESTS)
        # Another shard takes the first test, passes it, and then goes silent
        # without leaving: the re-run of our failure waits for it.
        other = session.next_batch("other#1", 0).batch
        session.report("other#1", other.id, [JUnitTestResult(other.tests[0], True, 0.1)])
        mine = [t for t in TESTS if t not in other.tests]
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            shell_for(mine, self.batch(2)).exit(1),
            upload_of(self.batch(2)).upload_string(failed_report(mine[0])).exit(0),
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )
        self.expect_outcome(result=WARNINGS)
        running = self.run_step()
        for _ in range(200):  # simulated seconds, past STALL_TIMEOUT_S
            self.reactor.advance(1)
        yield running
        verdicts = {o.id: o.verdict for o in session.batches.outcomes()}
        self.assertEqual(verdicts, {other.tests[0]: Verdict.passed, mine[0]: Verdict.pending})
        self.assertIn(
            "leaving the remaining tests to other shards", self.get_nth_step(0).logs["stdio"].header
        )


def failed_report(test_id: str) -> str:
    name = test_id.split("::")[-1]
    return (
        f'<testsuites><testsuite><testcase classname="tests.test_a" name="{name}" time="0.5">'
        '<failure message="boom">trace</failure></testcase></testsuite></testsuites>'
    )


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
        packed into one row."""
        self.expect_test_result_sets(
            [
                ("sharded tests", "pass_fail", "boolean"),
                ("sharded tests durations", "performance", "json"),
                ("sharded tests flaky", "fail_only", "boolean"),
            ]
        )
        clamped = 2**31 - 1  # 2.5 s does not fit PostgreSQL's int4 duration_ns
        rows = []
        for test, verdict in verdicts.items():
            passed = "1" if verdict in ("passed", "flaky") else "0"
            if verdict != "skipped":  # neither a pass nor a failure
                rows.append((1000, passed, test, None, None, clamped))
            if verdict == "flaky":
                rows.append((1002, "0", test, None, None, None))
        rows.append((1001, packed_durations(verdicts), "durations 0", None, None, None))
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
                ("sharded tests", "pass_fail", "boolean"),
                ("sharded tests durations", "performance", "json"),
                ("sharded tests flaky", "fail_only", "boolean"),
                ("sharded tests batch overhead", "performance", "s"),
            ]
        )
        clamped = 2**31 - 1
        self.expect_test_results(
            [
                (1000, "1", TESTS[0], None, None, clamped),
                (1000, "1", TESTS[1], None, None, clamped),
                (1001, packed_durations(TESTS), "durations 0", None, None, None),
                (1003, "3.000000", "worker0#1", None, None, None),  # one row per puller
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
