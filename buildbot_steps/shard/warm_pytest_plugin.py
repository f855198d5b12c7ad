"""The warm pytest runner: one pytest process per shard, fed batch after batch.

RunShard (warm_runner=True) writes this file into the shard's reports
directory on the worker as `buildbot_cd_warm.py` and starts the test command
once, with `-p buildbot_cd_warm` and no batch: pytest collects the suite and
pays its start-up and session fixtures once, then this plugin's loop asks
the master for a batch, runs those items, sends their results, and asks again
until the master says done. It needs nothing on the worker but pytest and the
standard library (the worker's test environment need not have buildbot-cd).

Collected once, lazily: pytest's collection runs once, as usual (a second
`perform_collect` would make new directory nodes, and pytest 9.1+ ties a
conftest.py's fixtures to its directory's node, so they would be lost), but a
test module is only listed there, not imported: it is collected the first
time a batch holds one of its tests, under the same directory nodes. A shard
then imports the modules it runs, as a static shard does, not the whole
suite: every shard collecting the whole suite at once, on a machine with a
few cores, was the warm runner's largest cost beyond a static shard's (1 s
of a 10 s shard on the bench's first build of 3,000 tests on 6 shards).

The channel is the master's web server (warm_channel.py): POST JSON to
$BUILDBOT_CD_QUEUE_URL with the shard's secret in $BUILDBOT_CD_QUEUE_TOKEN:
    {"op": "next"}  -> {"kind": "run", "batch": 7, "tests": ["a.py::t", ...]}
                       | {"kind": "wait"} | {"kind": "done"}
    {"op": "report", "batch": 7, "results": [{"id": "a.py::t", "outcome":
        "passed" | "failed" | "skipped", "seconds": 0.12, "message": "..."}]}
    {"op": "end", "error": null | "...", "after": null | "a.py::t"}
A test of a batch that this process did not collect is left out of the
results: the master counts it as not run.

After "done" the runner tears down the session's fixtures, which every batch
shared, and says how that went ("end"): a failing teardown is an error of
the run, as in a plain pytest, where it is reported on the last test. `-x`
and `--maxfail` stop the runner as they stop a pytest, after reporting its
batch: the master runs the batch's tests it did not run again, and the
shard goes on batch by batch.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

import pytest

try:  # pytest's grouping of items by fixture parameter (private, hence optional)
    from _pytest.fixtures import reorder_items as _reorder_items
except ImportError:  # pragma: no cover - a pytest without it runs the batch as sent

    def _reorder_items(items):
        return list(items)


# The same names as warm_channel.py's (this file cannot import it on the
# worker; test_warm_runner.py checks that they agree).
QUEUE_URL_ENV = "BUILDBOT_CD_QUEUE_URL"
QUEUE_TOKEN_ENV = "BUILDBOT_CD_QUEUE_TOKEN"
# The master holds a "next" open while nothing is ready, up to 60 s (HOLD_S in
# warm_step.py), then answers "wait": a request may take that long and still
# be healthy.
REQUEST_TIMEOUT_S = 300
# Failure text sent per test: enough for an assertion and a traceback's end
# (the master caps it again).
MESSAGE_CHARS = 8000


class _Queue:
    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token

    def call(self, payload: dict) -> dict:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
            return json.load(response)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The queue never redirects: a redirect would carry the shard's secret elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's API)
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect())


class _SessionOnly:
    """Stands for "the next test" after a batch's last one: pytest then tears
    down every fixture but the session's, which the next batch reuses."""

    def __init__(self, session: pytest.Session):
        self._session = session

    def listchain(self) -> list:
        return [self._session]


class _Results:
    """Each test's outcome over its setup, call and teardown reports."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict] = {}

    def add(self, report: pytest.TestReport) -> None:
        entry = self.by_id.setdefault(
            report.nodeid, {"id": report.nodeid, "outcome": "passed", "seconds": 0.0, "message": ""}
        )
        entry["seconds"] += max(0.0, float(report.duration))
        if report.failed:
            entry["outcome"] = "failed"
            entry["message"] = (entry["message"] + report.longreprtext)[-MESSAGE_CHARS:]
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"

    def take(self) -> list[dict]:
        taken, self.by_id = list(self.by_id.values()), {}
        return taken


_results = _Results()


class _LazyModule(pytest.Module):
    """A test module that yields its tests only once a batch needs them."""

    needed = False

    def collect(self):
        return super().collect() if self.needed else []


# Every test module of the session by node id (as the master names tests).
_modules: dict[str, _LazyModule] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    # A package's __init__.py is pytest's own business (pytest 7 makes the
    # Package node here), and so is every module when another plugin or a
    # conftest.py makes its own module collectors: those are collected at the
    # start, as pytest does.
    if module_path.name == "__init__.py" or _others_make_modules(parent.config):
        return None
    module = _LazyModule.from_parent(parent, path=module_path)
    _modules[module.nodeid] = module
    return module


def _others_make_modules(config: pytest.Config) -> bool:
    implementations = config.pluginmanager.hook.pytest_pycollect_makemodule.get_hookimpls()
    ours_or_pytest = (sys.modules[__name__], sys.modules["_pytest.python"])
    return any(implementation.plugin not in ours_or_pytest for implementation in implementations)


def pytest_report_collectionfinish(config, items) -> str:
    return f"buildbot-cd warm runner: {len(_modules)} test modules, each collected when a batch needs it"


def _collect_modules_of(tests: list[str], session: pytest.Session, items: dict) -> None:
    """Collects the modules of `tests` not collected yet into `items`, as pytest
    would have at the start (its item hooks, then -k/-m and other plugins'
    selection through pytest_collection_modifyitems)."""
    for test in tests:
        module = _modules.get(test.split("::", 1)[0])
        if module is None or module.needed:
            continue
        module.needed = True
        collected = list(session.genitems(module))
        hook = session.config.hook
        hook.pytest_collection_modifyitems(session=session, config=session.config, items=collected)
        session.testscollected += len(collected)
        items.update((item.nodeid, item) for item in collected)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _results.add(report)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool:
    queue = _Queue(os.environ[QUEUE_URL_ENV], os.environ[QUEUE_TOKEN_ENV])
    items = {item.nodeid: item for item in session.items}
    last_run = None
    while True:
        answer = queue.call({"op": "next"})
        if answer.get("kind") == "done":
            error = _tear_down_session(session, last_run)
            queue.call({"op": "end", "error": error, "after": last_run.nodeid if last_run else None})
            return True
        if answer.get("kind") == "wait":
            continue  # the master held the request as long as it could; ask again
        if answer.get("kind") != "run":
            raise RuntimeError(
                f"buildbot-cd warm runner: unexpected answer from the master: {str(answer)[:200]}"
            )
        _collect_modules_of(answer["tests"], session, items)
        # In the order pytest's collection would give them: each fixture
        # parameter of a wide scope set up once, not once per switch.
        batch = _reorder_items([items[test] for test in answer["tests"] if test in items])
        for index, item in enumerate(batch):
            following = batch[index + 1] if index + 1 < len(batch) else _SessionOnly(session)
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
            last_run = item
            if session.shouldfail or session.shouldstop:
                break
        queue.call({"op": "report", "batch": answer["batch"], "results": _results.take()})
        # As pytest's own loop ends (-x, --maxfail): pytest tears down what is left.
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)


def _tear_down_session(session: pytest.Session, last_run: pytest.Item | None) -> str | None:
    """Tears down what every batch kept set up (the session's fixtures) and
    returns the error text if that failed, else None. Reported to pytest as
    a teardown of the last test run (the terminal, the exit code; an xfail
    mark on that test makes it an expected failure there, never here), but
    not through that test's teardown hooks, which ran already (the logging
    plugin's fail if run twice)."""
    setup_state = getattr(session, "_setupstate", None)  # private, hence optional
    if last_run is None or setup_state is None:
        return None  # nothing set up, or pytest's own session end tears it down

    def tear_down() -> None:
        __tracebackhide__ = True  # the error's traceback starts in the fixture, not here
        setup_state.teardown_exact(None)

    call = pytest.CallInfo.from_call(
        tear_down, when="teardown", reraise=(pytest.exit.Exception, KeyboardInterrupt)
    )
    # Decided from the exception, not the report: the last test's xfail mark
    # would turn the report into an expected failure, and a skip is no error.
    if call.excinfo is None or call.excinfo.errisinstance(pytest.skip.Exception):
        return None
    last_run.ihook.pytest_runtest_logreport(
        report=last_run.ihook.pytest_runtest_makereport(item=last_run, call=call)
    )
    _results.take()  # the master hears of it as the run's error, not as a batch's result
    # As pytest words a test's error: its internal frames left out.
    return _clipped(str(last_run.repr_failure(call.excinfo)))


def _clipped(text: str) -> str:
    """`text`, or its beginning and its end when longer than MESSAGE_CHARS:
    an exception group's header comes first, the innermost error last."""
    if len(text) <= MESSAGE_CHARS:
        return text
    cut = "\n[...]\n"
    half = (MESSAGE_CHARS - len(cut)) // 2
    return f"{text[:half]}{cut}{text[-half:]}"
