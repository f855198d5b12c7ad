"""A real master started from master.cfg.example, and a headless Chromium.

The master and workers come from the demo's own harness
(`harness.demo.DemoCluster`, a `harness.local_master.LocalMaster`: ports
chosen by the OS, readiness polled through the REST API with deadlines), in a
temporary directory. The failing
test of the fixture suite is quarantined here, so the forced tests build is
green (WARNINGS: one flaky test) and the pipeline's Trigger starts a deploy.
"""

from __future__ import annotations

import pytest

from harness import demo
from harness.browser import chromium
from harness.fixture_suite import FAILING_TEST

SHARD_WORKERS = 2  # enough to shard; the machine has 2 cores and is busy
# Seconds for the forced tests build, and for the deploy it triggers.
BUILD_DEADLINE_S = 240


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    cluster = demo.DemoCluster(
        root, shard_workers=SHARD_WORKERS, hosts=("web1", "web2", "web3"),
        extra_env={"BUILDBOT_CD_QUARANTINE": FAILING_TEST},
    )  # fmt: skip
    try:
        cluster.start()
        # Started now, so that it runs while the browser looks at other pages.
        cluster.tests_brid = cluster.force("force-tests", "tests")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def browser():
    driver = chromium()
    if driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make deps)")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def tests_build(cluster):
    """The forced tests build, finished."""
    return cluster.wait_for_build(cluster.tests_brid, BUILD_DEADLINE_S)


@pytest.fixture(scope="session")
def triggered_deploy(cluster, tests_build):
    """The deploy build that the tests build's Trigger started, finished."""
    deploy_id = cluster.builder_id("deploy")
    # The Trigger does not wait: the request may appear a moment after the build ends.
    requests = demo.wait_until(
        lambda: cluster.api(f"builders/{deploy_id}/buildrequests")["buildrequests"],
        BUILD_DEADLINE_S, "the deploy build request the tests build triggers",
    )  # fmt: skip
    return cluster.wait_for_build(min(r["buildrequestid"] for r in requests), BUILD_DEADLINE_S)
