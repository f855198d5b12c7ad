"""What the hosts log and `buildbot-cd` print: retries (not commands), sizes, slots.

The fan-out is the core's own, running real processes: a step that exits with
a transient code once is retried, and the report counts one retry.
"""

from __future__ import annotations

from buildbot_steps import _core
from buildbot_steps.release import Host, human_bytes
from buildbot_steps.release.reports import RunReport, host_report, slot_lines

# Exits 23 (rsync's "partial transfer", transient) the first time, then 0: $1 marks the first run.
FAILS_ONCE = ["sh", "-c", 'test -e "$1" && exit 0; : > "$1"; exit 23', "fails-once"]


def run_hosts(jobs: list[_core.HostJob], retries: int) -> list:
    options = _core.FanoutOptions(
        concurrency=2, host_timeout_s=60.0, max_retries=retries, retry_backoff_s=0.0
    )
    return _core.Fanout(options).run(jobs)


def command(argv: list[str]) -> _core.Command:
    return _core.Command(argv=argv, stdin_data="", parse_rsync_stats=False)


def test_tries_count_retries_not_the_steps_each_host_runs(tmp_path):
    steps = ("prepare", "transfer", "commit")
    jobs = [
        _core.HostJob(host="steady", steps=[command(["true"])] * 3),
        _core.HostJob(
            host="flaky",
            steps=[command(["true"]), command([*FAILS_ONCE, str(tmp_path / "m")]), command(["true"])],
        ),  # fmt: skip
        _core.HostJob(host="broken", steps=[command(["true"]), command(["sh", "-c", "exit 23"])]),
    ]
    results = {r.host: r for r in run_hosts(jobs, retries=2)}
    reports = {
        name: host_report(
            result,
            steps,
            Host(name=name, address="localhost", port=22, user="deploy", deploy_root="/srv/app"),
        )
        for name, result in results.items()
    }
    assert (results["steady"].attempts, reports["steady"].retries) == (3, 0)
    assert (results["flaky"].attempts, reports["flaky"].retries) == (4, 1)
    assert reports["flaky"].ok
    assert (reports["broken"].failed_step, reports["broken"].retries) == ("transfer", 2)

    text = RunReport("push", list(reports.values()), 1.0, "r1").to_text()
    header = text.splitlines()[1]
    assert header.split()[:5] == ["host", "status", "step", "exit", "retries"]
    by_host = {
        row.split()[0]: row.split()
        for row in text.splitlines()[2:]
        if row.split()[:1] in [[n] for n in reports]
    }
    assert by_host["flaky"][4] == "1" and by_host["steady"][4] == "0" and by_host["broken"][4] == "2"


def test_sizes_read_as_a_person_says_them():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**5)] == [
        "0 bytes", "1023 bytes", "1.0 KB", "1.5 KB", "5.0 MB", "3072.0 TB",
    ]  # fmt: skip


def test_status_slots_are_listed_in_order_with_the_live_one_marked():
    details = {
        "live": "1",
        "slots": {
            "10": {"state": "empty"},
            "1": {"state": "complete", "revision": "r2", "build": "7"},
            "0": {"state": "complete", "revision": "r1", "build": "6", "previous": ""},
        },
    }
    assert slot_lines(details) == [
        "    slot 0: state=complete revision=r1 build=6",
        "    slot 1: state=complete revision=r2 build=7  (live)",
        "    slot 10: state=empty",
    ]
    assert slot_lines({"live": None}) == []
