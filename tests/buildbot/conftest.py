"""Fixtures for the integration tests: real Buildbot masters and workers, PostgreSQL.

The harness itself is tests/harness/cluster.py, shared with the benchmarks.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

from harness.cluster import FIXTURE_SUITE, BuildbotCluster, PostgresServer


@pytest.fixture(scope="module")
def make_cluster(tmp_path_factory):
    clusters = []

    def make(
        shard_workers: int = 4,
        db_url: str | None = None,
        www_plugins: dict | None = None,
        suite_source: pathlib.Path = FIXTURE_SUITE,
        **step_kwargs,
    ) -> BuildbotCluster:
        cluster = BuildbotCluster(
            tmp_path_factory.mktemp("bb"),
            shard_workers,
            db_url,
            step_kwargs,
            suite_source=suite_source,
            www_plugins=www_plugins,
        )
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture(scope="module")
def postgres_url():
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as the postgres user needs root (runuser)")
    # Not under pytest's temporary root: that is private to root (0700) and
    # the server runs as the postgres user.
    root = pathlib.Path(tempfile.mkdtemp(prefix="buildbot-cd-pg-"))
    server = PostgresServer(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
