"""A push rsyncs in place into an old slot, in one ssh session, and never touches the live release.

The slot a push replaces still holds an older release whose unchanged files are
hard links into the live one (from that push's --link-dest): the live files
must keep their content, mode and mtime whatever the new release changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_steps import release
from harness import sshd_hosts

SLOTS = 3  # live, its rollback target, and the one a push replaces: the 4th push reuses slot 0
MTIME = 1_700_000_000  # fixed: rsync's quick check compares mtimes
CHANGED_MTIME = MTIME + 3600

# name -> (content, mode, mtime) of releases 1..3, and what release 4 changes.
OLD_FILES = {
    "same.txt": (b"unchanged\n", 0o644, MTIME),
    "content.txt": (b"old content\n", 0o644, MTIME),
    "bin/mode.sh": (b"#!/bin/sh\necho hi\n", 0o644, MTIME),
    "bin/both.sh": (b"#!/bin/sh\necho old\n", 0o644, MTIME),
}
NEW_FILES = {
    **OLD_FILES,
    "content.txt": (b"new content, longer\n", 0o644, CHANGED_MTIME),
    "bin/mode.sh": (b"#!/bin/sh\necho hi\n", 0o755, MTIME),  # only its mode changes
    "bin/both.sh": (b"#!/bin/sh\necho new\n", 0o750, CHANGED_MTIME),
}


def write_tree(root: Path, files: dict, version: str) -> Path:
    for name, (content, mode, mtime) in {**files, "version.txt": (version.encode(), 0o644, MTIME)}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        os.utime(path, (mtime, mtime))
    return root


def snapshot(slot: Path) -> dict[str, tuple]:
    """Content, mode, mtime and inode of every file of a slot (its manifest aside)."""
    found = {}
    for path in sorted(slot.rglob("*")):
        if path.is_file() and path.name != ".release":
            info = path.lstat()
            found[str(path.relative_to(slot))] = (
                path.read_bytes(),
                info.st_mode & 0o7777,
                info.st_mtime_ns,
                info.st_ino,
            )
    return found


def live_slot(root: Path) -> Path:
    return root / "releases" / os.readlink(root / "current").removeprefix("releases/")


@pytest.fixture(scope="module")
def verbose_fleet() -> Iterator[sshd_hosts.SshdFleet]:
    """Two sshd hosts that log every session they start."""
    workdir = Path(tempfile.mkdtemp(prefix="bbcd-fleet-"))
    try:
        with sshd_hosts.SshdFleet(2, workdir, log_level="VERBOSE") as fleet:
            yield fleet
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ssh_runner(fleet: sshd_hosts.SshdFleet, hosts: list, control_dir: str) -> release.ReleaseRunner:
    transport = release.SshTransport(
        known_hosts=str(fleet.known_hosts), identity_file=str(fleet.identity_file), control_dir=control_dir,
        control_persist_s=5, extra_options=("KexAlgorithms=curve25519-sha256",),
    )  # fmt: skip
    inventory = release.Inventory.from_entries(fleet.inventory_entries(hosts))
    return release.ReleaseRunner(inventory, transport, release.FanoutSettings(retry_backoff_s=0.05), SLOTS)


@pytest.fixture(params=["local", "ssh"])
def runner_and_root(request, tmp_path, verbose_fleet, control_dir) -> tuple[release.ReleaseRunner, Path]:
    if request.param == "ssh":
        host = verbose_fleet.hosts[0]
        shutil.rmtree(host.deploy_root)
        host.deploy_root.mkdir()
        return ssh_runner(verbose_fleet, [host], control_dir), host.deploy_root
    root = tmp_path / "host"
    inventory = release.Inventory.from_entries(
        [{"name": "h1", "address": "127.0.0.1", "deploy_root": str(root)}]
    )
    return release.ReleaseRunner(inventory, release.LocalTransport(), slots=SLOTS), root


def push_and_flip(runner: release.ReleaseRunner, tree: Path, revision: str) -> None:
    pushed = runner.push(tree, revision)
    assert pushed.all_ok, pushed.to_text()
    flipped = runner.flip(revision)
    assert flipped.all_ok, flipped.to_text()


def test_a_push_into_an_old_slot_leaves_the_live_release_untouched(runner_and_root, tmp_path):
    runner, root = runner_and_root
    for n in (1, 2, 3):
        push_and_flip(runner, write_tree(tmp_path / f"v{n}", OLD_FILES, f"v{n}"), f"v{n}")
    live = live_slot(root)
    target = root / "releases" / "0"  # the oldest: neither live nor the rollback target
    assert live.name == "2" and snapshot(target)["same.txt"][3] == snapshot(live)["same.txt"][3]
    live_before, target_before = snapshot(live), snapshot(target)

    pushed = runner.push(write_tree(tmp_path / "v4", NEW_FILES, "v4"), "v4")

    assert pushed.all_ok and pushed.hosts[0].details["slot"] == "0", pushed.to_text()
    assert snapshot(live) == live_before, "the live release changed under a push into another slot"
    written = snapshot(target)
    for name, (content, mode, mtime) in NEW_FILES.items():
        assert written[name][:3] == (content, mode, mtime * 10**9), name
    # In place: the unchanged file is the same inode as before (no link rebuilt),
    # still shared with the live release; the changed ones are not shared.
    assert written["same.txt"][3] == target_before["same.txt"][3] == live_before["same.txt"][3]
    for name in ("content.txt", "bin/mode.sh", "bin/both.sh"):
        assert written[name][3] != live_before[name][3], name
    assert not (target / ".release.list").exists()
    push_and_flip_live = runner.flip("v4")
    assert push_and_flip_live.all_ok and live_slot(root) == target


def test_the_replaced_slot_is_not_flippable_from_the_moment_its_transfer_starts(tmp_path):
    root = tmp_path / "host"
    inventory = release.Inventory.from_entries(
        [{"name": "h1", "address": "127.0.0.1", "deploy_root": str(root)}]
    )
    runner = release.ReleaseRunner(inventory, release.LocalTransport(), slots=SLOTS)
    for n in (1, 2, 3):
        push_and_flip(runner, write_tree(tmp_path / f"v{n}", OLD_FILES, f"v{n}"), f"v{n}")
    # A transfer into slot 0 (v1) that fails: rsync of a source that is not there.
    args = [str(root), str(SLOTS), "v4", "4", str(MTIME), "push/v4/test/1/20261128T103000Z", "0" * 64,
            "ours", "--", "rsync", "-a", f"{tmp_path}/missing/", f"{root}/releases/next/"]  # fmt: skip
    failed = subprocess.run(release.host_script_argv("transfer", args), capture_output=True, text=True)
    assert failed.returncode == 23, failed.stderr
    assert not (root / "releases" / "0" / ".release").exists()
    status = runner.status().hosts[0].details
    assert status["slots"]["0"]["state"] == "incomplete", status
    flipped = runner.flip("v1")
    assert not flipped.all_ok and "no complete release of revision v1" in flipped.hosts[0].error, (
        flipped.to_text()
    )


def test_a_push_and_a_flip_each_open_one_ssh_session_per_host(verbose_fleet, control_dir, tmp_path):
    runner = ssh_runner(verbose_fleet, verbose_fleet.hosts, control_dir)
    before = {h.name: len(verbose_fleet.sessions(h)) for h in verbose_fleet.hosts}

    pushed = runner.push(write_tree(tmp_path / "v1", OLD_FILES, "v1"), "v1")
    assert pushed.all_ok, pushed.to_text()
    after_push = {h.name: len(verbose_fleet.sessions(h)) for h in verbose_fleet.hosts}
    flipped = runner.flip("v1")
    assert flipped.all_ok, flipped.to_text()
    after_flip = {h.name: len(verbose_fleet.sessions(h)) for h in verbose_fleet.hosts}

    for host in verbose_fleet.hosts:
        assert after_push[host.name] - before[host.name] == 1, verbose_fleet.sessions(host)
        assert after_flip[host.name] - after_push[host.name] == 1, verbose_fleet.sessions(host)


def test_a_push_into_an_old_slot_links_what_changed_since_from_the_live_release_and_leaves_nothing_stale(
    runner_and_root, tmp_path
):
    runner, root = runner_and_root
    later = {"later.txt": (b"changed by v2, kept since\n", 0o644, CHANGED_MTIME)}
    v1 = {
        **OLD_FILES,
        "only-v1.txt": (b"gone after v1\n", 0o644, MTIME),
        "later.txt": (b"v1\n", 0o644, MTIME),
    }
    v4 = {**OLD_FILES, **later, "content.txt": (b"changed by v4\n", 0o644, CHANGED_MTIME + 3600),
          "new.txt": (b"added by v4\n", 0o644, CHANGED_MTIME + 3600)}  # fmt: skip
    for n, files in ((1, v1), (2, {**OLD_FILES, **later}), (3, {**OLD_FILES, **later})):
        push_and_flip(runner, write_tree(tmp_path / f"v{n}", files, f"v{n}"), f"v{n}")
    live, target = live_slot(root), root / "releases" / "0"  # slot 0 holds v1
    live_before = snapshot(live)

    pushed = runner.push(write_tree(tmp_path / "v4", v4, "v4"), "v4")

    assert pushed.all_ok and pushed.hosts[0].details["slot"] == "0", pushed.to_text()
    assert snapshot(live) == live_before, "the live release changed under a push into another slot"
    written = snapshot(target)
    assert "only-v1.txt" not in written, "a file of the slot's old release survived the push"
    for name, (content, mode, mtime) in v4.items():
        assert written[name][:3] == (content, mode, mtime * 10**9), name
    # Changed since the slot's release but not by v4: linked from the live release, not sent again.
    assert written["later.txt"][3] == live_before["later.txt"][3]
    assert written["content.txt"][3] != live_before["content.txt"][3]


def test_a_push_into_an_old_slot_sets_the_modes_that_differ_from_the_live_and_the_old_release(
    runner_and_root, tmp_path
):
    runner, root = runner_and_root
    common = {"same.txt": (b"unchanged\n", 0o644, MTIME), "shared.txt": (b"group-writable\n", 0o664, MTIME)}
    old = {**common, "flip.sh": (b"#!/bin/sh\n", 0o644, MTIME)}
    v1 = {**common, "flip.sh": (b"#!/bin/sh\n", 0o755, MTIME)}
    # flip.sh goes back to v1's mode (the slot's own), which the live release does not have;
    # added.txt is new, with a mode rsync --no-perms would not give it under umask 022.
    v4 = {**v1, "added.txt": (b"new\n", 0o664, MTIME)}
    for n, (files, private_mode) in enumerate(((v1, 0o750), (old, 0o750), (old, 0o750), (v4, 0o700)), 1):
        tree = write_tree(tmp_path / f"v{n}", files, f"v{n}")
        (tree / "private").mkdir()
        (tree / "private").chmod(private_mode)
        if n < 4:
            push_and_flip(runner, tree, f"v{n}")
    live, target = live_slot(root), root / "releases" / "0"
    live_before = snapshot(live)

    pushed = runner.push(tmp_path / "v4", "v4")

    assert pushed.all_ok and pushed.hosts[0].details["slot"] == "0", pushed.to_text()
    assert snapshot(live) == live_before and (live / "private").stat().st_mode & 0o7777 == 0o750
    written = snapshot(target)
    for name, (_content, mode, _mtime) in v4.items():
        assert written[name][1] == mode, name
    assert (target / "private").stat().st_mode & 0o7777 == 0o700
    # A file whose mode was already right stays shared with the live release.
    assert written["shared.txt"][3] == live_before["shared.txt"][3]
    # The slot's entry list is kept for the next push, under the digest its manifest records.
    manifest = dict(line.split("=", 1) for line in (target / ".release").read_text().splitlines())
    kept = (root / ".bbcd" / "list.0").read_bytes()
    assert manifest["list"] == hashlib.blake2b(kept, digest_size=32).hexdigest()
    assert f"664 4 {MTIME * 10**9} added.txt\n".encode() in kept and b"700 - - private\n" in kept
    # The live release's kept list, rsync's basis for the new one (a hard link into the
    # slot), is still the one the live manifest records: rsync replaced the link.
    live_manifest = dict(line.split("=", 1) for line in (live / ".release").read_text().splitlines())
    live_kept = (root / ".bbcd" / f"list.{live.name}").read_bytes()
    assert live_manifest["list"] == hashlib.blake2b(live_kept, digest_size=32).hexdigest()
    assert b"added.txt" not in live_kept and b"750 - - private\n" in live_kept


def test_the_first_push_on_a_host_gives_each_entry_its_mode_even_under_a_setgid_directory(
    runner_and_root, tmp_path
):
    # Nothing is live yet: rsync creates every entry under umask 022, and the host
    # script looks only at those that may have come out wrong: a mode with group or
    # other write or a special bit, and every directory, which a setgid parent marks.
    runner, root = runner_and_root
    (root / "releases").mkdir(parents=True)
    (root / "releases").chmod(0o2755)
    files = {
        "plain.txt": (b"plain\n", 0o644, MTIME),
        "run.sh": (b"#!/bin/sh\n", 0o755, MTIME),
        "secret.txt": (b"secret\n", 0o600, MTIME),
        "shared.txt": (b"group-writable\n", 0o664, MTIME),
        "lib/module.py": (b"x = 1\n", 0o644, MTIME),
    }
    tree = write_tree(tmp_path / "v1", files, "v1")
    (tree / "private").mkdir()
    (tree / "private").chmod(0o750)

    pushed = runner.push(tree, "v1")

    assert pushed.all_ok, pushed.to_text()
    slot = root / "releases" / pushed.hosts[0].details["slot"]
    for name, (_content, mode, _mtime) in files.items():
        assert (slot / name).stat().st_mode & 0o7777 == mode, name
    modes = {name: (slot / name).stat().st_mode & 0o7777 for name in (".", "lib", "private")}
    assert modes == {".": tree.stat().st_mode & 0o7777, "lib": 0o755, "private": 0o750}
    # Looked at: those entries only, not a walk of the slot.
    looked_at = (root / ".bbcd" / "modes.want").read_text()
    assert " shared.txt\n" in looked_at and " private\n" in looked_at and "plain.txt" not in looked_at


def test_a_same_size_change_within_the_same_second_reaches_the_slot(runner_and_root, tmp_path):
    # Two builds within one second, as a fast pipeline or a test makes them:
    # rsync's quick check at whole seconds would take the new file for the
    # live one (same size, same second) and leave the old content in the slot.
    runner, root = runner_and_root
    for n, (content, mtime_ns) in enumerate(
        ((b"rate 0.1\n", MTIME * 10**9), (b"rate 0.3\n", MTIME * 10**9 + 5 * 10**8)), 1
    ):
        tree = tmp_path / f"v{n}"
        tree.mkdir()
        (tree / "behaviour.txt").write_bytes(content)
        os.utime(tree / "behaviour.txt", ns=(mtime_ns, mtime_ns))
        push_and_flip(runner, tree, f"v{n}")
    assert (live_slot(root) / "behaviour.txt").read_bytes() == b"rate 0.3\n"


def test_a_kept_list_that_is_not_the_one_its_manifest_records_is_not_trusted(runner_and_root, tmp_path):
    # run.sh becomes executable after v1, content and mtime unchanged. If the
    # slot's kept list claimed v1 had it executable too, trusting it would
    # leave slot 0's own non-executable copy in place: neither linked from the
    # live release nor looked at by the mode pass.
    runner, root = runner_and_root
    v1 = {**OLD_FILES, "run.sh": (b"#!/bin/sh\n", 0o644, MTIME)}
    later = {**OLD_FILES, "run.sh": (b"#!/bin/sh\n", 0o755, MTIME)}
    for n, files in ((1, v1), (2, later), (3, later)):
        push_and_flip(runner, write_tree(tmp_path / f"v{n}", files, f"v{n}"), f"v{n}")
    kept = root / ".bbcd" / "list.0"
    line = f"644 10 {MTIME * 10**9} run.sh\n".encode()
    assert line in kept.read_bytes()
    # Still sorted, as a list the master wrote: only its digest tells it apart.
    lines = kept.read_bytes().replace(line, line.replace(b"644", b"755", 1)).splitlines()
    kept.write_bytes(b"".join(entry + b"\n" for entry in sorted(lines)))

    pushed = runner.push(write_tree(tmp_path / "v4", later, "v4"), "v4")

    assert pushed.all_ok and pushed.hosts[0].details["slot"] == "0", pushed.to_text()
    assert (root / "releases" / "0" / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_a_directory_of_the_old_slot_replaced_by_a_symlink_does_not_lead_links_out(runner_and_root, tmp_path):
    # bin/both.sh changes after v1, so a push into slot 0 (v1) links it from
    # the live release into bin/, which the kept lists say is a directory; on
    # disk it now points out of the deploy root.
    runner, root = runner_and_root
    later = {**OLD_FILES, "bin/both.sh": (b"#!/bin/sh\necho later\n", 0o644, CHANGED_MTIME)}
    for n, files in ((1, OLD_FILES), (2, later), (3, later)):
        push_and_flip(runner, write_tree(tmp_path / f"v{n}", files, f"v{n}"), f"v{n}")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(root / "releases" / "0" / "bin")
    (root / "releases" / "0" / "bin").symlink_to(outside)

    pushed = runner.push(write_tree(tmp_path / "v4", later, "v4"), "v4")

    assert pushed.all_ok and pushed.hosts[0].details["slot"] == "0", pushed.to_text()
    assert list(outside.iterdir()) == []
    slot_bin = root / "releases" / "0" / "bin"
    assert slot_bin.is_dir() and not slot_bin.is_symlink()
    assert (slot_bin / "both.sh").read_bytes() == later["bin/both.sh"][0]


# A deploy user other than root: the pushes of three trees through the
# release engine, run as `nobody`. The last changes only the mode of a file
# the slot shares with the live release, inside a read-only directory.
AS_A_DEPLOY_USER = """
import os, sys
from pathlib import Path
from buildbot_steps import release

work = Path(sys.argv[1])
root = work / "host"
runner = release.ReleaseRunner(
    release.Inventory.from_entries([{"name": "h1", "address": "127.0.0.1", "deploy_root": str(root)}]),
    release.LocalTransport(), slots=3,
)
for version, file_mode in (("v1", 0o644), ("v2", 0o644), ("v3", 0o755)):
    tree = work / version
    (tree / "ro").mkdir(parents=True)
    (tree / "ro" / "f").write_text("same\\n")
    (tree / "version.txt").write_text(version)
    os.chmod(tree / "ro" / "f", file_mode)
    os.utime(tree / "ro" / "f", (1_700_000_000, 1_700_000_000))
    os.chmod(tree / "ro", 0o555)
    pushed = runner.push(tree, version)
    if not (pushed.all_ok and runner.flip(version).all_ok):
        sys.exit(pushed.to_text())
"""


def test_a_deploy_user_other_than_root_changes_a_mode_inside_a_read_only_directory():
    # Not under tmp_path: pytest's base directory is root's alone (0700).
    with tempfile.TemporaryDirectory(prefix="bbcd-deploy-user-") as scratch:
        check_pushes_as_nobody(Path(scratch))


def check_pushes_as_nobody(work: Path) -> None:
    nobody = 65534
    os.chown(work, nobody, nobody)
    done = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
         sys.executable, "-c", AS_A_DEPLOY_USER, str(work)],
        capture_output=True, text=True, timeout=120, cwd=Path(release.__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    live = work / "host" / "current"
    assert (live / "version.txt").read_text() == "v3"
    assert (live / "ro" / "f").stat().st_mode & 0o7777 == 0o755
    assert (live / "ro").stat().st_mode & 0o7777 == 0o555
    earlier = [s for s in (work / "host" / "releases").iterdir() if (s / "version.txt").read_text() != "v3"]
    assert earlier and all((s / "ro" / "f").stat().st_mode & 0o7777 == 0o644 for s in earlier)
