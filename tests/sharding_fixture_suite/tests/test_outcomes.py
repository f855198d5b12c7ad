"""A broken test and a flaky one, deterministic across runs."""

import os
import pathlib

# Directory shared by all workers of one integration test (the fixture sets
# it); the marker file there records that the flaky test already ran once.
STATE_DIR_VARIABLE = "SHARD_FIXTURE_STATE_DIR"


def test_always_fails():
    assert 1 + 1 == 3, "arithmetic is broken on purpose"


def test_flaky_first_run():
    state_dir = pathlib.Path(os.environ[STATE_DIR_VARIABLE])
    marker = state_dir / "flaky_first_run.ran"
    first_run = not marker.exists()
    marker.touch()
    assert not first_run, "fails on its first run only"
