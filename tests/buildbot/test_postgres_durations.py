"""Durations over 2.147 s survive a real PostgreSQL database.

`test_results.duration_ns` is a 32-bit `integer` on PostgreSQL: 2.5 s in
nanoseconds does not fit. The step clamps that column and keeps the exact
duration in the value of its "durations" result set; the next build plans
from it.
"""

from __future__ import annotations

import re

import pytest

from buildbot_steps.shard.history import packed_durations_of
from harness.fixture_suite import LONG_TEST

SHORT_TEST = "tests/test_fast.py::TestStrings::test_upper"
POSTGRES_INT4_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def cluster(postgres_url, make_cluster):
    # PostgreSQL first, so that it is stopped after the master (teardown runs
    # in reverse). Two tests are enough for the round trip and keep it fast.
    return make_cluster(shard_workers=4, db_url=postgres_url, tests=[LONG_TEST, SHORT_TEST])


def rows_of(cluster, buildid: int, description: str) -> list[dict]:
    sets = cluster.test_result_sets(buildid)
    result_set = next(s for s in sets if s["description"] == description)
    return cluster.test_results(result_set["test_result_setid"])


def test_long_duration_round_trip_through_postgresql(cluster):
    assert cluster.api("builders")  # the master runs on PostgreSQL
    first = cluster.wait_for_build(cluster.force_build())
    assert first["results"] == 0, first["state_string"]
    durations = packed_durations_of(rows_of(cluster, first["buildid"], "sharded tests durations"))
    assert durations[LONG_TEST] >= 2.5
    outcomes = {r["test_name"]: r for r in rows_of(cluster, first["buildid"], "sharded tests")}
    assert outcomes[LONG_TEST]["duration_ns"] == POSTGRES_INT4_MAX

    second = cluster.wait_for_build(cluster.force_build())
    assert second["properties"]["shard_estimates_from_history"] == 2
    plan = cluster.step_log(second["buildid"], "sharded-tests", "plan")
    estimated_total = float(re.search(r"estimated total: ([0-9.]+) s", plan).group(1))
    assert estimated_total >= 2.5  # learnt from the exact value, not the clamped column
