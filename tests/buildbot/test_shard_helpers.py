"""Pure helpers of the sharded test steps: templates, listings, storage, report."""

from __future__ import annotations

import math

import pytest
from twisted.internet import defer

from buildbot_steps import _core
from buildbot_steps._core import AssignmentKind, DispatchStats, Verdict
from buildbot_steps.shard import report as shard_report
from buildbot_steps.shard import results
from buildbot_steps.shard.commands import (
    Quarantine,
    batch_ids_text,
    check_test_command,
    expand_test_command,
    parse_test_listing,
    passed_after_a_batch_failure,
    short_list,
)
from buildbot_steps.shard.history import POSTGRES_INT4_MAX, duration_ns_for_db
from buildbot_steps.shard.junit import JUnitTestResult
from buildbot_steps.shard.session import DynamicBatches, ShardCommandSettings, ShardSession, StaticShards


def test_template_expands_one_argument_per_test():
    argv = expand_test_command(
        ["pytest", "--junitxml={junit}", "{tests}", "-x"], ["a::t[1 2]", "b::u"], "r/1.xml"
    )
    assert argv == ["pytest", "--junitxml=r/1.xml", "a::t[1 2]", "b::u", "-x"]


def test_the_plan_log_says_how_much_of_the_suites_spread_the_history_shows():
    history = [{"a.py::t": 1.0, "a.py::u": 4.0}, {"a.py::t": 3.0, "a.py::u": 6.0, "a.py::once": 1.0}]
    estimates = _core.estimate_durations(["a.py::t", "a.py::u", "a.py::once"], history)
    # t: 1 and 3, u: 4 and 6 (spread sqrt 2 each, estimates 1 and 4, the faster of two runs);
    # once: one run, so its 1 s of the 6 s estimated has no known spread.
    assert results.spread_text(estimates) == (
        "run-to-run spread known for 83% of the estimated seconds (2 tests with two or more runs); "
        "their total's spread: 2.00 s"
    )
    assert "spread known for 0%" in results.spread_text(_core.estimate_durations(["a.py::t"], history[:1]))


def test_template_checks():
    assert check_test_command(["pytest", "--junitxml={junit}", "{tests}"]) is None
    assert "exactly one" in check_test_command(["pytest", "{tests}", "{tests}", "{junit}"])
    assert check_test_command(["pytest", "--junitxml={junit}", "@{tests_file}"]) is None
    assert "exactly one" in check_test_command(["pytest", "{junit}", "{tests}", "@{tests_file}"])
    assert "only strings" in check_test_command(["pytest", 3])
    assert "non-empty" in check_test_command([])


def test_template_with_a_tests_file_keeps_the_ids_off_the_command_line():
    argv = expand_test_command(
        ["pytest", "--junitxml={junit}", "@{tests_file}"], ["a::t[1 2]", "b::u"], "r/1.xml", "r/1.tests"
    )
    assert argv == ["pytest", "--junitxml=r/1.xml", "@r/1.tests"]
    assert batch_ids_text(["a::t[1 2]", "b::u"]) == "a::t[1 2]\nb::u\n"


def test_a_batch_is_logged_as_a_count_and_a_short_head():
    ids = [f"tests/test_a.py::test_{n}" for n in range(1000)]
    line = short_list(ids)
    assert line.startswith("1000 tests (tests/test_a.py::test_0, ")
    assert "test_3," not in line and line.endswith(", ...)")
    assert short_list(["x"]) == "1 tests (x)"


def test_quarantine_matches_exact_parametrized_ids_and_explicit_patterns():
    quarantine = Quarantine(["tests/t.py::test_x[a-b]", "tests/net/*", "*::test_y[*]", "t.py::z?"])
    assert "tests/t.py::test_x[a-b]" in quarantine  # fnmatch took [a-b] for a character class
    assert "tests/t.py::test_xa" not in quarantine
    assert "tests/net/test_dns.py::test_up" in quarantine
    assert "tests/u.py::test_y[1-2]" in quarantine  # brackets literal, * a wildcard
    assert "tests/u.py::test_y1" not in quarantine
    assert "t.py::z1" in quarantine and "t.py::z12" not in quarantine
    assert "tests/other.py::test_x" not in quarantine


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
        worker, passed, seconds, message = "w<1>", False, 1.0, "<script>x</script>"
        skipped, timed = False, True

    class Outcome:
        id, verdict, estimate_s, attempts = "t::<b>", Verdict.failed, 1.0, [Attempt()]

    class Run:
        worker, batch_id, tests, start_s, end_s = "w<1>", 1, 1, 0.0, 1.0
        speculative, retry, outcome, failed_tests = False, False, "reported", 0

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
    rerun_tests = []
    while not batches.done():  # each test re-run alone: its batch failed as a whole
        rerun = session.next_batch("w1", 0).batch
        assert len(rerun.tests) == 1
        rerun_tests += rerun.tests
        assert session.report("w1", rerun.id, [JUnitTestResult(t, True, 1.0) for t in rerun.tests]) is None
    assert sorted(rerun_tests) == ["a", "b"]  # none lost, none half-recorded
    # A refused report fails the batch as a whole: no failure of the tests' own.
    assert {o.id: o.verdict for o in batches.outcomes()} == {"a": Verdict.passed, "b": Verdict.passed}
    assert all(passed_after_a_batch_failure(o) for o in batches.outcomes())
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


def _session_of(dispatcher) -> ShardSession:
    settings = ShardCommandSettings(["pytest", "{junit}", "{tests}"], "wd", {}, 60.0, 1 << 20)
    return ShardSession(DynamicBatches(dispatcher), settings, clock=lambda: 0.0)


def test_a_batchs_wall_time_teaches_the_dispatcher_its_overhead():
    tests = [f"t.py::test_{n}" for n in range(40)]
    session = _session_of(_core.Dispatcher(_core.estimate_durations(tests, []), workers=2))
    batch = session.next_batch("w1", 0).batch
    results = [JUnitTestResult(test, True, 0.01, "", False) for test in batch.tests]
    assert session.report("w1", batch.id, results, wall_s=3.0 + 0.01 * len(results)) is None
    stats = session.batches.stats()
    assert stats.batch_overhead_s == pytest.approx(3.0)
    assert stats.estimate_scale == pytest.approx(0.01)  # guessed at 1 s, took 10 ms
    assert session.batches.overhead_by_worker() == {"w1": pytest.approx(3.0)}


def test_static_shards_average_the_cost_figures_instead_of_adding_them():
    shards = StaticShards([["a"], ["b"]], {"a": 1.0, "b": 1.0}, batch_overhead_s=2.0)
    stats = shards.stats()
    assert stats.batch_overhead_s == pytest.approx(2.0)
    assert stats.estimate_scale == pytest.approx(1.0)


class _CannedData:
    """Buildbot's data API as TestHistory reads it: result sets and their rows."""

    def __init__(self, sets: list[dict], rows: dict[int, list[dict]]):
        self.sets, self.rows = sets, rows

    def get(self, path: tuple) -> defer.Deferred:
        if path[0] == "builders":
            return defer.succeed(self.sets)
        return defer.succeed(self.rows[path[1]])


def test_history_reads_the_newest_learnt_overhead_as_the_median_over_workers():
    from types import SimpleNamespace

    from buildbot_steps.shard.history import TestHistory

    def result_set(setid: int, description: str) -> dict:
        return {"test_result_setid": setid, "description": description, "complete": True, "buildid": setid}

    sets = [
        result_set(1, "sharded tests batch overhead"),
        result_set(2, "sharded tests durations"),
        result_set(3, "sharded tests batch overhead"),
    ]
    rows = {
        1: [{"test_name": "w1#1", "value": "9.0"}],
        2: [{"test_name": "t.py::a", "value": "0.5"}],
        3: [{"test_name": f"w{n}#2", "value": v} for n, v in enumerate(["2.0", "2.5", "40.0"])],
    }
    step = SimpleNamespace(master=SimpleNamespace(data=_CannedData(sets, rows)))
    reading = []
    defer.ensureDeferred(TestHistory(step, "sharded tests").read(100)).addCallback(reading.append)
    assert reading[0].batch_overhead_s == pytest.approx(2.5)  # one slow worker does not set it
    assert reading[0].durations == [{"t.py::a": 0.5}]
    empty = []
    no_sets = SimpleNamespace(master=SimpleNamespace(data=_CannedData([], {})))
    defer.ensureDeferred(TestHistory(no_sets, "x").read(1)).addCallback(empty.append)
    assert empty[0].batch_overhead_s == 0.0


def test_report_shows_both_bounds_and_the_learnt_start_up():
    figures = {"lower_bound_s": 10.0, "lower_bound_with_startups_s": 12.0, "batch_overhead_s": 2.0}
    html = shard_report.render_report([], [], figures, set())
    cell = shard_report.VALUE_CELL
    assert f"<th align='left'>Shortest possible on these workers</th><td {cell}>10.0 s</td>" in html
    with_startups = "Shortest possible with one runner start-up per worker"
    assert f"<th align='left'>{with_startups}</th><td {cell}>12.0 s</td>" in html
    assert f"<th align='left'>Runner start-up per batch (learnt)</th><td {cell}>2.00 s</td>" in html


def test_timeline_draws_a_batch_with_a_failure_as_failed_with_legend_and_time_axis():
    now = [0.0]
    settings = ShardCommandSettings(["pytest", "--junitxml={junit}", "{tests}"], "", {}, None, 1000)
    session = ShardSession(StaticShards([["a", "b"]], {"a": 1.0, "b": 1.0}), settings, lambda: now[0])
    first = session.next_batch("w1", 0).batch
    now[0] = 3.0
    session.report(
        "w1", first.id, [JUnitTestResult("a", True, 1.0), JUnitTestResult("b", False, 2.0, "boom")]
    )
    retry = session.next_batch("w1", 0).batch
    now[0] = 9.5
    session.report("w1", retry.id, [JUnitTestResult("b", True, 1.0)])
    assert [run.failed_tests for run in session.timeline] == [1, 0]

    svg = shard_report.timeline_svg(session.timeline)
    failed_rect, retry_rect = svg.split("<rect x='")[-2:]  # the legend's swatches come first
    assert f"fill='{shard_report.FAILED_COLOUR}'" in failed_rect and "1 failed" in failed_rect
    assert f"fill='{shard_report.RETRY_COLOUR}'" in retry_rect
    for _, meaning in shard_report.LEGEND:
        assert f">{meaning}</text>" in svg
    # Ticks at a round step up to the end (9.5 s: every 2 s), each labelled with its unit.
    assert [f">{t} s</text>" in svg for t in (0, 2, 4, 6, 8)] == [True] * 5
    assert ">10 s</text>" not in svg and "time since start" in svg


@pytest.mark.parametrize(("end_s", "step"), [(0.5, 0.1), (9.5, 2), (75, 10), (4000, 600), (10**6, 3600 * 35)])
def test_time_axis_steps_are_round_and_few(end_s, step):
    assert shard_report.tick_step(end_s) == step
    assert end_s / shard_report.tick_step(end_s) <= shard_report.TARGET_TICKS


def test_summary_figures_have_labels_and_units():
    html = shard_report.render_report([], [], {"makespan_s": 12.345, "straggler_copies": 1, "new": 3}, set())
    cell = shard_report.VALUE_CELL
    assert f"<th align='left'>Wall time of the test run</th><td {cell}>12.3 s</td>" in html
    assert f"<th align='left'>Straggler copies started</th><td {cell}>1</td>" in html
    assert "<th align='left'>new</th>" in html  # a figure without a label still shows
    assert "makespan_s" not in html
