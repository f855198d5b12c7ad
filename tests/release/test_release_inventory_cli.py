"""Inventory validation, host selection, and the push/flip/rollback/status CLI (local hosts)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import resources

import pytest

from buildbot_steps import _core, release
from buildbot_steps import cli as buildbot_cd
from buildbot_steps.release import InvalidInput, Inventory, Selection, transports
from buildbot_steps.release import cli as release_cli

BUILD_TIME = 1_700_000_000
GOOD = {
    "address": "web1.example.com",
    "port": 2222,
    "user": "deploy",
    "deploy_root": "/srv/app",
    "tags": ["canary"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "web1;reboot"}, "entry 0: unsafe or missing host address 'web1;reboot'"),
        ({"address": "-oProxyCommand=x"}, "unsafe or missing host address"),
        ({"address": "web 1"}, "unsafe or missing host address"),
        ({"address": "$(id)"}, "unsafe or missing host address"),
        ({"user": "-lroot"}, "entry 0 (web1.example.com): unsafe user name '-lroot'"),
        ({"user": "de ploy"}, "unsafe user name"),
        ({"deploy_root": "srv/app"}, "deploy root must be an absolute path"),
        ({"deploy_root": "/srv/../etc"}, "unsafe value '/srv/../etc'"),
        ({"deploy_root": "/srv/app dir"}, "unsafe value"),
        ({"deploy_root": "/srv/app;rm"}, "unsafe value"),
        ({"deploy_root": "-/srv"}, "unsafe value"),
        ({"port": 0}, "port must be an integer 1..65535"),
        ({"port": "22"}, "port must be an integer"),
        ({"tags": "canary"}, "tags must be a list"),
        ({"tags": ["can ary"]}, "tags must be a list"),
        ({"name": "a/b"}, "unsafe host name"),
        ({"colour": "blue"}, "unknown field(s) ['colour']"),
    ],
)
def test_unsafe_inventory_entries_are_rejected_naming_the_entry(change, message):
    with pytest.raises(InvalidInput) as caught:
        Inventory.from_entries([{**GOOD, **change}])
    assert message in str(caught.value)


def test_inventory_needs_a_deploy_root_and_unique_names():
    with pytest.raises(InvalidInput, match="entry 1 .*missing deploy_root"):
        Inventory.from_entries([GOOD, {"address": "web2"}])
    with pytest.raises(InvalidInput, match="duplicate host name 'web1.example.com'"):
        Inventory.from_entries([GOOD, GOOD])
    with pytest.raises(InvalidInput, match="no hosts"):
        Inventory.from_entries([])


def test_inventory_file_with_defaults(tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text(
        json.dumps(
            {
                "defaults": {"user": "deploy", "deploy_root": "/srv/app"},
                "hosts": [{"address": "web1", "tags": ["canary"]}, {"address": "web2", "port": 2200}],
            }
        )
    )
    inventory = Inventory.from_file(path)
    assert [(h.name, h.port, h.user, h.deploy_root) for h in inventory.hosts] == [
        ("web1", 22, "deploy", "/srv/app"),
        ("web2", 2200, "deploy", "/srv/app"),
    ]
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        Inventory.from_file(path)
    with pytest.raises(InvalidInput, match="No such file"):
        Inventory.from_file(tmp_path / "missing.json")


def test_selection_by_tag_count_and_fraction():
    hosts = Inventory.from_entries(
        [
            {**GOOD, "name": f"h{i}", "address": f"web{i}", "tags": ["canary"] if i < 2 else []}
            for i in range(10)
        ]
    ).hosts
    names = lambda selection: [h.name for h in selection.apply(hosts)]  # noqa: E731
    assert names(Selection(tag="canary")) == ["h0", "h1"]
    assert names(Selection(count=3)) == ["h0", "h1", "h2"]
    assert names(Selection(fraction=0.25)) == ["h0", "h1", "h2"]  # rounded up
    assert names(Selection(fraction=0.01)) == ["h0"]  # at least one
    assert names(Selection(names=("h5", "h7"))) == ["h5", "h7"]
    assert len(names(Selection())) == 10
    for bad in (
        {"count": 0},
        {"fraction": 1.5},
        {"fraction": 0},
        {"count": 1, "fraction": 0.5},
        {"tag": "a b"},
    ):
        with pytest.raises(InvalidInput):
            Selection(**bad)


def test_transport_options_are_checked():
    with pytest.raises(InvalidInput, match="ssh known_hosts"):
        release.SshTransport(known_hosts="/etc/known hosts")
    with pytest.raises(InvalidInput, match="ssh option"):
        release.SshTransport(extra_options=("ProxyCommand=sh -c x",))
    with pytest.raises(InvalidInput, match="ssh option"):
        release.SshTransport(extra_options=("proxycommand=nc",))


def test_ssh_commands_are_fixed_words_plus_checked_values():
    host = Inventory.from_entries([GOOD]).hosts[0]
    transport = release.SshTransport(known_hosts="/etc/kh", identity_file="/etc/key", control_dir="/run/c")
    script = transport.script_command(host, "flip", ["/srv/app", "abc123"])
    assert script.argv[-7:] == ["deploy@web1.example.com", "sh", "-s", "--", "flip", "/srv/app", "abc123"]
    assert "StrictHostKeyChecking=yes" in script.argv and "ControlPath=/run/c/%C" in script.argv
    assert script.stdin_data == release.host_script_text()
    steps = dict(
        transport.push_steps(
            host,
            "/build/tree",
            "/tmp/x/.release.list",
            ["5", "abc123", "7", "1700000000", "push/abc123/m/1"],
        )
    )
    assert list(steps) == ["transfer"]  # one ssh session per host
    rsync = steps["transfer"]
    assert "--inplace" not in rsync.argv and "-L" not in rsync.argv and "--copy-links" not in rsync.argv
    assert rsync.argv[-3:] == [
        "/build/tree/", "/tmp/x/.release.list", "deploy@web1.example.com:/srv/app/releases/next/"
    ]  # fmt: skip
    remote_shell = rsync.argv[rsync.argv.index("-e") + 1]
    assert remote_shell.startswith("ssh -o BatchMode=yes") and remote_shell.endswith("-p 2222")
    # The receiving rsync runs through the host script, sent as the quoted text
    # of `sh -c`, under its lock: the remote shell sees fixed and checked words.
    receiver = next(a for a in rsync.argv if a.startswith("--rsync-path="))
    words = shlex.split(receiver.removeprefix("--rsync-path="))
    assert words[:2] == ["sh", "-c"] and words[2] == release.host_script_text()
    assert words[3:] == ["host_release", "transfer", "/srv/app", "5", "abc123", "7", "1700000000",
                         "push/abc123/m/1", "--", "rsync"]  # fmt: skip
    assert "--no-perms" in rsync.argv  # the host script sets modes (a shared inode is never chmod'ed)
    # The host script links unchanged files from the live release itself (rsync's
    # --link-dest would look every file of the tree up there).
    assert not any(a.startswith("--link-dest") for a in rsync.argv)


# Linux's limit on one argument (MAX_ARG_STRLEN, 32 pages): the host script's
# text is one word of `sh -c`, locally and in the remote user's shell command.
MAX_ARG_STRLEN = 32 * 4096


def test_both_transports_run_one_script_joined_from_its_parts(tmp_path):
    host = Inventory.from_entries([{**GOOD, "deploy_root": str(tmp_path / "root")}]).hosts[0]
    text = release.host_script_text()
    # The parts in order, without their comment lines (every host parses the text on every action).
    parts = [transports.without_comment_lines(text_of(part)) for part in transports.HOST_SCRIPT_PARTS]
    assert text == "\n".join([*parts, 'main "$@"\n'])
    assert not any(line.lstrip().startswith("#") for line in text.splitlines())
    assert len(text) < 0.6 * (len(text_of("host_release.sh")) + len(text_of("host_transfer.sh")))
    assert text.endswith('\nmain "$@"\n') and text.splitlines().count('main "$@"') == 1
    assert len(shlex.quote(text).encode()) < MAX_ARG_STRLEN
    ssh, local = release.SshTransport(), release.LocalTransport()
    assert ssh.script_command(host, "status", [host.deploy_root, "5"]).stdin_data == text
    assert local.script_command(host, "status", [host.deploy_root, "5"]).argv == [
        "sh", "-c", text, "host_release", "status", host.deploy_root, "5"
    ]  # fmt: skip
    args = ["5", "abc123", "7", "1700000000", "push/abc123/m/1"]
    [(_, local_push)] = local.push_steps(host, "/build/tree", "/tmp/x/.release.list", args)
    [(_, ssh_push)] = ssh.push_steps(host, "/build/tree", "/tmp/x/.release.list", args)
    receiver = next(a for a in ssh_push.argv if a.startswith("--rsync-path="))
    assert shlex.split(receiver.removeprefix("--rsync-path="))[:4] == local_push.argv[:4]
    # A part alone only defines functions: nothing runs before every part is in.
    whole = subprocess.run(local.script_command(host, "status", [host.deploy_root, "5"]).argv,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert whole.returncode == 0 and whole.stdout.startswith("live=\n"), whole.stderr
    for part in ("host_release.sh", "host_transfer.sh"):
        alone = subprocess.run(
            ["sh", "-c", text_of(part), "host_release", "status", host.deploy_root, "5"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (alone.returncode, alone.stdout, alone.stderr) == (0, "", ""), part


def text_of(part: str) -> str:
    return (resources.files("buildbot_steps.release") / part).read_text()


# --- CLI -------------------------------------------------------------------


@pytest.fixture
def local_inventory(tmp_path):
    path = tmp_path / "hosts.json"
    roots = [tmp_path / f"root{i}" for i in range(3)]
    path.write_text(
        json.dumps(
            [{"name": f"h{i}", "address": "localhost", "deploy_root": str(r)} for i, r in enumerate(roots)]
        )
    )
    return path, roots


def cli(*argv) -> int:
    return buildbot_cd.main([str(a) for a in argv])


def test_cli_push_flip_status_rollback(local_inventory, tmp_path, capsys):
    inventory, roots = local_inventory
    common = ["--inventory", inventory, "--transport", "local"]
    for n, revision in enumerate(("r1", "r2")):
        tree = tmp_path / revision
        tree.mkdir()
        (tree / "version").write_text(revision)
        # rsync's quick check compares size and mtime: a same-size file
        # rewritten within the same second would look unchanged.
        os.utime(tree / "version", (BUILD_TIME + n, BUILD_TIME + n))
        assert cli("push", *common, "--source", tree, "--revision", revision, "--build", "5") == 0
        assert cli("flip", *common, "--revision", revision) == 0
    assert all((r / "current/version").read_text() == "r2" for r in roots)
    capsys.readouterr()
    assert cli("status", *common, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [h["details"]["live_revision"] for h in report] == ["r2"] * 3
    assert cli("rollback", *common, "--revision", "r2", "--count", "1") == 0
    assert [(r / "current/version").read_text() for r in roots] == ["r1", "r2", "r2"]
    assert cli("rollback", *common, "--revision", "r2") == 0
    assert all((r / "current/version").read_text() == "r1" for r in roots)


def test_cli_flip_of_a_revision_never_pushed_fails_per_host(local_inventory, capsys):
    inventory, _ = local_inventory
    assert cli("flip", "--inventory", inventory, "--transport", "local", "--revision", "nope") == 1
    assert "no complete release of revision nope" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flip", "--revision", "x;y"], "flip: revision: unsafe value 'x;y'"),
        (["flip", "--revision", "r1", "--fraction", "2"], "host fraction must be in (0, 1]"),
        (["flip", "--revision", "r1", "--hosts", "h9"], "unknown host(s): h9"),
        (["flip", "--revision", "r1", "--hosts", ""], "no host"),
        (["rollback", "--hosts", ","], "rollback: no hosts selected"),
        (["push", "--revision", "r1", "--source", "/no/such/dir"], "is not a directory"),
        (["status", "--slots", "1"], "slots must be an integer 3..100"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(local_inventory, capsys, argv, message):
    inventory, _ = local_inventory
    assert cli(*argv, "--inventory", inventory, "--transport", "local") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_bad_inventory_file_in_a_real_process(tmp_path):
    bad = tmp_path / "hosts.json"
    bad.write_text(json.dumps([{"address": "a b", "deploy_root": "/srv"}]))
    result = subprocess.run(
        [sys.executable, "-m", "buildbot_steps.cli", "status", "--inventory", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unsafe or missing host address 'a b'" in result.stderr and "Traceback" not in result.stderr


# --- slots on one host (local transport) ---------------------------------------


def test_slots_are_recycled_but_never_the_live_one_or_its_rollback_target(local_inventory, tmp_path):
    inventory, roots = local_inventory
    runner = release.ReleaseRunner(Inventory.from_file(inventory), release.LocalTransport(), slots=3)
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(1, 6):
        (tree / "version").write_text(f"r{n}")
        os.utime(tree / "version", (BUILD_TIME + n, BUILD_TIME + n))
        pushed = runner.push(tree, f"r{n}", str(n))
        assert pushed.all_ok, pushed.to_text()
        assert runner.flip(f"r{n}", only_hosts=pushed.ok_hosts).all_ok
    slots = runner.status().hosts[0].details["slots"]
    assert sorted(s["revision"] for s in slots.values()) == ["r3", "r4", "r5"]
    # A push that is never flipped takes the oldest slot, r3: the rollback
    # target of r5 is r4, which stays.
    (tree / "version").write_text("r6")
    assert runner.push(tree, "r6", "6").all_ok
    assert runner.rollback("r5").all_ok
    assert (roots[0] / "current/version").read_text() == "r4"
    # r4's recorded previous (r3) has been overwritten by r6: refuse, do not guess.
    refused = runner.rollback()
    assert not refused.ok_hosts and "has been replaced" in refused.hosts[0].error
    assert (roots[0] / "current/version").read_text() == "r4"


def test_deploy_lock_refuses_overlapping_runs_only():
    staging = Inventory.from_entries([{**GOOD, "address": "stage1"}, {**GOOD, "address": "stage2"}]).hosts
    production = Inventory.from_entries([{**GOOD, "address": "prod1"}]).hosts
    with release.deploy_lock("push r1", staging):
        overlapping = pytest.raises(release.DeployInProgress, match="refusing to flip r1: push r1 is running")
        with overlapping, release.deploy_lock("flip r1", staging[1:]):
            pass
        with release.deploy_lock("push r1", production):  # other hosts: allowed
            assert release.deploy_in_progress()
    assert not release.deploy_in_progress()


def test_fanout_settings_are_the_cores_options_with_the_cores_checks():
    settings, core = release.FanoutSettings(), _core.FanoutOptions()
    assert isinstance(settings, _core.FanoutOptions)
    fields = ("concurrency", "host_timeout_s", "max_retries", "retry_backoff_s", "max_fail_fraction")
    assert [getattr(settings, f) for f in fields] == [getattr(core, f) for f in fields]
    assert release.FanoutSettings(concurrency=4, host_timeout_s=15.0).concurrency == 4
    with pytest.raises(release.InvalidInput, match="concurrency must be at least 1, got 0"):
        release.FanoutSettings(concurrency=0)
    with pytest.raises(release.InvalidInput, match="max_fail_fraction must be within"):
        release.FanoutSettings(max_fail_fraction=1.5)
    with pytest.raises(release.InvalidInput, match="max_retries must be a number"):
        release.FanoutSettings(max_retries=True)
    with pytest.raises(release.InvalidInput, match="must be numbers"):
        release.FanoutSettings(concurrency="many")


def test_cli_ssh_key_files_may_be_given_from_the_current_directory(local_inventory, tmp_path, monkeypatch):
    # As the README's operator example writes them: ssh needs absolute paths.
    inventory, _ = local_inventory
    monkeypatch.chdir(tmp_path)
    args = buildbot_cd.build_parser().parse_args(
        ["status", "--inventory", str(inventory), "--known-hosts", "kh", "--identity", "keys/id"]
    )
    transport = release_cli.runner_from(args).transport
    assert (transport.known_hosts, transport.identity_file) == (
        str(tmp_path / "kh"),
        str(tmp_path / "keys/id"),
    )
