"""`make demo`: the whole pipeline on this machine, one stage after another.

1. The shard scheduler on a real suite (the hypha durations beside this
   checkout): the plan for the newest version from the earlier ones, and the
   next run replayed with a static split and with the dynamic dispatcher.
2. A real Buildbot master (from master.cfg.example, under ./demo/) with a
   coordinator and shard workers: one forced build of the tests builder on
   the fixture suite, sharded; its summary and where to look in the web UI.
3. The release push through that master's deploy builder: a small generated
   release pushed to local hosts (deploy roots under ./demo/hosts/), flipped
   on the canary, then on all; then a second release, to show that a push
   costs the change; then the rollback builder takes it back. The master and
   workers keep running afterwards:
   `make demo-stop` stops them (`make demo` also does, before it starts).
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
from harness.local_master import (
    REPO,
    VENV_BIN,
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
FIXTURE_SUITE = REPO / "tests" / "sharding_fixture_suite"
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
                 hosts: Sequence[str] = DEMO_HOSTS, extra_env: Mapping[str, str] | None = None):  # fmt: skip
        root = Path(root).resolve()
        self.project_dir = root / "project"
        self.hosts_dir = root / "hosts"
        self.inventory = root / "inventory.json"
        # Releases are pushed from under here only (the tested trees and the
        # demo's generated releases alike).
        self.release_root = root / "releases"
        self.shard_workers = [f"shard{i}" for i in range(1, shard_workers + 1)]
        self.hosts = list(hosts)
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
            **(extra_env or {}),
        )
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
             "tags": ["canary"] if index == 0 else []}
            for index, name in enumerate(self.hosts)
        ]  # fmt: skip
        for name in self.hosts:
            (self.hosts_dir / name).mkdir(parents=True)
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


def cluster_stage(cluster: DemoCluster) -> dict:
    banner(
        "2. sharded tests on a real Buildbot master: "
        f"1 coordinator + {len(cluster.shard_workers)} shard workers"
    )
    print(f"master.cfg.example -> {cluster.master_dir / 'master.cfg'}")
    print(
        f"code under test: {cluster.project_dir} "
        "(a copy of the fixture suite: fast, slow, failing, flaky tests)"
    )
    started = time.monotonic()
    cluster.start()
    print(
        f"master and {len(cluster.shard_workers) + 1} workers up in {time.monotonic() - started:.1f} s; "
        f"web UI {cluster.url}"
    )

    brid = cluster.force("force-tests", "tests")
    print(f"forced a build of 'tests' (build request {brid}) through the REST API; waiting...")
    build = cluster.wait_for_build(brid, TESTS_BUILD_DEADLINE_S)
    props = build["properties"]
    if "tests_total" not in props:
        raise DemoError(f"the tests build ended {RESULT_NAMES.get(build['results'])} without results: "
                        f"{build['state_string']} (see {cluster.build_url(build)})")  # fmt: skip
    print(
        f"\nbuild #{build['number']}: {RESULT_NAMES.get(build['results'], build['results'])}  "
        f"-- {build['state_string']}"
    )
    print(
        f"  {props['tests_total']} tests: {props['tests_passed']} passed, {props['tests_failed']} failed, "
        f"{props['tests_flaky']} flaky (failed, then passed on another worker)"
    )
    ratio = (
        props["tests_makespan_s"] / props["tests_lower_bound_s"]
        if props["tests_lower_bound_s"]
        else float("nan")
    )
    print(
        f"  makespan {props['tests_makespan_s']:.1f} s vs lower bound {props['tests_lower_bound_s']:.1f} s "
        f"(ratio {ratio:.2f}) on {props['tests_workers']} workers, {props['tests_batches']} batches"
    )
    print(
        "  (a first build plans without history, and in a suite of ~6 s each batch's pytest start-up\n"
        "   and the re-run of the failures weigh heavily; stage 1 shows the scheduler at scale)"
    )
    if props.get("tests_flaky_names"):
        print(f"  flaky: {', '.join(props['tests_flaky_names'])}")
    if build["results"] == 2:
        print("  the failing test is red on purpose: the build stops there and deploys nothing")
    print("\nwhere to look:")
    print(f"  the build:      {cluster.build_url(build)}")
    for step in cluster.steps(build["buildid"]):
        if step["name"] != "sharded-tests":
            continue
        for log in cluster.step_logs(step["stepid"]):
            if log["slug"] == "report":
                print(f"  the report log: {cluster.build_url(build)}/steps/{step['number']}/logs/report"
                      f"  (raw: {cluster.url}api/v2/logs/{log['logid']}/raw_inline)")  # fmt: skip
    print(f"  test results:   {cluster.url}api/v2/builds/{build['buildid']}/test_result_sets")
    return build


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


def run_release_build(cluster: DemoCluster, scheduler: str, builder: str, what: str, **params: str) -> dict:
    """Forces a deploy or rollback build, waits, prints its steps; FAILURE is a DemoError."""
    brid = cluster.force(scheduler, builder, **params)
    build = cluster.wait_for_build(brid, DEPLOY_BUILD_DEADLINE_S)
    result = RESULT_NAMES.get(build["results"], build["results"])
    print(f"\n{what} ({builder} build #{build['number']}): {result} -- {build['state_string']}")
    for step in cluster.steps(build["buildid"]):
        if step["name"] != "worker_preparation":
            print(f"  {step['name']:<16} {step['state_string']}")
    if build["results"] not in (0, 1):
        raise DemoError(f"{what} failed: {build['state_string']} (see {cluster.build_url(build)})")
    return build


def print_hosts(cluster: DemoCluster, when: str) -> None:
    print(f"each host's `current` {when}:")
    for name in cluster.hosts:
        current = cluster.hosts_dir / name / "current"
        target = os.readlink(current) if current.is_symlink() else "(none)"
        manifest = current / ".release"
        lines = manifest.read_text().splitlines() if manifest.exists() else []
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        print(f"  {name}: current -> {target:<11} revision={fields.get('revision', '?')} "
              f"build={fields.get('build', '?')}")  # fmt: skip


def deploy_stage(cluster: DemoCluster) -> None:
    banner(f"3. release push through the 'deploy' builder to {len(cluster.hosts)} local hosts")
    print(f"inventory {cluster.inventory} (local transport; {cluster.hosts[0]} is the canary)")
    print("each deploy: push to all hosts (rsync --link-dest into a free slot), flip the canary, flip all")
    releases = cluster.release_root
    for version, note in (("v1", "first release"), ("v2", "one file changed")):
        source = releases / version
        make_release(source, version, note)
        revision = f"demo-{version}"
        build = run_release_build(cluster, "force-deploy", "deploy", f"deploy {revision}",
                                  deploy_revision=revision, release_dir=str(source))  # fmt: skip
        props = build["properties"]
        print(
            f"  {note}: {props.get('release_push_bytes_sent', 0):,} bytes sent to "
            f"{props.get('release_push_hosts_ok', 0)} hosts "
            f"in {props.get('release_push_duration_s', 0):.2f} s"
        )
    print()
    print_hosts(cluster, "after two deploys")

    run_release_build(cluster, "force-rollback", "rollback", "roll back demo-v2", bad_revision="demo-v2")
    print()
    print_hosts(cluster, "after the rollback (to each host's recorded previous release)")
    print(f"\nthe master and workers keep running: {cluster.url}  (`make demo-stop` stops them)")
    print(
        f"CLI, master not needed: {VENV_BIN / 'buildbot-cd'} status --transport local "
        f"--inventory {cluster.inventory}"
    )


def run_cluster_stages(root: Path = DEMO_DIR) -> None:
    stop_demo(root, quiet=True)  # a previous demo: stop it, then start clean
    shutil.rmtree(root, ignore_errors=True)
    cluster = DemoCluster(root)
    try:
        cluster_stage(cluster)
        deploy_stage(cluster)
    except BaseException:
        cluster.stop()  # a half-started demo is of no use: leave nothing running
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the buildbot-cd pipeline locally.")
    parser.add_argument("--workers", type=int, default=DEMO_WORKERS)
    parser.add_argument("--stop", action="store_true", help="stop the master and workers of a previous demo")
    parser.add_argument(
        "--stage1-only", action="store_true", help="only the shard scheduler stage (no master)"
    )
    args = parser.parse_args(argv)
    if args.stop:
        stop_demo()
        return 0
    try:
        shard_stage(args.workers)
        sys.stdout.flush()
        if not args.stage1_only:
            run_cluster_stages()
    except (sharding.InputError, sharding.CdError, DemoError, LocalMasterError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
