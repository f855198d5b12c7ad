"""The small pytest project that the sharding tests run on real workers
(tests/sharding_fixture_suite/, see its README): where it is, and the tests
whose outcomes the tests check."""

from __future__ import annotations

from harness.local_master import REPO

FIXTURE_SUITE = REPO / "tests" / "sharding_fixture_suite"
SUITE_SIZE = 34  # every test it holds, as pytest collects them
FAILING_TEST = "tests/test_outcomes.py::test_always_fails"  # fails on every run
FLAKY_TEST = "tests/test_outcomes.py::test_flaky_first_run"  # fails once, then passes
LONG_TEST = "tests/test_slow.py::test_slow_2500ms"  # the suite's longest
