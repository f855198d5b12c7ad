"""Sharded test runs on Buildbot workers.

`ShardedTest` (on the tests builder) lists the tests, reads their durations
from Buildbot's own test results of earlier builds, plans with the C++ shard
scheduler and triggers one build per shard on a shard builder. Each shard
build runs `RunShard`, which pulls batches from the parent's dispatcher (same
master process, see shard_session.py) and runs them as remote commands on its
own worker; results come back as JUnit XML.

master.cfg wiring (see `shard_builder_config` for the shard side):

    from buildbot.plugins import steps, util
    from buildbot_steps.sharded_test import shard_builder_config

    checkout = steps.Git(repourl="https://example.org/app.git", mode="incremental")
    shard_builder, shard_scheduler = shard_builder_config(
        "tests-shard", workernames=["w1", "w2", "w3", "w4"], setup_steps=[checkout])
    c["builders"] += [
        shard_builder,
        util.BuilderConfig(name="tests", workernames=["coordinator"],
                           factory=util.BuildFactory([
                               checkout,
                               steps.ShardedTest(shard_scheduler="tests-shard"),
                           ])),
    ]
    c["schedulers"].append(shard_scheduler)

Durations and PostgreSQL: `test_results.duration_ns` is a 32-bit integer on
PostgreSQL (at most 2.147 s). Each build therefore writes two result sets:
    "<description>"           category pass_fail, value "1"/"0", duration_ns
                              clamped to 2**31-1 ns (for other consumers)
    "<description> durations" category performance, value_unit "s", value the
                              exact duration in seconds as text ("2.513402")
The planner reads only the second set, so durations of any length survive.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Any

from twisted.internet import defer
from twisted.internet import error
from twisted.internet import threads
from twisted.python import log as twisted_log
from twisted.spread import pb

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.interfaces import ITriggerableScheduler
from buildbot.process import remotecommand
from buildbot.process.buildstep import BuildStep
from buildbot.process.buildstep import CommandMixin
from buildbot.process.properties import Properties
from buildbot.process.results import FAILURE
from buildbot.process.results import SUCCESS
from buildbot.process.results import WARNINGS
from buildbot.reporters.utils import getURLForBuildrequest
from buildbot.worker.protocols import base as protocol_base
from buildbot_steps import shard_report
from buildbot_steps import shard_session
from buildbot_steps.junit_results import MAX_REPORT_BYTES
from buildbot_steps.junit_results import JUnitReportError
from buildbot_steps.junit_results import parse_junit_report

TESTS_PLACEHOLDER = "{tests}"
JUNIT_PLACEHOLDER = "{junit}"

DEFAULT_DISCOVER_COMMAND = ["python", "-m", "pytest", "--collect-only", "-q"]
DEFAULT_TEST_COMMAND = [
    "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
    "--junitxml={junit}", "{tests}",
]  # fmt: skip

MODES = ("dynamic", "static")

# Properties of a shard build, set by the parent.
PARENT_PROPERTY = "shard_parent_buildid"
INDEX_PROPERTY = "shard_index"
COUNT_PROPERTY = "shard_count"
MODE_PROPERTY = "shard_mode"
TESTS_PROPERTY = "shard_tests"  # static mode: the shard's fixed list
COMMAND_PROPERTY = "shard_test_command"
WORKDIR_PROPERTY = "shard_workdir"

# The largest value of a PostgreSQL `integer` column (test_results.duration_ns).
POSTGRES_INT4_MAX = 2**31 - 1
NANOSECONDS = 1_000_000_000

# Earlier builds read for durations: the core looks at the 5 most recent
# runs of each test (kRecentRunsConsidered).
HISTORY_BUILDS = 5

# A shard told to wait asks again after a report, or after this long anyway:
# straggler copies depend on elapsed time, not only on reports.
WAIT_POLL_S = 1.0

# A shard told to wait while no batch runs anywhere gives up after this long:
# the re-run it waits for must go to another worker and none is pulling. Its
# tests are then reported "not run" (FAILURE) instead of the build hanging.
STALL_TIMEOUT_S = 120.0

# Batches are topped up to about this many estimated seconds: each costs a
# round trip and a runner start-up (0.5 s for a small pytest project, several
# seconds for one that imports a framework, more on a loaded worker). The
# guided batch sizes still shrink towards this at the tail, which keeps the
# end balanced.
DEFAULT_MIN_BATCH_S = 5.0

# Cap on tests per batch, so that a lost worker costs little and the command
# line stays far below the OS argument limit.
DEFAULT_MAX_BATCH_TESTS = 200

# A test id that is a line of a collect-only listing: "path::name[params]".
# Summary lines ("34 tests collected in 0.02s") and warnings are skipped.
_SUMMARY_LINE = re.compile(r"^(\d+ tests? collected|no tests ran|=+|-+|\d+ (error|warning))")


class ShardedTestError(Exception):
    """A user or environment problem: the step ends FAILURE with this message."""


# ---------------------------------------------------------------- helpers


def check_test_command(command: Any) -> str | None:
    """Why `command` is not a usable test command template, or None."""
    if not isinstance(command, (list, tuple)) or not command:
        return "test_command must be a non-empty list of strings (an argument vector)"
    if not all(isinstance(arg, str) for arg in command):
        return "test_command must contain only strings"
    if sum(arg == TESTS_PLACEHOLDER for arg in command) != 1:
        return f"test_command must have exactly one element that is {TESTS_PLACEHOLDER!r}"
    if not any(JUNIT_PLACEHOLDER in arg for arg in command):
        return f"test_command must contain {JUNIT_PLACEHOLDER!r} (where the runner writes JUnit XML)"
    return None


def expand_test_command(command: list[str], tests: list[str], junit_path: str) -> list[str]:
    """The argument vector for one batch: one element per test id."""
    argv: list[str] = []
    for arg in command:
        if arg == TESTS_PLACEHOLDER:
            argv.extend(tests)
        else:
            argv.append(arg.replace(JUNIT_PLACEHOLDER, junit_path))
    return argv


def parse_test_listing(output: str) -> list[str]:
    """Test ids from a collect-only listing: one per line, up to the first blank line."""
    tests = []
    for line in output.splitlines():
        line = line.strip()
        if not line:
            if tests:
                break
            continue
        if _SUMMARY_LINE.match(line):
            continue
        tests.append(line)
    return list(dict.fromkeys(tests))  # a runner may list an id twice


def duration_ns_for_db(seconds: float) -> int:
    """Nanoseconds clamped to what PostgreSQL's 32-bit column accepts."""
    return max(0, min(int(round(seconds * NANOSECONDS)), POSTGRES_INT4_MAX))


def shard_builder_config(
    name: str,
    workernames: list[str],
    setup_steps: list[Any] = (),
    scheduler_name: str | None = None,
    run_shard: RunShard | None = None,
    **builder_kwargs: Any,
) -> tuple[Any, Any]:
    """The shard builder and its Triggerable scheduler, for master.cfg.

    `setup_steps` run before the shard (typically the checkout: shard builds
    get the parent build's source stamps, so a Git step checks out the same
    revision). collapseRequests=False: Buildbot's default collapser ignores
    trigger properties and would merge the shard requests into one build.
    """
    from buildbot.config import BuilderConfig
    from buildbot.process.factory import BuildFactory
    from buildbot.schedulers.triggerable import Triggerable

    builder = BuilderConfig(
        name=name,
        workernames=list(workernames),
        factory=BuildFactory([*setup_steps, run_shard or RunShard()]),
        collapseRequests=False,
        **builder_kwargs,
    )
    scheduler = Triggerable(name=scheduler_name or name, builderNames=[name])
    return builder, scheduler


def _core_module() -> Any:
    try:
        from buildbot_steps import _core
    except ImportError as exc:
        raise ShardedTestError(
            f"the compiled shard scheduler (buildbot_steps._core) is not installed: {exc}; "
            "run `make install`"
        ) from None
    return _core


def _is_quarantined(test_id: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(test_id, pattern) for pattern in patterns)


def _connection_lost(failure_or_exc: Any) -> bool:
    lost = (error.ConnectionLost, pb.PBConnectionLost)
    if hasattr(failure_or_exc, "check"):
        return failure_or_exc.check(*lost) is not None
    return isinstance(failure_or_exc, lost)


class _BytesWriter(protocol_base.FileWriterImpl):
    """Receives an uploaded file into memory, refusing more than max_bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def remote_write(self, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.overflow = True
            return
        self.chunks.append(chunk)

    def remote_utime(self, accessed_modified: Any) -> None:
        pass

    def remote_close(self) -> None:
        pass

    def data(self) -> bytes:
        return b"".join(self.chunks)


# ------------------------------------------------------------ parent step


class ShardedTest(BuildStep):
    """Runs a test suite as shard builds on a shard builder, and gates on it."""

    name = "sharded-tests"
    description = ["sharded", "tests"]
    descriptionDone = ["sharded", "tests"]
    renderables = [
        "tests",
        "discover_command",
        "test_command",
        "test_workdir",
        "env",
        "shards",
        "quarantine",
    ]

    def __init__(
        self,
        shard_scheduler: str,
        tests: list[str] | None = None,
        discover_command: list[str] | None = None,
        test_command: list[str] | None = None,
        test_workdir: str | None = None,
        env: dict[str, str] | None = None,
        shards: int | None = None,
        mode: str = "dynamic",
        max_attempts: int = 2,
        quarantine: list[str] | None = None,
        min_batch_s: float = DEFAULT_MIN_BATCH_S,
        max_batch_tests: int = DEFAULT_MAX_BATCH_TESTS,
        speculate: bool = True,
        batch_timeout: float | None = 20 * 60,
        max_report_bytes: int = MAX_REPORT_BYTES,
        results_description: str = "sharded tests",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.shard_scheduler = shard_scheduler
        self.tests = tests
        self.discover_command = discover_command or list(DEFAULT_DISCOVER_COMMAND)
        self.test_command = test_command or list(DEFAULT_TEST_COMMAND)
        self.test_workdir = test_workdir
        self.env = env or {}
        self.shards = shards
        self.mode = mode
        self.max_attempts = max_attempts
        self.quarantine = quarantine or []
        self.min_batch_s = min_batch_s
        self.max_batch_tests = max_batch_tests
        self.speculate = speculate
        self.batch_timeout = batch_timeout
        self.max_report_bytes = max_report_bytes
        self.results_description = results_description
        self._check_static_arguments()
        self._session: shard_session.ShardSession | None = None
        self._shard_total = 0
        self._brids: list[int] = []
        self._final_summary: str | None = None
        self._flake_record: dict[str, int] = {}  # test id -> earlier builds it was flaky in

    # ------------------------------------------------------ configuration

    def _check_static_arguments(self) -> None:
        if not isinstance(self.shard_scheduler, str) or not self.shard_scheduler:
            config.error("ShardedTest: shard_scheduler must name a Triggerable scheduler")
        if self.mode not in MODES:
            config.error(f"ShardedTest: mode must be one of {MODES}, not {self.mode!r}")
        if not IRenderable.providedBy(self.test_command):
            problem = check_test_command(self.test_command)
            if problem:
                config.error(f"ShardedTest: {problem}")
        if self.tests is not None and not IRenderable.providedBy(self.tests):
            if not isinstance(self.tests, (list, tuple)) or not all(
                isinstance(t, str) for t in self.tests
            ):
                config.error("ShardedTest: tests must be a list of test id strings")
        for label, value, minimum in (
            ("max_attempts", self.max_attempts, 1),
            ("max_batch_tests", self.max_batch_tests, 1),
            ("max_report_bytes", self.max_report_bytes, 1),
        ):
            if not isinstance(value, int) or value < minimum:
                config.error(f"ShardedTest: {label} must be an integer >= {minimum}")
        if self.shards is not None and not IRenderable.providedBy(self.shards):
            if not isinstance(self.shards, int) or self.shards < 1:
                config.error("ShardedTest: shards must be a positive integer (or None: one per worker)")

    def _check_rendered_arguments(self) -> None:
        problem = check_test_command(self.test_command)
        if problem:
            raise ShardedTestError(problem)
        if self.shards is not None and (not isinstance(self.shards, int) or self.shards < 1):
            raise ShardedTestError(f"shards must be a positive integer, not {self.shards!r}")
        if not isinstance(self.discover_command, (list, tuple)) or not self.discover_command:
            raise ShardedTestError("discover_command must be a non-empty argument vector")
        if self.tests is not None and (
            not isinstance(self.tests, (list, tuple)) or not all(isinstance(t, str) for t in self.tests)
        ):
            raise ShardedTestError("tests must render to a list of test id strings")

    # --------------------------------------------------------------- run

    @defer.inlineCallbacks
    def run(self):
        try:
            self._check_rendered_arguments()
            core = _core_module()
            scheduler = self._triggerable()
            tests = yield self._list_tests()
            history = yield self._read_history()
            results = yield self._run_sharded(core, scheduler, tests, history)
        except ShardedTestError as problem:
            self._final_summary = f"{problem}"
            yield self.addCompleteLog("problem", f"{problem}\n")
            return FAILURE
        return results

    @defer.inlineCallbacks
    def _list_tests(self):
        if self.tests is not None:
            tests = list(dict.fromkeys(self.tests))
        else:
            tests = yield self._discover_tests()
        if not tests:
            raise ShardedTestError("no tests to run (the list is empty or discovery found none)")
        return tests

    @defer.inlineCallbacks
    def _discover_tests(self):
        stdio = yield self.addLog("stdio")
        cmd = remotecommand.RemoteShellCommand(
            self.test_workdir or self.workdir,
            list(self.discover_command),
            env=self.env,
            collectStdout=True,
            logEnviron=False,
            timeout=self.batch_timeout,
        )
        cmd.useLog(stdio, False)
        yield self.runCommand(cmd)
        if cmd.rc != 0:
            raise ShardedTestError(
                f"test discovery {self.discover_command} exited with {cmd.rc}; see the stdio log"
            )
        return parse_test_listing(cmd.stdout)

    @defer.inlineCallbacks
    def _read_history(self):
        """Durations of earlier builds of this builder, oldest first.

        Also counts, per test, in how many of those builds it was flaky (the
        flake record shown in the report).
        """
        builderid = yield self.build.getBuilderId()
        sets = yield self.master.data.get(("builders", builderid, "test_result_sets"))
        complete = [s for s in sets if s["complete"]]
        recent = sorted(
            (s for s in complete if s["description"] == self._durations_description()),
            key=lambda s: s["test_result_setid"],
        )[-HISTORY_BUILDS:]
        history = []
        for result_set in recent:
            rows = yield self._results_of(result_set)
            history.append(self._durations_of(rows))
        recent_builds = {s["buildid"] for s in recent}
        self._flake_record = {}
        for result_set in complete:
            if (
                result_set["description"] == self._flaky_description()
                and result_set["buildid"] in recent_builds
            ):
                for row in (yield self._results_of(result_set)):
                    name = row.get("test_name")
                    self._flake_record[name] = self._flake_record.get(name, 0) + 1
        return history

    def _results_of(self, result_set: dict[str, Any]):
        return self.master.data.get(("test_result_sets", result_set["test_result_setid"], "results"))

    @staticmethod
    def _durations_of(rows: list[dict[str, Any]]) -> dict[str, float]:
        durations = {}
        for row in rows:
            try:
                seconds = float(row["value"])
            except (TypeError, ValueError):
                continue  # a hand-edited or foreign row: skip it, do not fail the plan
            if row.get("test_name") and math.isfinite(seconds) and seconds >= 0:
                durations[row["test_name"]] = seconds
        return durations

    def _durations_description(self) -> str:
        return f"{self.results_description} durations"

    def _flaky_description(self) -> str:
        return f"{self.results_description} flaky"

    @defer.inlineCallbacks
    def _run_sharded(
        self, core: Any, scheduler: Any, tests: list[str], history: list[dict[str, float]]
    ):
        shards = self.shards or self._workers_of(scheduler)
        # Milliseconds for thousands of tests, but not microseconds: off the reactor.
        try:
            estimates = yield threads.deferToThread(core.estimate_durations, tests, history)
            plan = yield threads.deferToThread(core.plan_static, estimates, shards)
        except core.InvalidInputError as problem:
            raise ShardedTestError(f"cannot plan the shards: {problem}") from None
        session = self._make_session(core, estimates, plan, shards)
        self._report_estimates(estimates, len(history))
        yield self.addCompleteLog("plan", self._plan_text(estimates, plan, shards, len(history)))
        self._session, self._shard_total = session, shards
        session.listeners.append(self.updateSummary)
        shard_session.register_session(self.build.buildid, session)
        try:
            yield self._trigger_shards(scheduler, plan, shards)
        finally:
            shard_session.unregister_session(self.build.buildid)
            session.listeners.clear()
        return (yield self._publish(session, plan, estimates))

    def _triggerable(self) -> Any:
        schedulers = self.master.scheduler_manager.namedServices
        scheduler = schedulers.get(self.shard_scheduler)
        if scheduler is None or not ITriggerableScheduler.providedBy(scheduler):
            raise ShardedTestError(
                f"shard_scheduler {self.shard_scheduler!r} is not a Triggerable scheduler of this master"
            )
        return scheduler

    def _workers_of(self, scheduler: Any) -> int:
        names = set()
        for builder_name in scheduler.builderNames:
            builder = self.master.botmaster.builders.get(builder_name)
            if builder is not None and builder.config is not None:
                names.update(builder.config.workernames)
        if not names:
            raise ShardedTestError(f"the shard builders of {self.shard_scheduler!r} list no workers")
        return len(names)

    def _make_session(self, core: Any, estimates: Any, plan: Any, shards: int):
        settings = shard_session.ShardCommandSettings(
            test_command=list(self.test_command),
            workdir=self.test_workdir,
            env=dict(self.env),
            timeout_s=self.batch_timeout,
            max_report_bytes=self.max_report_bytes,
        )
        clock = self.master.reactor.seconds
        if self.mode == "static":
            shard_lists = [list(shard.tests) for shard in plan.shards]
            batches: Any = shard_session.StaticShards(
                shard_lists, {e.id: e.seconds for e in estimates}, self.max_attempts,
                self.max_batch_tests,
            )  # fmt: skip
            return shard_session.ShardSession(batches, settings, clock, dynamic=False)
        dispatcher = core.Dispatcher(
            estimates,
            workers=shards,
            max_attempts=self.max_attempts,
            min_batch_s=self.min_batch_s,
            max_batch_tests=self.max_batch_tests,
            speculate=self.speculate,
        )
        return shard_session.ShardSession(dispatcher, settings, clock, dynamic=True)

    def _report_estimates(self, estimates: Any, history_builds: int) -> None:
        sources = _count_sources(estimates)
        self.setProperty("shard_history_builds", history_builds, "ShardedTest")
        self.setProperty("shard_estimate_sources", sources, "ShardedTest")
        self.setProperty("shard_estimates_from_history", sources.get("history", 0), "ShardedTest")

    @staticmethod
    def _plan_text(estimates: Any, plan: Any, shards: int, history_builds: int) -> str:
        sources = _count_sources(estimates)
        lines = [
            f"tests: {len(estimates)}; shards: {shards}; earlier builds read: {history_builds}",
            "estimate sources: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())),
            f"estimated total: {sum(e.seconds for e in estimates):.2f} s; "
            f"lower bound per shard: {plan.lower_bound_s:.2f} s; "
            f"static plan makespan: {plan.makespan_s:.2f} s",
        ]
        for index, shard in enumerate(plan.shards):
            lines.append(f"  shard {index}: {len(shard.tests)} tests, {shard.estimate_s:.2f} s")
        return "\n".join(lines) + "\n"

    @defer.inlineCallbacks
    def _trigger_shards(self, scheduler: Any, plan: Any, shards: int):
        sourcestamps = [ss.asDict() for ss in self.build.getAllSourceStamps()]
        waiting = []
        for index in range(shards):
            ids, finished = scheduler.trigger(
                waited_for=True,
                sourcestamps=sourcestamps,
                set_props=self._shard_properties(plan, index, shards),
                parent_buildid=self.build.buildid,
                parent_relationship="shard of",
            )
            _, brids = yield ids
            for brid in brids.values():
                self._brids.append(brid)
                yield self.addURL(
                    f"shard {index} (request {brid})", getURLForBuildrequest(self.master, brid)
                )
            waiting.append(finished)
        yield defer.DeferredList(waiting, consumeErrors=True)

    def _shard_properties(self, plan: Any, index: int, shards: int) -> Properties:
        properties = Properties()
        values: dict[str, Any] = {
            PARENT_PROPERTY: self.build.buildid,
            INDEX_PROPERTY: index,
            COUNT_PROPERTY: shards,
            MODE_PROPERTY: self.mode,
            COMMAND_PROPERTY: list(self.test_command),
        }
        if self.test_workdir:
            values[WORKDIR_PROPERTY] = self.test_workdir
        if self.mode == "static" and index < len(plan.shards):
            values[TESTS_PROPERTY] = list(plan.shards[index].tests)
        for key, value in values.items():
            properties.setProperty(key, value, "ShardedTest")
        return properties

    # ----------------------------------------------------------- results

    @defer.inlineCallbacks
    def _publish(self, session: shard_session.ShardSession, plan: Any, estimates: Any):
        outcomes = list(session.batches.outcomes())
        figures = self._figures(outcomes, session, plan)
        yield self._store_test_results(outcomes)
        for key, value in figures.items():
            self.setProperty(f"tests_{key}", value, "ShardedTest")
        flaky = [o.id for o in outcomes if o.verdict == "flaky"]
        self.setProperty("tests_flaky_names", flaky, "ShardedTest")
        quarantine = {o.id for o in outcomes if _is_quarantined(o.id, self.quarantine)}
        yield self.addHTMLLog(
            "report",
            shard_report.render_report(
                outcomes, session.timeline, figures, quarantine, self._flake_record
            ),
        )
        result, text = self._verdict(outcomes, figures)
        self._final_summary = text
        if result != SUCCESS:
            yield self.addCompleteLog("failures", self._failures_text(outcomes))
        return result

    def _figures(self, outcomes: list[Any], session: Any, plan: Any) -> dict[str, Any]:
        counts = {"passed": 0, "flaky": 0, "failed": 0, "pending": 0}
        for outcome in outcomes:
            counts[outcome.verdict] = counts.get(outcome.verdict, 0) + 1
        durations = [o.attempts[-1].seconds for o in outcomes if o.attempts]
        hosts = {puller.split("#")[0] for puller in session.workers_seen}
        workers = max(1, len(hosts) or self._shard_total)
        finished = [run.end_s for run in session.timeline if run.end_s is not None]
        started = [run.start_s for run in session.timeline]
        makespan = (max(finished) - min(started)) if finished and started else 0.0
        bound = max(max(durations, default=0.0), sum(durations) / workers)
        return {
            "total": len(outcomes),
            "passed": counts["passed"],
            "failed": counts["failed"],
            "flaky": counts["flaky"],
            "not_run": counts["pending"],
            "workers": workers,
            "makespan_s": round(makespan, 3),
            "lower_bound_s": round(bound, 3),
            "planned_lower_bound_s": round(plan.lower_bound_s, 3),
            "batches": len(session.timeline),
            "requeued_batches": session.batches.stats().requeued_batches,
            "straggler_copies": session.batches.stats().speculative_batches,
        }

    def _verdict(self, outcomes: list[Any], figures: dict[str, Any]) -> tuple[int, str]:
        def bad(o: Any) -> bool:
            return o.verdict in ("failed", "pending")

        gating = [o.id for o in outcomes if bad(o) and not _is_quarantined(o.id, self.quarantine)]
        quarantined = [o.id for o in outcomes if bad(o) and _is_quarantined(o.id, self.quarantine)]
        flaky = [o.id for o in outcomes if o.verdict == "flaky"]
        text = (
            f"{figures['passed']} passed, {figures['failed']} failed, {figures['flaky']} flaky"
            + (f", {figures['not_run']} not run" if figures["not_run"] else "")
            + f"; makespan {figures['makespan_s']:.1f} s vs bound {figures['lower_bound_s']:.1f} s"
        )
        if gating:
            return FAILURE, text + "; failed: " + _names(gating)
        if flaky or quarantined:
            notes = ([f"flaky: {_names(flaky)}"] if flaky else []) + (
                [f"quarantined failures: {_names(quarantined)}"] if quarantined else []
            )
            return WARNINGS, text + "; " + "; ".join(notes)
        return SUCCESS, text

    @staticmethod
    def _failures_text(outcomes: list[Any]) -> str:
        lines = []
        for outcome in outcomes:
            if outcome.verdict == "passed":
                continue
            lines.append(f"{outcome.verdict.upper()}: {outcome.id}")
            for attempt in outcome.attempts:
                state = "passed" if attempt.passed else "failed"
                lines.append(f"  on {attempt.worker}: {state} in {attempt.seconds:.3f} s")
                lines.extend(f"    {line}" for line in (attempt.message or "").splitlines())
        return "\n".join(lines) + "\n"

    @defer.inlineCallbacks
    def _store_test_results(self, outcomes: list[Any]):
        outcome_set = yield self.addTestResultSet(self.results_description, "pass_fail", "boolean")
        duration_set = yield self.addTestResultSet(
            self._durations_description(), "performance", "s"
        )
        # Only the flaky tests, so the flake record costs a few rows per build.
        flaky_set = yield self.addTestResultSet(self._flaky_description(), "fail_only", "boolean")
        for outcome in outcomes:
            if not outcome.attempts:
                continue  # never ran: no duration to learn from
            seconds = outcome.attempts[-1].seconds
            passed = "1" if outcome.verdict in ("passed", "flaky") else "0"
            self.addTestResult(
                outcome_set, passed, test_name=outcome.id, duration_ns=duration_ns_for_db(seconds)
            )
            self.addTestResult(
                duration_set, f"{seconds:.6f}", test_name=outcome.id,
                duration_ns=duration_ns_for_db(seconds),
            )  # fmt: skip
            if outcome.verdict == "flaky":
                self.addTestResult(flaky_set, "0", test_name=outcome.id)

    # ---------------------------------------------------------- summaries

    def getCurrentSummary(self):
        session = self._session
        if session is None:
            return {"step": "planning shards"}
        stats = session.batches.stats()
        return {
            "step": f"{stats.resolved}/{stats.tests} tests done, "
            f"{session.busy_workers()}/{self._shard_total} workers busy"
        }

    def getResultSummary(self):
        if self._final_summary:
            return {"step": self._final_summary}
        return super().getResultSummary()

    @defer.inlineCallbacks
    def interrupt(self, reason):
        for brid in self._brids:
            self.master.data.control(
                "cancel", {"reason": "parent build was interrupted"}, ("buildrequests", brid)
            )
        yield super().interrupt(reason)


def _count_sources(estimates: Any) -> dict[str, int]:
    """How many estimates came from history, file medians, etc."""
    sources: dict[str, int] = {}
    for estimate in estimates:
        sources[estimate.source] = sources.get(estimate.source, 0) + 1
    return sources


def _names(test_ids: list[str], shown: int = 5) -> str:
    more = f" and {len(test_ids) - shown} more" if len(test_ids) > shown else ""
    return ", ".join(test_ids[:shown]) + more


# ------------------------------------------------------------- shard step


class RunShard(CommandMixin, BuildStep):
    """Pulls batches from the parent's session and runs them on this worker.

    Without a parent session on this master (multi-master, or a rebuild of a
    static shard after its parent ended) a static shard runs its fixed list
    from the `shard_tests` property alone and gates on its own results; only
    then are this step's own test_command, test_workdir and env used (else the
    parent's settings apply, so that one place configures the run).
    """

    name = "run-shard"
    description = ["running", "shard"]
    descriptionDone = ["shard"]
    renderables = ["test_command", "test_workdir", "env"]

    def __init__(
        self,
        test_command: list[str] | None = None,
        test_workdir: str | None = None,
        env: dict[str, str] | None = None,
        max_attempts: int = 2,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.test_command = test_command
        self.test_workdir = test_workdir
        self.env = env or {}
        self.max_attempts = max_attempts
        if test_command is not None and not IRenderable.providedBy(test_command):
            problem = check_test_command(test_command)
            if problem:
                config.error(f"RunShard: {problem}")
        self._session: shard_session.ShardSession | None = None
        self._worker = ""
        self._ran = {"batches": 0, "tests": 0, "failed attempts": 0}
        self._summary: str | None = None

    @defer.inlineCallbacks
    def run(self):
        self.stdio = yield self.addLog("stdio")
        try:
            session, standalone = self._find_session()
        except ShardedTestError as problem:
            self._summary = str(problem)
            yield self.stdio.addStderr(f"{problem}\n")
            return FAILURE
        self._session, self._worker = session, self._puller_name()
        reports_dir = f".shard-reports-{self.build.buildid}"
        workdir = session.settings.workdir or self.workdir
        # A standalone session holds only this shard's list, at index 0.
        shard_index = 0 if standalone else self.getProperty(INDEX_PROPERTY, 0)
        try:
            yield self.runMkdir(self.build.path_module.join(workdir, reports_dir))
            yield self._pull_batches(session, shard_index, workdir, reports_dir)
            # A puller that has left is no longer live: the dispatcher must not
            # keep a re-run waiting for it.
            session.worker_lost(self._worker)
        except Exception:
            # Lost connection (Buildbot then marks this build RETRY), stop, or
            # a bug: either way this worker's batches go back to the queue.
            session.worker_lost(self._worker)
            raise
        yield self.runRmdir(self.build.path_module.join(workdir, reports_dir), abandonOnFailure=False)
        self._summary = (
            f"{self._ran['batches']} batches, {self._ran['tests']} tests run, "
            f"{self._ran['failed attempts']} failed attempts"
        )
        if standalone:
            return self._standalone_result(session)
        return WARNINGS if self._ran["failed attempts"] else SUCCESS

    def _puller_name(self) -> str:
        """This shard build's name towards the dispatcher: "<worker>#<build number>".

        Normally one shard build runs per worker, so this is the worker. After
        a lost worker, Buildbot reruns its shard build on a worker that is
        already running one; as a separate puller it can take the re-runs that
        must go "elsewhere" instead of waiting for them forever.
        """
        return f"{self.getWorkerName()}#{self.build.number}"

    def _find_session(self) -> tuple[shard_session.ShardSession, bool]:
        parent = self.getProperty(PARENT_PROPERTY)
        session = shard_session.lookup_session(parent)
        if session is not None:
            return session, False
        tests = self.getProperty(TESTS_PROPERTY)
        if tests is None:
            raise ShardedTestError(
                f"no running ShardedTest parent build (build id {parent!r}) on this master; "
                "the dynamic mode needs the parent on the same master (use mode='static' "
                "with several masters)"
            )
        command = self.test_command or self.getProperty(COMMAND_PROPERTY) or DEFAULT_TEST_COMMAND
        problem = check_test_command(command)
        if problem:
            raise ShardedTestError(problem)
        settings = shard_session.ShardCommandSettings(
            test_command=list(command),
            workdir=self.test_workdir or self.getProperty(WORKDIR_PROPERTY),
            env=dict(self.env),
            timeout_s=20 * 60,
            max_report_bytes=MAX_REPORT_BYTES,
        )
        batches = shard_session.StaticShards([list(tests)], {}, self.max_attempts)
        clock = self.master.reactor.seconds
        return shard_session.ShardSession(batches, settings, clock, dynamic=False), True

    @defer.inlineCallbacks
    def _pull_batches(self, session, shard_index, workdir, reports_dir):
        idle_since = None
        while not self.stopped:
            assignment = session.next_batch(self._worker, shard_index)
            if assignment.kind == "done":
                return
            if assignment.kind == "wait":
                idle_since = self._idle_since(session, idle_since)
                if self.master.reactor.seconds() - idle_since > STALL_TIMEOUT_S:
                    yield self.stdio.addHeader(
                        f"nothing ran anywhere for {STALL_TIMEOUT_S:.0f} s while waiting: "
                        "leaving the remaining tests to other shards\n"
                    )
                    return
                yield session.wait_for_change(self.master.reactor, WAIT_POLL_S)
                continue
            idle_since = None
            yield self._run_batch(session, assignment.batch, workdir, reports_dir)
            self.updateSummary()

    def _idle_since(self, session, idle_since):
        if session.batches.stats().batches_in_flight:
            return self.master.reactor.seconds()  # someone is working: not stalled
        return idle_since if idle_since is not None else self.master.reactor.seconds()

    @defer.inlineCallbacks
    def _run_batch(self, session, batch, workdir, reports_dir):
        settings = session.settings
        report_path = self.build.path_module.join(reports_dir, f"batch-{batch.id}.xml")
        argv = expand_test_command(settings.test_command, list(batch.tests), report_path)
        kind = "retry " if batch.retry else "speculative " if batch.speculative else ""
        yield self.stdio.addHeader(
            f"\n=== {kind}batch {batch.id}: {len(batch.tests)} tests, "
            f"estimated {batch.estimate_s:.2f} s\n"
        )
        cmd = remotecommand.RemoteShellCommand(
            workdir, argv, env=settings.env, timeout=settings.timeout_s, logEnviron=False
        )
        cmd.useLog(self.stdio, False)
        cancel_if_obsolete = self._canceller(session, batch, cmd)
        session.listeners.append(cancel_if_obsolete)
        try:
            yield self.runCommand(cmd)
        finally:
            session.listeners.remove(cancel_if_obsolete)
        if session.batch_obsolete(batch.id):
            self._drop_obsolete(session, batch)
            return
        data, problem = yield self._fetch_report(workdir, report_path, settings.max_report_bytes)
        results = None
        if problem is None:
            try:
                results = yield threads.deferToThread(
                    parse_junit_report, data, list(batch.tests), settings.max_report_bytes
                )
            except JUnitReportError as bad_report:
                problem = str(bad_report)
        self._hand_in(session, batch, results, problem, cmd.rc)

    def _canceller(self, session, batch, cmd):
        """Stops this batch's command once another copy has decided all its tests."""

        def cancel_if_obsolete() -> None:
            if cmd.active and not cmd.interrupted and session.batch_obsolete(batch.id):
                self.stdio.addHeader(f"batch {batch.id} finished elsewhere first: stopping this copy\n")
                cmd.interrupt("batch finished on another worker")

        return cancel_if_obsolete

    def _drop_obsolete(self, session, batch) -> None:
        # Every test of the batch was decided by another copy: close the
        # batch; its (absent) results are ignored by the dispatcher.
        self._ran["batches"] += 1
        try:
            session.report(self._worker, batch.id, [])
        except Exception as stale:  # noqa: BLE001 - the core's InvalidStateError
            twisted_log.msg(f"RunShard: obsolete batch {batch.id} not closed: {stale}")

    def _hand_in(self, session, batch, results, problem, rc) -> None:
        self._ran["batches"] += 1
        self._ran["tests"] += len(batch.tests)
        try:
            if problem is not None:
                message = f"{problem} (runner exit code {rc})"
                self.stdio.addStderr(f"batch {batch.id} failed as a whole: {message}\n")
                self._ran["failed attempts"] += len(batch.tests)
                session.report_error(self._worker, batch.id, message)
            else:
                self._ran["failed attempts"] += sum(not r.passed for r in results)
                self._ran["failed attempts"] += len(batch.tests) - len(results)
                session.report(self._worker, batch.id, results)
        except Exception as stale:  # noqa: BLE001 - the core's InvalidStateError, LookupError
            # The batch was given back meanwhile (e.g. this worker was
            # presumed lost); its results no longer count.
            twisted_log.msg(f"RunShard: results of batch {batch.id} not accepted: {stale}")
            self.stdio.addStderr(f"results of batch {batch.id} not accepted: {stale}\n")

    @defer.inlineCallbacks
    def _fetch_report(self, workdir, report_path, max_bytes):
        """(bytes, None) or (None, why the report cannot be read)."""
        writer = _BytesWriter(max_bytes)
        args = {
            "workdir": workdir,
            "workersrc": report_path,
            "writer": writer,
            "maxsize": max_bytes + 1,  # one byte more tells "too big" from "exactly at the cap"
            "blocksize": 64 * 1024,
            "keepstamp": False,
        }
        cmd = remotecommand.RemoteCommand("uploadFile", args, decodeRC={0: SUCCESS})
        cmd.useLog(self.stdio, False)
        yield self.runCommand(cmd)
        if writer.overflow or writer.size > max_bytes:
            return None, f"JUnit report is over the {max_bytes} byte cap"
        if cmd.didFail():
            return None, f"no JUnit report at {report_path} (did the runner crash?)"
        return writer.data(), None

    def _standalone_result(self, session) -> int:
        outcomes = session.batches.outcomes()
        failed = [o.id for o in outcomes if o.verdict in ("failed", "pending")]
        flaky = [o.id for o in outcomes if o.verdict == "flaky"]
        if failed:
            self._summary += "; failed: " + _names(failed)
            return FAILURE
        if flaky:
            self._summary += "; flaky: " + _names(flaky)
            return WARNINGS
        return SUCCESS

    @defer.inlineCallbacks
    def interrupt(self, reason):
        if self._session is not None and _connection_lost(reason):
            self._session.worker_lost(self._worker)
        yield super().interrupt(reason)

    def getCurrentSummary(self):
        return {"step": f"shard: {self._ran['batches']} batches, {self._ran['tests']} tests"}

    def getResultSummary(self):
        if self._summary:
            return {"step": self._summary}
        return super().getResultSummary()


__all__ = [
    "RunShard",
    "ShardedTest",
    "check_test_command",
    "expand_test_command",
    "parse_test_listing",
    "shard_builder_config",
]
