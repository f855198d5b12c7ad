#!/usr/bin/env python3
"""End-to-end `buildbot-cd plan --json` on a million tests with five history files.

    .venv/bin/python bench/plan_cli_bench.py [--dir /tmp/plan-bench] [--repeat 3] [--tests 1000000]

The suite: ids `tests/test_mod{i // 100}.py::TestC::test_{i}` (100 tests a
file), each history file a pytest-split `.test_durations` JSON object with a
fresh log-normal duration per test. The files are written once into --dir and
reused. Each run is the real command in a child process (reading, estimating,
planning and writing the JSON, interpreter start included), its output to
/dev/null; the figures are the medians of --repeat runs of its wall time and
of its CPU time (user + system), which a machine shared with other work
inflates far less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HISTORY_FILES = 5  # the runs an estimate looks at (kRecentRunsConsidered)
TESTS_PER_FILE = 100
SHARDS = 1000
# Log-normal durations around e^-1 s (~0.37 s): many fast tests, a long tail.
LOG_MEAN, LOG_SD = -1.0, 1.0
CLI = Path(sys.executable).with_name("buildbot-cd")


def test_ids(count: int) -> list[str]:
    return [f"tests/test_mod{i // TESTS_PER_FILE}.py::TestC::test_{i}" for i in range(count)]


def history_files(directory: Path, count: int, seed: int = 1) -> list[Path]:
    """The history files for `count` tests, written unless already there."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"run{run}-{count}.json" for run in range(HISTORY_FILES)]
    if all(path.exists() for path in paths):
        return paths
    rng = random.Random(seed)
    ids = test_ids(count)
    for path in paths:
        durations = {test: rng.lognormvariate(LOG_MEAN, LOG_SD) for test in ids}
        path.write_text(json.dumps(durations, indent=1))
    return paths


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plan_seconds(paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds of one `buildbot-cd plan --json`."""
    argv = [str(CLI), "plan", "--history", *map(str, paths), "--shards", str(SHARDS), "--json"]
    cpu, start = children_cpu_s(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, children_cpu_s() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/plan-bench"), help="where the inputs live")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tests", type=int, default=1_000_000)
    args = parser.parse_args()
    paths = history_files(args.dir, args.tests)
    wall, cpu = zip(*(plan_seconds(paths) for _ in range(args.repeat)))
    print(
        f"buildbot-cd plan --json: {args.tests} tests, {HISTORY_FILES} history files, {SHARDS} shards, "
        f"median of {args.repeat}: wall {statistics.median(wall):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in wall)}), CPU {statistics.median(cpu):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in cpu)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
