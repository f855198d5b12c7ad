"""RunShard under Buildbot's own step harness: one shard build's batches.

A static shard running its fixed list alone, a shard pulling from its
parent's dispatcher (the compiled core), and hostile or broken JUnit XML
coming back from a worker (truncated, billion laughs, nested too deep,
missing, times summing to infinity).
"""

from __future__ import annotations

from buildbot.process import remotetransfer
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
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_steps._core import Verdict
from buildbot_steps.shard import RunShard
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard.commands import BATCH_FAILURE_NOTE
from buildbot_steps.shard.junit import MAX_REPORT_BYTES, JUnitTestResult
from buildbot_steps.shard.shard_step import _BytesWriter

TEMPLATE = ["python", "-m", "pytest", "--junitxml={junit}", "{tests}"]
# The ids in a file on the worker (pytest reads @file): a long batch neither bloats the log nor the argv.
TESTS_FILE_TEMPLATE = ["python", "-m", "pytest", "--junitxml={junit}", "@{tests_file}"]
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


def failed_report(test_id: str) -> str:
    name = test_id.split("::")[-1]
    return (
        f'<testsuites><testsuite><testcase classname="tests.test_a" name="{name}" time="0.5">'
        '<failure message="boom">trace</failure></testcase></testsuite></testsuites>'
    )


FAILED_ONE = failed_report(TESTS[0])


def shell_for(tests: list[str], report: str) -> ExpectShell:
    argv = ["python", "-m", "pytest", f"--junitxml={report}", *tests]
    return ExpectShell(workdir="wkdir", command=argv, log_environ=False)


def upload_of(report: str) -> ExpectUploadFile:
    return ExpectUploadFile(
        workdir="wkdir", workersrc=report, blocksize=64 * 1024, maxsize=MAX_REPORT_BYTES + 1,
        keepstamp=False, writer=ExpectRemoteRef(_BytesWriter),
    )  # fmt: skip


class ShardStepCase(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """What every RunShard test expects: its batches inside the reports directory."""

    REPORTS = ".shard-reports-92"

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setup_test_build_step()

    def batch(self, number: int) -> str:
        return f"{self.REPORTS}/batch-{number}.xml"

    def batch_run(self, tests: list[str], number: int, report: str, rc: int = 0) -> list:
        """Batch `number` runs `tests`, exits `rc` and hands back `report` as its JUnit XML."""
        return [
            shell_for(tests, self.batch(number)).exit(rc),
            upload_of(self.batch(number)).upload_string(report).exit(0),
        ]

    def download_of_tests_file(self, number: int) -> ExpectDownloadFile:
        """The master writing batch `number`'s test ids to its tests file on the worker."""
        return ExpectDownloadFile(
            workdir="wkdir", workerdest=f"{self.REPORTS}/batch-{number}.tests", blocksize=64 * 1024,
            maxsize=None, mode=None, reader=ExpectRemoteRef(remotetransfer.StringFileReader),
        )  # fmt: skip

    def expect_batches(self, *commands) -> None:
        """The step makes its reports directory, runs `commands`, and removes the directory."""
        self.expect_commands(
            ExpectMkdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
            *commands,
            ExpectRmdir(dir=f"wkdir/{self.REPORTS}", log_environ=False).exit(0),
        )


class RunShardStandaloneTests(ShardStepCase):
    """A static shard without its parent on this master runs its fixed list alone."""

    def setup_shard(self, tests=TESTS, template=TEMPLATE):
        self.setup_step(RunShard(test_command=template))
        self.build.getWorkerName = lambda: "linux"  # FakeBuild lacks it
        self.build.setProperty("shard_parent_buildid", 1234, "test")
        self.build.setProperty("shard_index", 0, "test")
        self.build.setProperty("shard_tests", tests, "test")

    @defer.inlineCallbacks
    def run_with_reports(self, first: str, result: int, rerun: str | None = None):
        """The shard's whole list runs with the `first` report; if that one is
        bad, the batch failed as a whole and each test is re-run alone with
        the `rerun` report. Returns the step."""
        self.setup_shard()
        reruns = (
            []
            if rerun is None
            else [*self.batch_run(TESTS[:1], 2, rerun), *self.batch_run(TESTS[1:], 3, rerun)]
        )
        self.expect_batches(*self.batch_run(TESTS, 1, first), *reruns)
        self.expect_outcome(result=result)
        yield self.run_step()
        return self.get_nth_step(0)

    @defer.inlineCallbacks
    def test_good_report_passes(self):
        yield self.run_with_reports(GOOD_REPORT, SUCCESS)

    @defer.inlineCallbacks
    def test_a_tests_file_carries_the_ids_and_the_log_shows_a_count(self):
        self.setup_shard(template=TESTS_FILE_TEMPLATE)
        self.expect_batches(
            self.download_of_tests_file(1).exit(0),
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
        )
        self.expect_outcome(result=SUCCESS)
        yield self.run_step()
        self.assertIn(f"batch 1: 2 tests ({TESTS[0]}, {TESTS[1]})", self.get_nth_step(0).logs["stdio"].header)

    @defer.inlineCallbacks
    def test_a_tests_file_that_cannot_be_written_fails_the_batch_not_the_step(self):
        self.setup_shard(template=TESTS_FILE_TEMPLATE)
        self.expect_batches(
            self.download_of_tests_file(1).exit(1),
            # Each test re-run alone (a batch that failed as a whole).
            self.download_of_tests_file(2).exit(1),
            self.download_of_tests_file(3).exit(1),
        )
        self.expect_outcome(result=FAILURE)
        yield self.run_step()
        self.assertIn("could not write the batch's tests file", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_truncated_report_fails_that_batch_then_rerun_passes(self):
        step = yield self.run_with_reports(TRUNCATED_REPORT, WARNINGS, rerun=GOOD_REPORT)
        self.assertIn("not well-formed XML (truncated?)", step.logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_billion_laughs_is_refused_and_fails_the_tests(self):
        step = yield self.run_with_reports(BILLION_LAUGHS, FAILURE, rerun=BILLION_LAUGHS)
        self.assertIn("unsafe XML", step.logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_deeply_nested_report_is_refused_and_fails_the_tests(self):
        step = yield self.run_with_reports(DEEPLY_NESTED, FAILURE, rerun=DEEPLY_NESTED)
        self.assertIn("nested over 64 deep", step.logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_skipped_test_is_resolved_without_a_rerun(self):
        step = yield self.run_with_reports(ONE_SKIPPED, SUCCESS)
        self.assertIn("0 failed attempts", step.getResultSummary()["step"])

    @defer.inlineCallbacks
    def test_missing_report_is_a_failed_batch(self):
        self.setup_shard(tests=TESTS[:1])
        self.expect_batches(
            shell_for(TESTS[:1], self.batch(1)).exit(139),
            upload_of(self.batch(1)).exit(1),
            shell_for(TESTS[:1], self.batch(2)).exit(139),
            upload_of(self.batch(2)).exit(1),
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


class RunShardDynamicTests(ShardStepCase):
    """A shard pulling from its parent's dispatcher (the compiled core)."""

    PARENT = 4321

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

    @defer.inlineCallbacks
    def test_failure_rerun_on_the_only_worker_makes_it_flaky(self):
        session = self.register(workers=1)
        self.expect_batches(
            *self.batch_run(TESTS[:1], 1, FAILED_ONE, rc=1),
            *self.batch_run(TESTS[:1], 2, GOOD_REPORT),
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
        self.expect_batches(
            *self.batch_run(TESTS[:1], 1, FAILED_ONE, rc=1),
            *self.batch_run(TESTS[:1], 2, FAILED_ONE, rc=1),
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
        self.expect_batches(
            *self.batch_run(TESTS, 1, TIMES_SUM_TO_INFINITY),
            *self.batch_run(TESTS[:1], 2, GOOD_REPORT),
            *self.batch_run(TESTS[1:], 3, GOOD_REPORT),
        )
        self.expect_outcome(result=WARNINGS)
        running = self.run_step()
        for _ in range(200):  # simulated seconds: a stall would show as "not run"
            self.reactor.advance(1)
        yield running
        verdicts = {o.id: o.verdict for o in session.batches.outcomes()}
        # The batch failed as a whole: no failure of the tests' own, so not flaky;
        # the step warns (expect_outcome above) and names them.
        self.assertEqual(verdicts, {TESTS[0]: Verdict.passed, TESTS[1]: Verdict.passed})
        self.assertIn(f"{BATCH_FAILURE_NOTE}: ", self.get_nth_step(0).getResultSummary()["step"])
        self.assertIn("took 1e+308 s", self.get_nth_step(0).logs["stdio"].stderr)

    @defer.inlineCallbacks
    def test_waiting_for_a_worker_that_never_comes_gives_up_instead_of_hanging(self):
        session = self.register(workers=2, tests=TESTS)
        # Another shard takes the first test, passes it, and then goes silent
        # without leaving: the re-run of our failure waits for it.
        other = session.next_batch("other#1", 0).batch
        session.report("other#1", other.id, [JUnitTestResult(other.tests[0], True, 0.1)])
        mine = [t for t in TESTS if t not in other.tests]
        self.expect_batches(
            *self.batch_run(mine, 2, failed_report(mine[0]), rc=1),
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
