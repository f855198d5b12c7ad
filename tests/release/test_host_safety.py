"""Nothing in a release tree steers the host script, nor carries privileges onto hosts.

Real sshd hosts (the fleet fixture); each test uses a few of them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from buildbot_steps import release
from buildbot_steps.release import runner as release_runner

FORGED_MANIFEST = "revision=forged\nbuild=1\ntime=1\nseq=999\nprevious=../../..\nprevious_seq=1\n"
FOREIGN_UID = 4242
FOREIGN_GID = 4343


def tree_with(make_tree, name: str) -> Path:
    return make_tree(name, {"app/version.txt": f"{name}\n"})


def manifest(host_root: Path, slot: str) -> dict:
    text = (host_root / "releases" / slot / ".release").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def live_slot(host_root: Path) -> str:
    return os.readlink(host_root / "current").removeprefix("releases/")


@pytest.mark.parametrize("shape", ["forged_file", "symlink_out", "directory", "tmp_symlink"])
def test_a_manifest_in_the_tree_is_neither_transferred_nor_followed(make_runner, make_tree, fleet, tmp_path,
                                                                    shape):  # fmt: skip
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    tree = tree_with(make_tree, "v1")
    if shape == "forged_file":
        (tree / ".release").write_text(FORGED_MANIFEST)
    elif shape == "symlink_out":
        (tree / ".release").symlink_to(outside)
    elif shape == "directory":
        (tree / ".release").mkdir()
        (tree / ".release/x").write_text(FORGED_MANIFEST)
    else:
        (tree / ".release.tmp").symlink_to(outside)
        (tree / ".release").write_text(FORGED_MANIFEST)
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    pushed = runner.push(tree, "v1", "1")
    assert pushed.all_ok, pushed.to_text()
    slot = pushed.hosts[0].details["slot"]
    written = host.deploy_root / "releases" / slot / ".release"
    assert written.is_file() and not written.is_symlink()
    assert manifest(host.deploy_root, slot)["revision"] == "v1" and "previous" not in manifest(
        host.deploy_root, slot
    )
    assert not (host.deploy_root / "releases" / slot / ".release.tmp").exists()
    assert outside.read_text() == "untouched\n"
    # The forged revision is no release: its flip is refused.
    refused = runner.flip("forged")
    assert not refused.all_ok and "no complete release of revision forged" in refused.hosts[0].error
    assert runner.flip("v1").all_ok


def test_a_forged_manifest_in_a_slot_counts_as_incomplete_and_cannot_send_rollback_out(make_runner, make_tree,
                                                                                      fleet):  # fmt: skip
    # An older release (pushed before rsync excluded the manifest) left one.
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    for revision in ("v1", "v2"):
        assert runner.push(tree_with(make_tree, revision), revision, "1").all_ok
        assert runner.flip(revision).all_ok
    live = live_slot(host.deploy_root)
    (host.deploy_root / "releases" / live / ".release").write_text(FORGED_MANIFEST.replace("forged", "v2"))

    status = runner.status().hosts[0].details
    assert status["slots"][live]["state"] == "incomplete" and not status["live_complete"]
    rolled = runner.rollback()
    assert not rolled.all_ok and "nothing live to roll back from" in rolled.hosts[0].error
    assert live_slot(host.deploy_root) == live
    # A previous= that is a slot number out of range, or a symlinked manifest: the same.
    (host.deploy_root / "releases" / live / ".release").write_text(FORGED_MANIFEST.replace("../../..", "100"))
    assert not runner.rollback().all_ok and live_slot(host.deploy_root) == live


def test_a_slot_that_is_a_symlink_is_never_flipped_to(make_runner, make_tree, fleet, tmp_path):
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    assert runner.push(tree_with(make_tree, "v1"), "v1", "1").all_ok
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".release").write_text("revision=evil\nbuild=1\ntime=1\nseq=5\n")
    (host.deploy_root / "releases" / "7").symlink_to(elsewhere)
    refused = runner.flip("evil")
    assert not refused.all_ok and "no complete release" in refused.hosts[0].error
    assert not (host.deploy_root / "current").exists()


@pytest.mark.parametrize("link", ["absolute", "trailing-slash", "foreign"])
def test_a_current_made_by_hand_is_read_as_its_slot_or_refused(make_runner, make_tree, fleet, link):
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host], slots=3)
    for name in ("v1", "v2", "v3"):
        assert runner.push(tree_with(make_tree, name), name, "1").all_ok and runner.flip(name).all_ok
    assert runner.rollback("v3").all_ok and runner.rollback("v2").all_ok
    # Live now: v1, in the slot holding the oldest commit, which a push would
    # replace if it took the host for one with nothing live.
    live = live_slot(host.deploy_root)
    assert manifest(host.deploy_root, live)["revision"] == "v1"
    current = host.deploy_root / "current"
    current.unlink()
    targets = {"absolute": host.deploy_root / "releases" / live, "trailing-slash": f"releases/{live}/"}
    current.symlink_to(targets.get(link, f"releases/{live}/x"))

    pushed = runner.push(tree_with(make_tree, "v4"), "v4", "1")
    served = host.deploy_root / "releases" / live / "app/version.txt"
    assert served.read_text() == "v1\n" and manifest(host.deploy_root, live)["revision"] == "v1"
    status = runner.status().hosts[0]
    if link != "foreign":
        assert pushed.all_ok and status.details["live"] == live
    else:
        assert not pushed.all_ok and "is not a link to one of the slots" in pushed.hosts[0].error
        assert status.ok and status.details["live"] is None and status.details["current"] == "unrecognised"


def privileged_tree(make_tree) -> Path:
    tree = tree_with(make_tree, "v1")
    os.mkfifo(tree / "fifo")
    (tree / "suid").write_text("#!/bin/sh\n")
    os.chmod(tree / "suid", 0o6755)
    (tree / "owned").write_text("x\n")
    os.chown(tree / "owned", FOREIGN_UID, FOREIGN_GID)
    return tree


def test_rsync_as_root_does_not_reproduce_privileges_unless_asked(make_runner, make_tree, fleet):
    tree = privileged_tree(make_tree)
    plain, preserving = fleet.hosts[0], fleet.hosts[1]
    assert make_runner(hosts=[plain]).push(tree, "v1", "1").all_ok
    runner = make_runner(hosts=[preserving])
    runner.transport.preserve_privileged = True
    assert runner.push(tree, "v1", "1").all_ok

    slot = plain.deploy_root / "releases/0"
    assert not (slot / "fifo").exists()
    assert stat.S_IMODE((slot / "suid").stat().st_mode) == 0o755
    assert ((slot / "owned").stat().st_uid, (slot / "owned").stat().st_gid) == (os.getuid(), os.getgid())

    kept = preserving.deploy_root / "releases/0"
    assert stat.S_ISFIFO((kept / "fifo").lstat().st_mode)
    assert stat.S_IMODE((kept / "suid").stat().st_mode) == 0o6755
    assert (kept / "owned").stat().st_uid == FOREIGN_UID


def test_kept_owners_never_change_the_live_release(make_runner, make_tree, fleet):
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    runner.transport.preserve_privileged = True
    v1 = tree_with(make_tree, "v1")
    (v1 / "app.py").write_text("same\n")
    assert runner.push(v1, "v1", "1").all_ok and runner.flip("v1").all_ok
    live_file = host.deploy_root / "current" / "app.py"
    before = live_file.stat()
    v2 = tree_with(make_tree, "v2")
    (v2 / "app.py").write_text("same\n")
    os.utime(v2 / "app.py", ns=(before.st_atime_ns, before.st_mtime_ns))  # rsync's quick check: unchanged
    os.chown(v2 / "app.py", FOREIGN_UID, FOREIGN_GID)  # only its owner changed
    (v2 / "other.txt").write_text("unchanged\n")
    assert runner.push(v2, "v2", "1").all_ok

    after = live_file.stat()
    assert (after.st_ino, after.st_uid, after.st_gid) == (before.st_ino, before.st_uid, before.st_gid)
    slot = runner.status().hosts[0].details["slots"]
    new_slot = next(s for s, entry in slot.items() if entry.get("revision") == "v2")
    pushed = (host.deploy_root / "releases" / new_slot / "app.py").stat()
    assert (pushed.st_uid, pushed.st_gid) == (FOREIGN_UID, FOREIGN_GID) and pushed.st_ino != before.st_ino


def test_a_tree_changed_while_it_is_pushed_sends_no_chmod_out_of_the_slot(
    make_runner, make_tree, fleet, tmp_path, monkeypatch
):
    host = fleet.hosts[0]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("s3cret\n")
    victim_file = victim / "secret"
    victim_file.chmod(0o600)
    tree = make_tree("v1", {"index.html": "v1\n", "a/secret": "x\n"})
    (tree / "a" / "secret").chmod(0o666)  # a mode the pass must set: a candidate
    listed = release_runner.write_entry_list

    def list_then_swap(source, directory, keep_setid):
        entries = listed(source, directory, keep_setid)
        shutil.rmtree(Path(source) / "a")  # after the master's walk, before rsync's
        (Path(source) / "a").symlink_to(victim)
        return entries

    monkeypatch.setattr(release_runner, "write_entry_list", list_then_swap)
    pushed = make_runner(hosts=[host]).push(tree, "v1", "1")
    assert stat.S_IMODE(victim_file.stat().st_mode) == 0o600
    assert not pushed.all_ok and "lies through a symlink" in pushed.hosts[0].error, pushed.to_text()


def test_the_transfer_refuses_to_write_anywhere_but_the_next_slot(tmp_path):
    root = tmp_path / "root"
    words = [str(root), "5", "v1", "1", "1700000000", "push/v1/m/1/20261128T103000Z", "0" * 64, "ours", "--"]
    result = release_script(
        release.host_script_argv(
            "transfer", [*words, "rsync", "-a", f"{tmp_path}/", f"{tmp_path}/elsewhere/"]
        )
    )
    assert result.returncode == 3 and f"must write into {root}/releases/next/" in result.stderr
    result = release_script(
        release.host_script_argv("transfer", [*words, "cp", "-r", f"{tmp_path}/", f"{root}/releases/next/"])
    )
    assert result.returncode == 3 and "expected an rsync command" in result.stderr
    for digest in ("0" * 63, "G" * 64, "0" * 64 + ";"):
        bad_digest = [
            *words[:-3],
            digest,
            "ours",
            "--",
            "rsync",
            "-a",
            f"{tmp_path}/",
            f"{root}/releases/next/",
        ]
        result = release_script(release.host_script_argv("transfer", bad_digest))
        assert result.returncode == 3 and f"not a list digest: '{digest}'" in result.stderr
    bad_owners = [*words[:-2], "root", "--", "rsync", "-a", f"{tmp_path}/", f"{root}/releases/next/"]
    result = release_script(release.host_script_argv("transfer", bad_owners))
    assert result.returncode == 3 and "OWNERS must be kept or ours, got 'root'" in result.stderr
    assert not (root / "releases").exists()


def release_script(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)
