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
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.shard import planning as sharding
from harness import local_master
from harness.local_master import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
HYPHA = REPO / "data" / "test-durations" / "hypha"
DEMO_WORKERS = 8
DEMO_FLAKE_RATE = 0.002  # a few flaky runs in ~1,800 tests, to show the re-runs

# Stages 2 and 3: a real master and workers under ./demo/ (git-ignored).
DEMO_DIR = REPO / "demo"
MASTER_CFG_EXAMPLE = REPO / "master.cfg.example"
FIXTURE_SUITE = REPO / "tests" / "sharding_fixture_suite"
CLUSTER_SHARD_WORKERS = 4
DEMO_HOSTS = ("web1", "web2", "web3", "web4")  # web1 is the canary
VENV_BIN = Path(sys.executable).parent
# Deadlines in seconds: generous, the machine may be busy; readiness is
# polled, never assumed after a fixed sleep.
STARTUP_DEADLINE_S = 120
TESTS_BUILD_DEADLINE_S = 300
DEPLOY_BUILD_DEADLINE_S = 180
STOP_DEADLINE_S = 30
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
        f"\nstatic plan from the estimates (makespan {plan.makespan_s:.1f} s, bound {plan.lower_bound_s:.1f} s):"
    )
    for index, shard in enumerate(plan.shards):
        bar = "#" * round(40 * shard.estimate_s / plan.makespan_s)
        print(f"  shard {index + 1:2d} {len(shard.tests):5d} tests {shard.estimate_s:7.1f} s  {bar}")

    print(f"\nthe next run replayed on a virtual clock (actual durations, flake rate {DEMO_FLAKE_RATE}):")
    print(
        f"  {'mode':8} {'makespan s':>11} {'bound s':>8} {'ratio':>7} {'batches':>8} {'flaky':>6} {'failed':>7}"
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


def _is_our_process(pid: int, marker: str) -> bool:
    """Alive and still one of the demo's processes: its command line names the
    demo's directory (not a pid reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def stop_processes(pids: list[int], marker: str, deadline_s: float = STOP_DEADLINE_S) -> None:
    """SIGTERM the given processes, wait for them with a deadline, then SIGKILL."""
    alive = [pid for pid in pids if _is_our_process(pid, marker)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + deadline_s
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            if not _is_our_process(pid, marker) or _is_zombie(pid):
                alive.remove(pid)
        if alive:
            time.sleep(local_master.POLL_S)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class DemoCluster:
    """A master from master.cfg.example and real worker processes under `root`.

    Everything lives in `root`: the master, the workers, a copy of the fixture
    suite (the code under test), the inventory and the hosts' deploy roots.
    `pids.json` records the processes started, so that a later `stop()` (even
    from another process: `make demo-stop`) ends exactly those.
    """

    def __init__(self, root: Path, shard_workers: int = CLUSTER_SHARD_WORKERS, hosts=DEMO_HOSTS,
                 extra_env: dict[str, str] | None = None, canaries: int = 1):  # fmt: skip
        self.root = Path(root).resolve()
        self.master_dir = self.root / "master"
        self.project_dir = self.root / "project"
        self.hosts_dir = self.root / "hosts"
        self.inventory = self.root / "inventory.json"
        # Releases are pushed from under here only (the tested trees and the
        # demo's generated releases alike).
        self.release_root = self.root / "releases"
        self.logs_dir = self.root / "logs"
        self.shard_workers = [f"shard{i}" for i in range(1, shard_workers + 1)]
        self.hosts = list(hosts)
        self.canaries = canaries  # the first `canaries` hosts carry the tag "canary"
        self.extra_env = dict(extra_env or {})
        self.web_port = 0
        self.pb_port = 0
        self.pids: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    @property
    def pid_file(self) -> Path:
        return self.root / "pids.json"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        shutil.copytree(FIXTURE_SUITE, self.project_dir, ignore=shutil.ignore_patterns("__pycache__"))
        self._write_inventory()
        self.web_port, self.pb_port = free_port(), free_port()
        self._run(
            [str(VENV_BIN / "buildbot"), "create-master", "-q", str(self.master_dir)],
            "buildbot create-master",
        )
        shutil.copyfile(MASTER_CFG_EXAMPLE, self.master_dir / "master.cfg")
        self._spawn("master", [str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(self.master_dir)])
        self.wait_for_api()
        for name in ["coordinator", *self.shard_workers]:
            worker_dir = self.root / "workers" / name
            worker_dir.parent.mkdir(exist_ok=True)
            self._run([
                str(VENV_BIN / "buildbot-worker"), "create-worker", "-q", str(worker_dir),
                f"127.0.0.1:{self.pb_port}", name, "pass",
            ], "buildbot-worker create-worker")  # fmt: skip
            self._spawn(name, [str(VENV_BIN / "buildbot-worker"), "start", "--nodaemon", str(worker_dir)])
        self.wait_for_workers(["coordinator", *self.shard_workers, "deployer"])

    def env(self) -> dict[str, str]:
        # The caller's own BUILDBOT_CD_* settings are not the demo's.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("BUILDBOT_CD_")}
        settings = dict(
            inherited,
            PYTHONPATH=str(REPO),
            BUILDBOT_CD_WORKERS=str(len(self.shard_workers)),
            BUILDBOT_CD_PROJECT_DIR=str(self.project_dir),
            BUILDBOT_CD_STATE_DIR=str(self.root / "test-state"),
            BUILDBOT_CD_INVENTORY=str(self.inventory),
            BUILDBOT_CD_RELEASE_ROOT=str(self.release_root),
            BUILDBOT_CD_TRANSPORT="local",
            BUILDBOT_CD_WWW_PORT=str(self.web_port),
            BUILDBOT_CD_PB_PORT=str(self.pb_port),
            BUILDBOT_CD_BIND="127.0.0.1",
            BUILDBOT_CD_PYTHON=sys.executable,
            # Local deploy roots serve nothing to measure: no judge, unless a
            # caller with a web fleet turns it on (the demo's story does).
            BUILDBOT_CD_CANARY_JUDGE="off",
        )
        return {**settings, **self.extra_env}

    def _write_inventory(self) -> None:
        entries = [
            {"name": name, "address": "localhost", "deploy_root": str(self.hosts_dir / name),
             "tags": ["canary"] if index < self.canaries else []}
            for index, name in enumerate(self.hosts)
        ]  # fmt: skip
        for name in self.hosts:
            (self.hosts_dir / name).mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(json.dumps(entries, indent=2) + "\n")

    def _run(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(argv, cwd=self.root, env=self.env(), capture_output=True, text=True,
                                  timeout=STARTUP_DEADLINE_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DemoError(f"{what} did not finish within {STARTUP_DEADLINE_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [
                f"exit code {done.returncode}"
            ]
            raise DemoError(f"{what} failed: {last[0]}")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        # A session of its own: the processes outlive `make demo`, on purpose.
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(argv, cwd=self.root, env=env or self.env(), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # fmt: skip
        self.adopt(name, process.pid)
        return process

    def adopt(self, name: str, pid: int) -> None:
        """Records a process for stop() and `make demo-stop` (its command line must name self.root)."""
        self.pids[name] = pid
        self.root.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps({"pids": self.pids, "url": self.url}) + "\n")

    def stop(self) -> None:
        if self.web_port:
            stop_builds(self.url)
        stop_processes(list(self.pids.values()), str(self.root))

    # ------------------------------------------------------------- REST API

    def api(self, path: str, body: dict | None = None):
        return local_master.call(self.url, path, body)

    def _master_exited(self) -> str | None:
        pid = self.pids.get("master")
        if pid is None:
            return None
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid if not _is_our_process(pid, str(self.root)) else 0
        if not finished:
            return None
        log = self.master_dir / "twistd.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [line for line in lines if "error" in line.lower() or "Error" in line]
        return (errors or lines or ["no log"])[-1].strip()

    def wait_for_api(self) -> None:
        def ready():
            problem = self._master_exited()
            if problem is not None:
                raise DemoError(
                    f"the master exited; last log line: {problem} (see {self.master_dir}/twistd.log)"
                )
            try:
                return self.api("builders")
            except (OSError, ValueError, http.client.HTTPException):
                return None

        wait_until(ready, STARTUP_DEADLINE_S, f"the master's REST API at {self.url}")

    def wait_for_workers(self, names: list[str]) -> None:
        def connected():
            workers = self.api("workers")["workers"]
            return set(names) <= {w["name"] for w in workers if w["connected_to"]}

        wait_until(connected, STARTUP_DEADLINE_S, f"workers {', '.join(names)} to connect")

    def builder_id(self, name: str) -> int:
        builders = self.api(f"builders/{name}")["builders"]
        if not builders:
            raise DemoError(f"the master has no builder {name!r}")
        return builders[0]["builderid"]

    def force(self, scheduler: str, builder: str, **params: str) -> int:
        """Starts a build through a ForceScheduler; returns its build request id."""
        body = {"jsonrpc": "2.0", "method": "force", "id": 1,
                "params": {"builderid": str(self.builder_id(builder)), **params}}  # fmt: skip
        try:
            reply = self.api(f"forceschedulers/{scheduler}", body)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise DemoError(f"forcing {builder} was refused: HTTP {error.code} {detail}") from None
        if "error" in reply:
            raise DemoError(f"forcing {builder} was refused: {reply['error'].get('message')}")
        _, brids = reply["result"]
        return int(next(iter(brids.values())))

    def wait_for_build(self, brid: int, deadline_s: float) -> dict:
        def finished():
            builds = self.api(f"buildrequests/{brid}/builds")["builds"]
            return next((b for b in builds if b["complete"]), None)

        build = wait_until(finished, deadline_s, f"build request {brid} to finish")
        properties = self.api(f"builds/{build['buildid']}?property=*")["builds"][0]["properties"]
        build["properties"] = {key: value[0] for key, value in properties.items()}
        return build

    def build_url(self, build: dict) -> str:
        return f"{self.url}#/builders/{build['builderid']}/builds/{build['number']}"

    def steps(self, buildid: int) -> list[dict]:
        return self.api(f"builds/{buildid}/steps")["steps"]

    def step_logs(self, stepid: int) -> list[dict]:
        return self.api(f"steps/{stepid}/logs")["logs"]


def stop_builds(url: str) -> None:
    """Best effort: cancel pending requests and stop running builds, so the
    master can exit at once (it otherwise waits for a build whose shard
    workers are gone). Silent: the processes are stopped next anyway."""

    def call(path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{url}api/v2/{path}", data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    try:
        for request in call("buildrequests?complete=false")["buildrequests"]:
            if not request["claimed"]:
                call(f"buildrequests/{request['buildrequestid']}",
                     {"jsonrpc": "2.0", "method": "cancel", "id": 1, "params": {"reason": "demo stopped"}})  # fmt: skip
        for build in call("builds?complete=false")["builds"]:
            call(f"builds/{build['buildid']}",
                 {"jsonrpc": "2.0", "method": "stop", "id": 1, "params": {"reason": "demo stopped"}})  # fmt: skip
        # A master told to exit while builds are still stopping can hang.
        deadline = time.monotonic() + STOP_DEADLINE_S
        while call("builds?complete=false")["builds"] and time.monotonic() < deadline:
            time.sleep(local_master.POLL_S)
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
        pass


def previous_demo(root: Path) -> tuple[list[int], str | None]:
    try:
        recorded = json.loads((root / "pids.json").read_text())
        return [int(pid) for pid in recorded["pids"].values()], str(recorded["url"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], None


def stop_demo(root: Path = DEMO_DIR, quiet: bool = False) -> None:
    """Stops the processes a previous demo started (by their recorded ids)."""
    pids, url = previous_demo(root)
    marker = str(Path(root).resolve())
    running = [pid for pid in pids if _is_our_process(pid, marker)]
    if running and url:
        stop_builds(url)
    stop_processes(running, marker)
    if not quiet:
        print(
            f"demo: stopped {len(running)} process(es) of the demo in {root}"
            if running
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
    except (sharding.InputError, sharding.CdError, DemoError) as error:
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
