"""The state one sharded run shares between its parent step and its shards.

The parent `ShardedTest` step creates a ShardSession and registers it under
its build id; each `RunShard` step of a triggered shard build (same master
process) looks it up and pulls batches from it. No extra port: batches run as
remote commands over the worker's own Buildbot connection.

Two sources of batches behind one protocol, BatchSource:
    dynamic : DynamicBatches, the core's Dispatcher (longest first, guided
              batch sizes, re-runs on another worker, straggler copies)
    static  : StaticShards, a fixed list per shard from plan_static

Data shapes:
    session.next_batch(worker, shard_index) -> Assignment(kind: AssignmentKind run|wait|done, batch)
    session.report(worker, batch, [JUnitTestResult...], wall_s) -> None, or why the results
                were refused (the batch then failed as a whole) / report_error(worker, batch, text);
                wall_s (the batch's start to end on the worker) teaches the core what a batch
                costs beyond its tests
    session.outcomes() -> [TestOutcome(id, verdict: Verdict, estimate_s, attempts[Attempt])]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Protocol, SupportsIndex

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from buildbot_steps import _core
from buildbot_steps._core import AssignmentKind, DispatchStats, TestOutcome, TestResult
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.shard.commands import DEFAULT_MAX_ATTEMPTS, STATIC_MAX_BATCH_TESTS
from buildbot_steps.shard.junit import JUnitTestResult

# ------------------------------------------------------------------ registry

_sessions: dict[int, ShardSession] = {}


def register_session(parent_buildid: int, session: ShardSession) -> None:
    _sessions[parent_buildid] = session


def unregister_session(parent_buildid: int) -> None:
    _sessions.pop(parent_buildid, None)


def lookup_session(parent_buildid: str | SupportsIndex | None) -> ShardSession | None:
    try:
        return _sessions.get(int(parent_buildid))
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------ batch sources


class BatchSource(Protocol):
    """Where a shard's batches come from; the same calls in both modes."""

    def next_batch(self, worker: str, shard_index: int, now_s: float) -> AnyAssignment: ...
    def report(
        self, worker: str, batch_id: int, results: list[TestResult], wall_s: float | None = None
    ) -> None: ...
    def report_error(self, worker: str, batch_id: int, message: str) -> None: ...
    def worker_lost(self, worker: str) -> None: ...
    def batch_obsolete(self, batch_id: int) -> bool: ...
    def done(self) -> bool: ...
    def outcomes(self) -> list[TestOutcome]: ...
    def stats(self) -> DispatchStats: ...
    def overhead_by_worker(self) -> dict[str, float]: ...


class DynamicBatches:
    """All shards pull from one core Dispatcher: the shard index plays no part."""

    def __init__(self, dispatcher: _core.Dispatcher):
        self._dispatcher = dispatcher

    def next_batch(self, worker: str, shard_index: int, now_s: float) -> _core.Assignment:
        return self._dispatcher.next_batch(worker, now_s)

    def report(
        self, worker: str, batch_id: int, results: list[TestResult], wall_s: float | None = None
    ) -> None:
        self._dispatcher.report(worker, batch_id, results, wall_s)

    def report_error(self, worker: str, batch_id: int, message: str) -> None:
        self._dispatcher.report_error(worker, batch_id, message)

    def worker_lost(self, worker: str) -> None:
        self._dispatcher.worker_lost(worker)

    def batch_obsolete(self, batch_id: int) -> bool:
        return self._dispatcher.batch_obsolete(batch_id)

    def done(self) -> bool:
        return self._dispatcher.done()

    def outcomes(self) -> list[TestOutcome]:
        return self._dispatcher.outcomes()

    def stats(self) -> DispatchStats:
        return self._dispatcher.stats()

    def overhead_by_worker(self) -> dict[str, float]:
        return dict(self._dispatcher.overhead_by_worker())


@dataclasses.dataclass
class Batch:
    """A static shard's batch, under an id unique across all shards."""

    id: int
    tests: list[str]
    estimate_s: float = 0.0
    speculative: bool = False
    retry: bool = False


@dataclasses.dataclass
class Assignment:
    """A static shard's assignment: the core's kinds, a batch renumbered across shards."""

    kind: AssignmentKind
    batch: Batch | None = None


# What a BatchSource hands out: the core's own, or a static shard's.
AnyAssignment = _core.Assignment | Assignment


class StaticShards:
    """Each shard runs its own fixed list from the static plan.

    Every shard is a core Dispatcher of its own list with one puller: the core
    keeps the attempts and verdicts, so both modes classify alike. A static
    shard has one worker, so a failed test re-runs in the same shard (the
    price of reproducibility; the dynamic mode re-runs on another worker). A
    lost worker's batch goes back to its shard, which Buildbot retries as a
    new build of the same shard request.
    """

    def __init__(
        self,
        shard_lists: list[list[str]],
        estimates_s: dict[str, float],
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_batch_tests: int = STATIC_MAX_BATCH_TESTS,
        batch_overhead_s: float = 0.0,
    ):
        # An unbounded batch target: a static shard runs its list in as few
        # runner starts as max_batch_tests allows.
        self._shards = [
            _core.Dispatcher(
                [_core.TestEstimate(test, estimates_s.get(test, 0.0)) for test in tests],
                workers=1, max_attempts=max_attempts, min_batch_s=math.inf,
                max_batch_tests=max_batch_tests, speculate=False, batch_overhead_s=batch_overhead_s,
            ) if tests else None
            for tests in shard_lists
        ]  # fmt: skip
        self._batch_ids = itertools.count(1)
        self._in_flight: dict[int, tuple[int, int]] = {}  # id -> (shard, the shard's own batch id)

    def next_batch(self, worker: str, shard_index: int, now_s: float = 0.0) -> Assignment:
        shard = self._shards[shard_index] if 0 <= shard_index < len(self._shards) else None
        if shard is None:
            return Assignment(AssignmentKind.done)
        assignment = shard.next_batch(worker, 0.0)
        if assignment.kind != AssignmentKind.run:
            return Assignment(assignment.kind)
        local = assignment.batch
        batch = Batch(
            next(self._batch_ids), list(local.tests), local.estimate_s, local.speculative, local.retry
        )
        self._in_flight[batch.id] = (shard_index, local.id)
        return Assignment(AssignmentKind.run, batch)

    def report(
        self, worker: str, batch_id: int, results: list[TestResult], wall_s: float | None = None
    ) -> None:
        shard_index, local_id = self._locate(batch_id)
        self._shards[shard_index].report(worker, local_id, results, wall_s)
        del self._in_flight[batch_id]  # only once accepted: a refused report may still report_error

    def report_error(self, worker: str, batch_id: int, message: str) -> None:
        shard_index, local_id = self._locate(batch_id)
        self._shards[shard_index].report_error(worker, local_id, message)
        del self._in_flight[batch_id]

    def worker_lost(self, worker: str) -> None:
        for shard in self._live_shards():
            shard.worker_lost(worker)

    def batch_obsolete(self, batch_id: int) -> bool:
        return False  # no straggler copies in static mode

    def done(self) -> bool:
        return all(shard.done() for shard in self._live_shards())

    def outcomes(self) -> list[TestOutcome]:
        return [outcome for shard in self._live_shards() for outcome in shard.outcomes()]

    def stats(self) -> DispatchStats:
        """The figures of all shards together (the core sums DispatchStats; the cost
        model's figures become means weighted by tests)."""
        return sum((shard.stats() for shard in self._live_shards()), DispatchStats())

    def overhead_by_worker(self) -> dict[str, float]:
        return {w: s for shard in self._live_shards() for w, s in shard.overhead_by_worker().items()}

    def _live_shards(self) -> list[_core.Dispatcher]:
        return [shard for shard in self._shards if shard is not None]

    def _locate(self, batch_id: int) -> tuple[int, int]:
        entry = self._in_flight.get(batch_id)
        if entry is None:
            raise LookupError(f"batch {batch_id} is not in flight")
        return entry


# ------------------------------------------------------------------ session


@dataclasses.dataclass(frozen=True)
class ShardCommandSettings:
    """How a shard runs a batch on its worker (chosen by the parent step)."""

    test_command: list[str]
    workdir: str
    env: dict[str, str]
    timeout_s: float | None
    max_report_bytes: int
    # Warm runner (dynamic pytest only): the command started once per shard,
    # and the URL of the master's queue its plugin pulls batches from.
    warm_command: list[str] | None = None
    queue_url: str = ""


@dataclasses.dataclass
class BatchRun:
    """One batch on one worker, for the timeline (seconds since session start)."""

    worker: str
    batch_id: int
    tests: int
    start_s: float
    end_s: float | None = None
    speculative: bool = False
    retry: bool = False
    outcome: str = "running"  # running | reported | error | lost
    failed_tests: int = 0  # tests of a reported batch that failed this attempt


class ShardSession:
    """Batches, results and progress of one parent build's sharded run."""

    def __init__(
        self,
        batches: BatchSource,
        settings: ShardCommandSettings,
        clock: Callable[[], float],
    ):
        self.batches = batches
        self.settings = settings
        self._clock = clock
        self._started_at = clock()
        self.timeline: list[BatchRun] = []
        self._running: dict[tuple[str, int], BatchRun] = {}
        self._waiters: list[defer.Deferred] = []
        self.listeners: list[Callable[[], None]] = []
        self.workers_seen: set[str] = set()
        # Errors of the runs outside any test (a warm runner's session
        # teardown): they fail the build, in no test's verdict.
        self.runner_errors: list[str] = []

    def elapsed(self) -> float:
        return self._clock() - self._started_at

    def next_batch(self, worker: str, shard_index: int) -> AnyAssignment:
        self.workers_seen.add(worker)
        assignment = self.batches.next_batch(worker, shard_index, self.elapsed())
        if assignment.kind == AssignmentKind.run and assignment.batch is not None:
            batch = assignment.batch
            run = BatchRun(
                worker, batch.id, len(batch.tests), self.elapsed(), None, batch.speculative, batch.retry
            )
            self._running[(worker, batch.id)] = run
            self.timeline.append(run)
            self._changed()
        return assignment

    def report(
        self, worker: str, batch_id: int, results: list[JUnitTestResult], wall_s: float | None = None
    ) -> str | None:
        """Hands in a batch's results. Results the dispatcher would refuse
        fail the batch as a whole instead (every test gets a failed attempt
        and is re-run or decided), never leave it half-recorded: returns
        why, or None when the results were accepted."""
        outcome, refused = "reported", None
        try:
            try:
                self.batches.report(worker, batch_id, self._to_core_results(results), wall_s)
            except InvalidInputError as problem:
                outcome, refused = "error", f"results refused: {problem}"
                self.batches.report_error(worker, batch_id, refused)
        finally:
            failed = len(results) if refused else sum(not r.passed and not r.skipped for r in results)
            self._finish_run(worker, batch_id, outcome, failed)
        return refused

    def report_error(self, worker: str, batch_id: int, message: str) -> None:
        try:
            self.batches.report_error(worker, batch_id, message)
        finally:
            self._finish_run(worker, batch_id, "error")

    def worker_lost(self, worker: str) -> None:
        self.batches.worker_lost(worker)
        for (owner, batch_id), _run in list(self._running.items()):
            if owner == worker:
                self._finish_run(owner, batch_id, "lost")
        self._changed()

    def batch_obsolete(self, batch_id: int) -> bool:
        return self.batches.batch_obsolete(batch_id)

    def busy_workers(self) -> int:
        return len({worker for worker, _ in self._running})

    def wait_for_change(self, reactor: IReactorTime, timeout_s: float) -> defer.Deferred:
        """Fires on the next report or lost worker, or after `timeout_s`."""
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        timer = reactor.callLater(timeout_s, self._fire_one, waiter)
        waiter.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiter

    def _fire_one(self, waiter: defer.Deferred) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.called:
            waiter.callback(None)

    def _finish_run(self, worker: str, batch_id: int, outcome: str, failed_tests: int = 0) -> None:
        run = self._running.pop((worker, batch_id), None)
        if run is not None:
            run.end_s = self.elapsed()
            run.outcome = outcome
            run.failed_tests = failed_tests
        self._changed()

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        for listener in list(self.listeners):
            listener()

    @staticmethod
    def _to_core_results(results: list[JUnitTestResult]) -> list[TestResult]:
        """Checked here too, so a value the core refuses is named in Python's
        words whichever parser produced it."""
        for result in results:
            if not (isinstance(result.seconds, (int, float)) and math.isfinite(result.seconds)) or (
                result.seconds < 0
            ):
                raise InvalidInputError(f"test {result.id!r} took {result.seconds!r} s")
        return [TestResult(r.id, r.passed, r.seconds, r.message, skipped=r.skipped) for r in results]
