#!/usr/bin/env python3
"""Sharded test runs through a real Buildbot master: wall time against the bound.

    .venv/bin/python bench/shard_buildbot_bench.py [--tests 600] [--total-s 240] [--workers 16]
        [--startup-s 2] [--surprise-s 10] [--tiny-tests 3000]
        [--suites sleep,slow-start,surprises,no-history,networkx]
        [--modes dynamic,warm,static,pytest-split] [--repeat 1] [--history-builds 2] [--keep]

A synthetic suite of sleep-based tests (heavy-tailed durations, seeded) runs
on N local buildbot-worker processes, one shard per worker. Five suites:

    sleep        the tests alone: each batch pays one plain pytest start-up
    slow-start   the same tests behind a runner that takes --startup-s to start
                 (a conftest.py that sleeps at session start, as a framework's
                 test runner does: settings, app import, database)
    surprises    the sleep suite where any test may take --surprise-s more, a
                 different few each run (SURPRISE_RATE of the tests), as the
                 real hypha suite's database set-up lands on whichever test a
                 pytest-xdist worker runs first: what no plan made before the
                 run can place (its bound counts the tests' nominal durations)
    no-history   --tiny-tests tests of a few milliseconds behind the slow
                 start-up, as a new user's first build sees them: the first
                 build (no history) against the third (history and a learnt
                 start-up)
    networkx     a real project's suite, as a new user tries one: networkx's
                 (REAL_SUITE_PACKAGE, ~6,800 tests, its tests ship in its wheel,
                 fetched from the package index), first build against third as
                 no-history, and against one plain `pytest` of the whole suite
                 (which also gives each test's duration for the bound); the
                 only suite whose tests use the CPU rather than sleep

and each runs four ways (`--modes` picks some):

    dynamic      ShardedTest(mode="dynamic"): shards pull batches, longest first,
                 one runner start-up per batch
    warm         the same with warm_runner=True: one pytest per shard, fed batch
                 after batch through the master's web server (one start-up per shard)
    static       ShardedTest(mode="static"): the core's LPT plan, fixed lists
    pytest-split one shard build per worker running `pytest --splits N --group i`
                 (pytest-split's default algorithm, duration_based_chunks)

Every mode plans from the same knowledge: ours from the history of
--history-builds warm-up builds (two by default: one run tells a test's
duration, two also how much it varies from run to run), pytest-split from
a .test_durations file with the nominal durations. Each test sleeps its
nominal duration times exp(N(0, JITTER_LOG_SD)), drawn anew on every run:
the run-to-run variance that makes fixed plans finish late.

Printed per mode: the build's wall time (force request to build complete, as
seen from the REST API), the sharded part alone (first shard build started to
last shard build finished) and the sharded part as ratios to two lower bounds:
the tests alone, max(longest nominal test, nominal total / workers), and the
tests plus one runner start-up per worker (the start-up as the dispatcher
learnt it, tests_batch_overhead_s). The gap between wall and shards is
Buildbot's own overhead: build request, discovery, history reads, shard build
start-up; inside the shards, each batch pays a runner start-up. A third ratio,
"x starts", takes the bound from when each shard build really started:
Buildbot starts them one after another (16 builds took 3-7 s here), and no
mode can run a test on a worker before its shard build starts.

--repeat N runs each suite N times, each on a fresh master, and prints the
medians. The suites load no Hypothesis plugin (`-p no:hypothesispytest`): a
user's project would not have it, and the one in this environment imports all
of Hypothesis at the end of every pytest run (1.7 s of CPU each; with 16
runners on 2 cores it was most of every start-up this bench measured before).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from xml.etree import ElementTree

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the local-master harness, as the tests import it

from buildbot_steps.shard.history import packed_durations_of  # noqa: E402
from harness import cluster  # noqa: E402

# Log-sd of a test's duration between runs: real suites vary ~15-20% per
# test (DESIGN.md section 3).
JITTER_LOG_SD = 0.15
# Shape of the heavy tail: log-normal with this sigma before scaling.
DURATION_LOG_SD = 1.0
# No single test longer than this share of the per-worker share: the bound
# stays total / workers, which is what sharding can reach.
LONGEST_SHARE = 0.5
TESTS_PER_FILE = 15
# The surprises suite: each test takes --surprise-s more with this chance on
# every run, about 6 of 600 tests a build, as hypha's runs have 9-12 of ~1,000.
SURPRISE_RATE = 0.01
SEED = 20091021
# Seconds allowed for one sharded build of the synthetic suite.
BUILD_DEADLINE_S = 900
# The real suite: pinned, so that runs on different days run the same tests.
REAL_SUITE = "networkx"
REAL_SUITE_PACKAGE = "networkx==3.6.1"
# pytest's exit codes for a run that ran the suite (failed tests still time it).
PYTEST_ALL_PASSED, PYTEST_SOME_FAILED = 0, 1
# As write_suite's: no Hypothesis plugin in a user's project.
PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n"

SPLIT_MASTER_CFG = """

class TriggerGroups(steps.Trigger):
    # One shard build per worker, each told its pytest-split group.
    def getSchedulersAndProperties(self):
        return [
            {{"sched_name": "split-shard", "props_to_set": {{"split_group": group}}, "unimportant": False}}
            for group in range(1, {groups} + 1)
        ]

c["builders"].append(util.BuilderConfig(
    name="split-shard", workernames={shard_workers!r}, collapseRequests=False,
    factory=util.BuildFactory([steps.ShellCommand(
        name="pytest-split", workdir={suite!r},
        command=[{python!r}, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--splits", "{groups}",
                 "--group", util.Interpolate("%(prop:split_group)s"), "--durations-path", {durations!r}],
    )]),
))
c["builders"].append(util.BuilderConfig(
    name="split", workernames=["coordinator"],
    factory=util.BuildFactory([TriggerGroups(schedulerNames=["split-shard"], waitForFinish=True)]),
))
c["schedulers"].append(schedulers.Triggerable(name="split-shard", builderNames=["split-shard"]))
c["schedulers"].append(schedulers.ForceScheduler(name="force-split", builderNames=["split"]))

# Dynamic with the warm runner: one pytest per shard, fed over the master's web server.
c["www"]["plugins"]["buildbot_cd"] = {{}}
c["builders"].append(util.BuilderConfig(
    name="tests-warm", workernames=["coordinator"], factory=tests_factory("dynamic", warm_runner=True),
))
c["schedulers"].append(schedulers.ForceScheduler(name="force-warm", builderNames=["tests-warm"]))
"""


def nominal_durations(tests: int, total_s: float, workers: int) -> list[float]:
    rng = random.Random(SEED)
    raw = [rng.lognormvariate(0.0, DURATION_LOG_SD) for _ in range(tests)]
    cap = LONGEST_SHARE * total_s / workers
    scaled = [min(cap, d * total_s / sum(raw)) for d in raw]
    return [d * total_s / sum(scaled) for d in scaled]


def tiny_durations(tests: int) -> list[float]:
    """Milliseconds each, as a unit-test suite: the start-up is what costs."""
    rng = random.Random(SEED)
    return [rng.uniform(0.001, 0.02) for _ in range(tests)]


def write_suite(
    root: pathlib.Path, durations: list[float], startup_s: float = 0.0, surprise_s: float = 0.0
) -> dict[str, float]:
    tests_dir = root / "tests"
    tests_dir.mkdir(parents=True)
    # A user's project: no Hypothesis. Its plugin, which the bench's own
    # environment has, imports all of Hypothesis at every run's end (1.7 s of
    # CPU, ~13 s with 16 runners on 2 cores).
    (root / "pytest.ini").write_text(PYTEST_INI)
    (tests_dir / "__init__.py").write_text("")
    (tests_dir / "conftest.py").write_text(
        textwrap.dedent(f"""
            import math, os, random, time
            import pytest

            # Fresh jitter on every run: a test's duration varies between runs,
            # and with surprise_s, any test may take that much more.
            _rng = random.Random()
            SURPRISE_S, SURPRISE_RATE = {surprise_s}, {SURPRISE_RATE if surprise_s else 0.0}

            def pytest_sessionstart(session):
                # A framework's runner: settings, app import, test database.
                time.sleep({startup_s})

            @pytest.fixture
            def sleep_for():
                def sleep(nominal_s):
                    surprise_s = SURPRISE_S if _rng.random() < SURPRISE_RATE else 0.0
                    time.sleep(nominal_s * math.exp(_rng.gauss(0.0, {JITTER_LOG_SD})) + surprise_s)
                return sleep
        """)
    )
    by_id = {}
    for start in range(0, len(durations), TESTS_PER_FILE):
        name = f"test_part{start // TESTS_PER_FILE:03d}.py"
        lines = []
        for index, seconds in enumerate(durations[start : start + TESTS_PER_FILE], start=start):
            lines.append(f"def test_{index:04d}(sleep_for):\n    sleep_for({seconds:.4f})\n")
            by_id[f"tests/{name}::test_{index:04d}"] = seconds
        (tests_dir / name).write_text("\n".join(lines))
    return by_id


def fetch_real_suite(root: pathlib.Path) -> None:
    """REAL_SUITE_PACKAGE's wheel from the package index, unpacked into `root`
    with the bench's pytest.ini: the package's tests ship inside it."""
    wheels = root.parent / "wheel"
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "-d", str(wheels), REAL_SUITE_PACKAGE],
    )  # fmt: skip
    if download.returncode != 0:
        sys.exit(
            f"shard_buildbot_bench: could not download {REAL_SUITE_PACKAGE} from the package index "
            f"(pip exit code {download.returncode}); the {REAL_SUITE} suite needs it"
        )
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
        wheel.extractall(root)
    (root / "pytest.ini").write_text(PYTEST_INI)


def plain_pytest(suite: pathlib.Path) -> tuple[float, list[float]]:
    """One `pytest` of the whole suite in one process, as a user runs it
    without sharding: its wall time and each test's duration (its JUnit report)."""
    report = suite.parent / "plain.xml"
    started = time.monotonic()
    run = subprocess.run(
        [cluster.PYTHON, "-m", "pytest", "-q", f"--junitxml={report}"], cwd=suite, stdout=subprocess.DEVNULL
    )
    wall_s = time.monotonic() - started
    if run.returncode not in (PYTEST_ALL_PASSED, PYTEST_SOME_FAILED):
        sys.exit(
            f"shard_buildbot_bench: pytest of {suite} did not run its tests (exit code {run.returncode})"
        )
    cases = ElementTree.parse(report).iter("testcase")
    return wall_s, [float(case.get("time", 0.0)) for case in cases]


class BenchCluster(cluster.BuildbotCluster):
    """The test harness's cluster plus a pytest-split builder pair."""

    def __init__(self, root, workers, durations_path, suite_source: pathlib.Path):
        super().__init__(
            root, workers, None, {}, suite_source=suite_source, build_deadline_s=BUILD_DEADLINE_S
        )
        self.durations_path = durations_path
        self.master_cfg += SPLIT_MASTER_CFG.format(
            groups=len(self.shard_workers),
            shard_workers=self.shard_workers,
            suite=str(self.suite),
            python=cluster.PYTHON,
            durations=str(self.durations_path),
        )

    def timed_build(self, builder: str, scheduler: str) -> dict:
        started, cpu_before = time.monotonic(), machine_cpu_s()
        brid = self.force_build(builder, scheduler)
        build = self.wait_for_build(brid)
        build["wall_s"] = time.monotonic() - started
        (busy_after, total_after), (busy_before, total_before) = machine_cpu_s(), cpu_before
        build["cpu_busy_share"] = (busy_after - busy_before) / max(1e-9, total_after - total_before)
        children = self.api(f"builds/{build['buildid']}/triggered_builds")["builds"]
        first_start = min(b["started_at"] for b in children)
        last_end = max(b["complete_at"] for b in children)
        build["before_s"] = first_start - build["started_at"]
        build["shards_s"] = last_end - first_start
        build["after_s"] = build["complete_at"] - last_end
        # How far apart Buildbot started the shard builds: the last one starts
        # its runner that much later than the first.
        build["shard_starts_s"] = sorted(b["started_at"] - first_start for b in children)
        build["start_spread_s"] = build["shard_starts_s"][-1]
        build["batches"] = build["properties"].get("tests_batches", len(children))
        build["shard_phases_s"] = self.shard_phases_s(children)
        build["run_bound_s"] = self.run_bound_s(build["buildid"])
        return build

    def run_bound_s(self, buildid: int) -> float | None:
        """The bound of the tests as this build ran them, max(longest, total /
        workers) over the durations it recorded: where a test's duration is
        drawn on every run (jitter, surprises), the bound that run could meet.
        None for a build that records none (pytest-split)."""
        sets = [s for s in self.test_result_sets(buildid) if s["description"].endswith(" durations")]
        if not sets:
            return None
        seconds = list(packed_durations_of(self.test_results(sets[0]["test_result_setid"])).values())
        return max(max(seconds), sum(seconds) / len(self.shard_workers)) if seconds else None

    def shard_phases_s(self, children: list[dict]) -> tuple[float, float, float]:
        """Means over the shard builds: from the build's start to its test
        step's start (Buildbot's own set-up), the test step, and from the step's
        end to the build's end. Whole seconds each, so only their means say much."""
        phases = []
        for child in children:
            steps = self.api(f"builds/{child['buildid']}/steps")["steps"]
            runs = [s for s in steps if s["name"] in ("run-shard", "pytest-split") and s["complete_at"]]
            if runs:
                first, last = min(s["started_at"] for s in runs), max(s["complete_at"] for s in runs)
                phases.append((first - child["started_at"], last - first, child["complete_at"] - last))
        if not phases:
            return (0.0, 0.0, 0.0)
        before, step, after = (statistics.fmean(p[k] for p in phases) for k in range(3))
        return before, step, after


def machine_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat:
    every CPU's user, nice, system, irq, softirq and steal time, and those plus
    idle and iowait."""
    ticks = [int(field) for field in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]
    per_s = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / per_s, sum(ticks) / per_s


@dataclasses.dataclass
class Suite:
    name: str
    durations: list[float]
    startup_s: float
    with_history: bool  # False: every mode plans blind on its first build
    surprise_s: float = 0.0  # > 0: SURPRISE_RATE of the tests take this much more, on every run


# Each mode's builder and force scheduler.
MODE_BUILDERS = {
    "dynamic": ("tests", "force"),
    "warm": ("tests-warm", "force-warm"),
    "static": ("tests-static", "force-static"),
    "pytest-split": ("split", "force-split"),
}
MODES = tuple(MODE_BUILDERS)
REPEATED_MODES = ("dynamic", "warm", "static")  # the modes whose third build is timed too (no-history suites)


def timed_builds(
    bench_cluster: BenchCluster, suite: Suite, history_builds: int, modes: tuple[str, ...]
) -> list[tuple[str, dict]]:
    """The rows of one suite, each a forced build timed end to end, in MODES order."""
    if suite.with_history:
        # Each of our builders plans from its own history: `history_builds` warm-up builds each.
        for builder, scheduler in (MODE_BUILDERS[mode] for mode in modes if mode != "pytest-split"):
            for done in range(history_builds):
                warmup = bench_cluster.timed_build(builder, scheduler)
                print(
                    f"  warm-up {builder} ({done} builds of history): wall {warmup['wall_s']:.1f} s; "
                    f"{warmup['state_string']}"
                )
        return [(mode, bench_cluster.timed_build(*MODE_BUILDERS[mode])) for mode in modes]
    rows = [
        (mode if mode == "pytest-split" else f"{mode} 1st", bench_cluster.timed_build(*MODE_BUILDERS[mode]))
        for mode in modes
    ]
    for mode in (m for m in REPEATED_MODES if m in modes):
        bench_cluster.timed_build(*MODE_BUILDERS[mode])
        rows.append((f"{mode} 3rd", bench_cluster.timed_build(*MODE_BUILDERS[mode])))
    return rows


def run_suite(
    root: pathlib.Path, suite: Suite, workers: int, repeat: int, history_builds: int, modes: tuple[str, ...]
) -> None:
    """`repeat` runs of the suite, each on a fresh master (a first build must
    find no history), then the medians of their figures."""
    runs = [
        run_suite_once(root / f"run{index}", suite, workers, history_builds, modes) for index in range(repeat)
    ]
    if repeat > 1:
        print_medians(suite.name, runs)


def run_suite_once(
    root: pathlib.Path, suite: Suite, workers: int, history_builds: int, modes: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    suite_source = root / suite.name / "suite-source"
    plain_s = None
    if suite.name == REAL_SUITE:
        fetch_real_suite(suite_source)
        plain_s, durations = plain_pytest(suite_source)
        by_id = {}
        what = f"{REAL_SUITE_PACKAGE}'s suite: {len(durations)} tests, {sum(durations):.0f} s of tests"
    else:
        durations = suite.durations
        by_id = write_suite(suite_source, durations, suite.startup_s, suite.surprise_s)
        what = f"{len(durations)} tests, {sum(durations):.0f} s of sleep"
        if suite.surprise_s:
            what += f" (and any test +{suite.surprise_s:g} s with chance {SURPRISE_RATE:g} on every run)"
    bound = max(max(durations), sum(durations) / workers)
    durations_path = root / suite.name / "test_durations.json"
    # pytest-split knows what our history knows: nothing on a first build.
    durations_path.write_text(json.dumps(by_id if suite.with_history else {}))
    print(
        f"\n[{suite.name}] {what}, longest "
        f"{max(durations):.3f} s, median {statistics.median(durations):.3f} s; runner start-up "
        f"+{suite.startup_s:.1f} s; {workers} workers; bound (tests alone) {bound:.2f} s"
    )
    if plain_s is not None:
        # Its tests use the CPU: with more workers than CPUs, the CPUs set the bound.
        cpus = os.cpu_count() or 1
        print(
            f"  plain pytest of the whole suite, one process: {plain_s:.1f} s; bound by the machine's "
            f"{cpus} CPUs (tests / min(workers, CPUs)): {sum(durations) / min(workers, cpus):.2f} s"
        )
    bench_cluster = BenchCluster(root / suite.name / "cluster", workers, durations_path, suite_source)
    (root / suite.name / "cluster").mkdir()
    try:
        bench_cluster.start()
        rows = timed_builds(bench_cluster, suite, history_builds, modes)
    finally:
        bench_cluster.stop()
    figures = print_rows(rows, bound, durations)
    if plain_s is not None:
        for mode, build in rows:
            ratio = build["wall_s"] / plain_s
            figures[f"{mode} / plain pytest"] = {"wall ratio": ratio}
            print(f"  {mode} / plain pytest: wall {ratio:.2f}")
    return figures


def bound_from_starts(starts_s: list[float], startup_s: float, durations: list[float]) -> float:
    """The lower bound once each shard build has started (Buildbot starts them
    one after another) and paid one start-up: the earliest T by which the
    workers, each from its own start, can have run every test; never less than
    the first start plus the longest test. Seconds from the first shard start."""
    ready = sorted(start + startup_s for start in starts_s)
    total = sum(durations)
    for count in range(1, len(ready) + 1):
        end = (total + sum(ready[:count])) / count
        if count == len(ready) or end <= ready[count]:
            break
    return max(end, ready[0] + max(durations))


def print_rows(
    rows: list[tuple[str, dict]], bound: float, durations: list[float]
) -> dict[str, dict[str, float]]:
    """Prints one run's rows; returns each mode's figures (and the first-over-third ratios)."""
    # The start-up the last dynamic build learnt (its mean over workers).
    dynamic = [build for mode, build in rows if mode.startswith("dynamic")]
    startup = float(dynamic[-1]["properties"].get("tests_batch_overhead_s", 0.0)) if dynamic else 0.0
    with_startups = bound + startup
    print(
        f"  learnt start-up per batch {startup:.2f} s; bound with one start-up per worker "
        f"{with_startups:.2f} s"
    )
    print(
        f"  {'mode':<14}{'wall s':>8}{'shards s':>10}{'x tests':>9}{'x +start':>10}"
        f"{'before s':>10}{'after s':>9}{'starts s':>9}{'x starts':>9}{'x setup':>9}"
        f"{'batches':>9}{'run s':>8}{'let go':>8}{'split':>7}{'cpu busy':>10}  result"
    )
    figures: dict[str, dict[str, float]] = {}
    for mode, build in rows:
        figures[mode] = {
            "wall s": build["wall_s"],
            "shards s": build["shards_s"],
            "x tests": build["shards_s"] / bound,
            "x +start": build["shards_s"] / with_startups,
            "x starts": build["shards_s"] / bound_from_starts(build["shard_starts_s"], startup, durations),
            # And Buildbot's own set-up of each shard build before its test step.
            "x setup": build["shards_s"]
            / bound_from_starts(build["shard_starts_s"], startup + build["shard_phases_s"][0], durations),
            "cpu busy": build["cpu_busy_share"],
        }
        # Our modes' own clock (pytest-split has none): first batch out to last result in.
        run_s = build["properties"].get("tests_makespan_s")
        if run_s is not None:
            figures[mode]["run s"] = run_s
        if build["run_bound_s"]:
            figures[mode]["x run"] = build["shards_s"] / build["run_bound_s"]
        print(
            f"  {mode:<14}{build['wall_s']:>8.1f}{build['shards_s']:>10.0f}{figures[mode]['x tests']:>9.2f}"
            f"{figures[mode]['x +start']:>10.2f}{build['before_s']:>10.0f}{build['after_s']:>9.0f}"
            f"{build['start_spread_s']:>9.0f}{figures[mode]['x starts']:>9.2f}"
            f"{figures[mode]['x setup']:>9.2f}"
            f"{build['batches']:>9}{_or_dash(run_s, '{:.1f}'):>8}"
            f"{_or_dash(build['properties'].get('tests_workers_released'), '{}'):>8}"
            f"{_or_dash(build['properties'].get('tests_files_split'), '{}'):>7}"
            f"{build['cpu_busy_share']:>10.0%}  {build['state_string']}"
        )
    for mode, build in rows:
        before, step, after = build["shard_phases_s"]
        print(f"  {mode}: a shard build's mean: {before:.1f} s to its test step, the step {step:.1f} s, "
              f"{after:.1f} s after it")  # fmt: skip
        if build["run_bound_s"]:
            print(f"  {mode}: the bound of its tests as they ran {build['run_bound_s']:.2f} s, "
                  f"shards / that bound (x run) {figures[mode]['x run']:.2f}")  # fmt: skip
    print_ratios_to_peers(figures)
    for mode in REPEATED_MODES:
        first, third = dict(rows).get(f"{mode} 1st"), dict(rows).get(f"{mode} 3rd")
        if first and third:
            ratio = first["shards_s"] / max(1, third["shards_s"])
            figures[f"{mode}: first / third build"] = {"shards ratio": ratio}
            print(f"  {mode}: first build / third build (shards): {ratio:.2f}")
    return figures


def print_ratios_to_peers(figures: dict[str, dict[str, float]]) -> None:
    """Each of our dynamic modes over static and pytest-split on the same builds
    (history, a first build each, or a third build each): shards, Buildbot's whole seconds, and
    dynamic against static on the step's own clock too."""
    for ours, peers in ((("dynamic", "warm"), ("static", "pytest-split")),
                        (("dynamic 1st", "warm 1st"), ("static 1st", "pytest-split")),
                        (("dynamic 3rd", "warm 3rd"), ("static 3rd",))):  # fmt: skip
        for mode in (m for m in ours if m in figures):
            for peer in (p for p in peers if p in figures):
                mine, theirs = figures[mode], figures[peer]
                line = f"  {mode} / {peer}: shards {mine['shards s'] / max(1.0, theirs['shards s']):.2f}"
                # Warm's clock starts once its runner is up: only its shards compare.
                if "run s" in theirs and not mode.startswith("warm"):
                    line += f", run s {mine['run s'] / theirs['run s']:.2f}"
                print(line)


def _or_dash(value: float | int | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def print_medians(suite: str, runs: list[dict[str, dict[str, float]]]) -> None:
    print(f"\n[{suite}] medians of {len(runs)} runs")
    for mode in runs[0]:
        columns = runs[0][mode].keys()
        medians = (
            f"{column} {statistics.median(run[mode][column] for run in runs):.2f}" for column in columns
        )
        print(f"  {mode:<30}" + "; ".join(medians))


SUITES = ("sleep", "slow-start", "surprises", "no-history", REAL_SUITE)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=600)
    parser.add_argument("--total-s", type=float, default=240.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--startup-s", type=float, default=2.0, help="extra runner start-up (slow-start)")
    parser.add_argument("--surprise-s", type=float, default=10.0, help="what a surprise adds (surprises)")
    parser.add_argument("--tiny-tests", type=int, default=3000, help="tests of the no-history suite")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, of {SUITES}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per suite (fresh master each); medians")
    parser.add_argument(
        "--history-builds",
        type=int,
        default=2,
        help="warm-up builds per builder before the timed ones (sleep, slow-start); with one, no "
        "test's run-to-run spread is known and the dispatcher hedges with more batches",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (masters' databases and logs)"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.suites.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SUITES]
    if unknown or not chosen:
        parser.error(f"--suites: unknown {unknown}; choose from {', '.join(SUITES)}")
    picked = {name.strip() for name in args.modes.split(",") if name.strip()}
    if picked - set(MODES) or not picked:
        parser.error(f"--modes: unknown {sorted(picked - set(MODES))}; choose from {', '.join(MODES)}")
    modes = tuple(mode for mode in MODES if mode in picked)
    for option, value in (
        ("--tests", args.tests),
        ("--workers", args.workers),
        ("--tiny-tests", args.tiny_tests),
        ("--repeat", args.repeat),
        ("--history-builds", args.history_builds),
    ):
        if value < 1:
            parser.error(f"{option} must be at least 1")
    for option, value in (("--startup-s", args.startup_s), ("--surprise-s", args.surprise_s)):
        if not value >= 0:
            parser.error(f"{option} must be a number of seconds, 0 or more")

    durations = nominal_durations(args.tests, args.total_s, args.workers)
    suites = {
        "sleep": Suite("sleep", durations, 0.0, True),
        "slow-start": Suite("slow-start", durations, args.startup_s, True),
        "surprises": Suite("surprises", durations, 0.0, True, args.surprise_s),
        "no-history": Suite("no-history", tiny_durations(args.tiny_tests), args.startup_s, False),
        # Its durations come from a plain pytest run of it (run_suite_once).
        REAL_SUITE: Suite(REAL_SUITE, [], 0.0, False),
    }
    root = pathlib.Path(tempfile.mkdtemp(prefix="shard-buildbot-bench-"))
    print(f"jitter log-sd {JITTER_LOG_SD}; working in {root}")
    try:
        for name in chosen:
            run_suite(root, suites[name], args.workers, args.repeat, args.history_builds, modes)
    finally:
        if args.keep:
            print(f"kept {root}: its masters' databases and logs")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "\nwall: force request to build complete (REST API). shards: first shard build start to last "
        "shard build end; x tests: shards / max(longest test, total / workers); x +start: shards / "
        "(that bound + one learnt runner start-up per worker). before: parent start (discovery, "
        "history, plan, trigger) to first shard start; after: last shard end to parent end; "
        "starts: first to last shard build start; x starts: shards / the bound once every shard "
        "build has started (each from its own start: one learnt start-up, then its part); x setup: "
        "the same bound with each worker also paying the shard builds' mean set-up by Buildbot "
        "before their test step (printed below each table). "
        "Buildbot's timestamps are whole seconds. Each batch (pytest-split: each shard) pays one "
        "runner start-up inside the shards column. cpu busy: the share of the machine's CPU time "
        "(all CPUs, from /proc/stat) that was busy from the force request to the build's end; "
        "near 100 %, the CPUs, not the schedule, set the pace. run s: the step's own clock "
        "(tests_makespan_s), first batch handed out to last result in, to the millisecond; let go: "
        "shards told they were done while others still ran (tests_workers_released); split: files whose "
        "tests went to two batches so that a part could be cut to the test (tests_files_split). x run "
        "(below each table, our modes): shards / max(longest, total / workers) over the durations "
        "that build recorded, the bound of its tests as they ran (jitter and surprises drawn anew)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
