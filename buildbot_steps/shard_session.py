"""The state one sharded run shares between its parent step and its shards.

The parent `ShardedTest` step creates a ShardSession and registers it under
its build id; each `RunShard` step of a triggered shard build (same master
process) looks it up and pulls batches from it. No extra port: batches run as
remote commands over the worker's own Buildbot connection.

Two sources of batches behind one interface:
    dynamic : buildbot_steps._core.Dispatcher (longest first, guided batch
              sizes, re-runs on another worker, straggler copies)
    static  : StaticShards below, a fixed list per shard from plan_static

Data shapes:
    session.next_batch(worker, shard_index) -> Assignment(kind="run"|"wait"|"done", batch)
    session.report(worker, batch, [JUnitTestResult...]) / report_error(worker, batch, text)
    session.outcomes() -> [TestOutcome(id, verdict, estimate_s, attempts[Attempt])]
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Any
from typing import Callable

from twisted.internet import defer

# ------------------------------------------------------------------ registry

_sessions: dict[int, ShardSession] = {}


def register_session(parent_buildid: int, session: ShardSession) -> None:
    _sessions[parent_buildid] = session


def unregister_session(parent_buildid: int) -> None:
    _sessions.pop(parent_buildid, None)


def lookup_session(parent_buildid: Any) -> ShardSession | None:
    try:
        return _sessions.get(int(parent_buildid))
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------- static shard lists


@dataclasses.dataclass
class Batch:
    id: int
    tests: list[str]
    estimate_s: float = 0.0
    speculative: bool = False
    retry: bool = False


@dataclasses.dataclass
class Assignment:
    kind: str  # "run" | "wait" | "done"
    batch: Batch | None = None


@dataclasses.dataclass
class Attempt:
    worker: str
    passed: bool
    seconds: float
    message: str = ""


@dataclasses.dataclass
class TestOutcome:
    id: str
    verdict: str
    estimate_s: float
    attempts: list[Attempt]


@dataclasses.dataclass
class Stats:
    tests: int = 0
    resolved: int = 0
    passed: int = 0
    flaky: int = 0
    failed: int = 0
    batches_handed_out: int = 0
    batches_in_flight: int = 0
    speculative_batches: int = 0
    requeued_batches: int = 0
    queued_estimate_s: float = 0.0


class StaticShards:
    """Each shard runs its own fixed list from the static plan.

    This is bookkeeping, not scheduling: the plan comes from the core's
    plan_static. A static shard has one worker, so a failed test is re-run in
    the same shard (the price of reproducibility; the dynamic mode re-runs on
    another worker). A lost worker's batch goes back to its shard, which
    Buildbot retries as a new build of the same shard request.
    """

    def __init__(
        self,
        shard_lists: list[list[str]],
        estimates_s: dict[str, float],
        max_attempts: int = 2,
        max_batch_tests: int = 1000,
    ):
        self._queues = [collections.deque(tests) for tests in shard_lists]
        self._retries: list[collections.deque[str]] = [collections.deque() for _ in shard_lists]
        self._estimates_s = estimates_s
        self._max_attempts = max_attempts
        self._max_batch_tests = max_batch_tests
        self._in_flight: dict[int, tuple[str, int, Batch]] = {}
        self._attempts: dict[str, list[Attempt]] = {t: [] for tests in shard_lists for t in tests}
        self._batch_ids = itertools.count(1)
        self._handed_out = 0
        self._requeued = 0

    def next_batch(self, worker: str, shard_index: int) -> Assignment:
        if not 0 <= shard_index < len(self._queues):
            return Assignment("done")
        queue, retry = self._queues[shard_index], False
        if not queue:
            queue, retry = self._retries[shard_index], True
        if not queue:
            busy = any(index == shard_index for _, index, _ in self._in_flight.values())
            return Assignment("wait" if busy else "done")
        count = min(len(queue), self._max_batch_tests)
        tests = [queue.popleft() for _ in range(count)]
        batch = Batch(
            next(self._batch_ids), tests, sum(self._estimates_s.get(t, 0.0) for t in tests), retry=retry
        )
        self._in_flight[batch.id] = (worker, shard_index, batch)
        self._handed_out += 1
        return Assignment("run", batch)

    def report(self, worker: str, batch_id: int, results: list[Any]) -> None:
        _, shard_index, batch = self._take(worker, batch_id)
        by_id = {r.id: r for r in results}
        for test_id in batch.tests:
            result = by_id.get(test_id)
            attempt = (
                Attempt(worker, bool(result.passed), float(result.seconds), result.message)
                if result is not None
                else Attempt(worker, False, 0.0, "no result reported")
            )
            self._record(shard_index, test_id, attempt)

    def report_error(self, worker: str, batch_id: int, message: str) -> None:
        _, shard_index, batch = self._take(worker, batch_id)
        for test_id in batch.tests:
            self._record(shard_index, test_id, Attempt(worker, False, 0.0, message))

    def worker_lost(self, worker: str) -> None:
        for batch_id, (owner, shard_index, batch) in list(self._in_flight.items()):
            if owner == worker:
                del self._in_flight[batch_id]
                target = self._retries if batch.retry else self._queues
                target[shard_index].extendleft(reversed(batch.tests))
                self._requeued += 1

    def batch_obsolete(self, batch_id: int) -> bool:
        return False

    def done(self) -> bool:
        return all(self._verdict(t) != "pending" for t in self._attempts)

    def outcomes(self) -> list[TestOutcome]:
        return [
            TestOutcome(t, self._verdict(t), self._estimates_s.get(t, 0.0), list(attempts))
            for t, attempts in self._attempts.items()
        ]

    def stats(self) -> Stats:
        verdicts = collections.Counter(self._verdict(t) for t in self._attempts)
        queued = itertools.chain(*self._queues, *self._retries)
        return Stats(
            tests=len(self._attempts),
            resolved=len(self._attempts) - verdicts["pending"],
            passed=verdicts["passed"],
            flaky=verdicts["flaky"],
            failed=verdicts["failed"],
            batches_handed_out=self._handed_out,
            batches_in_flight=len(self._in_flight),
            requeued_batches=self._requeued,
            queued_estimate_s=sum(self._estimates_s.get(t, 0.0) for t in queued),
        )

    def _take(self, worker: str, batch_id: int) -> tuple[str, int, Batch]:
        entry = self._in_flight.get(batch_id)
        if entry is None or entry[0] != worker:
            raise LookupError(f"batch {batch_id} is not in flight on {worker}")
        del self._in_flight[batch_id]
        return entry

    def _record(self, shard_index: int, test_id: str, attempt: Attempt) -> None:
        attempts = self._attempts[test_id]
        if self._verdict(test_id) != "pending":
            return
        attempts.append(attempt)
        if not attempt.passed and len(attempts) < self._max_attempts:
            self._retries[shard_index].append(test_id)

    def _verdict(self, test_id: str) -> str:
        attempts = self._attempts[test_id]
        if any(a.passed for a in attempts):
            return "passed" if attempts[0].passed else "flaky"
        return "failed" if len(attempts) >= self._max_attempts else "pending"


# ------------------------------------------------------------------ session


@dataclasses.dataclass(frozen=True)
class ShardCommandSettings:
    """How a shard runs a batch on its worker (chosen by the parent step)."""

    test_command: list[str]
    workdir: str
    env: dict[str, str]
    timeout_s: float | None
    max_report_bytes: int


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


class ShardSession:
    """Batches, results and progress of one parent build's sharded run."""

    def __init__(
        self,
        batches: Any,
        settings: ShardCommandSettings,
        clock: Callable[[], float],
        dynamic: bool,
    ):
        self.batches = batches  # _core.Dispatcher or StaticShards
        self.settings = settings
        self.dynamic = dynamic
        self._clock = clock
        self._started_at = clock()
        self.timeline: list[BatchRun] = []
        self._running: dict[tuple[str, int], BatchRun] = {}
        self._waiters: list[defer.Deferred] = []
        self.listeners: list[Callable[[], None]] = []
        self.workers_seen: set[str] = set()

    def elapsed(self) -> float:
        return self._clock() - self._started_at

    def next_batch(self, worker: str, shard_index: int) -> Any:
        self.workers_seen.add(worker)
        if self.dynamic:
            assignment = self.batches.next_batch(worker, self.elapsed())
        else:
            assignment = self.batches.next_batch(worker, shard_index)
        if assignment.kind == "run":
            batch = assignment.batch
            run = BatchRun(
                worker, batch.id, len(batch.tests), self.elapsed(), None, batch.speculative, batch.retry
            )
            self._running[(worker, batch.id)] = run
            self.timeline.append(run)
            self._changed()
        return assignment

    def report(self, worker: str, batch_id: int, results: list[Any]) -> None:
        try:
            self.batches.report(worker, batch_id, self._to_core_results(results))
        finally:
            self._finish_run(worker, batch_id, "reported")

    def report_error(self, worker: str, batch_id: int, message: str) -> None:
        try:
            self.batches.report_error(worker, batch_id, message)
        finally:
            self._finish_run(worker, batch_id, "error")

    def worker_lost(self, worker: str) -> None:
        self.batches.worker_lost(worker)
        for (owner, batch_id), run in list(self._running.items()):
            if owner == worker:
                self._finish_run(owner, batch_id, "lost")
        self._changed()

    def batch_obsolete(self, batch_id: int) -> bool:
        return self.batches.batch_obsolete(batch_id)

    def busy_workers(self) -> int:
        return len({worker for worker, _ in self._running})

    def wait_for_change(self, reactor: Any, timeout_s: float) -> defer.Deferred:
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

    def _finish_run(self, worker: str, batch_id: int, outcome: str) -> None:
        run = self._running.pop((worker, batch_id), None)
        if run is not None:
            run.end_s = self.elapsed()
            run.outcome = outcome
        self._changed()

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        for listener in list(self.listeners):
            listener()

    def _to_core_results(self, results: list[Any]) -> list[Any]:
        if not self.dynamic:
            return results
        from buildbot_steps import _core  # the dynamic mode exists only with the core

        return [_core.TestResult(r.id, r.passed, r.seconds, r.message) for r in results]
