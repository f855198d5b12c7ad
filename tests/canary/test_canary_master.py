"""CanaryRelease in a real Buildbot master: `steps.CanaryRelease` through the
plugin entry point, after a real PushRelease, on a LocalWorker, against the web
fleet under load; the build is forced and read back through the REST API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildbot_steps import release
from harness import local_master
from harness.local_master import free_port, wait_until
from harness.webfleet import BAD, CANARIES, GOOD, LoadGenerator, live_revisions

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STARTUP_DEADLINE_S = 60
BUILD_DEADLINE_S = 180
FAILURE = 2  # Buildbot's result code

MASTER_CFG = """
from buildbot.plugins import schedulers, steps, util, worker
from buildbot_steps.canary import ScrapeSource

c = BuildmasterConfig = {{}}
c["title"] = "canary test"
# Buildbot wants a worker protocol even for a LocalWorker alone: on loopback, port from the OS.
c["protocols"] = {{"pb": {{"port": "tcp:0:interface=127.0.0.1"}}}}
c["buildbotURL"] = "http://127.0.0.1:{web_port}/"
c["www"] = {{"port": "tcp:{web_port}:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["buildbotNetUsageData"] = None
c["workers"] = [worker.LocalWorker("deployer")]
hosts = {hosts!r}
factory = util.BuildFactory([
    steps.PushRelease(inventory=hosts, transport="local", source={source!r}, release_root={release_root!r},
                      revision="r2"),
    steps.CanaryRelease(
        inventory=hosts, transport="local", tag="canary",
        sources=ScrapeSource({urls!r}, timeout_s=2),
        metrics=[{{"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total",
                   "min_effect": 0.2}}],
        baseline=3, canary_window=10, interval=1, monitor=0,
    ),
])
c["builders"] = [util.BuilderConfig(name="deploy", workernames=["deployer"], factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["deploy"])]
"""


@pytest.fixture
def master(tmp_path, web_fleet, make_tree):
    """A master whose deploy builder pushes a bad r2 over a good r1 and runs the canary."""
    hosts = web_fleet.inventory_entries(canaries=CANARIES)
    runner = release.ReleaseRunner(release.Inventory.from_entries(hosts), release.LocalTransport())
    assert runner.flip("r1", only_hosts=runner.push(make_tree("r1", GOOD), "r1").ok_hosts).all_ok
    web_port = free_port()
    directory = tmp_path / "master"
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": python_path, "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    subprocess.run(
        [str(VENV_BIN / "buildbot"), "create-master", "-q", str(directory)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (directory / "master.cfg").write_text(
        MASTER_CFG.format(
            web_port=web_port,
            hosts=hosts,
            source=str(make_tree("r2", BAD)),
            release_root=str(tmp_path / "trees"),
            urls=web_fleet.metrics_urls(),
        )
    )
    process = subprocess.Popen(
        [str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(directory)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{web_port}/"

    def api_ready():
        if process.poll() is not None:
            raise RuntimeError(f"master exited:\n{(directory / 'twistd.log').read_text()[-3000:]}")
        try:
            return local_master.call(base, "workers")["workers"][0]["connected_to"]
        except (OSError, IndexError, KeyError):
            return None

    try:
        wait_until(api_ready, STARTUP_DEADLINE_S, "the master's REST API and its local worker")
        yield base, runner
    finally:
        process.terminate()
        process.wait(30)


def test_a_bad_release_is_rolled_back_by_a_real_master(master, web_fleet):
    base, runner = master
    builder = local_master.call(base, "builders/deploy")["builders"][0]["builderid"]
    reply = local_master.call(
        base,
        "forceschedulers/force",
        {"jsonrpc": "2.0", "method": "force", "id": 1, "params": {"builderid": str(builder)}},
    )
    request = int(next(iter(reply["result"][1].values())))

    def finished():
        builds = local_master.call(base, f"buildrequests/{request}/builds")["builds"]
        return next((b for b in builds if b["complete"]), None)

    with LoadGenerator(web_fleet.urls(), rate_per_host=20, duration_s=BUILD_DEADLINE_S, max_requests=5000):
        build = wait_until(finished, BUILD_DEADLINE_S, "the deploy build")
    assert build["results"] == FAILURE
    properties = local_master.call(base, f"builds/{build['buildid']}?property=*")["builds"][0]["properties"]
    assert properties["canary_verdict"][0] == "FAIL"
    assert properties["canary_failing_metric"][0] == "errors"
    assert properties["canary_action"][0] == "rolled back canary"
    assert set(live_revisions(runner).values()) == {"r1"}
    steps = local_master.call(base, f"builds/{build['buildid']}/steps")["steps"]
    canary = next(s for s in steps if s["name"] == "canary_release")
    assert canary["state_string"].startswith("canary FAIL (canary): rolled back canary; errors +")
    logs = {
        entry["name"]: entry for entry in local_master.call(base, f"steps/{canary['stepid']}/logs")["logs"]
    }
    assert {"actions", "samples.json", "report"} <= set(logs)
    chunks = local_master.call(base, f"logs/{logs['samples.json']['logid']}/contents")["logchunks"]
    samples = json.loads("".join(chunk["content"] for chunk in chunks))
    assert samples["phases"][0]["looks"][-1]["verdict"] == "FAIL"
