"""Sleep-based slow tests: their durations are what the planner learns.

`test_slow_2500ms` lasts longer than 2.147 s, the most nanoseconds a 32-bit
`duration_ns` column (PostgreSQL) can hold. It can also be held mid-run, so
that an integration test kills its worker while a batch is surely in flight:
while `$SHARD_FIXTURE_STATE_DIR/hold` exists it writes `holding.<pid>` there
and waits for `hold` to go. `hold-once` is a surprise that only its first run
meets: that run renames it to `held-once.<pid>` and waits while that exists.
"""

import os
import pathlib
import time

import pytest

# Seconds each test sleeps: a heavy tail, about 6 s in total.
SLEEPS_S = {"100ms": 0.1, "300ms": 0.3, "500ms": 0.5, "800ms": 0.8, "1200ms": 1.2}


@pytest.mark.parametrize("label", sorted(SLEEPS_S))
def test_sleep(label):
    time.sleep(SLEEPS_S[label])


# Poll period and limit of a hold: a held run must not outlive a broken harness.
HOLD_POLL_S = 0.05
HOLD_LIMIT_S = 300


def hold_while_asked():
    state_dir = os.environ.get("SHARD_FIXTURE_STATE_DIR")
    if not state_dir:
        return
    hold = pathlib.Path(state_dir, "hold")
    if hold.exists():
        pathlib.Path(state_dir, f"holding.{os.getpid()}").touch()
        wait_while(hold)
    claimed = pathlib.Path(state_dir, f"held-once.{os.getpid()}")
    try:
        os.rename(pathlib.Path(state_dir, "hold-once"), claimed)  # atomic: one run claims it
    except FileNotFoundError:
        return
    wait_while(claimed)


def wait_while(path):
    deadline = time.monotonic() + HOLD_LIMIT_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(HOLD_POLL_S)


def test_slow_2500ms():
    hold_while_asked()
    time.sleep(2.5)
