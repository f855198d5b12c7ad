"""A `buildbot-cd` process against an SshdFleet, and ways to hold its transfer still.

    hold_receivers(fleet, hosts, workdir)     # before the push: each host's first
                                              # receiving rsync will stop itself
    cli = start_cli_push(fleet, hosts, workdir, tree, "v1")   # a real `buildbot-cd push`
    stopped = stop_receivers(fleet, hosts)    # those receivers, once stopped
    signal_all(stopped, signal.SIGCONT)

Holding the host's side stopped makes an overlap or an interruption land
mid-transfer for certain, not by timing: the receiver stops itself before it
runs, so it cannot end between two looks at the process list (a real rsync
of a few MB can, on a loaded machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from harness.sshd_hosts import SshdFleet, SshdHost, descendant_pids

T = TypeVar("T")

WAIT_S = 60.0  # deadline for events the tests wait on; they normally take < 1 s
POLL_S = 0.01  # polling a process list, under that deadline
# The receiving rsync writes into the slot the host script chose: ROOT/releases/N/.
RECEIVER_MARK = "/releases/"
BIG_FILE_BYTES = 8 * 1024 * 1024  # incompressible: the transfer lasts long enough to be stopped


def write_inventory(fleet: SshdFleet, hosts: list[SshdHost], path: Path) -> Path:
    path.write_text(json.dumps(fleet.inventory_entries(hosts)))
    return path


def cli_argv(fleet: SshdFleet, inventory: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "buildbot_steps.cli", *args, "--inventory", str(inventory),
        "--known-hosts", str(fleet.known_hosts), "--identity", str(fleet.identity_file),
        "--ssh-option", "KexAlgorithms=curve25519-sha256",
    ]  # fmt: skip


def start_cli_push(
    fleet: SshdFleet,
    hosts: list[SshdHost],
    workdir: Path,
    tree: Path,
    revision: str,
    *extra: str,
    tmpdir: str | None = None,
) -> subprocess.Popen:
    """`buildbot-cd push` started; `tmpdir` its TMPDIR (see harness.scratch)."""
    inventory = write_inventory(fleet, hosts, workdir / f"inventory-{revision}.json")
    argv = cli_argv(fleet, inventory, "push", "--source", str(tree), "--revision", revision, *extra)
    # faulthandler: a push that does not end can be made to print every thread's stack (SIGABRT).
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", **({"TMPDIR": tmpdir} if tmpdir else {})}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_or_explain(cli: subprocess.Popen, stderr: LineCollector) -> None:
    """Waits for the CLI to end; if it does not within WAIT_S, fails with its threads' stacks, its
    stderr and its children, so that a hang is diagnosed from the one run that showed it."""
    try:
        cli.wait(timeout=WAIT_S)
        return
    except subprocess.TimeoutExpired:
        pass
    children = [command_line(pid) for pid in descendant_pids(cli.pid)]
    os.kill(cli.pid, signal.SIGABRT)  # faulthandler prints every thread's stack, then the CLI dies
    cli.wait(timeout=WAIT_S)
    raise AssertionError(
        f"the CLI did not end within {WAIT_S} s; its children: {children}\nits stderr:\n{stderr.text()}"
    )


class LineCollector:
    """Reads a process's stream in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        self._thread.join(WAIT_S)
        return "".join(self.lines)


def wait_for(condition: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


# The host's first rsync stops itself (the mkdir marks it taken); SIGCONT
# lets it become the real rsync. Later ones (the next push) run at once.
SELF_STOPPING_RSYNC = """#!/bin/sh
if mkdir "${{0%/*}}/held" 2>/dev/null; then kill -STOP $$; fi
exec {rsync} "$@"
"""


def hold_receivers(fleet: SshdFleet, hosts: list[SshdHost], workdir: Path) -> None:
    """Before a push starts: on each host, the first rsync the sessions run (the
    push's receiving side) stops itself (SIGSTOP) as it starts, for the test to
    find with stop_receivers and let go with SIGCONT."""
    script = SELF_STOPPING_RSYNC.format(rsync=shutil.which("rsync"))
    for host in hosts:
        fleet.put_stand_in(host, workdir / f"self-stopping-{host.name}", "rsync", script)


def stop_receivers(fleet: SshdFleet, hosts: list[SshdHost]) -> dict[str, list[int]]:
    """The receiving rsync on each host held by hold_receivers, once it has
    stopped itself: {host name: pids}. Never a SIGSTOP of ours: one landing
    before the receiver's own would be undone by the SIGCONT that follows,
    and the receiver would then stop itself for good."""
    stopped = {}
    for host in hosts:
        stopped[host.name] = wait_for(
            lambda h=host: [p for p in receiver_pids(fleet, h) if is_stopped(p)],
            f"the receiving rsync on {host.name} to stop itself",
        )
    return stopped


def receiver_pids(fleet: SshdFleet, host: SshdHost) -> list[int]:
    """The host's rsync receiving a push into a slot."""
    return [pid for pid in fleet.session_pids(host, "rsync") if RECEIVER_MARK in command_line(pid)]


def is_stopped(pid: int) -> bool:
    """The process is stopped by a signal (state T in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def signal_all(stopped: dict[str, list[int]], signum: int) -> None:
    for pids in stopped.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def big_tree(make_tree: Callable[[str, dict], Path], name: str) -> Path:
    return make_tree(name, {"app/version.txt": f"{name}\n", "data/blob.bin": os.urandom(BIG_FILE_BYTES)})


def versions_match_manifests(host_root: Path) -> None:
    for slot in (host_root / "releases").iterdir():
        manifest = slot / ".release"
        if manifest.is_file():
            revision = dict(line.split("=", 1) for line in manifest.read_text().splitlines())["revision"]
            assert (slot / "app/version.txt").read_text() == f"{revision}\n", slot


def assert_next_push_converges(runner, make_tree: Callable[[str, dict], Path], hosts) -> None:
    """After an interrupted run, the next push and flip put every host on v2, with
    every slot's files matching its manifest."""
    pushed = runner.push(make_tree("v2", {"app/version.txt": "v2\n"}), "v2", "2")
    assert pushed.all_ok, pushed.to_text()
    assert runner.flip("v2").all_ok
    for host in hosts:
        assert (host.deploy_root / "current/app/version.txt").read_text() == "v2\n"
        versions_match_manifests(host.deploy_root)
