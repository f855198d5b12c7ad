"""Fixtures for the canary tests: a real web fleet on loopback with local deploy
roots, release trees that misbehave on purpose, and a real Prometheus server."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from buildbot_steps import release
from harness.local_master import free_port, wait_until
from harness.webfleet import CANARIES, GOOD, TEST_FLEET_SIZE, WebFleet

PROMETHEUS_READY_S = 60


@pytest.fixture
def web_fleet(tmp_path):
    with WebFleet(TEST_FLEET_SIZE, tmp_path / "web") as fleet:
        yield fleet


@pytest.fixture
def make_tree(tmp_path):
    """make_tree(name, behaviour) -> a release tree with index.html and behaviour.json."""

    def make(name: str, behaviour: dict) -> Path:
        root = tmp_path / "trees" / name
        root.mkdir(parents=True)
        (root / "index.html").write_text(f"release {name}\n")
        (root / "behaviour.json").write_text(json.dumps(behaviour))
        return root

    return make


@pytest.fixture
def deployed(web_fleet, make_tree):
    """A runner over the fleet with release r1 (good) live everywhere and r2 pushed.

    deployed(r2_behaviour) -> (runner, pushed host names)."""

    def deploy(new_behaviour: dict):
        inventory = release.Inventory.from_entries(web_fleet.inventory_entries(canaries=CANARIES))
        runner = release.ReleaseRunner(inventory, release.LocalTransport())
        first = runner.push(make_tree("r1", GOOD), "r1")
        assert runner.flip("r1", only_hosts=first.ok_hosts).all_ok
        second = runner.push(make_tree("r2", new_behaviour), "r2")
        assert second.all_ok
        return runner, second.ok_hosts

    return deploy


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, str], scrape_interval_s: int = 1):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "prometheus.yml"
        static = [
            {"targets": [url.split("//")[1].split("/")[0]], "labels": {"host": name}}
            for name, url in targets.items()
        ]
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{scrape_interval_s}s",
                        "scrape_timeout": f"{scrape_interval_s}s",
                    },
                    "scrape_configs": [{"job_name": "web", "static_configs": static}],
                }
            )
        )  # JSON is YAML
        self.log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: see {self.directory / 'prometheus.log'}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path, web_fleet):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed (make deps)")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = Prometheus(directory, web_fleet.metrics_urls())
    try:
        wait_until(server.ready, PROMETHEUS_READY_S, "Prometheus /-/ready")
        yield server
    finally:
        server.stop()
