"""`make demo`: the whole pipeline on this machine, one stage after another.

1. The shard scheduler on a real suite (the hypha durations beside this
   checkout): the plan for the newest version from the earlier ones, and the
   next run replayed with a static split and with the dynamic dispatcher.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from buildbot_steps import _core, sharding

REPO = Path(__file__).resolve().parent.parent
HYPHA = REPO.parent / "shared" / "data" / "test-durations" / "hypha"
DEMO_WORKERS = 8
DEMO_FLAKE_RATE = 0.002  # a few flaky runs in ~1,800 tests, to show the re-runs


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
    print(f"\nstatic plan from the estimates (makespan {plan.makespan_s:.1f} s, bound {plan.lower_bound_s:.1f} s):")
    for index, shard in enumerate(plan.shards):
        bar = "#" * round(40 * shard.estimate_s / plan.makespan_s)
        print(f"  shard {index + 1:2d} {len(shard.tests):5d} tests {shard.estimate_s:7.1f} s  {bar}")

    print(f"\nthe next run replayed on a virtual clock (actual durations, flake rate {DEMO_FLAKE_RATE}):")
    print(f"  {'mode':8} {'makespan s':>11} {'bound s':>8} {'ratio':>7} {'batches':>8} {'flaky':>6} {'failed':>7}")
    for mode in sharding.MODES[::-1]:
        result = sharding.simulate(estimates, actual, workers, mode=mode, flake_rate=DEMO_FLAKE_RATE, seed=1)
        print(f"  {mode:8} {result.makespan_s:11.1f} {result.lower_bound_s:8.1f} {result.ratio:7.3f} "
              f"{result.batches:8d} {result.flaky:6d} {result.failed:7d}")
    print("  (flaky: failed once, then passed on another worker; the dispatcher re-runs failures elsewhere)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the buildbot-cd pipeline locally.")
    parser.add_argument("--workers", type=int, default=DEMO_WORKERS)
    args = parser.parse_args(argv)
    try:
        shard_stage(args.workers)
    except (sharding.InputError, sharding.CdError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
