"""A real master and real workers run the fixture suite sharded.

One cluster (SQLite, 4 shard workers + 1 coordinator) serves this module. Its
first build (the `first_build` fixture, before any test's own build) runs
with no history and sees the flaky test's first run; every later build plans
from the durations recorded before it.
"""

from __future__ import annotations

import pytest

from buildbot_steps.shard.history import packed_durations_of
from harness.fixture_suite import (
    FAILING_TEST,
    FLAKY_TEST,
    HELD_WITH_A_BROKEN_TEST,
    LONG_TEST,
    PASSING_SLEEPS,
    SUITE_SIZE,
    build_with_a_held_run,
    check_decided_without_the_held_run,
)
from harness.local_master import has_ended

SUCCESS = 0
FAILURE = 2
WARNINGS = 1
EXCEPTION = 4
RETRY = 5


# How long to wait for the held test to start on some shard worker.
HOLD_DEADLINE_S = 120


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster(shard_workers=4)


@pytest.fixture(scope="module", autouse=True)
def first_build(cluster):
    return cluster.wait_for_build(cluster.force_build())


def result_set(cluster, buildid: int, description: str) -> dict:
    sets = cluster.test_result_sets(buildid)
    return next(s for s in sets if s["description"] == description)


def test_first_build_classifies_flaky_and_failing_tests(cluster, first_build):
    build = first_build
    props = build["properties"]

    assert build["results"] == FAILURE, build["state_string"]
    assert FAILING_TEST in build["state_string"]
    assert props["tests_total"] == SUITE_SIZE
    assert props["tests_failed"] == 1
    assert props["tests_flaky"] == 1
    assert props["tests_passed"] == SUITE_SIZE - 2
    assert props["shard_estimates_from_history"] == 0
    assert props["tests_makespan_s"] >= props["tests_lower_bound_s"] * 0.5

    outcomes = result_set(cluster, build["buildid"], "sharded tests")
    assert outcomes["complete"] and outcomes["category"] == "pass_fail"
    assert (outcomes["tests_passed"], outcomes["tests_failed"]) == (SUITE_SIZE - 1, 1)
    values = {r["test_name"]: r["value"] for r in cluster.test_results(outcomes["test_result_setid"])}
    assert values[FAILING_TEST] == "0"
    assert values[FLAKY_TEST] == "1"

    report = cluster.step_log(build["buildid"], "sharded-tests", "report")
    assert "Flaky tests" in report and FLAKY_TEST in report and "<svg" in report
    assert props["tests_flaky_names"] == [FLAKY_TEST]
    flaky = result_set(cluster, build["buildid"], "sharded tests flaky")
    assert [r["test_name"] for r in cluster.test_results(flaky["test_result_setid"])] == [FLAKY_TEST]


def shard_builds_of(cluster, parent_buildid: int) -> list[dict]:
    builds = cluster.api(
        f"builds?builderid={cluster.builder_id('tests-shard')}&property=shard_parent_buildid"
    )["builds"]
    return [b for b in builds if b["properties"].get("shard_parent_buildid", [None])[0] == parent_buildid]


def test_each_shard_build_is_as_red_as_the_tests_it_ran(cluster, first_build):
    shards = shard_builds_of(cluster, first_build["buildid"])
    assert len(shards) == 4
    # The broken test fails wherever it runs (twice, maybe on two shards): at
    # least one shard is red, and no shard that stayed green ran a failing test.
    failed = [b for b in shards if b["results"] == FAILURE]
    assert failed, [(b["number"], b["results"], b["state_string"]) for b in shards]
    for build in failed:
        step = cluster.api(f"builds/{build['buildid']}/steps/run-shard")["steps"][0]
        assert FAILING_TEST in step["state_string"], step["state_string"]


def test_finished_parent_links_every_shard_build_not_pending_requests(cluster, first_build):
    step = cluster.api(f"builds/{first_build['buildid']}/steps/sharded-tests")["steps"][0]
    requests = [u for u in step["urls"] if "#/buildrequests/" in u["url"]]
    builds = [u for u in step["urls"] if "/builds/" in u["url"]]
    # The web UI reads "<builds> builds, <requests - builds> pending builds".
    assert len(requests) == 4
    assert len(builds) >= len(requests), step["urls"]
    assert any(u["name"].startswith("failure: shard build #") for u in builds), step["urls"]


def test_durations_over_2147_ms_are_stored_exactly(cluster, first_build):
    durations = result_set(cluster, first_build["buildid"], "sharded tests durations")
    seconds = packed_durations_of(cluster.test_results(durations["test_result_setid"]))
    assert len(seconds) == SUITE_SIZE
    assert seconds[LONG_TEST] >= 2.5
    outcomes = result_set(cluster, first_build["buildid"], "sharded tests")
    rows = {r["test_name"]: r for r in cluster.test_results(outcomes["test_result_setid"])}
    assert rows[LONG_TEST]["duration_ns"] == 2**31 - 1  # clamped for PostgreSQL's int4


def test_second_build_plans_from_first_build_durations(cluster):
    build = cluster.wait_for_build(cluster.force_build())
    props = build["properties"]

    assert props["shard_history_builds"] >= 1
    assert props["shard_estimates_from_history"] == SUITE_SIZE
    plan = cluster.step_log(build["buildid"], "sharded-tests", "plan")
    assert f"history {SUITE_SIZE}" in plan
    # The flaky test's marker exists now: it passes at once; the broken one
    # still fails. The flake record remembers the first build's flake.
    assert props["tests_flaky"] == 0
    assert props["tests_failed"] == 1
    report = cluster.step_log(build["buildid"], "sharded-tests", "report")
    assert "Flake record" in report and FLAKY_TEST in report
    # The first build learnt each worker's start-up; this one began from it and shows both bounds.
    assert "batch overhead learnt by earlier builds: 0.00 s" not in plan
    assert props["tests_batch_overhead_s"] > 0
    assert props["tests_lower_bound_with_startups_s"] > props["tests_lower_bound_s"]
    overhead = result_set(cluster, build["buildid"], "sharded tests batch overhead")
    assert cluster.test_results(overhead["test_result_setid"])


def test_shard_logs_name_a_batch_by_count_not_by_every_id(cluster, first_build):
    shard = cluster.api(f"builds/{first_build['buildid']}/triggered_builds")["builds"][0]
    stdio = cluster.step_log(shard["buildid"], "run-shard", "stdio")
    assert "tests (" in stdio and "@.shard-reports-" in stdio  # the ids travel in a file
    command_lines = [line for line in stdio.splitlines() if "--junitxml=" in line]
    assert command_lines
    assert not [line for line in command_lines if "::" in line]  # the worker echoes no test id


def test_killed_worker_costs_a_rerun_not_the_build(cluster):
    # The long test holds its batch open, so the kill surely lands mid-batch.
    hold = cluster.state_dir / "hold"
    hold.touch()
    brid = cluster.force_build()
    holding = cluster.wait_until(
        lambda: next(cluster.state_dir.glob("holding.*"), None),
        HOLD_DEADLINE_S,
        "the held test to start on a shard worker",
    )
    victim = cluster.worker_running(int(holding.suffix[1:]))
    assert victim is not None, f"no shard worker runs process {holding.suffix[1:]}"
    cluster.kill_worker(victim)
    hold.unlink()  # its re-run elsewhere goes straight through

    build = cluster.wait_for_build(brid)
    props = build["properties"]
    assert build["results"] == FAILURE, build["state_string"]  # only the broken test gates
    assert props["tests_not_run"] == 0
    assert props["tests_failed"] == 1
    assert props["tests_passed"] + props["tests_flaky"] == SUITE_SIZE - 1
    # The held batch ran again elsewhere: given back by the lost worker, or
    # already copied to an idle worker as a straggler, whose result counts.
    assert props["tests_requeued_batches"] + props["tests_straggler_copies"] >= 1

    shard_builds = cluster.api("builders/tests-shard/builds")["builds"]
    lost = [b for b in shard_builds if b["results"] in (RETRY, EXCEPTION)]
    assert lost, "the killed worker's shard build should end RETRY or EXCEPTION"


def test_a_batch_held_by_a_surprise_is_copied_and_the_held_run_stopped(make_cluster):
    # The long test meets a surprise on its first run only (hold-once): that
    # run waits until stopped. An idle worker copies its batch (as expected to
    # end last, or once overdue: cpp/tests/shard_test.cpp tells the two rules
    # apart), the copy passes, and the held run is stopped, not waited for:
    # nothing here ever ends the hold. Its own cluster, with a history.
    cluster = make_cluster(shard_workers=2, tests=[LONG_TEST, *PASSING_SLEEPS])
    build, held_pid = build_with_a_held_run(cluster)
    props = build["properties"]
    assert build["results"] == SUCCESS, build["state_string"]
    assert props["tests_straggler_copies"] >= 1
    assert props["tests_passed"] == 1 + len(PASSING_SLEEPS)
    cluster.wait_until(lambda: has_ended(held_pid), HOLD_DEADLINE_S, "the held run to be stopped")
    cluster.stop()


def test_a_test_failing_in_the_copy_of_a_held_batch_is_rerun_without_waiting_for_it(make_cluster):
    # One batch holds every test (min_batch_s above the suite's seconds); one
    # run of the long test is held (hold-once) and nothing ends the hold. The
    # other worker copies the batch as the one expected to end last (its
    # ~5 s leave room for that worker's shard build to start a little
    # later), and the copy fails the broken test: its re-run goes out at
    # once, to that worker (the only other one runs it already), and decides
    # it, so the build ends without the held run, which is stopped. Before,
    # the re-run waited for the held run's own attempt, and the build with it.
    cluster = make_cluster(shard_workers=2, tests=HELD_WITH_A_BROKEN_TEST, min_batch_s=60.0)
    build, held_pid = build_with_a_held_run(cluster)
    check_decided_without_the_held_run(cluster, build, held_pid, HOLD_DEADLINE_S)
    cluster.stop()


def test_an_idle_shard_ends_while_a_held_test_still_runs(make_cluster):
    # Its own cluster: three live shard workers and no straggler copies, so
    # that while the long test holds its batch open the two others run dry:
    # one waits for re-runs (max_attempts - 1 = 1 kept), the other is told
    # there is nothing for it and ends its build then, not after the held test.
    cluster = make_cluster(shard_workers=3, speculate=False)
    hold = cluster.state_dir / "hold"
    hold.touch()
    try:
        brid = cluster.force_build()
        cluster.wait_until(
            lambda: next(cluster.state_dir.glob("holding.*"), None),
            HOLD_DEADLINE_S,
            "the held test to start on a shard worker",
        )

        def ended_shards() -> list[dict] | None:
            parent = cluster.running_build(brid)
            ended = [b for b in shard_builds_of(cluster, parent["buildid"]) if b["complete"]]
            return ended or None

        ended = cluster.wait_until(ended_shards, HOLD_DEADLINE_S, "a shard build to end during the hold")
        assert not cluster.running_build(brid)["complete"]
    finally:
        hold.unlink()

    build = cluster.wait_for_build(brid)
    props = build["properties"]
    assert len(ended) == 1 and props["tests_workers_released"] == 1
    assert ended[0]["results"] in (SUCCESS, WARNINGS, FAILURE), ended[0]["state_string"]
    assert props["tests_not_run"] == 0 and props["tests_failed"] == 1
    assert props["tests_passed"] + props["tests_flaky"] == SUITE_SIZE - 1
    cluster.stop()


def test_static_mode_hands_each_shard_its_fixed_list(cluster):
    build = cluster.wait_for_build(cluster.force_build("tests-static", "force-static"))
    props = build["properties"]
    assert build["results"] == FAILURE, build["state_string"]
    assert props["tests_total"] == SUITE_SIZE
    assert props["tests_not_run"] == 0
    assert props["tests_failed"] == 1

    shard_builds = cluster.api(
        f"builds?builderid={cluster.builder_id('tests-shard')}&property=shard_tests&property=shard_parent_buildid"
    )["builds"]
    mine = [
        b for b in shard_builds if b["properties"].get("shard_parent_buildid", [None])[0] == build["buildid"]
    ]
    lists = [b["properties"]["shard_tests"][0] for b in mine if b["results"] in (0, 1, 2)]
    assert sorted(t for tests in lists for t in tests) == sorted(set(t for tests in lists for t in tests))
    assert sum(len(tests) for tests in lists) == SUITE_SIZE


# One test hangs; its eight batch-mates pass. The first batch holds them all.
HANGING_TEST = "tests/test_hangs.py::test_never_returns"
HANGING_SUITE = {
    "pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n",
    "tests/__init__.py": "",
    "tests/test_hangs.py": "import time\n\n\ndef test_never_returns():\n    time.sleep(3600)\n",
    **{
        f"tests/test_quick_{file}.py": "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(4))
        for file in range(2)
    },
}
# Long enough for a pytest to start and run the quick tests on a loaded
# machine, short enough that the test waits for it twice.
HANG_TIMEOUT_S = 15.0


def test_a_hanging_test_fails_alone_and_its_batch_mates_pass(make_cluster, tmp_path_factory):
    suite = tmp_path_factory.mktemp("hanging-suite")
    for name, text in HANGING_SUITE.items():
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        (suite / name).write_text(text)
    # Speculation on, as by default: the idle worker's straggler copy of the
    # batch hangs too, and fails after the original.
    cluster = make_cluster(
        shard_workers=2, suite_source=suite, min_batch_s=60.0, batch_timeout=HANG_TIMEOUT_S
    )
    build = cluster.wait_for_build(cluster.force_build())
    props = build["properties"]
    assert build["results"] == FAILURE, build["state_string"]
    # Its batch ran over the timeout; re-run each alone, only the hanging test
    # did again. Re-run together, all nine were failed.
    assert (props["tests_failed"], props["tests_passed"], props["tests_flaky"]) == (1, 8, 0)
    assert HANGING_TEST in build["state_string"]
    assert props["tests_isolated_runs"] == 9
    assert len(props["tests_passed_after_batch_failure_names"]) == 8
