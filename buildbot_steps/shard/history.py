"""Test durations and flakes, kept in Buildbot's own test-result tables.

Each build writes three result sets for its tests (DESIGN.md section 3):
    "<description>"           category pass_fail, value "1"/"0", duration_ns
                              clamped to 2**31-1 ns (for other consumers)
    "<description> durations" category performance, value_unit "json": the exact
                              durations in seconds packed as JSON objects,
                              {"test id": 2.513402, ...}, at most
                              PACKED_ROW_BYTES a row, test_name "durations N"
    "<description> flaky"     category fail_only, one row per flaky test
    "<description> batch overhead"  category performance, value_unit "s", one
                              row per worker (test_name): what a batch cost
                              there beyond its tests (runner start-up,
                              collection, fixtures), as the dispatcher learnt it
`test_results.duration_ns` is a 32-bit integer on PostgreSQL (at most
2.147 s), so the planner reads only the durations set, where durations of any
length survive.

Why packed: Buildbot's addTestResults compiles one multi-row INSERT whose bind
parameters SQLAlchemy builds one by one, about 0.3 ms a row on this machine,
and the data API turns every row read into a dict: one row per test cost
~14 s to write and ~4 s to read for 15,000 tests (bench/history_db_bench.py).
Packed, the durations of 100,000 tests are a few hundred rows. Earlier builds'
sets of one row per test (value_unit "s") are still read. The pass_fail set
keeps one row per test (Buildbot's web UI shows them), written as one
executemany by result_rows.py rather than through addTestResult.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

from buildbot.process.buildstep import BuildStep
from twisted.internet import defer

from buildbot_steps._core import TestOutcome, Verdict
from buildbot_steps.shard.result_rows import ResultRow, store_pass_fail_set

# The largest value of a PostgreSQL `integer` column (test_results.duration_ns).
POSTGRES_INT4_MAX = 2**31 - 1
NANOSECONDS = 1_000_000_000

# Earlier builds read for durations: the core looks at the 5 most recent
# runs of each test (kRecentRunsConsidered).
HISTORY_BUILDS = 5

# Durations packed into one test_results row stay under half of MySQL's TEXT
# (65,535 bytes), the smallest `value` column among Buildbot's databases.
PACKED_ROW_BYTES = 30_000
PACKED_UNIT = "json"


def duration_ns_for_db(seconds: float) -> int:
    """Nanoseconds clamped to what PostgreSQL's 32-bit column accepts."""
    return max(0, min(int(round(seconds * NANOSECONDS)), POSTGRES_INT4_MAX))


def durations_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    """{test id: seconds} from the rows of a durations result set, one row per test."""
    durations = {}
    for row in rows:
        try:
            seconds = float(row["value"])
        except (TypeError, ValueError):
            continue  # a hand-edited or foreign row: skip it, do not fail the plan
        if row.get("test_name") and math.isfinite(seconds) and seconds >= 0:
            durations[row["test_name"]] = seconds
    return durations


def packed_durations_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    """{test id: seconds} from the rows of a packed durations result set."""
    durations: dict[str, float] = {}
    for row in rows:
        try:
            packed = json.loads(row["value"])
        except (TypeError, ValueError):
            continue  # a hand-edited or foreign row: skip it, do not fail the plan
        if not isinstance(packed, dict):
            continue
        for test, seconds in packed.items():
            if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
                durations[test] = float(seconds)
    return durations


def pack_durations(durations: dict[str, float]) -> list[str]:
    """JSON objects of {test id: seconds}, each at most PACKED_ROW_BYTES (a longer single
    test id gets a row of its own)."""
    rows: list[str] = []
    entries: list[str] = []
    size = 2  # the braces
    for test in sorted(durations):
        entry = f"{json.dumps(test)}:{durations[test]:.6f}"
        entry_bytes = len(entry.encode()) + 1  # and its comma
        if entries and size + entry_bytes > PACKED_ROW_BYTES:
            rows.append("{" + ",".join(entries) + "}")
            entries, size = [], 2
        entries.append(entry)
        size += entry_bytes
    if entries:
        rows.append("{" + ",".join(entries) + "}")
    return rows


# Buildbot indexes test names; PostgreSQL's btree refuses an index row over
# 2,704 bytes after compression, which a long id of random characters is.
MAX_INDEXED_NAME_BYTES = 2000


def measured_seconds(outcome: TestOutcome) -> float | None:
    """The test's time from its last attempt the runner timed; None when none
    was (it never ran, or each batch it was in failed as a whole or left it
    out of its report: a hang, a crash), which is no duration to learn from."""
    return next((a.seconds for a in reversed(outcome.attempts) if a.timed), None)


def rows_of(outcomes: Sequence[TestOutcome]) -> tuple[list[ResultRow], list[str], dict[str, float]]:
    """(pass_fail rows, flaky test ids, {test id: seconds}) of the tests that ran."""
    pass_fail: list[ResultRow] = []
    flaky: list[str] = []
    durations: dict[str, float] = {}
    for outcome in outcomes:
        if not outcome.attempts:
            continue  # never ran: no result to store
        seconds = measured_seconds(outcome)
        if outcome.verdict != Verdict.skipped:  # neither a pass nor a failure
            passed = "1" if outcome.verdict in (Verdict.passed, Verdict.flaky) else "0"
            duration_ns = duration_ns_for_db(seconds) if seconds is not None else None
            pass_fail.append(ResultRow(outcome.id, passed, duration_ns))
        if seconds is not None:
            durations[outcome.id] = seconds
        if outcome.verdict == Verdict.flaky:
            flaky.append(outcome.id)
    return pass_fail, flaky, durations


class HistoryReading(NamedTuple):
    durations: list[dict[str, float]]  # per earlier build, oldest first
    flake_record: dict[str, int]  # test id -> earlier builds it was flaky in
    batch_overhead_s: float  # the newest build's learnt overhead per batch; 0 when unknown


class TestHistory:
    """Reads and writes one builder's test results under one description."""

    def __init__(self, step: BuildStep, description: str):
        self._step = step  # the BuildStep writing results (addTestResultSet lives there)
        self.description = description
        self.durations_description = f"{description} durations"
        self.flaky_description = f"{description} flaky"
        self.overhead_description = f"{description} batch overhead"

    async def read(self, builderid: int) -> HistoryReading:
        """A HistoryReading of this builder's recent builds."""
        data = self._step.master.data
        sets = await data.get(("builders", builderid, "test_result_sets"))
        complete = [s for s in sets if s["complete"]]
        newest_first = sorted(
            (s for s in complete if s["description"] == self.durations_description),
            key=lambda s: s["test_result_setid"],
            reverse=True,
        )
        # The newest HISTORY_BUILDS runs that timed a test: a build whose
        # shards ran nothing takes no run's place.
        history, recent = [], []
        for result_set in newest_first:
            rows = await self._results_of(result_set)
            packed = result_set.get("value_unit") == PACKED_UNIT
            durations = packed_durations_of(rows) if packed else durations_of(rows)
            if durations:
                history.insert(0, durations)
                recent.append(result_set)
            if len(history) == HISTORY_BUILDS:
                break
        recent_builds = {s["buildid"] for s in recent}
        flake_record: dict[str, int] = {}
        for result_set in complete:
            if result_set["description"] == self.flaky_description and result_set["buildid"] in recent_builds:
                for row in await self._results_of(result_set):
                    name = row.get("test_name")
                    flake_record[name] = flake_record.get(name, 0) + 1
        overhead_s = await self._newest_overhead(complete)
        return HistoryReading(history, flake_record, overhead_s)

    async def _newest_overhead(self, complete_sets: list[dict[str, Any]]) -> float:
        """The median over workers of the newest build's learnt overhead: one slow worker does not
        make every batch of the next build bigger."""
        overhead_sets = [s for s in complete_sets if s["description"] == self.overhead_description]
        if not overhead_sets:
            return 0.0
        newest = max(overhead_sets, key=lambda s: s["test_result_setid"])
        by_worker = durations_of(await self._results_of(newest))
        return statistics.median(by_worker.values()) if by_worker else 0.0

    def _results_of(self, result_set: dict[str, Any]) -> defer.Deferred:
        return self._step.master.data.get(("test_result_sets", result_set["test_result_setid"], "results"))

    async def store(
        self, outcomes: Sequence[TestOutcome], overhead_by_worker: dict[str, float] | None = None
    ) -> None:
        step = self._step
        pass_fail, flaky, durations = rows_of(outcomes)
        duration_set = await step.addTestResultSet(self.durations_description, "performance", PACKED_UNIT)
        # Only the flaky tests, so the flake record costs a few rows per build.
        flaky_set = await step.addTestResultSet(self.flaky_description, "fail_only", "boolean")
        for test in flaky:
            step.addTestResult(flaky_set, "0", test_name=test)
        for index, packed in enumerate(pack_durations(durations)):
            step.addTestResult(duration_set, packed, test_name=f"durations {index}")
        if overhead_by_worker:
            overhead_set = await step.addTestResultSet(self.overhead_description, "performance", "s")
            for worker, seconds in sorted(overhead_by_worker.items()):
                step.addTestResult(overhead_set, f"{seconds:.6f}", test_name=worker)
        # Last: what later builds plan from is stored even if this set fails.
        # One row per test, for Buildbot's test-results view: nearly all of the write, so it
        # takes the executemany path (result_rows.py); the other sets are a few rows each.
        # A name past the database's index limit stays out of it (the report lists it).
        indexable = [row for row in pass_fail if len(row.test_name.encode()) <= MAX_INDEXED_NAME_BYTES]
        await store_pass_fail_set(step, self.description, indexable)
