"""The warm pytest runner on a real master and real workers: one pytest
process per shard, fed batch after batch through the master's web server.

The fixture suite records every pytest session it starts (its conftest), so
the start-ups a build paid are counted, not inferred from timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task

from buildbot_steps import _core
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard import shard_step, warm_channel, warm_pytest_plugin, warm_step
from buildbot_steps.shard.commands import RUNNER_ERROR_NOTE
from buildbot_steps.shard.shard_step import RunShard
from buildbot_steps.shard.warm_channel import ChannelError, results_of
from buildbot_steps.shard.warm_step import _WarmRun
from harness.fixture_suite import (
    FAILING_TEST,
    FLAKY_TEST,
    HELD_WITH_A_BROKEN_TEST,
    SUITE_SIZE,
    build_with_a_held_run,
    check_decided_without_the_held_run,
)

FAILURE = 2
SHARD_WORKERS = 2
REQUEST_TIMEOUT_S = 10
# A pytest of four small modules: seconds at most, even on a loaded machine.
RUNNER_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cluster(make_cluster):
    # Batches of about one test: the cold path would start pytest ~34 times.
    return make_warm_cluster(make_cluster, min_batch_s=0.01)


def make_warm_cluster(make_cluster, **step_kwargs):
    """A cluster of SHARD_WORKERS shards whose ShardedTest runs warm runners."""
    return make_cluster(
        shard_workers=SHARD_WORKERS,
        www_plugins={warm_channel.PLUGIN_NAME: {}},
        warm_runner=True,
        **step_kwargs,
    )


@pytest.fixture(scope="module")
def warm_build(cluster):
    return cluster.wait_for_build(cluster.force_build())


def shard_steps(cluster, parent_buildid: int) -> list[dict]:
    builds = cluster.api(
        f"builds?builderid={cluster.builder_id('tests-shard')}&property=shard_parent_buildid"
    )["builds"]
    ours = [b for b in builds if b["properties"].get("shard_parent_buildid", [None])[0] == parent_buildid]
    return [cluster.api(f"builds/{b['buildid']}/steps/run-shard")["steps"][0] for b in ours]


def test_a_warm_build_runs_every_test_with_one_start_up_per_shard(cluster, warm_build):
    props = warm_build["properties"]
    assert warm_build["results"] == FAILURE, warm_build["state_string"]
    assert props["tests_total"] == SUITE_SIZE
    assert (props["tests_failed"], props["tests_flaky"]) == (1, 1)
    assert props["tests_passed"] == SUITE_SIZE - 2
    steps = shard_steps(cluster, warm_build["buildid"])
    assert len(steps) == SHARD_WORKERS
    batches = [int(s["state_string"].split(" batches")[0]) for s in steps]
    # The suite's session fixture records each pytest session that ran a test
    # (a runner that started after the others had taken every test ran none).
    starts = (cluster.state_dir / "sessions.log").read_text().split()
    runners_with_tests = sum(count > 0 for count in batches)
    assert len(starts) == runners_with_tests >= 1, (starts, batches)
    assert sum(batches) > 2 * len(starts), [s["state_string"] for s in steps]
    report = cluster.step_log(warm_build["buildid"], "sharded-tests", "report")
    assert FAILING_TEST in report and FLAKY_TEST in report


# Several files and several batches per runner.
QUICK_FILES = 5
QUICK_TESTS_PER_FILE = 8
QUICK_TESTS = QUICK_FILES * QUICK_TESTS_PER_FILE
KILLER_TEST = "tests/test_killer.py::test_ends_its_runner"
# As a project lays a suite out: a package whose conftest.py holds the fixtures.
KILLER_CONFTEST = """import os
import pathlib

import pytest


@pytest.fixture(scope="session", autouse=True)
def record_session_start():
    with open(pathlib.Path(os.environ["SHARD_FIXTURE_STATE_DIR"]) / "sessions.log", "a") as log:
        log.write(f"{os.getpid()}\\n")


@pytest.fixture
def answer():
    return 42
"""
KILLER_SUITE = {
    "pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n",
    "tests/__init__.py": "",
    # Used by tests in every batch: a runner that collected again per batch
    # would lose the package's fixtures after its first batch.
    "tests/conftest.py": KILLER_CONFTEST,
    **{
        f"tests/test_quick_{file}.py": "".join(
            f"def test_{i}(answer):\n    assert answer == 42\n\n\n" for i in range(QUICK_TESTS_PER_FILE)
        )
        for file in range(QUICK_FILES)
    },
    # Ends a warm runner, as a segfault in an extension would; passes batch by batch.
    "tests/test_killer.py": (
        "import os\n\n\ndef test_ends_its_runner():\n"
        "    if os.environ.get('BUILDBOT_CD_QUEUE_TOKEN'):\n        os._exit(3)\n"
    ),
}


def write_suite(directory, files: dict[str, str]):
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


SUCCESS = 0
# Each of the two warm runners can die once; the third attempt runs batch by batch.
KILLER_ATTEMPTS = SHARD_WORKERS + 1


def test_a_runner_that_dies_fails_its_batch_and_the_shard_goes_on_batch_by_batch(
    make_cluster, tmp_path_factory
):
    suite = write_suite(tmp_path_factory.mktemp("killer-suite"), KILLER_SUITE)
    cluster = make_warm_cluster(
        make_cluster, suite_source=suite, min_batch_s=0.01, max_attempts=KILLER_ATTEMPTS
    )
    build = cluster.wait_for_build(cluster.force_build())
    props = build["properties"]
    assert build["results"] == SUCCESS, build["state_string"]
    assert (props["tests_total"], props["tests_failed"]) == (QUICK_TESTS + 1, 0)
    # The killer's batches failed with their runner, then it passed batch by
    # batch: no failure of its own is known (a batch-mate may have been the
    # cause), so it passed, and is named with every test whose batch failed
    # as a whole. None is lost, none is called flaky.
    assert KILLER_TEST in props["tests_passed_after_batch_failure_names"]
    assert props["tests_flaky_names"] == []
    assert props["tests_passed"] == QUICK_TESTS + 1
    logs = [
        cluster.step_log(b["buildid"], "run-shard", "stdio")
        for b in cluster.api(f"builds?builderid={cluster.builder_id('tests-shard')}")["builds"]
    ]
    fall_back = "warm runner ended (exit code 3) before the shard: batch by batch"
    # The killer passed, which it does only batch by batch: a shard that fell
    # back ran it as a pytest of its own, with a JUnit report, after the fall-back.
    assert any(fall_back in log and "--junitxml=" in log.split(fall_back, 1)[1] for log in logs), logs


# Every test passes; the session fixture every batch shares fails its teardown.
BROKEN_TEARDOWN_SUITE = {
    **{name: text for name, text in KILLER_SUITE.items() if name != "tests/test_killer.py"},
    "tests/conftest.py": KILLER_CONFTEST
    + (
        "\n\n@pytest.fixture(scope='session', autouse=True)\ndef server():\n    yield\n"
        "    raise RuntimeError('the server would not stop')\n"
    ),
}


# Every test passes; the session's teardown ends the runner, as a crash would.
DYING_TEARDOWN_SUITE = {
    **BROKEN_TEARDOWN_SUITE,
    "tests/conftest.py": KILLER_CONFTEST
    + ("\n\n@pytest.fixture(scope='session', autouse=True)\ndef server():\n    yield\n    os._exit(3)\n"),
}


@pytest.mark.parametrize(
    ("suite_files", "error"),
    [
        (BROKEN_TEARDOWN_SUITE, "the server would not stop"),
        (DYING_TEARDOWN_SUITE, "the runner ended (exit code 3) in its session's teardown"),
    ],
    ids=["teardown-error", "teardown-crash"],
)
def test_a_session_teardown_that_fails_fails_the_build_with_every_test_passed(
    make_cluster, tmp_path_factory, suite_files, error
):
    suite = write_suite(tmp_path_factory.mktemp("broken-teardown-suite"), suite_files)
    cluster = make_warm_cluster(make_cluster, suite_source=suite, min_batch_s=0.01)
    build = cluster.wait_for_build(cluster.force_build())
    props = build["properties"]
    assert build["results"] == FAILURE, build["state_string"]
    assert (props["tests_passed"], props["tests_failed"], props["tests_flaky"]) == (QUICK_TESTS, 0, 0)
    # One error per runner that ran a test (a runner that took none set up nothing).
    starts = (cluster.state_dir / "sessions.log").read_text().split()
    assert props["tests_runner_errors"] == len(starts) >= 1
    assert f"{RUNNER_ERROR_NOTE}: {len(starts)}" in build["state_string"]
    failures = cluster.step_log(build["buildid"], "sharded-tests", "failures")
    assert failures.count("ERROR OUTSIDE ANY TEST") == len(starts)
    assert error in failures


def test_a_warm_runner_held_by_a_surprise_is_copied_and_stopped_when_every_test_is_decided(make_cluster):
    # As test_sharded_integration.py's
    # test_a_test_failing_in_the_copy_of_a_held_batch_is_rerun_without_waiting_for_it,
    # with warm runners: one batch holds every test, one run of the long test
    # is held and nothing ends the hold. The other shard's copy decides the
    # long test and fails the broken one, whose re-run goes to that shard at
    # once; then every test is decided and the held runner, which could take
    # no more batches, is stopped. The build ends without it.
    cluster = make_warm_cluster(make_cluster, tests=HELD_WITH_A_BROKEN_TEST, min_batch_s=60.0)
    build, held_pid = build_with_a_held_run(cluster)
    check_decided_without_the_held_run(cluster, build, held_pid, RUNNER_TIMEOUT_S)
    cluster.stop()


def post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def test_the_queue_answers_nobody_without_a_running_shard_s_secret(cluster, warm_build):
    queue = f"{cluster.url}plugins/{warm_channel.PLUGIN_NAME}/{warm_channel.QUEUE_PATH}"
    next_batch = json.dumps({"op": "next"}).encode()
    for token in (None, "", "guess", "x" * 43):
        status, answer = post(queue, next_batch, token)
        assert status == 403 and "kind" not in answer, (token, status, answer)
    status, _ = post(f"{cluster.url}plugins/{warm_channel.PLUGIN_NAME}/other", next_batch, "guess")
    assert status == 404
    # The web UI loads every configured plugin's scripts: this one has none, and says so with a 200.
    with urllib.request.urlopen(
        f"{cluster.url}plugins/{warm_channel.PLUGIN_NAME}/scripts.js", timeout=REQUEST_TIMEOUT_S
    ) as response:
        assert response.status == 200 and response.read() == b""


def test_a_runner_s_results_are_checked_like_a_junit_report():
    batch = {"a.py::t1", "a.py::t2"}
    good = results_of([{"id": "a.py::t1", "outcome": "failed", "seconds": 0.5, "message": "boom"}], batch)
    assert [(r.id, r.passed, r.skipped, r.seconds, r.message) for r in good] == [
        ("a.py::t1", False, False, 0.5, "boom")
    ]
    bad_reports = [
        ("not a list", "must be a list"),
        ([{"id": "b.py::other", "outcome": "passed", "seconds": 1}], "not for a test of this batch"),
        ([{"id": "a.py::t1", "outcome": "passed", "seconds": 1}] * 2, "reported twice"),
        ([{"id": "a.py::t1", "outcome": "fine", "seconds": 1}], "outcome 'fine'"),
        ([{"id": "a.py::t1", "outcome": "passed", "seconds": math.nan}], "took nan s"),
        ([{"id": "a.py::t1", "outcome": "passed", "seconds": -1}], "took -1 s"),
        ([{"id": "a.py::t1", "outcome": "passed", "seconds": True}], "is not a number"),
        ([{"id": "a.py::t1", "outcome": "passed", "seconds": 10**400}], "took 1000"),
    ]
    for report, expected in bad_reports:
        with pytest.raises(ChannelError, match=expected):
            results_of(report, batch)


def test_the_runner_and_the_master_agree_on_the_environment():
    # The plugin runs on the worker without buildbot-cd: it keeps its own copies.
    assert warm_pytest_plugin.QUEUE_URL_ENV == warm_channel.QUEUE_URL_ENV
    assert warm_pytest_plugin.QUEUE_TOKEN_ENV == warm_channel.QUEUE_TOKEN_ENV
    assert warm_channel.PLUGIN_SOURCE.read_text().startswith('"""The warm pytest runner')


class Batch:
    def __init__(self, batch_id: int, tests: list[str]):
        self.id, self.tests = batch_id, tests


def test_a_channel_hands_out_batches_and_fails_one_whose_results_it_refuses():
    queue = [Batch(1, ["a.py::t1"]), Batch(2, ["a.py::t2"])]
    handed_in: list[tuple] = []

    async def next_batch():
        return queue.pop(0) if queue else None

    def hand_in(batch, results, wall_s, problem):
        handed_in.append((batch.id, [r.id for r in results], problem))

    channel = warm_channel.WarmChannel(
        next_batch, hand_in, lambda: 0.0, max_body_bytes=1000, on_end=lambda *end: None
    )

    def ask(payload):
        return asyncio.run(channel.handle(payload))

    assert ask({"op": "next"}) == {"kind": "run", "batch": 1, "tests": ["a.py::t1"]}
    assert ask(
        {"op": "report", "batch": 1, "results": [{"id": "a.py::t1", "outcome": "passed", "seconds": 0.1}]}
    )
    assert ask({"op": "next"})["batch"] == 2
    with pytest.raises(ChannelError, match="not for a test of this batch"):
        ask(
            {"op": "report", "batch": 2, "results": [{"id": "a.py::t1", "outcome": "passed", "seconds": 0.1}]}
        )
    assert handed_in[0] == (1, ["a.py::t1"], None)
    assert handed_in[1][0] == 2 and handed_in[1][2].startswith("results refused: ")
    assert channel.running == {}
    with pytest.raises(ChannelError, match="batch 2 is not running"):
        ask({"op": "report", "batch": 2, "results": []})
    with pytest.raises(ChannelError, match="unknown op"):
        ask({"op": "shutdown"})
    assert ask({"op": "next"}) == {"kind": "done"} and ask({"op": "next"}) == {"kind": "done"}


def test_a_runner_s_session_error_is_heard_once_and_only_after_done():
    queue = [Batch(1, ["a.py::t1"])]
    ends: list[tuple[str, str | None]] = []

    async def next_batch():
        return queue.pop(0) if queue else None

    channel = warm_channel.WarmChannel(
        next_batch, lambda *_: None, lambda: 0.0, max_body_bytes=1000, on_end=lambda *end: ends.append(end)
    )

    def ask(payload):
        return asyncio.run(channel.handle(payload))

    ask({"op": "next"})
    # Before "done" the runner's session is not over: an "end" then is refused.
    with pytest.raises(ChannelError, match="once, after 'done'"):
        ask({"op": "end", "error": "early", "after": "a.py::t1"})
    ask({"op": "report", "batch": 1, "results": []})
    assert ask({"op": "next"}) == {"kind": "done"}
    with pytest.raises(ChannelError, match="text or null"):
        ask({"op": "end", "error": ["not", "text"], "after": None})
    # A test id is one line in the logs, whatever the runner sends.
    assert ask({"op": "end", "error": "x" * 10**5, "after": "a.py::t1\n=== forged"}) == {"ok": True}
    [(after, message)] = ends
    assert after == "a.py::t1 === forged" and len(message) == warm_channel.MAX_MESSAGE_CHARS
    with pytest.raises(ChannelError, match="once, after 'done'"):
        ask({"op": "end", "error": "again", "after": "a.py::t1"})
    assert len(ends) == 1


class StepStandIn:
    """What _WarmRun needs of a RunShard: its own wait loop, on a virtual clock."""

    _next_batch_to_run = RunShard._next_batch_to_run
    _idle_since = RunShard._idle_since
    _idle_from = None

    def __init__(self, worker: str, clock: task.Clock):
        self.stopped, self._worker = False, worker
        self.master = SimpleNamespace(reactor=clock)
        self.stdio = SimpleNamespace(addHeader=lambda text: defer.succeed(None))
        self.handed_in: list[tuple[int, str | None]] = []

    def _hand_in(self, session, batch, results, problem, rc=None, wall_s=None) -> None:
        self.handed_in.append((batch.id, problem))

    def updateSummary(self) -> None:  # noqa: N802 (Buildbot's name)
        pass


def test_a_held_request_is_told_to_ask_again_and_one_left_by_an_ended_runner_takes_no_batch():
    clock = task.Clock()
    dispatcher = _core.Dispatcher(
        [_core.TestEstimate("long.py::t", 600.0), _core.TestEstimate("b.py::t", 1.0)],
        workers=2, speculate=False, min_batch_s=1000,
    )  # fmt: skip
    settings = shard_session.ShardCommandSettings(
        ["pytest", "{tests}"], "w", {}, 1200.0, 10**6, warm_command=["pytest"], queue_url="http://m/"
    )
    session = shard_session.ShardSession(shard_session.DynamicBatches(dispatcher), settings, clock.seconds)
    whole_suite = session.next_batch("w1#1", 0).batch  # another shard runs it all
    step = StepStandIn("w2#1", clock)
    run = _WarmRun(step, session, 1)
    warm_channel.open_channel(run.channel)

    held = defer.ensureDeferred(run.channel.handle({"op": "next"}))
    clock.advance(warm_step.HOLD_S + shard_step.WAIT_POLL_S)
    assert held.result == {"kind": "wait"}  # within the runner's request timeout
    assert warm_step.HOLD_S < warm_pytest_plugin.REQUEST_TIMEOUT_S

    given_up = defer.ensureDeferred(run.channel.handle({"op": "next"}))
    warm_channel.close_channel(run.channel)  # the runner ended: what _run_warm does
    run.settle_unreported(1)
    failed = [shard_session.JUnitTestResult("long.py::t", False, 590.0, "boom")]
    session.report(
        "w1#1", whole_suite.id, [*failed, shard_session.JUnitTestResult("b.py::t", True, 1.0)], 600.0
    )
    clock.advance(shard_step.WAIT_POLL_S)
    assert given_up.called and run.channel.running == {}
    # The re-run goes to the shard's next puller, batch by batch.
    rerun = defer.ensureDeferred(step._next_batch_to_run(session, 1))
    clock.advance(shard_step.WAIT_POLL_S)
    assert list(rerun.result.tests) == ["long.py::t"]


TEARDOWN_TIMEOUT_S = 30.0
OVERRAN = f"shard 0: its session's teardown ran over the batch timeout ({TEARDOWN_TIMEOUT_S:.0f} s)"


def warm_run_told_done(stopped_first: bool = False) -> tuple[task.Clock, _WarmRun, list[str]]:
    """A _WarmRun on a virtual clock whose runner ran its one batch and was
    told it is done (`stopped_first`: the step was stopped and its runner had
    ended); and the reasons it was interrupted for."""
    clock = task.Clock()
    dispatcher = _core.Dispatcher([_core.TestEstimate("a.py::t", 1.0)], workers=1)
    settings = shard_session.ShardCommandSettings(
        ["pytest", "{tests}"],
        "w",
        {},
        TEARDOWN_TIMEOUT_S,
        10**6,
        warm_command=["pytest"],
        queue_url="http://m/",
    )
    session = shard_session.ShardSession(shard_session.DynamicBatches(dispatcher), settings, clock.seconds)
    run = _WarmRun(StepStandIn("w1#1", clock), session, 0)
    interrupts: list[str] = []
    run.cmd = SimpleNamespace(active=True, interrupted=False, interrupt=interrupts.append)
    batch_id = defer.ensureDeferred(run.channel.handle({"op": "next"})).result["batch"]
    report = {
        "op": "report",
        "batch": batch_id,
        "results": [{"id": "a.py::t", "outcome": "passed", "seconds": 1.0}],
    }
    assert defer.ensureDeferred(run.channel.handle(report)).result
    session.report("w1#1", batch_id, [shard_session.JUnitTestResult("a.py::t", True, 1.0)])
    if stopped_first:
        run.step.stopped = True
        warm_channel.close_channel(run.channel)
    assert defer.ensureDeferred(run.channel.handle({"op": "next"})).result == {"kind": "done"}
    return clock, run, interrupts


def end(run: _WarmRun, error: str | None) -> None:
    assert defer.ensureDeferred(run.channel.handle({"op": "end", "error": error, "after": "a.py::t"})).result


def test_a_session_teardown_that_runs_over_the_batch_timeout_is_a_runner_error():
    clock, run, interrupts = warm_run_told_done()
    clock.advance(TEARDOWN_TIMEOUT_S - 1)
    assert run.session.runner_errors == [] and interrupts == []
    clock.advance(2)  # no "end" yet: the teardown runs past the batch timeout
    assert run.session.runner_errors == run.errors == [OVERRAN]
    assert interrupts == ["its session's teardown ran over the batch timeout"]
    end(run, "boom")  # said too late: counted already
    assert run.session.runner_errors == [OVERRAN]


@pytest.mark.parametrize("error", [None, "boom"])
def test_end_gives_the_runner_s_exit_a_timeout_of_its_own_and_an_error_counts_once(error):
    clock, run, interrupts = warm_run_told_done()
    clock.advance(TEARDOWN_TIMEOUT_S - 1)
    end(run, error)
    failed = [] if error is None else ["shard 0: its session's teardown failed after a.py::t:\nboom"]
    clock.advance(TEARDOWN_TIMEOUT_S - 1)  # pytest's own session end (reports, coverage) may take a while
    assert run.session.runner_errors == failed and interrupts == []
    clock.advance(2)  # but a runner that never exits (a thread left running) is stopped
    overran = "it did not exit within the batch timeout after its session ended"
    assert run.session.runner_errors == [*failed, f"shard 0: {overran} ({TEARDOWN_TIMEOUT_S:.0f} s)"]
    assert interrupts == [overran]


def test_no_timeout_stops_a_runner_whose_build_is_being_stopped():
    clock, run, interrupts = warm_run_told_done()
    run.step.stopped = True
    clock.advance(2 * TEARDOWN_TIMEOUT_S)
    assert run.session.runner_errors == [] and interrupts == []


def test_no_teardown_timeout_for_a_runner_that_has_ended():
    clock, run, interrupts = warm_run_told_done(stopped_first=True)
    clock.advance(2 * TEARDOWN_TIMEOUT_S)
    assert run.session.runner_errors == [] and interrupts == []


# A suite whose modules record that they were imported: the warm runner must
# import only the modules of the tests it is given, as a static shard does.
LAZY_MODULE = """import os

with open(os.environ["IMPORT_LOG"], "a") as log:
    log.write(__name__ + "\\n")
"""
LAZY_SUITE = {
    "pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n",
    "tests/__init__.py": "",
    "tests/conftest.py": "import pytest\n\n\n@pytest.fixture\ndef answer():\n    return 42\n",
    "tests/test_one.py": LAZY_MODULE + "\n\ndef test_a(answer):\n    assert answer == 42\n",
    "tests/test_unused.py": LAZY_MODULE + "\n\ndef test_never_asked():\n    pass\n",
    "tests/sub/__init__.py": "",
    # A deeper package's conftest, using the top one's fixture.
    "tests/sub/conftest.py": (
        "import pytest\n\n\n@pytest.fixture\ndef deeper(answer):\n    return answer + 1\n"
    ),
    "tests/sub/test_two.py": LAZY_MODULE
    + "\n\nimport pytest\n\n\n@pytest.mark.parametrize('n', [1, 2])\n"
    + "def test_b(n, deeper):\n    assert deeper == 43 and n in (1, 2)\n",
}
LAZY_BATCHES = [
    ["tests/test_one.py::test_a"],
    ["tests/sub/test_two.py::test_b[2]", "tests/test_one.py::test_a"],
]


@contextlib.contextmanager
def scripted_queue(batches: list[list[str]]):
    """A stand-in for the master's queue on 127.0.0.1: hands out `batches`, then done;
    yields its URL and the requests it received other than "next", by op."""
    answers = [{"kind": "run", "batch": n, "tests": tests} for n, tests in enumerate(batches, 1)]
    received: dict[str, list[dict]] = {"report": [], "end": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if payload["op"] in received:
                received[payload["op"]].append(payload)
                answer: dict = {"ok": True}
            else:
                answer = answers.pop(0) if answers else {"kind": "done"}
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/queue", received
    finally:
        server.shutdown()
        server.server_close()


def run_warm_runner(
    tmp_path,
    files: dict[str, str],
    batches: list[list[str]],
    options: tuple[str, ...] = (),
    returncode: int = 0,
) -> SimpleNamespace:
    """The plugin in a real pytest over `files` with `options`, fed `batches`:
    .imported, the lines the suite logged (the modules it imported, in order),
    .reports and .ends, what the runner sent, and .output, pytest's."""
    suite, plugin_dir = tmp_path / "suite", tmp_path / "plugin"
    for name, text in files.items():
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        (suite / name).write_text(text)
    plugin_dir.mkdir()
    (plugin_dir / f"{warm_channel.PLUGIN_MODULE}.py").write_text(warm_channel.PLUGIN_SOURCE.read_text())
    import_log = tmp_path / "imports.log"
    with scripted_queue(batches) as (url, received):
        env = {
            **os.environ,
            "PYTHONPATH": str(plugin_dir),
            "IMPORT_LOG": str(import_log),
            warm_channel.QUEUE_URL_ENV: url,
            warm_channel.QUEUE_TOKEN_ENV: "secret",
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            warm_channel.PLUGIN_MODULE,
            "-p",
            "no:hypothesispytest",
        ]
        run = subprocess.run(
            [*command, *options, "tests"],
            cwd=suite, env=env, capture_output=True, text=True, timeout=RUNNER_TIMEOUT_S,
        )  # fmt: skip
    assert run.returncode == returncode, run.stdout + run.stderr
    logged = import_log.read_text().split() if import_log.exists() else []
    return SimpleNamespace(
        imported=logged, reports=received["report"], ends=received["end"], output=run.stdout + run.stderr
    )


def test_a_warm_runner_imports_only_the_modules_of_the_tests_it_is_given(tmp_path):
    run = run_warm_runner(tmp_path, LAZY_SUITE, LAZY_BATCHES)
    imported, reports = run.imported, run.reports
    # Imported when a batch first needed it, once; test_unused.py never.
    assert imported == ["tests.test_one", "tests.sub.test_two"]
    outcomes = [{(r["id"], r["outcome"]) for r in report["results"]} for report in reports]
    assert [report["batch"] for report in reports] == [1, 2]
    assert outcomes == [
        {("tests/test_one.py::test_a", "passed")},
        {("tests/sub/test_two.py::test_b[2]", "passed"), ("tests/test_one.py::test_a", "passed")},
    ]


def test_a_suite_that_makes_its_own_module_collectors_is_collected_at_the_start(tmp_path):
    own_modules = "\n\ndef pytest_pycollect_makemodule(module_path, parent):\n    return None\n"
    files = {**LAZY_SUITE, "tests/conftest.py": LAZY_SUITE["tests/conftest.py"] + own_modules}
    run = run_warm_runner(tmp_path, files, LAZY_BATCHES)
    imported, reports = run.imported, run.reports
    assert sorted(imported) == ["tests.sub.test_two", "tests.test_one", "tests.test_unused"]
    assert [len(report["results"]) for report in reports] == [1, 2]
    assert all(result["outcome"] == "passed" for report in reports for result in report["results"])


# A session fixture with two parameters, set up once each by pytest's own
# ordering of a batch, whatever order the dispatcher sent its tests in.
PARAMETRIZED_SESSION_SUITE = {
    "pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n",
    "tests/__init__.py": "",
    "tests/conftest.py": (
        "import os\n\nimport pytest\n\n\n@pytest.fixture(scope='session', params=['sqlite', 'postgres'])\n"
        "def db(request):\n    with open(os.environ['IMPORT_LOG'], 'a') as log:\n"
        "        log.write('set-up-' + request.param + '\\n')\n    return request.param\n"
    ),
    "tests/test_a.py": "def test_1(db):\n    pass\n\n\ndef test_2(db):\n    pass\n",
}


def test_a_batch_runs_in_pytest_s_fixture_order_not_the_dispatcher_s(tmp_path):
    interleaved = [f"tests/test_a.py::test_{n}[{db}]" for n in (1, 2) for db in ("sqlite", "postgres")]
    run = run_warm_runner(tmp_path, PARAMETRIZED_SESSION_SUITE, [interleaved])
    set_ups, reports = run.imported, run.reports
    assert set_ups == ["set-up-sqlite", "set-up-postgres"]
    assert sorted(r["id"] for r in reports[0]["results"]) == sorted(interleaved)
    assert all(r["outcome"] == "passed" for r in reports[0]["results"])
    # A clean session end is said too: the master counts no error.
    assert run.ends == [{"op": "end", "error": None, "after": reports[0]["results"][-1]["id"]}]


# A session fixture that fails its teardown, used by every test, and a test
# that fails; the tests run in the order of their names.
TEARDOWN_SUITE = {
    "pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n",
    "tests/__init__.py": "",
    "tests/conftest.py": (
        "import os\n\nimport pytest\n\n\n@pytest.fixture(scope='session', autouse=True)\n"
        "def server():\n    yield\n    if os.environ.get('TEARDOWN_FAILS'):\n"
        "        raise RuntimeError('the server would not stop')\n"
    ),
    "tests/test_a.py": "".join(f"def test_{n}():\n    assert {n} != 2\n\n\n" for n in range(1, 5)),
}
TEARDOWN_BATCHES = [["tests/test_a.py::test_1"], ["tests/test_a.py::test_3"]]


def test_a_session_teardown_that_fails_after_done_is_sent_as_the_runs_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TEARDOWN_FAILS", "1")
    # Exit code 1, as a plain pytest's: an error at the last test's teardown.
    run = run_warm_runner(tmp_path, TEARDOWN_SUITE, TEARDOWN_BATCHES, returncode=1)
    # Each batch's results are its tests' own; the session's teardown comes
    # after the last one, once the runner was told it is done.
    assert [[(r["id"], r["outcome"]) for r in report["results"]] for report in run.reports] == [
        [("tests/test_a.py::test_1", "passed")],
        [("tests/test_a.py::test_3", "passed")],
    ]
    [end] = run.ends
    assert end["after"] == "tests/test_a.py::test_3"
    assert "the server would not stop" in end["error"]
    assert "ERROR at teardown of test_3" in run.output


def test_a_session_teardown_error_after_an_xfail_test_is_still_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TEARDOWN_FAILS", "1")
    files = {
        **TEARDOWN_SUITE,
        "tests/test_b.py": "import pytest\n\n\n@pytest.mark.xfail\ndef test_expected():\n    assert False\n",
    }
    # The xfail mark is the last test's: pytest shows the teardown's error as
    # an expected failure too (and exits 0), so whether a session's broken
    # teardown counted would depend on which test a runner got last.
    run = run_warm_runner(tmp_path, files, [["tests/test_b.py::test_expected"]])
    [end] = run.ends
    assert "the server would not stop" in end["error"]
    # The traceback starts in the fixture, not in the plugin.
    assert "buildbot_cd_warm" not in end["error"]


def test_x_stops_a_warm_runner_after_its_batch_is_reported(tmp_path):
    batches = [[f"tests/test_a.py::test_{n}" for n in (1, 2, 3)], ["tests/test_a.py::test_4"]]
    run = run_warm_runner(tmp_path, TEARDOWN_SUITE, batches, options=("-x",), returncode=1)
    # test_3 never ran (the master re-runs it), the second batch was never
    # asked for, and the runner did not say its session ended well: it did not.
    assert [[(r["id"], r["outcome"]) for r in report["results"]] for report in run.reports] == [
        [("tests/test_a.py::test_1", "passed"), ("tests/test_a.py::test_2", "failed")],
    ]
    assert run.ends == []
    assert "stopping after 1 failures" in run.output
