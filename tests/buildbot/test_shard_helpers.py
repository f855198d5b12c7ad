"""Pure helpers of the sharded test steps: templates, listings, storage, report."""

from __future__ import annotations

import math

import pytest

from buildbot_steps import _core
from buildbot_steps._core import AssignmentKind, DispatchStats, Verdict
from buildbot_steps.shard import report as shard_report
from buildbot_steps.shard.commands import check_test_command, expand_test_command, parse_test_listing
from buildbot_steps.shard.history import POSTGRES_INT4_MAX, duration_ns_for_db
from buildbot_steps.shard.junit import JUnitTestResult
from buildbot_steps.shard.session import DynamicBatches, ShardCommandSettings, ShardSession, StaticShards


def test_template_expands_one_argument_per_test():
    argv = expand_test_command(
        ["pytest", "--junitxml={junit}", "{tests}", "-x"], ["a::t[1 2]", "b::u"], "r/1.xml"
    )
    assert argv == ["pytest", "--junitxml=r/1.xml", "a::t[1 2]", "b::u", "-x"]


def test_template_checks():
    assert check_test_command(["pytest", "--junitxml={junit}", "{tests}"]) is None
    assert "exactly one" in check_test_command(["pytest", "{tests}", "{tests}", "{junit}"])
    assert "only strings" in check_test_command(["pytest", 3])
    assert "non-empty" in check_test_command([])


def test_collect_only_listing_is_parsed():
    output = (
        "tests/test_a.py::test_x\ntests/test_a.py::test_y[1]\ntests/test_a.py::test_x\n"
        "\n3 tests collected in 0.02s\n"
    )
    assert parse_test_listing(output) == ["tests/test_a.py::test_x", "tests/test_a.py::test_y[1]"]
    assert parse_test_listing("\nno tests ran in 0.01s\n") == []


def test_durations_are_clamped_for_postgresql_int4():
    assert duration_ns_for_db(1.5) == 1_500_000_000
    assert duration_ns_for_db(2.5) == POSTGRES_INT4_MAX
    assert duration_ns_for_db(-1.0) == 0


def test_static_shards_rerun_failures_and_tell_flaky_from_failed():
    shards = StaticShards([["a", "b"], ["c"]], {"a": 1.0, "b": 1.0, "c": 1.0}, max_attempts=2)
    first = shards.next_batch("w1", 0).batch
    shards.report("w1", first.id, [_core.TestResult("a", True, 0.1), _core.TestResult("b", False, 0.1)])
    retry = shards.next_batch("w1", 0).batch
    assert retry.retry and retry.tests == ["b"]
    shards.report("w1", retry.id, [_core.TestResult("b", True, 0.1)])
    other = shards.next_batch("w2", 1).batch
    shards.report_error("w2", other.id, "runner crashed")
    again = shards.next_batch("w2", 1).batch
    shards.report_error("w2", again.id, "runner crashed")
    verdicts = {o.id: o.verdict for o in shards.outcomes()}
    assert verdicts == {"a": Verdict.passed, "b": Verdict.flaky, "c": Verdict.failed}
    assert shards.done() and shards.next_batch("w1", 0).kind == AssignmentKind.done
    totals = shards.stats()
    assert isinstance(totals, DispatchStats)
    assert (totals.tests, totals.passed, totals.flaky, totals.failed) == (3, 1, 1, 1)


def test_static_shards_give_a_lost_workers_batch_back():
    shards = StaticShards([["a", "b"]], {}, max_attempts=2)
    lost = shards.next_batch("w1", 0).batch
    shards.worker_lost("w1")
    assert shards.stats().requeued_batches == 1
    again = shards.next_batch("w2", 0).batch
    assert again.tests == lost.tests and not again.retry


def test_report_escapes_test_ids_and_draws_a_timeline():
    class Attempt:
        worker, passed, seconds, message, skipped = "w<1>", False, 1.0, "<script>x</script>", False

    class Outcome:
        id, verdict, estimate_s, attempts = "t::<b>", Verdict.failed, 1.0, [Attempt()]

    class Run:
        worker, batch_id, tests, start_s, end_s = "w<1>", 1, 1, 0.0, 1.0
        speculative, retry, outcome = False, False, "reported"

    html = shard_report.render_report([Outcome()], [Run()], {"passed": 0}, set())
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "t::&lt;b&gt;" in html and "<svg" in html and "<rect" in html


def _session(batches) -> ShardSession:
    settings = ShardCommandSettings(["pytest", "--junitxml={junit}", "{tests}"], "", {}, None, 1000)
    return ShardSession(batches, settings, clock=lambda: 0.0)


@pytest.mark.parametrize("bad_seconds", [math.inf, math.nan, -1.0])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_results_the_core_refuses_fail_the_batch_and_every_test_is_rerun(mode, bad_seconds):
    if mode == "dynamic":
        estimates = [_core.TestEstimate("a", 1.0), _core.TestEstimate("b", 1.0)]
        batches = DynamicBatches(_core.Dispatcher(estimates, workers=1, min_batch_s=10.0, speculate=False))
    else:
        batches = StaticShards([["a", "b"]], {"a": 1.0, "b": 1.0})
    session = _session(batches)
    first = session.next_batch("w1", 0).batch
    refused = session.report(
        "w1", first.id, [JUnitTestResult("a", True, 1.0), JUnitTestResult("b", True, bad_seconds)]
    )
    assert refused is not None and "results refused" in refused and "'b'" in refused
    assert session.timeline[-1].outcome == "error"
    rerun = session.next_batch("w1", 0).batch
    assert sorted(rerun.tests) == ["a", "b"]  # none lost, none half-recorded
    assert session.report("w1", rerun.id, [JUnitTestResult(t, True, 1.0) for t in rerun.tests]) is None
    assert {o.id: o.verdict for o in batches.outcomes()} == {"a": Verdict.flaky, "b": Verdict.flaky}
    assert batches.done()


def test_a_skipped_result_is_resolved_in_both_modes():
    for batches in (
        DynamicBatches(_core.Dispatcher([_core.TestEstimate("a", 1.0)], workers=1)),
        StaticShards([["a"]], {"a": 1.0}),
    ):
        session = _session(batches)
        batch = session.next_batch("w1", 0).batch
        session.report("w1", batch.id, [JUnitTestResult("a", False, 0.0, "skipped: no GPU", skipped=True)])
        (outcome,) = batches.outcomes()
        assert outcome.verdict == Verdict.skipped and outcome.attempts[0].skipped
        assert batches.stats().skipped == 1 and batches.done()
        html = shard_report.render_report([outcome], session.timeline, {"skipped": 1}, set())
        assert "Skipped tests (1: not run by the runner, do not gate)" in html
        assert "skipped: no GPU" in html and "Failures</h3><p>none" in html
