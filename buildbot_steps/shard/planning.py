"""The shard scheduler's Python side: reading duration files, and replaying a
suite through the real scheduler on a virtual clock.

Data shapes:
    history file   pytest-split's ``.test_durations``: ``{"test id": seconds}``
    history        ``[{test id: seconds}, ...]``, oldest run first
    SimulationResult.to_dict()  ``{"mode", "workers", "tests", "makespan_s",
                    "lower_bound_s", "ratio", "batches", "flaky", "failed", ...}``
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.shard.commands import DEFAULT_MAX_ATTEMPTS, DYNAMIC, MODES, STATIC

# ------------------------------------------------------------------ reading


def read_durations(path: str | Path) -> dict[str, float]:
    """One pytest-split duration file, checked: a JSON object of test ids to
    non-negative numbers of seconds."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInputError(f"cannot read duration file {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{path} must hold a JSON object of test id to seconds, not a {type(data).__name__}"
        )
    for test_id, seconds in data.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise InvalidInputError(f"{path}: test {test_id!r} has a non-numeric duration {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidInputError(
                f"{path}: test {test_id!r} has duration {seconds!r}; durations are seconds >= 0"
            )
    return {test_id: float(seconds) for test_id, seconds in data.items()}


def read_history(paths: Sequence[str | Path]) -> list[dict[str, float]]:
    """Several duration files, oldest first."""
    if not paths:
        raise InvalidInputError("no history files given: pass at least one --history FILE")
    return [read_durations(path) for path in paths]


def read_test_list(lines: Iterable[str], source: str) -> list[str]:
    """One test id per line; blank lines and ``#`` comments are skipped."""
    tests = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tests:
        raise InvalidInputError(f"{source} lists no tests")
    repeated = [test for test, count in collections.Counter(tests).items() if count > 1]
    if repeated:
        raise InvalidInputError(f"{source} lists {repeated[0]!r} more than once")
    return tests


def estimate(tests: Sequence[str], history: Sequence[Mapping[str, float]]) -> list[_core.TestEstimate]:
    if not tests:
        raise InvalidInputError("the suite is empty: there are no tests to schedule")
    return _core.estimate_durations(list(tests), [dict(run) for run in history])


# ---------------------------------------------------------------- simulating


@dataclasses.dataclass
class SimulationResult:
    mode: str
    workers: int
    tests: int
    makespan_s: float
    lower_bound_s: float
    batches: int
    flaky: int
    failed: int
    reruns: int
    straggler_copies: int = 0

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else 1.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def lower_bound(actual_s: Sequence[float], workers: int) -> float:
    """No schedule beats the longest test, nor a perfect split of the total."""
    return max(max(actual_s), sum(actual_s) / workers)


@dataclasses.dataclass
class _Clock:
    """Per-attempt outcomes, shared by both modes: a test takes its actual
    duration and fails with probability ``flake_rate`` on each attempt."""

    actual: dict[str, float]
    flake_rate: float
    rng: random.Random

    def run(self, test_id: str) -> tuple[float, bool]:
        return self.actual[test_id], self.rng.random() >= self.flake_rate


def simulate(
    estimates: Sequence[_core.TestEstimate],
    actual: Mapping[str, float],
    workers: int,
    mode: str = DYNAMIC,
    batch_overhead_s: float = 0.0,
    flake_rate: float = 0.0,
    seed: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> SimulationResult:
    """Replay the suite: plan or dispatch from the estimates, then let each
    test take its ``actual`` duration (its estimate when absent there)."""
    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}")
    if mode not in MODES:
        raise InvalidInputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= flake_rate < 1.0:
        raise InvalidInputError(f"--flake-rate must be in [0, 1), got {flake_rate}")
    if batch_overhead_s < 0:
        raise InvalidInputError(f"--batch-overhead must be >= 0, got {batch_overhead_s}")
    durations = {e.id: actual.get(e.id, e.seconds) for e in estimates}
    clock = _Clock(durations, flake_rate, random.Random(seed))
    run = _simulate_dynamic if mode == DYNAMIC else _simulate_static
    result = run(estimates, clock, workers, batch_overhead_s, max_attempts)
    result.lower_bound_s = lower_bound(list(durations.values()), workers)
    return result


def _simulate_dynamic(estimates, clock: _Clock, workers: int, overhead_s: float, max_attempts: int):
    dispatcher = _core.Dispatcher(list(estimates), workers=workers, max_attempts=max_attempts)
    # Events: (time, sequence, worker, batch or None); None means "ask for work".
    events: list = [(0.0, w, f"worker-{w}", None) for w in range(workers)]
    heapq.heapify(events)
    sequence = workers
    waiting: list[str] = []
    makespan = 0.0
    while events and not dispatcher.done():
        now, _, worker, batch = heapq.heappop(events)
        if batch is not None:
            dispatcher.report(worker, batch.id, batch.results)
            makespan = now
            for idle in waiting:  # a report may free a re-run or end the run
                heapq.heappush(events, (now, sequence, idle, None))
                sequence += 1
            waiting.clear()
        assignment = dispatcher.next_batch(worker, now)
        if assignment.kind == _core.AssignmentKind.wait:
            waiting.append(worker)
            continue
        if assignment.kind == _core.AssignmentKind.done:
            continue
        finished = _Finished(assignment.batch.id)
        finish = now + overhead_s
        for test_id in assignment.batch.tests:
            seconds, passed = clock.run(test_id)
            finish += seconds
            finished.results.append(_core.TestResult(test_id, passed, seconds))
        heapq.heappush(events, (finish, sequence, worker, finished))
        sequence += 1
    stats = dispatcher.stats()
    return SimulationResult(
        DYNAMIC,
        workers,
        stats.tests,
        makespan,
        0.0,
        stats.batches_handed_out,
        stats.flaky,
        stats.failed,
        _reruns(dispatcher),
        stats.speculative_batches,
    )


@dataclasses.dataclass
class _Finished:
    """A batch in flight on the virtual clock, with the results it will report.
    Heap entries never tie on (time, sequence), so it is never compared."""

    id: int
    results: list = dataclasses.field(default_factory=list)


def _reruns(dispatcher) -> int:
    return sum(max(0, len(outcome.attempts) - 1) for outcome in dispatcher.outcomes())


def _simulate_static(estimates, clock: _Clock, workers: int, overhead_s: float, max_attempts: int):
    """Each shard runs its fixed list, then failed tests re-run, one runner
    start each, on whichever other shard is free first."""
    plan = _core.plan_static(list(estimates), workers)
    finish = [0.0] * workers
    failures: list[tuple[str, int, int]] = []  # test, shard that failed it, attempts so far
    for shard, planned in enumerate(plan.shards):
        if planned.tests:
            finish[shard] = overhead_s
        for test_id in planned.tests:
            seconds, passed = clock.run(test_id)
            finish[shard] += seconds
            if not passed:
                failures.append((test_id, shard, 1))
    flaky = failed = reruns = 0
    while failures:
        test_id, last_shard, attempts = failures.pop(0)
        if attempts >= max_attempts:
            failed += 1
            continue
        others = [s for s in range(workers) if s != last_shard] or [last_shard]
        shard = min(others, key=lambda s: (finish[s], s))
        seconds, passed = clock.run(test_id)
        finish[shard] += overhead_s + seconds
        reruns += 1
        if passed:
            flaky += 1
        else:
            failures.append((test_id, shard, attempts + 1))
    return SimulationResult(STATIC, workers, len(estimates), max(finish), 0.0, workers, flaky, failed, reruns)


def format_simulation(result: SimulationResult) -> str:
    lines = [
        f"mode          {result.mode}",
        f"workers       {result.workers}",
        f"tests         {result.tests}",
        f"makespan      {result.makespan_s:.2f} s",
        f"lower bound   {result.lower_bound_s:.2f} s   (max(longest test, total / workers))",
        f"ratio         {result.ratio:.4f}",
        f"batches       {result.batches}"
        + (f"  ({result.straggler_copies} straggler copies)" if result.straggler_copies else ""),
        f"re-runs       {result.reruns}",
        f"flaky         {result.flaky}",
        f"failed        {result.failed}",
    ]
    return "\n".join(lines)


def format_plan(plan, estimates: Sequence[_core.TestEstimate]) -> str:
    sources: dict[str, int] = {}
    for estimate_ in estimates:
        sources[estimate_.source] = sources.get(estimate_.source, 0) + 1
    lines = []
    for index, shard in enumerate(plan.shards):
        lines.append(f"shard {index + 1}: {len(shard.tests)} tests, estimate {shard.estimate_s:.2f} s")
        lines.extend(f"  {test_id}" for test_id in shard.tests)
    lines.append(
        f"makespan {plan.makespan_s:.2f} s, lower bound {plan.lower_bound_s:.2f} s, "
        f"ratio {plan.makespan_s / plan.lower_bound_s if plan.lower_bound_s else 1.0:.4f}"
    )
    lines.append(
        "estimates: " + ", ".join(f"{count} from {source}" for source, count in sorted(sources.items()))
    )
    return "\n".join(lines)


def plan_to_dict(plan) -> dict:
    return {
        "shards": [{"tests": list(shard.tests), "estimate_s": shard.estimate_s} for shard in plan.shards],
        "makespan_s": plan.makespan_s,
        "lower_bound_s": plan.lower_bound_s,
    }
