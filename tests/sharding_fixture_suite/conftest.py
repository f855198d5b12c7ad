"""Keep the repository's own pytest run out of this suite.

The suite is run on Buildbot workers with its own rootdir (this directory,
which holds pytest.ini); from the repository root its deliberately failing
tests must not be collected.
"""

import os
import pathlib

import pytest

SUITE_ROOT = pathlib.Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path, config):
    if config.rootpath.resolve() != SUITE_ROOT:
        return True
    return None


@pytest.fixture(scope="session", autouse=True)
def record_session_start():
    """A line per pytest session in $SHARD_FIXTURE_STATE_DIR/sessions.log: the
    runner start-ups a build paid (one per batch, or one per warm shard)."""
    state_dir = os.environ.get("SHARD_FIXTURE_STATE_DIR")
    if state_dir:
        with open(pathlib.Path(state_dir) / "sessions.log", "a") as log:
            log.write(f"{os.getpid()}\n")
    yield
