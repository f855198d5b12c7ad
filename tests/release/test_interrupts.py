"""Interrupted pushes: kill -9 and Ctrl-C of `buildbot-cd push` against real sshd hosts.

The receiving rsync on a host is held still with SIGSTOP, so the interruption
lands mid-transfer for certain.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from harness.fleet_cli import (
    WAIT_S,
    LineCollector,
    assert_next_push_converges,
    big_tree,
    command_line,
    hold_receivers,
    signal_all,
    start_cli_push,
    stop_receivers,
    wait_for,
    wait_or_explain,
)  # fmt: skip
from harness.scratch import killed_process_tmpdir
from harness.sshd_hosts import descendant_pids, process_name


def transfer_children(cli_pid: int) -> list[int]:
    """The push's rsync and ssh processes, not ssh's shared connection ([mux] master),
    which outlives any one command by design (ControlPersist)."""
    return [p for p in descendant_pids(cli_pid) if "[mux]" not in command_line(p) and command_line(p)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_push_leaves_no_transfer_running_and_the_next_run_converges(
    make_runner, make_tree, fleet, tmp_path, cli_tmpdir
):
    hosts = fleet.hosts[:2]
    hold_receivers(fleet, hosts, tmp_path)
    cli = start_cli_push(fleet, hosts, tmp_path, big_tree(make_tree, "v1"), "v1", tmpdir=cli_tmpdir)
    stopped = stop_receivers(fleet, hosts)
    children = transfer_children(cli.pid)
    rsyncs = [p for p in children if process_name(p) == "rsync"]
    assert rsyncs, [command_line(p) for p in children]
    cli.kill()
    cli.communicate(timeout=WAIT_S)
    # While the hosts' side is still stopped, the master's rsync must already be
    # gone: a transfer left running would finish (and commit) behind the
    # operator's back. (Its ssh waits for the host's side to see the end.)
    wait_for(lambda: not any(alive(p) for p in rsyncs), "the killed push's rsync to exit")
    signal_all(stopped, signal.SIGCONT)
    wait_for(lambda: not any(alive(p) for p in children), "the killed push's ssh and rsync to exit")
    wait_for(lambda: not any(fleet.session_pids(h, "rsync") for h in hosts), "the hosts' rsync to exit")
    wait_for(lambda: not any(fleet.session_pids(h, "sh") for h in hosts), "the hosts' script to exit")
    runner = make_runner(hosts=hosts)
    assert all(not h.details["slots"] or all(s["state"] != "complete" for s in h.details["slots"].values())
               for h in runner.status().hosts), "the killed push committed"  # fmt: skip

    assert_next_push_converges(runner, make_tree, hosts)


@pytest.fixture
def cli_tmpdir() -> Iterator[str]:
    with killed_process_tmpdir() as path:
        yield path


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """A run started in the background (`cmd &` without job control, as nohup'd CI is) has SIGINT
    ignored, the CLI it starts inherits that and rightly ignores Ctrl-C: the CLI must start with
    SIGINT at its default, which exec gives a child of a process that catches it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_not_ignored")
def test_ctrl_c_cancels_at_once_and_says_which_hosts_committed(make_runner, make_tree, fleet, tmp_path):
    done_host, stuck_host = fleet.hosts[:2]
    hold_receivers(fleet, [stuck_host], tmp_path)
    cli = start_cli_push(fleet, [done_host, stuck_host], tmp_path, big_tree(make_tree, "v1"), "v1")
    stopped = stop_receivers(fleet, [stuck_host])
    progress, output = LineCollector(cli.stderr), LineCollector(cli.stdout)
    try:
        wait_for(
            lambda: any(f"{done_host.name}: ok" in line for line in progress.lines), f"{done_host.name} done"
        )
        os.kill(cli.pid, signal.SIGINT)
        # Well before the host timeout (600 s by default): the transfer is cancelled.
        wait_or_explain(cli, progress)
        out, err = output.text(), progress.text()
    finally:
        signal_all(stopped, signal.SIGCONT)
    assert cli.returncode == 130, out + err
    assert (
        f"interrupted; done on 1 host(s): {done_host.name}; "
        f"not confirmed on 1 host(s): {stuck_host.name} (one may have finished after the interruption"
    ) in err
    assert f"{stuck_host.name:<20} cancelled" in out
    wait_for(lambda: not fleet.session_pids(stuck_host, "rsync"), "the cancelled host's rsync to exit")
    runner = make_runner(hosts=[done_host, stuck_host])
    slots = {h.host: h.details["slots"] for h in runner.status().hosts}
    assert slots[done_host.name]["0"]["revision"] == "v1"
    assert all(s["state"] != "complete" for s in slots[stuck_host.name].values())


# The host's mv, then, right after the flip of `current`, the end of the ssh
# connection that carried it (its sshd session killed), once: the client
# exits 255, a transient code, and the fan-out runs the rollback again.
DROPPING_MV = """#!/bin/sh
{mv} "$@" || exit
for last; do :; done
case $last in */current) ;; *) exit 0 ;; esac
[ -e "{marker}" ] && exit 0
: >"{marker}"
pid=$$
while [ "$pid" -gt 1 ]; do
  pid=$(cut -d' ' -f4 /proc/$pid/stat)
  case $(cat /proc/$pid/comm) in sshd*) kill -9 "$pid"; exit 0 ;; esac
done
"""


@pytest.mark.parametrize(
    "pushes, bad",
    [
        ([("v1", "v1"), ("v2", "v2"), ("v3", "v3")], None),
        # A rebuild of the same revision: the commit tells the two apart,
        # whether the bad revision is given or not.
        ([("v1", "v1"), ("v2", "v2 build 1"), ("v2", "v2 build 2")], None),
        ([("v1", "v1"), ("v2", "v2 build 1"), ("v2", "v2 build 2")], "v2"),
    ],
    ids=["three-revisions", "a-rebuild", "a-rebuild-named"],
)
def test_a_rollback_retried_after_its_connection_dropped_steps_back_once(
    make_runner, make_tree, fleet, tmp_path, pushes, bad
):
    host = fleet.hosts[0]
    runner = make_runner(hosts=[host])
    for build, (revision, content) in enumerate(pushes, start=1):
        tree = make_tree(f"tree{build}", {"version.txt": content})
        assert runner.push(tree, revision, str(build)).all_ok and runner.flip(revision).all_ok
    marker = tmp_path / "dropped"
    dropping_mv = DROPPING_MV.format(mv=shutil.which("mv"), marker=marker)
    fleet.put_stand_in(host, tmp_path / "stand-in", "mv", dropping_mv)

    report = make_runner(hosts=[host]).rollback(bad)  # new connections, under the new PATH

    assert marker.exists(), "the connection was not dropped after the flip"
    (result,) = report.hosts
    assert result.retries >= 1, report.to_text()
    assert (host.deploy_root / "current/version.txt").read_text() == pushes[1][1]
    assert result.ok and result.details["changed"] == "no", report.to_text()
