"""The parent step of a sharded test run: `ShardedTest`, on the tests builder.

It lists the tests, reads their durations from Buildbot's own test results of
earlier builds (history.py), plans with the C++ shard scheduler and triggers
one build per shard on a shard builder; each runs `RunShard` (shard_step.py),
which pulls batches from this build's ShardSession (session.py). Triggering
and following those builds is shard_builds.py's. When every shard has finished
it stores the results, renders the report (report.py) and gates the build on
the verdict (results.py).

master.cfg wiring (see `shard_builder_config` for the shard side):

    from buildbot.plugins import steps, util
    from buildbot_steps.shard import shard_builder_config

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
"""

from __future__ import annotations

import math
from typing import Any

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process import remotecommand
from buildbot.process.buildstep import BuildStep, BuildStepCancelled
from buildbot.process.properties import Properties
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import defer, threads
from twisted.python import log as twisted_log
from twisted.python.failure import Failure

from buildbot_steps import _core
from buildbot_steps._core import Plan, TestEstimate, TestOutcome, Verdict
from buildbot_steps.shard import report, results
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard.commands import (
    COMMAND_PROPERTY,
    COUNT_PROPERTY,
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_DISCOVER_COMMAND,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_TESTS,
    DEFAULT_TEST_COMMAND,
    DYNAMIC,
    INDEX_PROPERTY,
    MODE_PROPERTY,
    MODES,
    PARENT_PROPERTY,
    STATIC,
    TESTS_PROPERTY,
    WORKDIR_PROPERTY,
    Quarantine,
    ShardedTestError,
    check_test_command,
    parse_test_listing,
    passed_after_a_batch_failure,
    warm_command_of,
)  # fmt: skip
from buildbot_steps.shard.history import TestHistory
from buildbot_steps.shard.junit import MAX_REPORT_BYTES
from buildbot_steps.shard.planning import MAX_TEST_DURATION_S
from buildbot_steps.shard.shard_builds import ABSOLUTE_MAX_SHARDS, SHARDS_PER_WORKER_CAP, ShardBuilds
from buildbot_steps.shard.warm_channel import PLUGIN_MODULE, PLUGIN_NAME, QUEUE_PATH

# Batches are topped up to at least this many estimated seconds, whatever the
# cost model says: each costs a round trip and a runner start-up (0.5 s for a
# small pytest project, several seconds for one that imports a framework).
# Beyond this floor the core sizes batches from the overhead it observes
# (kBatchWorthFactor x the start-up). The guided batch sizes still shrink
# towards this at the tail, which keeps the end balanced.
DEFAULT_MIN_BATCH_S = 5.0
# With the warm runner a batch costs a round trip to the master, not a
# start-up: a floor of 5 s would cut a suite of 30 s into 6 batches and leave
# most of 16 workers idle.
WARM_DEFAULT_MIN_BATCH_S = 0.5


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
        max_shards: int | None = None,
        mode: str = DYNAMIC,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        quarantine: list[str] | None = None,
        min_batch_s: float | None = None,  # None: DEFAULT_MIN_BATCH_S, WARM_DEFAULT_MIN_BATCH_S warm
        max_batch_tests: int = DEFAULT_MAX_BATCH_TESTS,
        speculate: bool = True,
        warm_runner: bool = False,
        batch_timeout: float | None = DEFAULT_BATCH_TIMEOUT_S,
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
        self.max_shards = max_shards
        self.mode = mode
        self.max_attempts = max_attempts
        self.quarantine = quarantine or []
        default_min_batch_s = WARM_DEFAULT_MIN_BATCH_S if warm_runner else DEFAULT_MIN_BATCH_S
        self.min_batch_s = default_min_batch_s if min_batch_s is None else min_batch_s
        self.max_batch_tests = max_batch_tests
        self.speculate = speculate
        self.warm_runner = warm_runner
        self.batch_timeout = batch_timeout
        self.max_report_bytes = max_report_bytes
        self.results_description = results_description
        self._check_static_arguments()
        self._session: shard_session.ShardSession | None = None
        self._shard_total = 0
        self._builds: ShardBuilds | None = None
        self._summary: str | None = None
        self._flake_record: dict[str, int] = {}  # test id -> earlier builds it was flaky in
        self._history = TestHistory(self, results_description)
        self._warm_queue_url = ""  # set from the master's configuration when the step runs

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
        if self.tests is not None and not IRenderable.providedBy(self.tests) and not is_test_list(self.tests):
            config.error("ShardedTest: tests must be a list of test id strings")
        for label, value, minimum in (
            ("max_attempts", self.max_attempts, 1),
            ("max_batch_tests", self.max_batch_tests, 1),
            ("max_report_bytes", self.max_report_bytes, 1),
        ):
            if not isinstance(value, int) or value < minimum:
                config.error(f"ShardedTest: {label} must be an integer >= {minimum}")
        if self.max_shards is not None and not _is_count(self.max_shards, ABSOLUTE_MAX_SHARDS):
            config.error(
                f"ShardedTest: max_shards must be an integer 1..{ABSOLUTE_MAX_SHARDS} "
                f"(or None: {SHARDS_PER_WORKER_CAP} per shard worker)"
            )
        if self.shards is not None and not IRenderable.providedBy(self.shards):
            if not _is_count(self.shards, ABSOLUTE_MAX_SHARDS):
                config.error(
                    f"ShardedTest: shards must be an integer 1..{ABSOLUTE_MAX_SHARDS} "
                    "(or None: one per worker)"
                )
            elif isinstance(self.max_shards, int) and self.shards > self.max_shards:
                config.error(f"ShardedTest: shards={self.shards} is more than max_shards={self.max_shards}")
        if not IRenderable.providedBy(self.quarantine) and not (
            isinstance(self.quarantine, (list, tuple))
            and all(isinstance(q, str) or IRenderable.providedBy(q) for q in self.quarantine)
        ):
            # A string would be a list of one-character patterns: '*' quarantines every test.
            config.error("ShardedTest: quarantine must be a list of test ids or patterns")
        if not is_seconds(self.min_batch_s, allow_zero=True):
            config.error(f"ShardedTest: min_batch_s must be seconds between 0 and {MAX_TEST_DURATION_S:.0f}")
        if self.batch_timeout is not None and not is_seconds(self.batch_timeout, allow_zero=False):
            config.error(
                f"ShardedTest: batch_timeout must be seconds, above 0 and at most {MAX_TEST_DURATION_S:.0f}, "
                "or None"
            )
        for label in ("speculate", "warm_runner"):
            if not isinstance(getattr(self, label), bool):
                config.error(f"ShardedTest: {label} must be True or False")
        if self.warm_runner and self.mode != DYNAMIC:
            config.error(
                "ShardedTest: warm_runner=True needs mode='dynamic' (a static shard's list is one batch)"
            )
        rendered_later = IRenderable.providedBy(self.test_command)
        if (
            self.warm_runner
            and not rendered_later
            and warm_command_of(self.test_command, PLUGIN_MODULE) is None
        ):
            config.error("ShardedTest: warm_runner=True needs a pytest test_command")

    def _check_rendered_arguments(self) -> None:
        problem = check_test_command(self.test_command)
        if problem:
            raise ShardedTestError(problem)
        if self.shards is not None and not is_count(self.shards):
            raise ShardedTestError(f"shards must be a positive integer, not {self.shards!r}")
        if not isinstance(self.discover_command, (list, tuple)) or not self.discover_command:
            raise ShardedTestError("discover_command must be a non-empty argument vector")
        if self.tests is not None and not is_test_list(self.tests):
            raise ShardedTestError("tests must render to a list of test id strings")
        if not is_test_list(self.quarantine):
            raise ShardedTestError("quarantine must render to a list of test ids or patterns")
        # Refused before discovery and before any shard starts.
        self._warm_queue_url = self._queue_url() if self.warm_runner else ""

    def _queue_url(self) -> str:
        """Where warm runners reach this master: its www plugin under buildbotURL."""
        if PLUGIN_NAME not in self.master.config.www.get("plugins", {}):
            raise ShardedTestError(
                f"warm_runner=True needs the {PLUGIN_NAME!r} www plugin: add "
                f'c["www"]["plugins"]["{PLUGIN_NAME}"] = {{}} to master.cfg'
            )
        base = self.master.config.buildbotURL
        if not base.startswith(("http://", "https://")):
            raise ShardedTestError(
                f"warm_runner=True needs c['buildbotURL'] (the URL workers reach the master at), not {base!r}"
            )
        return f"{base.rstrip('/')}/plugins/{PLUGIN_NAME}/{QUEUE_PATH}"

    # --------------------------------------------------------------- run

    async def run(self) -> int:
        try:
            self._check_rendered_arguments()
            builds = self._builds = ShardBuilds(self, self.shard_scheduler)
            shards = builds.capped_shard_count(self.shards, self.max_shards)
            tests = await self._list_tests()
            builderid = await self.build.getBuilderId()
            reading = await self._history.read(builderid)
            self._flake_record = reading.flake_record
            return await self._run_sharded(builds, tests, reading.durations, shards, reading.batch_overhead_s)
        except ShardedTestError as problem:
            self._summary = f"{problem}"
            await self.addCompleteLog("problem", f"{problem}\n")
            return FAILURE

    async def _list_tests(self) -> list[str]:
        if self.tests is not None:
            tests = list(dict.fromkeys(self.tests))
        else:
            tests = await self._discover_tests()
        if not tests:
            raise ShardedTestError("no tests to run (the list is empty or discovery found none)")
        return tests

    async def _discover_tests(self) -> list[str]:
        stdio = await self.addLog("stdio")
        cmd = remotecommand.RemoteShellCommand(
            self.test_workdir or self.workdir,
            list(self.discover_command),
            env=self.env,
            collectStdout=True,
            logEnviron=False,
            timeout=self.batch_timeout,
        )
        cmd.useLog(stdio, False)
        await self.runCommand(cmd)
        if cmd.rc != 0:
            raise ShardedTestError(
                f"test discovery {self.discover_command} exited with {cmd.rc}; see the stdio log"
            )
        return parse_test_listing(cmd.stdout)

    async def _run_sharded(
        self,
        builds: ShardBuilds,
        tests: list[str],
        history: list[dict[str, float]],
        shards: int | None,
        batch_overhead_s: float,
    ) -> int:
        shards = shards or builds.worker_count()
        # Milliseconds for thousands of tests, but not microseconds: off the reactor.
        try:
            estimates = await threads.deferToThread(_core.estimate_durations, tests, history)
            plan = await threads.deferToThread(_core.plan_static, estimates, shards)
        except _core.InvalidInputError as problem:
            raise ShardedTestError(f"cannot plan the shards: {problem}") from None
        session = self._make_session(estimates, plan, shards, batch_overhead_s)
        self._report_estimates(estimates, len(history))
        await self.addCompleteLog(
            "plan", results.plan_text(estimates, plan, shards, len(history), batch_overhead_s)
        )
        self._session, self._shard_total = session, shards
        session.listeners.append(self.updateSummary)
        shard_session.register_session(self.build.buildid, session)
        try:
            if self.stopped:  # during discovery, the history read or planning: no shard starts
                raise BuildStepCancelled()
            await builds.run([self._shard_properties(plan, index, shards) for index in range(shards)])
        finally:
            shard_session.unregister_session(self.build.buildid)
            session.listeners.clear()
        return await self._publish(session, plan)

    def _make_session(
        self, estimates: list[TestEstimate], plan: Plan, shards: int, batch_overhead_s: float
    ) -> shard_session.ShardSession:
        settings = shard_session.ShardCommandSettings(
            test_command=list(self.test_command),
            workdir=self.test_workdir,
            env=dict(self.env),
            timeout_s=self.batch_timeout,
            max_report_bytes=self.max_report_bytes,
            warm_command=warm_command_of(self.test_command, PLUGIN_MODULE) if self.warm_runner else None,
            queue_url=self._warm_queue_url,
        )
        clock = self.master.reactor.seconds
        if self.mode == STATIC:
            shard_lists = [list(shard.tests) for shard in plan.shards]
            batches = shard_session.StaticShards(
                shard_lists, {e.id: e.seconds for e in estimates}, self.max_attempts,
                self.max_batch_tests, batch_overhead_s,
            )  # fmt: skip
            return shard_session.ShardSession(batches, settings, clock)
        dispatcher = _core.Dispatcher(
            estimates,
            workers=shards,
            max_attempts=self.max_attempts,
            min_batch_s=self.min_batch_s,
            max_batch_tests=self.max_batch_tests,
            speculate=self.speculate,
            batch_overhead_s=batch_overhead_s,
        )
        return shard_session.ShardSession(shard_session.DynamicBatches(dispatcher), settings, clock)

    def _report_estimates(self, estimates: list[TestEstimate], history_builds: int) -> None:
        sources = results.count_sources(estimates)
        self.setProperty("shard_history_builds", history_builds, "ShardedTest")
        self.setProperty("shard_estimate_sources", sources, "ShardedTest")
        self.setProperty("shard_estimates_from_history", sources.get("history", 0), "ShardedTest")

    def _shard_properties(self, plan: Plan, index: int, shards: int) -> Properties:
        properties = Properties()
        values: dict[str, int | str | list[str]] = {
            PARENT_PROPERTY: self.build.buildid,
            INDEX_PROPERTY: index,
            COUNT_PROPERTY: shards,
            MODE_PROPERTY: self.mode,
            COMMAND_PROPERTY: list(self.test_command),
        }
        if self.test_workdir:
            values[WORKDIR_PROPERTY] = self.test_workdir
        if self.mode == STATIC and index < len(plan.shards):
            values[TESTS_PROPERTY] = list(plan.shards[index].tests)
        for key, value in values.items():
            properties.setProperty(key, value, "ShardedTest")
        return properties

    # ----------------------------------------------------------- results

    async def _publish(self, session: shard_session.ShardSession, plan: Plan) -> int:
        outcomes = list(session.batches.outcomes())
        figures = results.figures(outcomes, session, plan, self._shard_total)
        if self.stopped:
            # A stopped build ran part of the suite, if any: no history (its
            # durations would take a whole run's place among the recent ones,
            # its unfinished tests would read as failed).
            await self.addCompleteLog("history", "stopped: no results stored for later builds\n")
        else:
            await self._store_history(outcomes, session)
        for key, value in figures.items():
            self.setProperty(f"tests_{key}", value, "ShardedTest")
        flaky = [o.id for o in outcomes if o.verdict == Verdict.flaky]
        self.setProperty("tests_flaky_names", flaky, "ShardedTest")
        rescued = [o.id for o in outcomes if passed_after_a_batch_failure(o)]
        self.setProperty("tests_passed_after_batch_failure_names", rescued, "ShardedTest")
        quarantine = Quarantine(self.quarantine)
        quarantined = {o.id for o in outcomes if o.id in quarantine}
        await self.addHTMLLog(
            "report",
            report.render_report(outcomes, session.timeline, figures, quarantined, self._flake_record),
        )
        result, text = results.verdict(outcomes, figures, quarantine)
        self._summary = text
        if result != SUCCESS:
            await self.addCompleteLog("failures", results.failures_text(outcomes, session.runner_errors))
        if self.stopped:  # what ran is reported; the build is cancelled, not failed
            raise BuildStepCancelled()
        return result

    async def _store_history(self, outcomes: list[TestOutcome], session: shard_session.ShardSession) -> None:
        """The results for later builds. A database that refuses them (a test
        id too long for its index) costs the history, not the verdict."""
        try:
            await self._history.store(outcomes, session.batches.overhead_by_worker())
        except Exception as error:  # the database's own error types: whichever the backend raises
            twisted_log.err(error, "ShardedTest: storing the test results")
            await self.addCompleteLog("history", f"results not stored for later builds: {error}\n")

    # ---------------------------------------------------------- summaries

    def getCurrentSummary(self) -> dict[str, str]:
        session = self._session
        if session is None:
            return {"step": "planning shards"}
        stats = session.batches.stats()
        return {
            "step": f"{stats.resolved}/{stats.tests} tests done, "
            f"{session.busy_workers()}/{self._shard_total} workers busy"
        }

    def getResultSummary(self) -> dict[str, str]:
        if self._summary:
            return {"step": self._summary}
        return super().getResultSummary()

    def interrupt(self, reason: str | Failure) -> defer.Deferred:
        if self._builds is not None:
            self._builds.cancel()
        return super().interrupt(reason)


def _is_count(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= maximum


def is_test_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value)


def is_seconds(value: object, allow_zero: bool) -> bool:
    """A finite number of seconds, at most a week (MAX_TEST_DURATION_S)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value >= 0 if allow_zero else value > 0) and value <= MAX_TEST_DURATION_S


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
