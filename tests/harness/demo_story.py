"""The demo's story: commits to a real web application go live, or do not.

    story = LoopStory(root)      # the parts, under root
    story.start()                # repository, web fleet, traffic, master, workers
    commit = story.commit(GOOD_CHANGE)
    outcome = story.follow(commit)   # tested, pushed, canary verdict, live or not

The parts are real: a Git repository holding examples/webapp (the demo shop)
that the master polls; a fleet of web hosts on loopback (harness.webfleet),
each serving the release its `current` points at, with /metrics; a load
generator in a process of its own; a master from master.cfg.example with a
coordinator, shard workers and the deployer. Every process is recorded in the
demo's pids.json, so `make demo-stop` ends them all.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from buildbot_steps import release
from harness.demo import DemoCluster, DemoError
from harness.local_master import REPO, wait_until
from harness.webfleet import WebFleet

WEBAPP = REPO / "examples" / "webapp"
BRANCH = "main"
FLEET_SIZE = 12
# 4 canaries against 8 controls: the judge's count test has 7 degrees of
# freedom, enough to decide on a clear regression within the canary window.
CANARIES = 4
SHARD_WORKERS = 2  # the machine has 2 cores: more would only queue
REQUESTS_PER_HOST_S = 10
LOAD_DURATION_S = 3600  # the traffic stops by itself within the hour
GIT_DEADLINE_S = 30
SUCCESS, WARNINGS, FAILURE = 0, 1, 2
LIVE, ROLLED_BACK, NEVER_DEPLOYED = "live", "rolled back", "never deployed"


@dataclass(frozen=True)
class Windows:
    """The canary's windows in seconds (IMVU's: 60 s canary, 5 min monitoring)."""

    baseline_s: float = 6
    canary_s: float = 16
    interval_s: float = 2
    monitor_s: float = 16
    poll_s: int = 2  # the repository poll

    def env(self) -> dict[str, str]:
        return {
            "BUILDBOT_CD_CANARY_BASELINE_S": str(self.baseline_s),
            "BUILDBOT_CD_CANARY_WINDOW_S": str(self.canary_s),
            "BUILDBOT_CD_CANARY_INTERVAL_S": str(self.interval_s),
            "BUILDBOT_CD_MONITOR_S": str(self.monitor_s),
            "BUILDBOT_CD_POLL_INTERVAL": str(self.poll_s),
        }

    @property
    def deploy_s(self) -> float:
        return self.baseline_s + self.canary_s + self.monitor_s


@dataclass(frozen=True)
class Change:
    """An edit of the shop's app.py: `old` replaced by `new`."""

    message: str
    expected: str  # LIVE, ROLLED_BACK or NEVER_DEPLOYED
    old: str
    new: str


GOOD_CHANGE = Change(
    "Sell spoons too",
    LIVE,
    'PRODUCTS = ("teapot", "kettle", "mug")',
    'PRODUCTS = ("teapot", "kettle", "mug", "spoon")',
)
# Its tests pass (they render the first visit); in production one visit in
# four looks up a fifth recommendation that does not exist: errors go up.
PRODUCTION_BUG = Change(
    "Recommend a product on every page",
    ROLLED_BACK,
    '    return f"<!doctype html><title>{TITLE}</title><h1>{TITLE}</h1><ul>{items}</ul>\\n"',
    "    pick = PRODUCTS[visit % (len(PRODUCTS) + 1)]  # one slot too many: an IndexError in production\n"
    '    return f"<!doctype html><title>{TITLE}</title><h1>{TITLE}</h1><ul>{items}</ul>'
    '<p>Try: {pick}</p>\\n"',
)
# The list items change shape: the shop's own test of the product list fails.
BROKEN_TEST = Change(
    "Show stock in brackets",
    NEVER_DEPLOYED,
    'f"<li>{name}: {stock_level(visit)} in stock</li>"',
    'f"<li>{name} ({stock_level(visit)} in stock)</li>"',
)
STORY = (GOOD_CHANGE, PRODUCTION_BUG, BROKEN_TEST)


@dataclass
class Commit:
    change: Change
    sha: str
    committed_at: float  # epoch seconds


@dataclass
class Outcome:
    commit: Commit
    result: str  # LIVE, ROLLED_BACK, NEVER_DEPLOYED
    tests: dict
    deploy: dict | None = None
    steps: dict[str, dict] = field(default_factory=dict)  # deploy step name -> step

    @property
    def commit_to_live_s(self) -> float | None:
        if self.result != LIVE or self.deploy is None:
            return None
        return self.deploy["complete_at"] - self.commit.committed_at


def git(repository: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repository), *args], capture_output=True, text=True, timeout=GIT_DEADLINE_S
    )
    if done.returncode != 0:
        raise DemoError(f"git {args[0]} failed: {done.stderr.strip()[:300]}")
    return done.stdout.strip()


class LoopStory:
    def __init__(self, root: Path, windows: Windows = Windows(), fleet_size: int = FLEET_SIZE,
                 canaries: int = CANARIES, shard_workers: int = SHARD_WORKERS):  # fmt: skip
        self.root = Path(root).resolve()
        self.windows = windows
        self.repository = self.root / "repository"
        hosts = [f"web{i}" for i in range(1, fleet_size + 1)]
        self.metrics_file = self.root / "metrics-urls.json"
        self.cluster = DemoCluster(
            self.root, shard_workers=shard_workers, hosts=hosts, canaries=canaries,
            extra_env={
                "BUILDBOT_CD_REPOSITORY": str(self.repository),
                "BUILDBOT_CD_BRANCH": BRANCH,
                "BUILDBOT_CD_CANARY_JUDGE": "on",
                "BUILDBOT_CD_METRICS_URL": str(self.metrics_file),
                "BUILDBOT_CD_CANARY_MIN_HOSTS": str(canaries),
                **windows.env(),
            },
        )  # fmt: skip
        self.fleet = WebFleet(fleet_size, self.cluster.hosts_dir, detach=True)
        self.first_sha = ""

    # ------------------------------------------------------------- start

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_repository()
        try:
            self.fleet.start()
        finally:  # recorded even if one host failed to start: demo-stop ends the others
            for host in self.fleet.hosts:
                self.cluster.adopt(f"host-{host.name}", host.process)
        self.metrics_file.write_text(json.dumps(self.fleet.metrics_urls(), indent=1) + "\n")
        self._first_release_everywhere()
        self._start_traffic()
        self.cluster.start()
        wait_until(self._poller_has_seen_the_branch, 120, "the master's first poll of the repository")

    def _start_traffic(self) -> None:
        argv = [
            sys.executable, "-m", "harness.loadgen", "--rate", str(REQUESTS_PER_HOST_S),
            "--duration", str(LOAD_DURATION_S), "--label", str(self.root), *self.fleet.urls(),
        ]  # fmt: skip
        self.cluster.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cluster.logs_dir / "loadgen.log", "wb") as log:
            process = subprocess.Popen(
                argv, cwd=self.root, env={**self.cluster.env, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.cluster.adopt("loadgen", process)

    def _make_repository(self) -> None:
        shutil.copytree(
            WEBAPP, self.repository, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache")
        )
        git(self.repository, "init", "-q", "-b", BRANCH)
        for key, value in (("user.name", "Demo Developer"), ("user.email", "dev@demo.invalid")):
            git(self.repository, "config", key, value)
        git(self.repository, "add", "-A")
        git(self.repository, "commit", "-q", "-m", "The demo shop")
        self.first_sha = git(self.repository, "rev-parse", "HEAD")

    def _first_release_everywhere(self) -> None:
        """The shop's first commit, live on every host before the master starts
        (the fleet was serving before this pipeline existed)."""
        tree = self.cluster.release_root / "first"
        tree.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.repository, tree, ignore=shutil.ignore_patterns(".git"))
        entries = json.loads(self.cluster.inventory.read_text()) if self.cluster.inventory.exists() else None
        if entries is None:
            self.cluster._write_inventory()
            entries = json.loads(self.cluster.inventory.read_text())
        runner = release.ReleaseRunner(release.Inventory.from_entries(entries), release.LocalTransport())
        pushed = runner.push(tree, self.first_sha)
        if not runner.flip(self.first_sha, only_hosts=pushed.ok_hosts).all_ok:
            raise DemoError("the first release could not be made live on every host")

    def _poller_has_seen_the_branch(self) -> bool:
        """The GitPoller takes the branch as it finds it on its first poll (no
        change for it): commits made before then would never be built."""
        database = self.cluster.master_dir / "state.sqlite"
        if not database.exists():
            return False
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
                rows = connection.execute(
                    "SELECT value_json FROM object_state WHERE name = 'lastRev'"
                ).fetchall()
        except sqlite3.Error:
            return False
        return any(BRANCH in json.loads(value) for (value,) in rows)

    # ------------------------------------------------------------ commits

    def commit(self, change: Change) -> Commit:
        app = self.repository / "app.py"
        text = app.read_text()
        if change.old not in text:
            raise DemoError(f"change {change.message!r}: its starting text is not in {app}")
        app.write_text(text.replace(change.old, change.new, 1))
        git(self.repository, "commit", "-q", "-am", change.message)
        return Commit(change, git(self.repository, "rev-parse", "HEAD"), time.time())

    def commit_note(self, message: str) -> Commit:
        """A harmless commit (a line in CHANGES): the pipeline benchmark's stream."""
        with open(self.repository / "CHANGES", "a") as notes:
            notes.write(message + "\n")
        git(self.repository, "add", "CHANGES")
        git(self.repository, "commit", "-q", "-m", message)
        change = Change(message, LIVE, "", "")
        return Commit(change, git(self.repository, "rev-parse", "HEAD"), time.time())

    def builds_of(self, builder: str, revision_property: str, sha: str) -> list[dict]:
        builder_id = self.cluster.builder_id(builder)
        builds = self.cluster.api(f"builders/{builder_id}/builds?property={revision_property}")["builds"]
        return [b for b in builds if b.get("properties", {}).get(revision_property, [None])[0] == sha]

    def tests_build(self, commit: Commit, deadline_s: float) -> dict:
        return wait_until(
            lambda: next(
                (b for b in self.builds_of("tests", "got_revision", commit.sha) if b["complete"]), None
            ),
            deadline_s,
            f"the tests build of {commit.sha[:8]} ({commit.change.message})",
        )

    def follow(self, commit: Commit, deadline_s: float = 600) -> Outcome:
        tests = self.tests_build(commit, deadline_s)
        if tests["results"] not in (SUCCESS, WARNINGS):
            return Outcome(commit, NEVER_DEPLOYED, tests)
        deploy = wait_until(
            lambda: next(
                (b for b in self.builds_of("deploy", "deploy_revision", commit.sha) if b["complete"]), None
            ),
            deadline_s,
            f"the deploy build of {commit.sha[:8]} ({commit.change.message})",
        )
        properties = self.cluster.api(f"builds/{deploy['buildid']}?property=*")["builds"][0]["properties"]
        deploy["properties"] = {key: value[0] for key, value in properties.items()}
        steps = {s["name"]: s for s in self.cluster.steps(deploy["buildid"])}
        result = LIVE if deploy["results"] in (SUCCESS, WARNINGS) else ROLLED_BACK
        return Outcome(commit, result, tests, deploy, steps)

    def live_revisions(self) -> dict[str, str]:
        """Host -> the revision its `current` points at (read from the host's own manifest)."""
        revisions = {}
        for name in self.cluster.hosts:
            manifest = self.cluster.hosts_dir / name / "current" / ".release"
            fields = dict(
                line.split("=", 1) for line in manifest.read_text().splitlines() if "=" in line
            ) if manifest.exists() else {}  # fmt: skip
            revisions[name] = fields.get("revision", "?")
        return revisions

    def stop(self) -> None:
        self.cluster.stop()


# ------------------------------------------------------------ the telling


def step_seconds(step: dict | None) -> float | None:
    if not step or not step.get("complete_at") or not step.get("started_at"):
        return None
    return step["complete_at"] - step["started_at"]


def run_story(story: LoopStory, deadline_s: float = 600, say=print) -> list[Outcome]:
    """Commits the three changes, each as soon as the previous one's tests are
    done (so tests overlap deploys), then follows each to its end."""
    commits = []
    for change in STORY:
        commit = story.commit(change)
        commits.append(commit)
        say(
            f"{time.strftime('%H:%M:%S')} committed {commit.sha[:8]} {change.message!r} "
            f"(expect: {change.expected})"
        )
        tests = story.tests_build(commit, deadline_s)
        say(f"{time.strftime('%H:%M:%S')}   tests of {commit.sha[:8]}: {RESULTS.get(tests['results'], '?')} "
            f"({tests['complete_at'] - tests['started_at']:.0f} s)")  # fmt: skip
    return [story.follow(commit, deadline_s) for commit in commits]


RESULTS = {SUCCESS: "green", WARNINGS: "green (flaky)", FAILURE: "red", 4: "exception", 6: "cancelled"}


def timeline(story: LoopStory, outcomes: list[Outcome]) -> list[str]:
    lines = [
        f"{'commit':8}  {'change':34} {'tests':>12} {'pushed':>7}  {'canary':18} {'result':16} commit-to-live"
    ]
    hosts = len(story.cluster.hosts)
    live = story.live_revisions()
    for outcome in outcomes:
        commit, deploy = outcome.commit, outcome.deploy
        tests = f"{RESULTS.get(outcome.tests['results'], '?')} {step_seconds(outcome.tests) or 0:.0f} s"
        pushed = step_seconds(outcome.steps.get("push-release"))
        properties = deploy["properties"] if deploy else {}
        verdict = properties.get("canary_verdict", "-")
        if outcome.result == LIVE:
            result = f"live {sum(1 for r in live.values() if r == commit.sha)}/{hosts} hosts"
        elif outcome.result == ROLLED_BACK:
            result = f"rolled back ({properties.get('canary_phase', '?')})"
        else:
            result = NEVER_DEPLOYED
        took = f"{outcome.commit_to_live_s:.0f} s" if outcome.commit_to_live_s is not None else "-"
        push = f"{pushed:.1f} s" if pushed is not None else "-"
        lines.append(
            f"{commit.sha[:8]}  {commit.change.message[:34]:34} {tests:>12} "
            f"{push:>7}  {verdict:18} {result:16} {took}"
        )
    return lines


def where_to_look(story: LoopStory, outcomes: list[Outcome]) -> list[str]:
    url = story.cluster.url
    lines = [
        f"the web UI:       {url}  (its port is chosen at random for each demo)",
        f"  console view:   {url}#/console   (a row per commit: its tests, shards and deploy)",
        f"  waterfall:      {url}#/waterfall",
    ]
    for outcome in outcomes:
        if outcome.deploy is not None:
            canary = outcome.steps.get("canary_release")
            build = story.cluster.build_url(outcome.deploy)
            report = f"{build}/steps/{canary['number']}/logs/report" if canary else build
            lines.append(f"  deploy of {outcome.commit.sha[:8]}: {report}  (the canary's report)")
    lines.append(f"the fleet:        {len(story.cluster.hosts)} hosts, e.g. {story.fleet.hosts[0].url} "
                 f"(and /metrics), under {REQUESTS_PER_HOST_S} requests/s each")  # fmt: skip
    return lines
