"""Limits of what a push accepts and how it reports: slots, empty trees, deploy roots,
duplicate hosts, ssh options, a full disk, a TMPDIR with a space."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from buildbot_steps import cli as buildbot_cd
from buildbot_steps import release
from buildbot_steps.release import InvalidInput, Inventory

HOST = {"name": "web1", "address": "web1.example.com", "deploy_root": "/srv/app"}
CLI_TIMEOUT_S = 120.0  # deadline for a CLI run against a few local sshd hosts (normally ~1 s)


def test_slots_beyond_a_reduced_count_are_reported_then_cleaned(make_runner, make_tree, fleet):
    host = fleet.hosts[0]
    wide = make_runner(hosts=[host], slots=5)
    for n in range(5):
        tree = make_tree(f"v{n}", {"version": f"{n}\n"})
        assert wide.push(tree, f"v{n}", str(n)).all_ok
        assert wide.flip(f"v{n}").all_ok  # live: slot 4, rollback target: slot 3

    narrow = make_runner(hosts=[host], slots=3)
    slots = narrow.status().hosts[0].details["slots"]
    assert sorted(slots) == ["0", "1", "2", "3", "4"]
    assert slots["3"]["beyond"] == "yes" and slots["4"]["revision"] == "v4"

    assert narrow.push(make_tree("v5", {"version": "5\n"}), "v5", "5").all_ok
    assert narrow.flip("v5").all_ok
    assert narrow.push(make_tree("v6", {"version": "6\n"}), "v6", "6").all_ok
    # Slot 3 stopped being needed (no longer live nor the rollback target): gone.
    names = sorted(p.name for p in (host.deploy_root / "releases").iterdir())
    assert names == ["0", "1", "2", "4"], names
    assert sorted(narrow.status().hosts[0].details["slots"]) == ["0", "1", "2", "4"]


def test_an_empty_tree_is_refused_unless_allowed(make_tree, tmp_path, capsys):
    root = tmp_path / "root"
    runner = release.ReleaseRunner(
        Inventory.from_entries([{**HOST, "deploy_root": str(root)}]), release.LocalTransport()
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="is empty; build into it first, or allow an empty release"):
        runner.push(empty, "v1")
    assert not root.exists()
    assert runner.push(empty, "v1", allow_empty=True).all_ok

    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps([{**HOST, "deploy_root": str(root)}]))
    common = ["--inventory", str(inventory), "--transport", "local", "--source", str(empty)]
    assert buildbot_cd.main(["push", *common, "--revision", "v2"]) == 2
    assert "--allow-empty" in capsys.readouterr().err
    assert buildbot_cd.main(["push", *common, "--revision", "v2", "--allow-empty"]) == 0


@pytest.mark.parametrize(
    "root", ["/", "/etc", "/usr/", "/var", "/root", "/boot", "/lib64", "/usr/lib", "//bin"]
)
def test_a_system_directory_as_deploy_root_is_refused(root):
    with pytest.raises(InvalidInput, match="is a system directory; use a directory of its own"):
        Inventory.from_entries([{**HOST, "deploy_root": root}])


def test_a_deploy_root_below_a_system_directory_is_fine():
    assert Inventory.from_entries([{**HOST, "deploy_root": "/srv/app/"}]).hosts[0].deploy_root == "/srv/app"
    assert Inventory.from_entries([{**HOST, "deploy_root": "/var/www/app"}]).hosts


def test_two_entries_for_the_same_deploy_root_are_refused():
    twin = {**HOST, "name": "web1-again", "deploy_root": "/srv/app/"}
    with pytest.raises(InvalidInput, match="hosts 'web1' and 'web1-again' are the same deploy root"):
        Inventory.from_entries([HOST, twin])
    # Another port or another root is another target.
    assert Inventory.from_entries([HOST, {**twin, "port": 2222}]).hosts
    assert Inventory.from_entries([HOST, {**twin, "deploy_root": "/srv/app2"}]).hosts


@pytest.mark.parametrize(
    "option",
    ["ConnectTimeout=5", "ServerAliveInterval=2", "Ciphers=aes128-gcm@openssh.com", "Compression=yes",
     "IPQoS=throughput", "KexAlgorithms=+curve25519-sha256", "tcpkeepalive=no"],
)  # fmt: skip
def test_harmless_ssh_options_are_allowed(option):
    assert release.SshTransport(extra_options=(option,)).extra_options == (option,)


@pytest.mark.parametrize(
    "option",
    ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "ProxyJump=evil.example",
     "ControlPath=/tmp/x", "LocalCommand=id", "PermitLocalCommand=yes", "IdentityFile=/root/.ssh/id",
     "Hostname=other", "User=root", "Include=/tmp/x", "SetEnv=LD_PRELOAD", "ForwardAgent=yes", "Tunnel=yes",
     "SomeFutureOption=yes"],
)  # fmt: skip
def test_every_other_ssh_option_is_refused(option):
    with pytest.raises(InvalidInput, match="is not allowed; allowed: addressfamily, ciphers"):
        release.SshTransport(extra_options=(option,))


def test_the_users_allowed_options_come_before_the_defaults():
    # ssh takes the first value of an option: a ConnectTimeout given must win.
    transport = release.SshTransport(extra_options=("ConnectTimeout=3",), control_dir="/run/c")
    options = transport.ssh_options(Inventory.from_entries([HOST]).hosts[0])
    assert options.index("ConnectTimeout=3") < options.index("ConnectTimeout=10")


def test_a_full_disk_reads_no_space_left(make_runner, make_tree, fleet):
    full = fleet.hosts[0]
    fleet.mount_tmpfs(full, "256k")
    runner = make_runner(hosts=fleet.hosts[:2])
    pushed = runner.push(make_tree("v1", {"blob": os.urandom(512 * 1024)}), "v1", "1")
    report = pushed.by_host()[full.name]
    assert report.status == "failed", pushed.to_text()
    assert report.error == f"no space left on {full.name}:{full.deploy_root}", pushed.to_text()
    assert pushed.by_host()[fleet.hosts[1].name].ok


def test_a_host_without_a_tool_the_script_runs_is_named_and_left_as_it_was(
    make_runner, make_tree, fleet, tmp_path
):
    short, whole = fleet.hosts[:2]
    runner = make_runner(hosts=[short, whole])
    assert runner.push(make_tree("v1", {"version": "1\n"}), "v1", "1").all_ok
    assert runner.flip("v1").all_ok
    # Every program the sessions and the script run, from one directory, but b2sum.
    tools = re.search(r"^HOST_TOOLS='([^']*)'$", release.host_script_text(), re.MULTILINE)
    assert tools and "b2sum" in tools[1].split()
    path = tmp_path / "bin"
    path.mkdir()
    for tool in (*tools[1].split(), "sh", "bash"):
        if tool != "b2sum":
            (path / tool).symlink_to(shutil.which(tool))
    fleet.set_session_env(short, {"PATH": str(path)})

    pushed = runner.push(make_tree("v2", {"version": "2\n"}), "v2", "2")

    report = pushed.by_host()[short.name]
    assert report.status == "failed", pushed.to_text()
    assert "'b2sum' is not on this host's PATH" in report.error, report.error
    assert "GNU coreutils 8.26 or later" in report.error
    assert pushed.by_host()[whole.name].ok
    assert sorted(p.name for p in (short.deploy_root / "releases").iterdir()) == ["0"]
    assert not (short.deploy_root / ".bbcd" / "list.1").exists()


def test_a_tmpdir_with_a_space_works(make_tree, fleet, tmp_path):
    tmpdir = tmp_path / "tmp with space"
    tmpdir.mkdir()
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps(fleet.inventory_entries(fleet.hosts[:2])))
    argv = [
        sys.executable, "-m", "buildbot_steps.cli", "push", "--inventory", str(inventory),
        "--known-hosts", str(fleet.known_hosts), "--identity", str(fleet.identity_file),
        "--ssh-option", "KexAlgorithms=curve25519-sha256",
        "--source", str(make_tree("v1", {"a": "1\n"})), "--revision", "v1",
    ]  # fmt: skip
    done = subprocess.run(
        argv, env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert all((h.deploy_root / "releases/0/a").read_text() == "1\n" for h in fleet.hosts[:2])
