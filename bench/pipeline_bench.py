"""The whole loop under a steady stream of commits, through a real master.

    .venv/bin/python bench/pipeline_bench.py [--commits 30] [--every 8] [--deadline 1200]

The demo's parts (harness.demo_story: the shop's Git repository polled by a
master from master.cfg.example, sharded tests on real workers, a web fleet on
loopback under load, the canary judge) with the canary and monitoring windows
scaled down. A commit every `--every` seconds; then it waits, bounded by
`--deadline`, until the newest commit is live. Reports:

- deploys completed; commit-to-live (commit to the end of the first deploy
  that carries it), median and 95th percentile;
- overlap: the share of each tests build that ran while the previous green
  revision deployed (pipelining);
- superseded: deploy requests skipped because a newer green revision came;
- overhead: for commits deployed by their own tests build, commit-to-live
  minus (tests build + push + the canary's windows), against that work; split
  into the time queued behind an earlier commit's build (a stream faster than
  a stage waits by nature) and the friction the pipeline adds (the poll,
  build start-ups, the hand-off from tests to deploy, the deploy's own steps).

`--canary-s 20` makes deploys slower than tests, so that the newest-green rule
supersedes pending deploys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.demo_story import LoopStory, Windows  # noqa: E402
from harness.local_master import wait_until  # noqa: E402

BENCH_WINDOWS = Windows(baseline_s=2, canary_s=6, interval_s=1, monitor_s=2, poll_s=1)
SKIPPED = 3  # Buildbot's result of a request superseded by a newer one
SUCCESS, WARNINGS = 0, 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def overlap_s(a: dict, b: dict) -> float:
    return max(0.0, min(a["complete_at"], b["complete_at"]) - max(a["started_at"], b["started_at"]))


def builds(story: LoopStory, builder: str, prop: str) -> list[dict]:
    builder_id = story.cluster.builder_id(builder)
    found = story.cluster.api(f"builders/{builder_id}/builds?property={prop}")["builds"]
    for build in found:
        build["revision"] = build.get("properties", {}).get(prop, [None])[0]
    return sorted(found, key=lambda b: b["started_at"])


@dataclass(frozen=True)
class CommitCost:
    """Where one commit's time went, from the commit to the end of its own deploy."""

    to_live_s: float
    work_s: float  # its tests build + its push + the canary's windows
    queued_s: float  # waiting for a stage busy with an earlier commit: the stream's pace, not overhead

    @property
    def overhead_s(self) -> float:  # the definition: commit-to-live minus the work
        return self.to_live_s - self.work_s

    @property
    def friction_s(self) -> float:  # what the pipeline itself adds: poll, start-up, hand-off, steps
        return self.overhead_s - self.queued_s


def busy_until(earlier: list[dict], since: float, until: float) -> float:
    """How long after `since` (up to `until`) a stage was still busy with an earlier build."""
    ends = [b["complete_at"] for b in earlier if b["started_at"] < until and b.get("complete_at")]
    return max(0.0, min(until, max(ends, default=since)) - since)


def commit_cost(deploy: dict, stream: list, tests: list[dict], deploys: list[dict], story: LoopStory):
    commit = next(c for c in stream if c.sha == deploy["revision"])
    own_tests = next((t for t in tests if t["revision"] == deploy["revision"]), None)
    steps = {s["name"]: s for s in story.cluster.steps(deploy["buildid"])}
    push = steps.get("push-release")
    if own_tests is None or push is None:
        return None
    work = (
        (own_tests["complete_at"] - own_tests["started_at"])
        + (push["complete_at"] - push["started_at"])
        + story.windows.deploy_s
    )
    earlier_tests = [t for t in tests if t["started_at"] < own_tests["started_at"]]
    earlier_deploys = [d for d in deploys if d["started_at"] < deploy["started_at"]]
    queued = busy_until(earlier_tests, commit.committed_at, own_tests["started_at"]) + busy_until(
        earlier_deploys, own_tests["complete_at"], deploy["started_at"]
    )
    return CommitCost(deploy["complete_at"] - commit.committed_at, work, queued)


def report_overhead(costs: list[CommitCost]) -> None:
    work = statistics.median(c.work_s for c in costs)
    for name, values in (
        ("overhead (commit-to-live minus tests, push and windows)", [c.overhead_s for c in costs]),
        ("  of which queued behind an earlier commit's build", [c.queued_s for c in costs]),
        ("  of which friction (poll, start-ups, hand-off, steps)", [c.friction_s for c in costs]),
    ):
        median = statistics.median(values)
        print(
            f"{name}: median {median:.1f} s on {work:.1f} s of work ({100 * median / work:.0f} %), "
            f"p95 {percentile(values, 0.95):.1f} s"
        )
    print(f"  ({len(costs)} commits deployed by their own tests build)")


def report_deploy_steps(done: list[dict], story: LoopStory) -> None:
    """Where a deploy build's time goes, step by step, against its windows."""
    durations: dict[str, list[float]] = {}
    for deploy in done:
        for step in story.cluster.steps(deploy["buildid"]):
            if step.get("complete_at") and step.get("started_at"):
                durations.setdefault(step["name"], []).append(step["complete_at"] - step["started_at"])
    medians = ", ".join(f"{name} {statistics.median(values):.1f} s" for name, values in durations.items())
    print(f"deploy steps (median): {medians}; the canary's windows: {story.windows.deploy_s:.0f} s")


def run(commits: int, every_s: float, deadline_s: float, windows: Windows) -> int:
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as directory:
        story = LoopStory(Path(directory) / "loop", windows=windows)
        try:
            story.start()
            return measure(story, commits, every_s, deadline_s)
        finally:
            story.stop()


def measure(story: LoopStory, commits: int, every_s: float, deadline_s: float) -> int:
    started = time.monotonic()
    stream = []
    for index in range(commits):
        stream.append(story.commit_note(f"change {index + 1}"))
        time.sleep(max(0.0, started + (index + 1) * every_s - time.monotonic()))  # the stream's pace
    order = {commit.sha: index for index, commit in enumerate(stream)}
    newest = stream[-1].sha

    def newest_live():
        return all(revision == newest for revision in story.live_revisions().values())

    wait_until(
        newest_live, max(1.0, deadline_s - (time.monotonic() - started)), "the newest commit to go live"
    )
    wait_until(
        lambda: all(b["complete"] for b in builds(story, "deploy", "deploy_revision")), 120, "the last deploy"
    )
    tests = builds(story, "tests", "got_revision")
    deploys = [b for b in builds(story, "deploy", "deploy_revision") if b["revision"] in order]
    done = [d for d in deploys if d["results"] in (SUCCESS, WARNINGS)]

    # Commit-to-live: each commit goes live with the first successful deploy of it or a later commit.
    to_live = []
    for commit in stream:
        carriers = [
            d
            for d in done
            if order[d["revision"]] >= order[commit.sha] and d["complete_at"] > commit.committed_at
        ]
        if carriers:
            to_live.append(min(d["complete_at"] for d in carriers) - commit.committed_at)

    # Overlap: the tests build after each deploy's own tests build, while that deploy ran.
    overlaps, tests_time = 0.0, 0.0
    for deploy in deploys:
        later = [
            t
            for t in tests
            if t["started_at"] > deploy["started_at"] - 1e-9 or t["complete_at"] > deploy["started_at"]
        ]
        own = next((t for t in tests if t["revision"] == deploy["revision"]), None)
        following = next((t for t in later if own is None or t["started_at"] > own["started_at"]), None)
        if following is not None and following["complete"]:
            overlaps += overlap_s(following, deploy)
            tests_time += following["complete_at"] - following["started_at"]

    deploy_id = story.cluster.builder_id("deploy")
    requests = story.cluster.api(f"builders/{deploy_id}/buildrequests")["buildrequests"]
    superseded = sum(1 for r in requests if r["results"] == SKIPPED)

    windows = story.windows
    costs = [
        cost for deploy in done if (cost := commit_cost(deploy, stream, tests, deploys, story)) is not None
    ]
    tests_s = [t["complete_at"] - t["started_at"] for t in tests if t["complete"]]
    deploy_s = [d["complete_at"] - d["started_at"] for d in done]
    print(
        f"commits: {commits}, one every {every_s:.0f} s; windows: baseline {windows.baseline_s:.0f} s, "
        f"canary "
        f"{windows.canary_s:.0f} s (look every {windows.interval_s:.0f} s), "
        f"monitoring {windows.monitor_s:.0f} s, "
        f"poll {windows.poll_s} s; fleet {len(story.cluster.hosts)} hosts"
    )
    print(
        f"tests builds: {len(tests)} (median {statistics.median(tests_s):.1f} s); "
        f"deploys completed: {len(done)} "
        f"of {len(deploys)} started (median {statistics.median(deploy_s):.1f} s)"
    )
    print(
        f"commit-to-live: median {statistics.median(to_live):.1f} s, p95 {percentile(to_live, 0.95):.1f} s "
        f"({len(to_live)} commits)"
    )
    print(
        f"overlap: {overlaps:.0f} s of {tests_time:.0f} s of tests ran while the previous revision deployed "
        f"({100 * overlaps / tests_time if tests_time else 0:.0f} %)"
    )
    print(f"superseded deploy requests (newest green wins): {superseded}")
    if costs:
        report_overhead(costs)
        report_deploy_steps(done, story)
    # In steady state, between the first and the last deploy to finish: the
    # stream's start (no deploy yet) and its drain (no commits left) are not a rate.
    ends = sorted(d["complete_at"] for d in done)
    span = ends[-1] - ends[0]
    rate = (len(ends) - 1) / span * 60 if span > 0 else 0.0
    allowed = 60 / max(statistics.median(tests_s), statistics.median(deploy_s))
    print(
        f"deploy rate: {rate:.2f} a minute between the first and the last deploy ({span:.0f} s); "
        f"the slower stage (tests {statistics.median(tests_s):.1f} s, deploy "
        f"{statistics.median(deploy_s):.1f} s) allows {allowed:.2f} ({100 * rate / allowed:.0f} %)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=30)
    parser.add_argument("--every", type=float, default=8.0, help="seconds between commits")
    parser.add_argument("--deadline", type=float, default=1200.0, help="seconds for the whole run, at most")
    parser.add_argument(
        "--canary-s",
        type=float,
        default=BENCH_WINDOWS.canary_s,
        help="the canary window in seconds: longer makes deploys slower than tests, so that pending "
        "deploys are superseded by the newest green revision (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.commits < 2 or args.every <= 0 or args.deadline <= 0 or args.canary_s <= 0:
        parser.error("--commits must be at least 2; --every, --deadline and --canary-s positive")
    windows = replace(BENCH_WINDOWS, canary_s=args.canary_s)
    return run(args.commits, args.every, args.deadline, windows)


if __name__ == "__main__":
    sys.exit(main())
