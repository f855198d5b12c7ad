"""A fleet of real web hosts on loopback for the canary tests and the demo.

    with WebFleet(10, tmp_path / "web") as fleet:
        inventory = release.Inventory.from_entries(fleet.inventory_entries())
        ...push and flip with release.LocalTransport()...
        with LoadGenerator(fleet.urls(), rate_per_host=20, duration_s=60):
            ...judge...

Each host is one process of webserver.py (its own port from the OS, its own
deploy root), serving whatever `current` points at and its own /metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.local_master import wait_until

# The judge's default minimum is 5 hosts per arm; the count test's degrees of
# freedom are the control hosts' less one, so 9 controls give it room to
# decide within a few seconds (5 would give 4 df: x3 errors would need far longer).
TEST_FLEET_SIZE = 14
CANARIES = 5
GOOD = {"error_rate": 0.1}
# Three times the errors: clearly bad within a few seconds at 20 requests/s a host.
BAD = {"error_rate": 0.3}

SERVER_SCRIPT = Path(__file__).with_name("webserver.py")
# Starting ten Python processes on a busy 2-core machine takes a few seconds.
READY_DEADLINE_S = 60
REQUEST_TIMEOUT_S = 5
STOP_DEADLINE_S = 10


@dataclass
class WebHost:
    name: str
    deploy_root: Path
    process: subprocess.Popen
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class WebFleet:
    def __init__(self, size: int, directory: Path, prefix: str = "web", detach: bool = False):
        self.size = size
        # detach: each server in a session of its own, so that it outlives the
        # process that started it (the demo leaves its fleet running).
        self.detach = detach
        self.directory = Path(directory)
        self.prefix = prefix
        self.hosts: list[WebHost] = []

    def __enter__(self) -> WebFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for index in range(1, self.size + 1):
            name = f"{self.prefix}{index}"
            root = self.directory / name
            root.mkdir(parents=True, exist_ok=True)
            port_file = self.directory / f"{name}.port"
            port_file.unlink(missing_ok=True)
            process = subprocess.Popen(
                [sys.executable, str(SERVER_SCRIPT), str(root), str(port_file)], start_new_session=self.detach
            )
            self.hosts.append(WebHost(name, root, process))
        for host in self.hosts:
            port_file = self.directory / f"{host.name}.port"
            wait_until(
                lambda f=port_file, h=host: self._port_written(f, h),
                READY_DEADLINE_S,
                f"{host.name} to write its port",
            )
            wait_until(lambda h=host: answers(h.metrics_url), READY_DEADLINE_S, f"{host.name}'s /metrics")

    @staticmethod
    def _port_written(port_file: Path, host: WebHost) -> bool:
        if host.process.poll() is not None:
            raise RuntimeError(f"{host.name}: web server exited with status {host.process.returncode}")
        if not port_file.exists():
            return False
        host.port = int(port_file.read_text())
        return True

    def stop_host(self, name: str) -> None:
        """Stop one host's server: its port stops answering (a dead host)."""
        host = self.host(name)
        host.process.terminate()
        host.process.wait(STOP_DEADLINE_S)

    def stop(self) -> None:
        for host in self.hosts:
            if host.process.poll() is None:
                host.process.terminate()
        for host in self.hosts:
            try:
                host.process.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                host.process.kill()
                host.process.wait()

    def host(self, name: str) -> WebHost:
        return next(h for h in self.hosts if h.name == name)

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def inventory_entries(self, canaries: int = 0) -> list[dict]:
        """Hosts for release.Inventory.from_entries (LocalTransport); the first
        `canaries` carry the tag "canary"."""
        return [
            {
                "name": h.name,
                "address": "127.0.0.1",
                "deploy_root": str(h.deploy_root),
                "tags": ["canary"] if i < canaries else [],
            }
            for i, h in enumerate(self.hosts)
        ]

    def urls(self) -> list[str]:
        return [h.url for h in self.hosts]

    def metrics_urls(self) -> dict[str, str]:
        return {h.name: h.metrics_url for h in self.hosts}


class LoadGenerator:
    """A steady stream of GETs to every URL: `rate_per_host` a second, for at
    most `duration_s` seconds and `max_requests` requests per URL, whichever
    ends first. One thread per URL; stopped on leaving the `with` block."""

    def __init__(
        self,
        urls: list[str],
        rate_per_host: float = 20.0,
        duration_s: float = 120.0,
        max_requests: int = 10_000,
    ):
        if rate_per_host <= 0 or duration_s <= 0 or max_requests < 1:
            raise ValueError("rate, duration and request count must be positive")
        self.urls = list(urls)
        self.period_s = 1.0 / rate_per_host
        self.duration_s = duration_s
        self.max_requests = max_requests
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts_lock = threading.Lock()  # guards sent and failed
        self.sent = 0
        self.failed = 0  # answered with an error status, or not at all

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for url in self.urls:
            thread = threading.Thread(target=self._drive, args=(url,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(STOP_DEADLINE_S + REQUEST_TIMEOUT_S)

    def _drive(self, url: str) -> None:
        started = time.monotonic()
        next_at = started
        for _ in range(self.max_requests):
            if time.monotonic() - started > self.duration_s:
                return
            # Pacing, not a readiness wait: the stream's rate is the point.
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at += self.period_s
            ok = answers(url)
            with self._counts_lock:
                self.sent += 1
                self.failed += 0 if ok else 1


def set_behaviour(deploy_root: Path, behaviour: dict) -> None:
    """Change the live release's behaviour in place (a new file, renamed: the
    slots share unchanged files through hard links)."""
    target = Path(deploy_root) / "current" / "behaviour.json"
    partial = target.with_name("behaviour.json.partial")
    partial.write_text(json.dumps(behaviour))
    os.replace(partial, target)


def live_revisions(runner) -> dict[str, str]:
    """Host name -> the revision live there, from the release engine's status."""
    return {h.host: h.details["live_revision"] for h in runner.status().hosts}
