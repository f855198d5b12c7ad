"""Sleep-based slow tests: their durations are what the planner learns.

`test_slow_2500ms` lasts longer than 2.147 s, the most nanoseconds a 32-bit
`duration_ns` column (PostgreSQL) can hold.
"""

import time

import pytest

# Seconds each test sleeps: a heavy tail, about 6 s in total.
SLEEPS_S = {"100ms": 0.1, "300ms": 0.3, "500ms": 0.5, "800ms": 0.8, "1200ms": 1.2}


@pytest.mark.parametrize("label", sorted(SLEEPS_S))
def test_sleep(label):
    time.sleep(SLEEPS_S[label])


def test_slow_2500ms():
    time.sleep(2.5)
