"""The small pytest project that the sharding tests run on real workers
(tests/sharding_fixture_suite/, see its README): where it is, and the tests
whose outcomes the tests check."""

from __future__ import annotations

from harness.local_master import REPO, has_ended

FIXTURE_SUITE = REPO / "tests" / "sharding_fixture_suite"
FAILURE = 2  # Buildbot's result
SUITE_SIZE = 34  # every test it holds, as pytest collects them
FAILING_TEST = "tests/test_outcomes.py::test_always_fails"  # fails on every run
FLAKY_TEST = "tests/test_outcomes.py::test_flaky_first_run"  # fails once, then passes
LONG_TEST = "tests/test_slow.py::test_slow_2500ms"  # the suite's longest
PASSING_SLEEPS = [f"tests/test_slow.py::test_sleep[{ms}ms]" for ms in (100, 300, 500, 800, 1200)]
# The long test, the broken one and ~3 s of passing ones: in one batch, ~5 s
# that leave a straggler copy of it room to start (build_with_a_held_run).
HELD_WITH_A_BROKEN_TEST = [LONG_TEST, FAILING_TEST, *PASSING_SLEEPS]


def build_with_a_held_run(cluster) -> tuple[dict, int]:
    """A build of `cluster` (a harness.cluster.BuildbotCluster), after one of
    history, in which one run of LONG_TEST is held (its `hold-once`: see
    tests/test_slow.py) and nothing ends the hold; and that run's pid."""
    cluster.wait_for_build(cluster.force_build())  # the history
    (cluster.state_dir / "hold-once").touch()
    build = cluster.wait_for_build(cluster.force_build())
    held = list(cluster.state_dir.glob("held-once.*"))
    assert len(held) == 1, "exactly one run meets the surprise"
    return build, int(held[0].suffix[1:])


def check_decided_without_the_held_run(cluster, build: dict, held_pid: int, deadline_s: float) -> None:
    """The build of build_with_a_held_run on HELD_WITH_A_BROKEN_TEST ended
    without the held run: every test decided (the broken one failed), by way
    of a straggler copy; and the held run is stopped within `deadline_s`."""
    props = build["properties"]
    assert build["results"] == FAILURE, build["state_string"]
    assert FAILING_TEST in build["state_string"]
    passed = len(HELD_WITH_A_BROKEN_TEST) - 1
    assert (props["tests_passed"], props["tests_failed"], props["tests_not_run"]) == (passed, 1, 0)
    assert props["tests_straggler_copies"] >= 1
    cluster.wait_until(lambda: has_ended(held_pid), deadline_s, "the held run to be stopped")
