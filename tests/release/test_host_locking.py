"""One push, flip or rollback at a time per deploy root, across processes and masters.

The other deploy is a real `buildbot-cd push` process; its transfer is held
still by stopping the receiving rsync on the host (SIGSTOP), so the overlap is
certain, not a matter of timing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal

from buildbot_steps import release
from harness.fleet_cli import (
    WAIT_S,
    assert_next_push_converges,
    big_tree,
    hold_receivers,
    signal_all,
    start_cli_push,
    stop_receivers,
    versions_match_manifests,
)  # fmt: skip


def test_a_push_from_another_process_is_refused_never_mixed(make_runner, make_tree, fleet, tmp_path):
    hosts = fleet.hosts[:3]
    hold_receivers(fleet, hosts, tmp_path)
    other = start_cli_push(fleet, hosts, tmp_path, big_tree(make_tree, "v1"), "v1")
    stopped = stop_receivers(fleet, hosts)
    try:
        runner = make_runner(hosts=hosts)
        ours = runner.push(make_tree("v2", {"app/version.txt": "v2\n"}), "v2", "2")
        for host in hosts:
            report = ours.by_host()[host.name]
            assert report.status == "failed" and report.failed_step == "transfer", ours.to_text()
            assert report.error.startswith(f"another deploy holds {host.name}:{host.deploy_root} since 20")
            assert re.search(r" since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(push v1 from ", report.error)
            assert "(push v1 from " in report.error and f" pid {other.pid})" in report.error
        # Flip and rollback wait for nobody either.
        flipped = runner.flip("v1")
        assert all("another deploy holds" in h.error for h in flipped.hosts), flipped.to_text()
        assert all("another deploy holds" in h.error for h in runner.rollback().hosts)
    finally:
        signal_all(stopped, signal.SIGCONT)
    out, err = other.communicate(timeout=WAIT_S)
    assert other.returncode == 0, out + err
    assert runner.flip("v1").all_ok
    for host in hosts:
        versions_match_manifests(host.deploy_root)
        assert (host.deploy_root / "current/app/version.txt").read_text() == "v1\n"


def test_a_killed_holder_leaves_no_stale_lock(make_runner, make_tree, fleet, tmp_path):
    hosts = fleet.hosts[:2]
    hold_receivers(fleet, hosts, tmp_path)
    # No retries: the push whose holders die fails (a retry would take the lock again and succeed).
    other = start_cli_push(fleet, hosts, tmp_path, big_tree(make_tree, "v1"), "v1", "--retries", "0")
    stopped = stop_receivers(fleet, hosts)
    # kill -9 the holder on each host: the script holding the lock and its rsync.
    for host in hosts:
        for pid in fleet.session_pids(host, "sh") + stopped[host.name]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    other.communicate(timeout=WAIT_S)
    assert other.returncode != 0

    runner = make_runner(hosts=hosts)
    assert_next_push_converges(runner, make_tree, hosts)


def test_the_lock_file_records_its_holder_and_a_symlinked_lock_is_refused(
    make_runner, make_tree, fleet, tmp_path
):
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    assert runner.push(make_tree("v1", {"a": "1"}), "v1", "1").all_ok
    recorded = (host.deploy_root / ".deploy.lock").read_text()
    assert recorded.startswith("since=20") and "what=push/v1/" in recorded
    (host.deploy_root / ".deploy.lock").unlink()
    (host.deploy_root / ".deploy.lock").symlink_to(tmp_path / "elsewhere")
    refused = runner.flip("v1")
    assert not refused.all_ok and ".deploy.lock is a symlink" in refused.hosts[0].error
    assert not (tmp_path / "elsewhere").exists()


def test_an_in_process_deploy_still_refuses_overlapping_runs(make_runner):
    runner = make_runner()
    with release.deploy_lock("push v0", runner.inventory.hosts):
        try:
            runner.flip("v0")
        except release.DeployInProgress as error:
            assert "push v0 is running" in str(error)
        else:
            raise AssertionError("an overlapping flip in the same process was not refused")
