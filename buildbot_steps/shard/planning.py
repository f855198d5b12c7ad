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
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.shard.commands import DEFAULT_MAX_ATTEMPTS, DYNAMIC, MODES, STATIC

# ------------------------------------------------------------------ bounds

# No single test runs for a week; a bigger duration is a corrupt or hostile
# file. The bound also keeps sums over a million tests (and every figure
# derived from them) far from float overflow, so no output is ever inf.
MAX_TEST_DURATION_S = _core.kMaxTestDurationSeconds

# More shards or simulated workers than any Buildbot master triggers builds
# for; a typo such as 1000000 would otherwise allocate that many shard lists
# (and the core takes a C int).
MAX_SHARDS = 10_000

# Runs of a failing test: Bazel's --flaky_test_attempts is usually 2-3; past
# ten, re-runs only hide a broken test (and multiply the simulation's work).
MAX_ATTEMPTS = 10

# Seconds to start one batch's runner: an hour is a broken runner, not an
# overhead; the bound also keeps the simulated makespan finite.
MAX_BATCH_OVERHEAD_S = 3600.0


def check_count(option: str, value: int, maximum: int) -> int:
    """An integer option between 1 and `maximum`, with a message naming it."""
    if not 1 <= value <= maximum:
        raise InvalidInputError(f"{option} must be between 1 and {maximum}, got {value}")
    return value


def printable(text: str) -> str:
    """`text` with control characters (newline, escape, ...) shown as escapes,
    so that one test id is one line of output whatever it contains."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# ------------------------------------------------------------------ reading


def _read_text(path: str | Path, what: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    return decode_utf8(data, f"{what} {path}")


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"{source} is not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8"
        ) from None


def check_test_id(test_id: str, source: str) -> str:
    """A test id travels to C++, to the worker and into logs: it must be
    encodable (JSON's "\\ud800" escape gives a lone surrogate, which is not)."""
    try:
        test_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"{source}: test id {test_id!r} is not valid Unicode (a lone surrogate escape)"
        ) from None
    return test_id


def read_durations(path: str | Path) -> dict[str, float]:
    """One pytest-split duration file, read and checked by the core (the one
    reader of the format): a JSON object of test ids to seconds between 0 and
    MAX_TEST_DURATION_S."""
    return _core.read_duration_files([str(path)]).runs[0]


def read_test_file(path: str | Path) -> list[str]:
    return read_test_list(_read_text(path, "test list").splitlines(), str(path))


def read_history(paths: Sequence[str | Path]) -> _core.DurationHistory:
    """Several duration files, oldest first, kept in the core."""
    if not paths:
        raise InvalidInputError("no history files given: pass at least one --history FILE")
    return _core.read_duration_files([str(path) for path in paths])


def read_test_list(lines: Iterable[str], source: str) -> list[str]:
    """One test id per line; blank lines and ``#`` comments are skipped."""
    tests = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for test in tests:
        check_test_id(test, source)
    if not tests:
        raise InvalidInputError(f"{source} lists no tests")
    repeated = [test for test, count in collections.Counter(tests).items() if count > 1]
    if repeated:
        raise InvalidInputError(f"{source} lists {repeated[0]!r} more than once")
    return tests


def estimate(
    tests: Sequence[str], history: Sequence[Mapping[str, float]] | _core.DurationHistory
) -> list[_core.TestEstimate]:
    if not tests:
        raise InvalidInputError("the suite is empty: there are no tests to schedule")
    if isinstance(history, _core.DurationHistory):
        return _core.estimate_durations(list(tests), history)
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
    overhead_known: bool = False,
) -> SimulationResult:
    """Replay the suite: plan or dispatch from the estimates, then let each
    test take its ``actual`` duration (its estimate when absent there).

    Every batch costs ``batch_overhead_s`` beyond its tests. The dispatcher
    learns it from its first batches, as on a first build, or with
    ``overhead_known`` starts from it, as on a build whose history recorded it.
    """
    check_count("--workers", workers, MAX_SHARDS)
    check_count("--max-attempts", max_attempts, MAX_ATTEMPTS)
    if mode not in MODES:
        raise InvalidInputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= flake_rate < 1.0:
        raise InvalidInputError(f"--flake-rate must be in [0, 1), got {flake_rate}")
    if not 0 <= batch_overhead_s <= MAX_BATCH_OVERHEAD_S:  # also refuses NaN
        raise InvalidInputError(
            f"--batch-overhead must be between 0 and {MAX_BATCH_OVERHEAD_S:.0f} seconds, "
            f"got {batch_overhead_s}"
        )
    durations = {e.id: actual.get(e.id, e.seconds) for e in estimates}
    clock = _Clock(durations, flake_rate, random.Random(seed))
    if mode == DYNAMIC:
        result = _simulate_dynamic(estimates, clock, workers, batch_overhead_s, max_attempts, overhead_known)
    else:
        result = _simulate_static(estimates, clock, workers, batch_overhead_s, max_attempts)
    result.lower_bound_s = lower_bound(list(durations.values()), workers)
    return result


def _simulate_dynamic(
    estimates, clock: _Clock, workers: int, overhead_s: float, max_attempts: int, overhead_known: bool
):
    dispatcher = _core.Dispatcher(
        list(estimates),
        workers=workers,
        max_attempts=max_attempts,
        batch_overhead_s=overhead_s if overhead_known else 0.0,
    )
    # Events: (time, sequence, worker, batch or None); None means "ask for work".
    events: list = [(0.0, w, f"worker-{w}", None) for w in range(workers)]
    heapq.heapify(events)
    sequence = workers
    waiting: list[str] = []
    makespan = 0.0
    while events and not dispatcher.done():
        now, _, worker, batch = heapq.heappop(events)
        if batch is not None:
            dispatcher.report(worker, batch.id, batch.results, batch.wall_s)
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
        finished.wall_s = finish - now  # the dispatcher learns the overhead from it
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
    wall_s: float = 0.0


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
    """The summary first (what a person reads), then each shard's test ids."""
    lines = plan_summary_lines(plan, estimates)
    for index, shard in enumerate(plan.shards):
        lines.append("")
        lines.append(f"shard {index + 1} tests:")
        lines.extend(f"  {printable(test_id)}" for test_id in shard.tests)
    return "\n".join(lines)


def plan_summary_lines(plan, estimates: Sequence[_core.TestEstimate]) -> list[str]:
    sources: dict[str, int] = {}
    for estimate_ in estimates:
        sources[estimate_.source] = sources.get(estimate_.source, 0) + 1
    ratio = plan.makespan_s / plan.lower_bound_s if plan.lower_bound_s else 1.0
    lines = [
        f"{len(estimates)} tests in {len(plan.shards)} shards: makespan {plan.makespan_s:.2f} s, "
        f"lower bound {plan.lower_bound_s:.2f} s, ratio {ratio:.4f}",
        "estimates: " + ", ".join(f"{count} from {source}" for source, count in sorted(sources.items())),
    ]
    for index, shard in enumerate(plan.shards):
        lines.append(f"shard {index + 1}: {len(shard.tests)} tests, estimate {shard.estimate_s:.2f} s")
    return lines


def format_plan_ids(plan) -> str:
    """One line per test, "<shard number><TAB><test id>": for scripts (`cut -f2`, `grep ^3`)."""
    return "\n".join(
        f"{index + 1}\t{printable(test_id)}"
        for index, shard in enumerate(plan.shards)
        for test_id in shard.tests
    )


def plan_to_dict(plan) -> dict:
    return {
        "shards": [{"tests": list(shard.tests), "estimate_s": shard.estimate_s} for shard in plan.shards],
        "makespan_s": plan.makespan_s,
        "lower_bound_s": plan.lower_bound_s,
    }
