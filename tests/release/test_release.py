"""Release push, flip, rollback and status against 20 real sshd hosts, with faults."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from buildbot_steps import release
from buildbot_steps.release import Selection

WAIT_S = 60.0  # deadline for events the tests wait on; they normally take < 1 s
# A refused connection: ssh exits 255, and rsync passes that on only if ssh
# has exited when rsync cleans up (its _exit_cleanup reaps the remote shell
# with WNOHANG); otherwise it exits with its own 12, "protocol data stream".
# Which one comes first is the scheduler's choice (12 under load).
UNREACHABLE_CODES = (255, 12)


# Unchanged files keep their mtime from build to build (as a build that only
# rewrites what changed): rsync hard-links a file from the live slot only when
# its content and attributes, mtime included, are the same.
UNCHANGED_MTIME = 1_700_000_000
COMMON_FILES = {"app/lib/common.py": "COMMON = 1\n" * 500, "static/logo.bin": b"L" * 20_000}


def small_tree(make_tree, name: str, extra: dict | None = None):
    tree = make_tree(name, {"app/version.txt": f"{name}\n", **COMMON_FILES, **(extra or {})})
    for relative in COMMON_FILES:
        os.utime(tree / relative, (UNCHANGED_MTIME, UNCHANGED_MTIME))
    return tree


def live_of(runner) -> dict:
    """{host: live revision}, asserting every host's `current` is a complete release."""
    status = runner.status()
    assert status.all_ok, status.to_text()
    for host in status.hosts:
        assert host.details["live"] is None or host.details["live_complete"], status.to_text()
    return {h.host: h.details["live_revision"] for h in status.hosts}


def deploy(runner, tree, revision: str) -> None:
    pushed = runner.push(tree, revision, "1")
    assert pushed.all_ok, pushed.to_text()
    flipped = runner.flip(revision, only_hosts=pushed.ok_hosts)
    assert flipped.all_ok, flipped.to_text()


def slot_dir(fleet_host, slot: str) -> Path:
    return fleet_host.deploy_root / "releases" / slot


def test_push_flip_status_then_second_push_reuses_unchanged_files(make_runner, make_tree, fleet):
    runner = make_runner()
    v1 = small_tree(make_tree, "v1")
    first = runner.push(v1, "v1", "1")
    assert first.all_ok and len(first.hosts) == 20, first.to_text()
    assert all(h.details["slot"] == "0" for h in first.hosts)
    assert runner.flip("v1", only_hosts=first.ok_hosts).all_ok
    assert set(live_of(runner).values()) == {"v1"}

    v2 = small_tree(make_tree, "v2")  # only app/version.txt differs
    second = runner.push(v2, "v2", "2")
    assert second.all_ok, second.to_text()
    # The unchanged files are hard links into the live slot, not new copies.
    assert second.bytes_sent < first.bytes_sent / 5, (first.bytes_sent, second.bytes_sent)
    host = fleet.hosts[0]
    new_slot = second.by_host()[host.name].details["slot"]
    assert (
        os.stat(slot_dir(host, new_slot) / "static/logo.bin").st_ino
        == os.stat(slot_dir(host, "0") / "static/logo.bin").st_ino
    )
    # Pushed is not live: nothing moved yet.
    assert set(live_of(runner).values()) == {"v1"}

    canaries = runner.flip("v2", Selection(count=3), only_hosts=second.ok_hosts)
    assert canaries.all_ok and len(canaries.hosts) == 3
    live = live_of(runner)
    assert [live[h.name] for h in fleet.hosts] == ["v2"] * 3 + ["v1"] * 17
    assert (host.deploy_root / "current").readlink() == Path("releases") / new_slot
    assert (host.deploy_root / "current/app/version.txt").read_text() == "v2\n"


def test_host_down_before_push_is_not_flipped_and_stays_on_old_release(make_runner, make_tree, fleet):
    runner = make_runner()
    deploy(runner, small_tree(make_tree, "v1"), "v1")
    down = fleet.hosts[3]
    fleet.kill(down)

    pushed = runner.push(small_tree(make_tree, "v2"), "v2", "2")
    report = pushed.by_host()[down.name]
    assert report.status == "failed" and report.failed_step == "transfer"
    assert report.exit_code in UNREACHABLE_CODES, report
    assert len(pushed.ok_hosts) == 19
    flipped = runner.flip("v2", only_hosts=pushed.ok_hosts)
    assert flipped.all_ok and down.name not in flipped.by_host()

    fleet.restart(down)
    live = live_of(runner)
    assert live.pop(down.name) == "v1"
    assert set(live.values()) == {"v2"}
    # Even when asked explicitly, a host without a complete v2 refuses the flip.
    refused = runner.flip("v2", Selection(names=(down.name,)))
    assert refused.hosts[0].status == "failed" and "no complete release" in refused.hosts[0].error
    assert live_of(runner)[down.name] == "v1"


# The victim's rsync: says it has started through a FIFO (the write blocks
# until the test reads it), then holds until the host is killed (bounded,
# should the kill never come).
HOLDING_RSYNC = """#!/bin/sh
echo started >"${0%/*}/started"
exec sleep 60
"""


def test_host_killed_during_its_transfer_stays_on_old_release(make_runner, make_tree, fleet, tmp_path):
    runner = make_runner()
    deploy(runner, small_tree(make_tree, "v1"), "v1")
    victim = fleet.hosts[7]
    # The victim's host script finds a holding rsync first on its PATH: the
    # kill lands after the script has opened the slot and before anything
    # could complete it, however loaded the machine (a real rsync of a few
    # MB can end between two looks at the process list).
    started = fleet.put_stand_in(victim, tmp_path / "stand-in", "rsync", HOLDING_RSYNC).with_name("started")
    os.mkfifo(started)

    killed = threading.Event()

    def kill_once_started() -> None:
        if started.read_text():  # blocks until the stand-in writes, or "" once released below
            fleet.kill(victim)
            killed.set()

    watcher = threading.Thread(target=kill_once_started)
    watcher.start()
    pushed = runner.push(small_tree(make_tree, "v2"), "v2", "2")
    # A watcher still reading means the stand-in never ran: end its read.
    with contextlib.suppress(OSError):  # ENXIO: the watcher has read and closed the FIFO
        os.close(os.open(started, os.O_WRONLY | os.O_NONBLOCK))
    watcher.join()
    assert killed.is_set()
    assert pushed.by_host()[victim.name].status == "failed", pushed.to_text()
    assert len(pushed.ok_hosts) == 19
    assert runner.flip("v2", only_hosts=pushed.ok_hosts).all_ok

    fleet.restart(victim)
    live = live_of(runner)
    assert live.pop(victim.name) == "v1"
    assert set(live.values()) == {"v2"}
    # The slot the push had opened is there, and incomplete: never flippable.
    slots = runner.status(Selection(names=(victim.name,))).hosts[0].details["slots"]
    assert [slot["state"] for slot in slots.values()].count("incomplete") == 1, slots
    refused = runner.flip("v2", Selection(names=(victim.name,)))
    assert refused.hosts[0].status == "failed" and "no complete release" in refused.hosts[0].error


def test_host_that_hangs_times_out_and_is_not_flipped(make_runner, make_tree, fleet):
    # A few hosts, each in its own slot of the window, so the healthy ones stay
    # far below the timeout even on a busy 2-core machine; the hung host costs
    # exactly the timeout.
    hosts = fleet.hosts[:6]
    runner = make_runner(hosts=hosts, host_timeout_s=15.0, concurrency=len(hosts))
    deploy(runner, small_tree(make_tree, "v1"), "v1")
    hung = hosts[5]
    fleet.freeze(hung)
    pushed = runner.push(small_tree(make_tree, "v2"), "v2", "2")
    assert pushed.by_host()[hung.name].status == "timed_out", pushed.to_text()
    assert len(pushed.ok_hosts) == 5
    assert runner.flip("v2", only_hosts=pushed.ok_hosts).all_ok
    fleet.thaw(hung)
    live = live_of(make_runner(hosts=hosts))
    assert live.pop(hung.name) == "v1"
    assert set(live.values()) == {"v2"}


def test_full_disk_fails_the_push_and_keeps_the_old_release(make_runner, make_tree, fleet):
    full = fleet.hosts[9]
    fleet.mount_tmpfs(full, "256k")  # v1 (~30 kB) fits, v2 (+512 kB) does not
    runner = make_runner()
    deploy(runner, small_tree(make_tree, "v1"), "v1")
    v2 = small_tree(make_tree, "v2", {"data/blob.bin": os.urandom(512 * 1024)})
    pushed = runner.push(v2, "v2", "2")
    report = pushed.by_host()[full.name]
    assert report.status == "failed" and report.failed_step == "transfer", pushed.to_text()
    assert len(pushed.ok_hosts) == 19
    assert runner.flip("v2", only_hosts=pushed.ok_hosts).all_ok
    live = live_of(runner)
    assert live.pop(full.name) == "v1"
    assert set(live.values()) == {"v2"}
    assert (full.deploy_root / "current/app/version.txt").read_text() == "v1\n"


def test_cancelled_push_then_rerun_converges(make_runner, make_tree, fleet):
    deploy(make_runner(), small_tree(make_tree, "v1"), "v1")
    half_done = threading.Event()

    def on_progress(host_report, done, total, failed) -> None:
        if done >= total // 4:
            half_done.set()

    runner = make_runner(concurrency=4, progress=on_progress)
    v2 = small_tree(make_tree, "v2")
    canceller = threading.Thread(target=lambda: half_done.wait(WAIT_S) and runner.cancel())
    canceller.start()
    interrupted = runner.push(v2, "v2", "2")
    canceller.join()
    statuses = {h.status for h in interrupted.hosts}
    assert "cancelled" in statuses and "ok" in statuses, interrupted.to_text()
    # Nothing was flipped by the interrupted run; every host is still whole.
    assert set(live_of(make_runner()).values()) == {"v1"}

    again = make_runner()
    deploy(again, v2, "v2")
    assert set(live_of(again).values()) == {"v2"}


def test_second_deploy_while_one_runs_is_refused(make_runner, make_tree, fleet):
    started, finish = threading.Event(), threading.Event()

    def hold_the_deploy(host_report, done, total, failed) -> None:
        started.set()
        finish.wait(WAIT_S)  # keeps the first push running while we try a second

    first = make_runner(progress=hold_the_deploy)
    tree = small_tree(make_tree, "v1")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("push", first.push(tree, "v1", "1")))
    worker.start()
    try:
        assert started.wait(WAIT_S)
        assert release.deploy_in_progress()
        second = make_runner()
        with pytest.raises(release.DeployInProgress, match="push v1 is running"):
            second.push(tree, "v1b", "2")
        with pytest.raises(release.DeployInProgress):
            second.rollback()
        assert second.status().all_ok  # read-only: allowed
    finally:
        finish.set()
        worker.join()
    assert result["push"].all_ok
    assert not release.deploy_in_progress()


def test_canary_flip_then_rollback_restores_previous_everywhere(make_runner, make_tree, fleet):
    entries_tags = {h.name: ["canary"] for h in fleet.hosts[:2]}
    runner = make_runner()
    runner.inventory = release.Inventory.from_entries(
        [{**e, "tags": entries_tags.get(e["name"], [])} for e in fleet.inventory_entries()]
    )
    deploy(runner, small_tree(make_tree, "v1"), "v1")
    pushed = runner.push(small_tree(make_tree, "v2"), "v2", "2")
    assert pushed.all_ok
    canary = runner.flip("v2", Selection(tag="canary"), only_hosts=pushed.ok_hosts)
    assert sorted(canary.ok_hosts) == sorted(entries_tags)
    assert runner.flip("v2", only_hosts=pushed.ok_hosts).all_ok
    assert set(live_of(runner).values()) == {"v2"}

    rolled = runner.rollback(revision="v2")
    assert rolled.all_ok and all(h.details["changed"] == "yes" for h in rolled.hosts), rolled.to_text()
    assert set(live_of(runner).values()) == {"v1"}
    # Again: nobody is on v2 any more, so nothing moves (no second step back).
    again = runner.rollback(revision="v2")
    assert again.all_ok and all(h.details["changed"] == "no" for h in again.hosts)
    assert set(live_of(runner).values()) == {"v1"}


def test_symlinks_pointing_outside_the_release_are_not_followed(make_runner, make_tree, fleet, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("must survive\n")
    tree = small_tree(make_tree, "v1")
    (tree / "data").symlink_to(outside)
    (tree / "passwd").symlink_to("/etc/passwd")
    (tree / "up").symlink_to("../../../..")
    runner = make_runner(hosts=fleet.hosts[:4], slots=3)
    deploy(runner, tree, "v1")
    host = fleet.hosts[0]
    current = host.deploy_root / "current"
    for name, target in (("data", str(outside)), ("passwd", "/etc/passwd"), ("up", "../../../..")):
        assert (current / name).is_symlink() and os.readlink(current / name) == target
    # Recycle every slot (rm -rf of old slots, rsync --delete): nothing outside is touched.
    for n in range(2, 6):
        deploy(runner, tree, f"v{n}")
    assert (outside / "keep.txt").read_text() == "must survive\n"
    assert sorted(p.name for p in (host.deploy_root / "releases").iterdir()) == ["0", "1", "2"]
