#!/usr/bin/env python3
"""Shard scheduler benchmark: pytest-split against our static plan and our
dynamic dispatcher, on the same inputs in one run.

    .venv/bin/python bench/shard_bench.py [--repeat 3] [--quick] [--start-up-s 2]

Makespans are scored on a virtual clock (buildbot_steps.sharding.simulate's
model, with no per-batch cost; --start-up-s also scores the real suite with a
runner start-up paid by every command, ours dynamic both learning it and
knowing it from the start): each test takes its duration from the
"actual" run. Every makespan is printed as a ratio to the lower bound
max(longest actual test, total actual / workers); no schedule beats it.
Planning times are medians of --repeat runs, measured in this process.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections import namedtuple
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.shard import planning as sharding

try:
    from pytest_split.algorithms import Algorithms
except ImportError:
    sys.exit("pytest-split is not installed: run `make install` (it installs the test extras)")

HYPHA = Path(__file__).resolve().parent.parent / "data" / "test-durations" / "hypha"
# The IMVU 2009 suite: ~15k tests in ~1000 files, 4.4 machine-hours, 36 machines.
IMVU_TESTS, IMVU_FILES, IMVU_SECONDS, IMVU_WORKERS = 15_000, 1_000, 4.4 * 3600, 36
RUN_TO_RUN_LOG_SD = 0.20  # real suites vary 15-20 % per test between runs
HEAVY_TAIL_LOG_SD = 1.5  # log-normal spread of test durations: a few tests dominate
HISTORY_RUNS = 3
SCALE_TESTS, SCALE_SHARDS = 1_000_000, 1_000
PEER_TIME_LIMIT_S = 120  # pytest-split at 1M x 1000 builds 1e9 list entries; cap it
# The real suite's surprises (a test of ~0.1 s taking ~40 s, a different one
# each run): a test is one when it ran this much longer than its estimate.
SURPRISE_MIN_S, SURPRISE_MAX_ESTIMATE_S = 10.0, 1.0
SURPRISE_SEEDS = 50  # placements per version: 500 runs, enough for a mean to 0.02

Item = namedtuple("Item", "nodeid")  # all pytest-split reads of a pytest item


# ------------------------------------------------------------------ inputs


def hypha_versions():
    """Every successive pair of the real suite: history = all earlier
    versions, actual = the next one."""
    files = sorted(glob.glob(str(HYPHA / "*.json")))
    if len(files) < 3:
        sys.exit(f"need the real suite's duration files in {HYPHA}")
    runs = [sharding.read_durations(path) for path in files]
    return [(Path(files[k]).stem, runs[:k], runs[k]) for k in range(2, len(runs))]


def with_surprises_moved(actual: dict[str, float], estimates: dict[str, float], seed: int) -> dict:
    """`actual` with its surprises (see SURPRISE_MIN_S) moved to other tests
    drawn at random, each moved one taking its estimate instead: the same run,
    had the surprises landed elsewhere."""
    surprises = [
        test for test, s in actual.items() if s > SURPRISE_MIN_S and estimates[test] < SURPRISE_MAX_ESTIMATE_S
    ]
    moved = dict(actual)
    for test in surprises:
        moved[test] = estimates[test]
    landing = random.Random(seed).sample(sorted(moved), len(surprises))
    for test, source in zip(landing, surprises):
        moved[test] = actual[source]
    return moved


def imvu_case(seed: int = 2009):
    """15,000 tests in 1,000 files, log-normal durations scaled to 4.4 h, and
    run-to-run noise of 20 % (log-sd) in every past run and in the actual one."""
    rng = random.Random(seed)
    sizes = [rng.lognormvariate(0, 0.6) for _ in range(IMVU_FILES)]
    per_file = [max(1, round(IMVU_TESTS * s / sum(sizes))) for s in sizes]
    tests = [f"tests/test_{f:04d}.py::test_{k}" for f, n in enumerate(per_file) for k in range(n)][
        :IMVU_TESTS
    ]
    raw = [rng.lognormvariate(0, HEAVY_TAIL_LOG_SD) for _ in tests]
    scale = IMVU_SECONDS / sum(raw)
    mean = {test: d * scale for test, d in zip(tests, raw)}

    def noisy_run():
        return {test: m * rng.lognormvariate(0, RUN_TO_RUN_LOG_SD) for test, m in mean.items()}

    history = [noisy_run() for _ in range(HISTORY_RUNS)]
    return history, noisy_run()


# ------------------------------------------------------------------ scoring

# Each scheduler's name, and its column heading.
SCHEDULERS = {
    "pytest-split duration_based_chunks": "chunks",
    "pytest-split least_duration": "least_dur",
    "ours static": "static",
    "ours dynamic": "dynamic",
    "(clairvoyant LPT: knows the actual)": "clairvoy",
}
# With a start-up per command, ours dynamic also as on a build whose history
# recorded the start-up (the step reads it from the newest build): "ours
# dynamic" learns it from its first batches, as a first build does.
DYNAMIC_KNOWN = "ours dynamic, start-up known"
SHORT_NAMES = {**SCHEDULERS, DYNAMIC_KNOWN: "dyn known"}


def makespan_of(groups: list[list[str]], actual: dict[str, float]) -> float:
    return max(sum(actual[test] for test in group) for group in groups)


def pytest_split_groups(algorithm: str, tests, durations, workers: int) -> list[list[str]]:
    """pytest-split as it ships: one durations file (its newest), its own
    handling of unknown tests (their mean)."""
    items = [Item(test) for test in tests]
    groups = Algorithms[algorithm].value(workers, items, durations)
    return [[item.nodeid for item in group.selected] for group in groups]


def ratios(history, actual, workers: int, start_up_s: float = 0.0) -> tuple[dict[str, float], float]:
    """Each scheduler's makespan / lower bound on the tests of `actual`. With `start_up_s`, every
    command pays it first: a shard of a static plan once, each batch of ours dynamic once, and the
    bound once."""
    tests = list(actual)
    estimates = sharding.estimate(tests, history)
    bound = sharding.lower_bound(list(actual.values()), workers) + start_up_s
    plan = _core.plan_static(estimates, workers)
    # Hindsight reference: longest-first on the durations that really happened.
    clairvoyant = _core.plan_static(
        [_core.TestEstimate(t, s) for t, s in actual.items()], workers, split_file_fraction=0.0
    )
    makespans = [
        makespan_of(pytest_split_groups("duration_based_chunks", tests, history[-1], workers), actual),
        makespan_of(pytest_split_groups("least_duration", tests, history[-1], workers), actual),
        makespan_of([list(shard.tests) for shard in plan.shards], actual),
        dynamic_makespan(estimates, actual, workers, start_up_s, overhead_known=False),
        makespan_of([list(shard.tests) for shard in clairvoyant.shards], actual),
    ]
    names = list(SCHEDULERS)
    if start_up_s:
        names.append(DYNAMIC_KNOWN)
        makespans.append(dynamic_makespan(estimates, actual, workers, start_up_s, overhead_known=True))
    return {name: (makespan + start_up_s) / bound for name, makespan in zip(names, makespans)}, bound


def dynamic_makespan(estimates, actual, workers: int, start_up_s: float, overhead_known: bool) -> float:
    """Ours dynamic without one start-up: ratios() adds it back with the static plans' one."""
    result = sharding.simulate(
        estimates, actual, workers, mode="dynamic", batch_overhead_s=start_up_s, overhead_known=overhead_known
    )
    return result.makespan_s - start_up_s


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    names = list(rows[0][1])
    print(f"  {'case':26}" + "".join(f"{SHORT_NAMES[name]:>11}" for name in names))
    for label, row in rows:
        print(f"  {label:26}" + "".join(f"{row[name]:11.3f}" for name in names))
    if len(rows) > 1:
        medians = {name: statistics.median(row[name] for _, row in rows) for name in names}
        print(f"  {'median':26}" + "".join(f"{medians[name]:11.3f}" for name in names))
        worse = sum(row["ours dynamic"] > row["ours static"] for _, row in rows)
        print(f"  ours dynamic slower than ours static on {worse} of {len(rows)}", end="")
        if DYNAMIC_KNOWN in names:
            worse_known = sum(row[DYNAMIC_KNOWN] > row["ours static"] for _, row in rows)
            print(f"; with the start-up known, on {worse_known} of {len(rows)}", end="")
        print()
    legend = "(chunks, least_dur: pytest-split's algorithms; clairvoy: LPT knowing the actual durations"
    if DYNAMIC_KNOWN in names:
        legend += ";\n   dyn known: ours dynamic knowing the start-up from the start, as with history"
    print(f"  {legend})")


def hypha_tables(start_up_s: float) -> None:
    versions = hypha_versions()
    with_start_up = f", each command starting in {start_up_s:g} s" if start_up_s else ""
    for workers in (8, 32):
        rows = [(name, ratios(history, actual, workers, start_up_s)[0]) for name, history, actual in versions]
        print_table(
            f"hypha, real suite, {workers} workers{with_start_up}: makespan / lower bound, per version "
            f"(history = all earlier versions)",
            rows,
        )


def moved_surprises_table(start_up_s: float) -> None:
    """The real suite with start-ups, its surprises moved at random (see
    with_surprises_moved): where ten versions are ten draws of where the
    surprises land, these are 500, so the means say which scheduler is ahead."""
    versions = hypha_versions()
    names = ["ours static", "ours dynamic", DYNAMIC_KNOWN]
    print(
        f"\nhypha, real suite, each command starting in {start_up_s:g} s, its surprises moved to random "
        f"tests ({SURPRISE_SEEDS} placements per version): makespan / lower bound"
    )
    print(f"  {'workers':26}" + "".join(f"{SHORT_NAMES[name]:>11}" for name in names) + "  dynamic slower")
    for workers in (8, 32):
        rows = []
        for _, history, actual in versions:
            estimates = {e.id: e.seconds for e in sharding.estimate(list(actual), history)}
            for seed in range(SURPRISE_SEEDS):
                moved = with_surprises_moved(actual, estimates, seed)
                rows.append(ratios(history, moved, workers, start_up_s)[0])
        means = "".join(f"{statistics.mean(row[name] for row in rows):11.3f}" for name in names)
        slower = [sum(row[name] > row["ours static"] for row in rows) for name in names[1:]]
        print(f"  {workers:<26}{means}  {slower[0]}, {slower[1]} of {len(rows)}")
    print("  (means; dynamic slower: how often ours dynamic, then dyn known, took longer than ours static)")


def imvu_table() -> None:
    history, actual = imvu_case()
    row, bound = ratios(history, actual, IMVU_WORKERS)
    print_table(
        f"IMVU-like synthetic: {len(actual)} tests in {IMVU_FILES} files, "
        f"{sum(actual.values()) / 3600:.1f} h, "
        f"{IMVU_WORKERS} workers, lower bound {bound:.0f} s",
        [("15k tests, 20% noise", row)],
    )


# ------------------------------------------------------------ planning time


def scale_suite(n: int):
    rng = random.Random(1)
    ids = [f"tests/test_{i // 100}.py::test_{i}" for i in range(n)]
    return ids, [rng.lognormvariate(0, HEAVY_TAIL_LOG_SD) for _ in ids]


def time_ours(n: int, shards: int, repeat: int) -> float:
    ids, seconds = scale_suite(n)
    estimates = [_core.TestEstimate(i, s) for i, s in zip(ids, seconds)]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _core.plan_static(estimates, shards)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_peer_child(n: int, shards: int, queue) -> None:
    ids, seconds = scale_suite(n)
    items, durations = [Item(i) for i in ids], dict(zip(ids, seconds))
    start = time.perf_counter()
    Algorithms.least_duration.value(shards, items, durations)
    queue.put(time.perf_counter() - start)


def time_peer(n: int, shards: int) -> float | None:
    """In a child process, so that a run past the limit can be stopped."""
    queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=_time_peer_child, args=(n, shards, queue))
    child.start()
    child.join(PEER_TIME_LIMIT_S)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return queue.get() if not queue.empty() else None


def planning_times(repeat: int, quick: bool) -> None:
    print(
        f"\nplanning time onto {SCALE_SHARDS} shards (median of {repeat} for ours; one run of the peer, "
        f"stopped after {PEER_TIME_LIMIT_S} s)"
    )
    print(f"  {'tests':>9} {'ours s':>9} {'pytest-split least_duration s':>30} {'ratio':>8}")
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, SCALE_TESTS)
    for n in sizes:
        ours = time_ours(n, SCALE_SHARDS, repeat)
        peer = time_peer(n, SCALE_SHARDS)
        peer_text = f"{peer:.3f}" if peer is not None else f"> {PEER_TIME_LIMIT_S}"
        ratio = f"{peer / ours:.0f}x" if peer is not None else f"> {PEER_TIME_LIMIT_S / ours:.0f}x"
        print(f"  {n:9d} {ours:9.3f} {peer_text:>30} {ratio:>8}")


def handout_costs(n: int = 100_000, workers: int = 100) -> None:
    """Wall time of next_batch through the binding, with every batch reported
    back (untimed) as it would be by a worker, until the suite is done."""
    ids, seconds = scale_suite(n)
    dispatcher = _core.Dispatcher([_core.TestEstimate(i, s) for i, s in zip(ids, seconds)], workers=workers)
    costs, clock = [], 0.0
    while not dispatcher.done():
        for w in range(workers):
            start = time.perf_counter()
            assignment = dispatcher.next_batch(f"w{w}", clock)
            costs.append(time.perf_counter() - start)
            if assignment.kind == _core.AssignmentKind.run:
                batch = assignment.batch
                dispatcher.report(f"w{w}", batch.id, [_core.TestResult(t, True, 0.1) for t in batch.tests])
        clock += 1.0
    costs.sort()
    print(
        f"\nhanding out a batch ({n} tests, {workers} workers, {len(costs)} calls through the binding): "
        f"median {statistics.median(costs) * 1e6:.1f} us, p99 {costs[int(len(costs) * 0.99)] * 1e6:.1f} us"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 1M-test planning run")
    parser.add_argument(
        "--start-up-s",
        type=float,
        default=0.0,
        help="the real suite also with a runner start-up paid by every command (a static shard once, "
        "each dynamic batch once)",
    )
    args = parser.parse_args()
    if not 0.0 <= args.start_up_s <= 600.0:
        parser.error("--start-up-s must be between 0 and 600 seconds")
    print(f"machine: {os.cpu_count()} cores; ratios are makespan / lower bound (1.0 is perfect)")
    hypha_tables(0.0)
    if args.start_up_s:
        hypha_tables(args.start_up_s)
        moved_surprises_table(args.start_up_s)
    imvu_table()
    planning_times(args.repeat, args.quick)
    handout_costs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
