"""`make demo`: the whole loop on this machine, commit to live (see demo_story.py).

The shop (examples/webapp) in a Git repository the master polls, a 12-host
web fleet under traffic, a master from master.cfg.example with its workers;
three commits: one goes live, one is rolled back by the canary, one never
deploys. The processes keep running for the web UI: `make demo-stop` stops
them (`make demo` also does, before it starts).

This module holds the parts the story and the web UI tests share: DemoCluster
(a master and real worker processes under one directory, every process
recorded in pids.json) and stopping a previous demo. `--sharding` shows the
shard scheduler on the real hypha suite instead (no master).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.shard import planning as sharding
from harness.fixture_suite import FIXTURE_SUITE
from harness.local_master import (
    REPO,
    LocalMaster,
    LocalMasterError,
    free_port,
    stop_recorded,
    wait_until,
)  # fmt: skip

__all__ = ["DemoCluster", "DemoError", "main", "stop_demo", "wait_until"]
HYPHA = REPO / "data" / "test-durations" / "hypha"
DEMO_WORKERS = 8
DEMO_FLAKE_RATE = 0.002  # a few flaky runs in ~1,800 tests, to show the re-runs

# Stages 2 and 3: a real master and workers under ./demo/ (git-ignored).
DEMO_DIR = REPO / "demo"
MASTER_CFG_EXAMPLE = REPO / "master.cfg.example"
CLUSTER_SHARD_WORKERS = 4
DEMO_HOSTS = ("web1", "web2", "web3", "web4")  # web1 is the canary
# Deadlines in seconds: generous, the machine may be busy; readiness is
# polled, never assumed after a fixed sleep.
TESTS_BUILD_DEADLINE_S = 300
DEPLOY_BUILD_DEADLINE_S = 180
RESULT_NAMES = {
    0: "SUCCESS",
    1: "WARNINGS",
    2: "FAILURE",
    3: "SKIPPED",
    4: "EXCEPTION",
    5: "RETRY",
    6: "CANCELLED",
}


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def shard_stage(workers: int = DEMO_WORKERS) -> None:
    files = sorted(HYPHA.glob("*.json"))
    if len(files) < 2:
        raise sharding.InputError(f"the demo needs the real duration files in {HYPHA}")
    history = sharding.read_history(files[:-1])
    actual = sharding.read_durations(files[-1])
    banner(f"1. test sharding: {len(actual)} real tests (hypha {files[-1].stem}), {workers} workers")
    print(f"history: {len(history)} earlier versions, {files[0].stem} .. {files[-2].stem}")
    estimates = sharding.estimate(list(actual), history)
    sources: dict[str, int] = {}
    for estimate in estimates:
        sources[estimate.source] = sources.get(estimate.source, 0) + 1
    print("estimates: " + ", ".join(f"{count} from {source}" for source, count in sorted(sources.items())))

    plan = _core.plan_static(estimates, workers)
    print(
        "\nstatic plan from the estimates "
        f"(makespan {plan.makespan_s:.1f} s, bound {plan.lower_bound_s:.1f} s):"
    )
    for index, shard in enumerate(plan.shards):
        bar = "#" * round(40 * shard.estimate_s / plan.makespan_s)
        print(f"  shard {index + 1:2d} {len(shard.tests):5d} tests {shard.estimate_s:7.1f} s  {bar}")

    print(f"\nthe next run replayed on a virtual clock (actual durations, flake rate {DEMO_FLAKE_RATE}):")
    print(
        f"  {'mode':8} {'makespan s':>11} {'bound s':>8} {'ratio':>7} "
        f"{'batches':>8} {'flaky':>6} {'failed':>7}"
    )
    for mode in sharding.MODES[::-1]:
        result = sharding.simulate(estimates, actual, workers, mode=mode, flake_rate=DEMO_FLAKE_RATE, seed=1)
        print(
            f"  {mode:8} {result.makespan_s:11.1f} {result.lower_bound_s:8.1f} {result.ratio:7.3f} "
            f"{result.batches:8d} {result.flaky:6d} {result.failed:7d}"
        )
    print("  (flaky: failed once, then passed on another worker; the dispatcher re-runs failures elsewhere)")


# ------------------------------------------------- stages 2 and 3: a real master


class DemoError(Exception):
    """A problem the demo reports in one line (no traceback)."""


class DemoCluster(LocalMaster):
    """A master from master.cfg.example and real worker processes under `root`.

    Everything lives in `root`: the master, the workers, a copy of the fixture
    suite (the code under test), the inventory and the hosts' deploy roots;
    master.cfg.example reads its settings from BUILDBOT_CD_* variables.
    """

    def __init__(self, root: Path, shard_workers: int = CLUSTER_SHARD_WORKERS,
                 hosts: Sequence[str] = DEMO_HOSTS, extra_env: Mapping[str, str] | None = None,
                 canaries: int = 1):  # fmt: skip
        root = Path(root).resolve()
        self.project_dir = root / "project"
        self.hosts_dir = root / "hosts"
        self.inventory = root / "inventory.json"
        # Releases are pushed from under here only (the tested trees and the
        # demo's generated releases alike).
        self.release_root = root / "releases"
        self.shard_workers = [f"shard{i}" for i in range(1, shard_workers + 1)]
        self.hosts = list(hosts)
        self.canaries = canaries  # the first `canaries` hosts carry the tag "canary"
        web_port, pb_port = free_port(), free_port()
        # The caller's own BUILDBOT_CD_* settings are not the demo's.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("BUILDBOT_CD_")}
        env = dict(
            inherited,
            PYTHONPATH=str(REPO),
            BUILDBOT_CD_WORKERS=str(len(self.shard_workers)),
            BUILDBOT_CD_PROJECT_DIR=str(self.project_dir),
            BUILDBOT_CD_STATE_DIR=str(root / "test-state"),
            BUILDBOT_CD_INVENTORY=str(self.inventory),
            BUILDBOT_CD_RELEASE_ROOT=str(self.release_root),
            BUILDBOT_CD_TRANSPORT="local",
            BUILDBOT_CD_WWW_PORT=str(web_port),
            BUILDBOT_CD_PB_PORT=str(pb_port),
            BUILDBOT_CD_BIND="127.0.0.1",
            BUILDBOT_CD_PYTHON=sys.executable,
            # Local deploy roots serve nothing to measure: no judge, unless a
            # caller with a web fleet turns it on (the demo's story does).
            BUILDBOT_CD_CANARY_JUDGE="off",
        )
        env.update(extra_env or {})
        super().__init__(root, MASTER_CFG_EXAMPLE, ["coordinator", *self.shard_workers], env,
                         local_workers=["deployer"], web_port=web_port, pb_port=pb_port,
                         build_deadline_s=TESTS_BUILD_DEADLINE_S)  # fmt: skip

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(FIXTURE_SUITE, self.project_dir, ignore=shutil.ignore_patterns("__pycache__"))
        self._write_inventory()
        super().start()

    def stop(self, reason: str = "demo stopped") -> None:
        super().stop(reason)

    def _write_inventory(self) -> None:
        entries = [
            {"name": name, "address": "localhost", "deploy_root": str(self.hosts_dir / name),
             "tags": ["canary"] if index < self.canaries else []}
            for index, name in enumerate(self.hosts)
        ]  # fmt: skip
        for name in self.hosts:
            (self.hosts_dir / name).mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(json.dumps(entries, indent=2) + "\n")


def stop_demo(root: Path = DEMO_DIR, quiet: bool = False) -> None:
    """Stops the processes a previous demo started (by their recorded ids)."""
    stopped = stop_recorded(root, "demo stopped")
    if not quiet:
        print(
            f"demo: stopped {stopped} process(es) of the demo in {root}"
            if stopped
            else f"demo: nothing of the demo is running in {root}"
        )


def make_release(directory: Path, version: str, changed: str) -> None:
    """A small release tree: a few hundred KB of files, one of them per version."""
    assets = directory / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for index in range(20):
        block = (f"asset {index}\n" * 2000).encode()  # identical in every version
        (assets / f"bundle{index:02d}.js").write_bytes(block)
        os.utime(assets / f"bundle{index:02d}.js", (1_700_000_000, 1_700_000_000))
    (directory / "VERSION").write_text(version + "\n")
    (directory / "index.html").write_text(f"<h1>demo app {version}</h1>\n<p>{changed}</p>\n")


def run_the_loop(root: Path = DEMO_DIR) -> None:
    from harness import demo_story  # it builds on this module

    stop_demo(root, quiet=True)  # a previous demo: stop it, then start clean
    shutil.rmtree(root, ignore_errors=True)
    story = demo_story.LoopStory(root)
    windows = story.windows
    banner(f"the loop: commit to live on {len(story.cluster.hosts)} web hosts under traffic")
    print(f"the shop (examples/webapp) in a Git repository the master polls: {story.repository}")
    print(
        f"windows scaled down for the demo: baseline {windows.baseline_s:.0f} s, "
        f"canary {windows.canary_s:.0f} s (a look every {windows.interval_s:.0f} s), "
        f"monitoring {windows.monitor_s:.0f} s; poll every {windows.poll_s} s"
    )
    started = time.monotonic()
    try:
        story.start()
        print(
            f"web fleet, load generator, master and {len(story.cluster.shard_workers) + 1} workers up in "
            f"{time.monotonic() - started:.0f} s; the shop's first commit is live on every host"
        )
        banner("three commits, each as soon as the previous one's tests are done")
        outcomes = demo_story.run_story(story)
    except BaseException:
        story.stop()  # a half-started demo is of no use: leave nothing running
        raise
    banner("timeline")
    for line in demo_story.timeline(story, outcomes):
        print(line)
    print("(commit-to-live: from the commit to the end of its deploy, monitoring included)")
    banner("where to look")
    for line in demo_story.where_to_look(story, outcomes):
        print(line)
    print(
        "\neverything keeps running for the web UI: "
        "`make demo-stop` stops the master, workers, hosts and traffic"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the buildbot-cd pipeline locally.")
    parser.add_argument("--workers", type=int, default=DEMO_WORKERS)
    parser.add_argument("--stop", action="store_true", help="stop the master and workers of a previous demo")
    parser.add_argument(
        "--sharding", action="store_true", help="only the shard scheduler on the hypha suite (no master)"
    )
    args = parser.parse_args(argv)
    if args.stop:
        stop_demo()
        return 0
    try:
        if args.sharding:
            shard_stage(args.workers)
        else:
            run_the_loop()
    except (sharding.InputError, sharding.CdError, DemoError, LocalMasterError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
