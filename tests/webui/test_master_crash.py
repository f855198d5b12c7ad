"""A master killed (SIGKILL) while a deploy's push is in flight, then restarted.

A real master from master.cfg.example, local hosts (the demo's transport).
The push is held deterministically: the master finds `rsync` through PATH,
and here the first entry of PATH is a wrapper that, while a hold file exists,
announces itself (the readiness signal) and blocks reading a FIFO until the
test writes to it. The master is killed only once every host's transfer has
started. Afterwards: every host is live on a complete release, the killed
build does not show as a success, and a new deploy converges on every host.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import pytest

from harness import demo
from harness.local_master import VENV_BIN
from harness.scratch import killed_process_tmpdir

HOSTS = ("web1", "web2")
SUCCESS = 0
BUILD_DEADLINE_S = 240
GATE_DEADLINE_S = 120

RSYNC_WRAPPER = """#!/bin/sh
# Test double in front of the real rsync: hold the transfer while $GATE/hold exists.
if [ -e "$BBCD_TEST_GATE/hold" ]; then
    : > "$BBCD_TEST_GATE/started.$$"
    cat "$BBCD_TEST_GATE/fifo" > /dev/null
fi
exec "$BBCD_TEST_REAL_RSYNC" "$@"
"""


def manifest(host_root: Path) -> dict[str, str]:
    current = host_root / "current"
    assert current.is_symlink(), f"{host_root}: no current"
    text = (current / ".release").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture
def gated(tmp_path):
    gate = tmp_path / "gate"
    bin_dir = tmp_path / "bin"
    gate.mkdir()
    bin_dir.mkdir()
    os.mkfifo(gate / "fifo")
    wrapper = bin_dir / "rsync"
    wrapper.write_text(RSYNC_WRAPPER)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    real_rsync = shutil.which("rsync")
    assert real_rsync, "rsync is not installed"
    with killed_process_tmpdir() as master_tmpdir:
        cluster = demo.DemoCluster(
            tmp_path / "cluster", shard_workers=1, hosts=HOSTS,
            extra_env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "BBCD_TEST_GATE": str(gate),
                       "BBCD_TEST_REAL_RSYNC": real_rsync, "TMPDIR": master_tmpdir},
        )  # fmt: skip
        cluster.gate = gate
        try:
            cluster.start()
            yield cluster
        finally:
            release_gate(gate)
            cluster.stop()


def release_gate(gate: Path) -> None:
    """Let every held rsync go: each waits in `cat` on the FIFO for a writer to open and close it."""
    (gate / "hold").unlink(missing_ok=True)

    def none_held() -> bool:
        # O_RDWR never blocks on Linux; opening releases the readers waiting in open(2),
        # closing gives them end of file.
        os.close(os.open(gate / "fifo", os.O_RDWR))
        held = [
            m for m in gate.glob("started.*") if "cat" in _children_cmdlines(int(m.name.split(".", 1)[1]))
        ]
        return not held

    demo.wait_until(none_held, GATE_DEADLINE_S, "the held rsync processes to go on")


def _children_cmdlines(pid: int) -> str:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return ""
    return " ".join(_cmdline(child) for child in children)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""  # it exited meanwhile


def deploy(cluster, revision: str) -> int:
    source = cluster.release_root / revision
    demo.make_release(source, revision, f"release {revision}")
    return cluster.force("force-deploy", "deploy", deploy_revision=revision, release_dir=str(source))


def restart_master(cluster) -> None:
    cluster._spawn("master", [str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(cluster.master_dir)])
    cluster.wait_for_api()
    cluster.wait_for_workers(["deployer"])


def test_a_master_killed_mid_push_leaves_complete_releases_and_a_new_deploy_converges(gated):
    cluster = gated
    first = cluster.wait_for_build(deploy(cluster, "v1"), BUILD_DEADLINE_S)
    assert first["results"] == SUCCESS, first["state_string"]

    (cluster.gate / "hold").touch()
    brid = deploy(cluster, "v2")
    demo.wait_until(lambda: len(list(cluster.gate.glob("started.*"))) == len(HOSTS), GATE_DEADLINE_S,
                    "every host's rsync to start")  # fmt: skip
    master = cluster.processes["master"]
    master.send_signal(signal.SIGKILL)
    master.wait(timeout=GATE_DEADLINE_S)
    # The transfers the dead master started carry on (their own process groups): let them.
    release_gate(cluster.gate)

    restart_master(cluster)
    killed = cluster.wait_for_build(brid, BUILD_DEADLINE_S)
    assert killed["results"] != SUCCESS, killed["state_string"]
    for host in HOSTS:
        live = manifest(cluster.hosts_dir / host)
        assert live["revision"] in ("v1", "v2"), live  # complete: the manifest is written last

    third = cluster.wait_for_build(deploy(cluster, "v3"), BUILD_DEADLINE_S)
    assert third["results"] == SUCCESS, third["state_string"]
    for host in HOSTS:
        root = cluster.hosts_dir / host
        assert manifest(root)["revision"] == "v3"
        assert (root / "current" / "VERSION").read_text() == "v3\n"
        assert "release v3" in (root / "current" / "index.html").read_text()
