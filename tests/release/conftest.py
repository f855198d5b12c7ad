"""Fixtures for the release tests: a fleet of real sshd hosts per test.

A fleet of 20 hosts starts in about half a second, so every test gets its own
(its own temp dir, keys, ports and deploy roots) and may break it freely.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from buildbot_steps import release
from harness import sshd_hosts

HERE = Path(__file__).parent
FLEET_SIZE = 20  # the issue asks for at least 20 real hosts
# Seconds between the mtimes of successive trees: above rsync's one-second quick-check window.
TREE_MTIME_STEP_S = 2


@pytest.fixture
def fleet(tmp_path):
    with sshd_hosts.SshdFleet(FLEET_SIZE, tmp_path / "fleet") as running:
        yield running


@pytest.fixture
def control_dir():
    # ssh's ControlPath is a unix socket: keep the path short, unlike tmp_path.
    path = tempfile.mkdtemp(prefix="bbcd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_runner(fleet, control_dir):
    """make_runner(**settings, hosts=None, slots=5, progress=None) -> ReleaseRunner over ssh."""

    def make(hosts=None, slots=release.DEFAULT_SLOTS, progress=None, **settings):
        inventory = release.Inventory.from_entries(fleet.inventory_entries(hosts))
        transport = release.SshTransport(
            known_hosts=str(fleet.known_hosts),
            identity_file=str(fleet.identity_file),
            control_dir=control_dir,
            control_persist_s=5,  # the fleet goes away with the test
            # The default post-quantum key exchange costs ~0.1 s of client CPU
            # per connection: too much for 20 hosts x many runs on 2 cores.
            extra_options=("KexAlgorithms=curve25519-sha256",),
        )
        settings.setdefault("retry_backoff_s", 0.05)
        return release.ReleaseRunner(
            inventory, transport, release.FanoutSettings(**settings), slots, progress
        )

    return make


@pytest.fixture
def make_tree(tmp_path):
    """make_tree(name, files={"path": bytes or str}) -> Path of a release tree.

    Each tree's files are dated a few seconds after the previous tree's, as a
    later build's are: rsync's quick check takes a file of the same size and
    mtime for unchanged, and the kernel dates writes by a clock that ticks
    every few milliseconds, so two trees written back to back can share an
    mtime even to the nanosecond (a limit stated in the README)."""
    trees_made = 0
    first_mtime = time.time()

    def make(name: str, files: dict) -> Path:
        nonlocal trees_made
        root = tmp_path / "trees" / name
        mtime = first_mtime + TREE_MTIME_STEP_S * trees_made
        trees_made += 1
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                content = content.encode()
            path.write_bytes(content)
            os.utime(path, (mtime, mtime))
        root.mkdir(parents=True, exist_ok=True)
        return root

    return make
