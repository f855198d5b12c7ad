"""What the parent step `ShardedTest` says about a sharded run, as text and numbers.

The "plan" log written before the shards start, then, once they have all
finished: the figures stored as `tests_*` properties, the verdict that gates
the build with its one-line summary, and the "failures" log. Pure functions of
the plan, the outcomes and the session: the step (parent_step.py) publishes
them; the HTML report is report.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from buildbot.process.results import FAILURE, SUCCESS, WARNINGS

from buildbot_steps._core import Plan, TestEstimate, TestOutcome, Verdict
from buildbot_steps.shard import report
from buildbot_steps.shard.commands import (
    BATCH_FAILURE_NOTE,
    NOT_PASSED,
    RUNNER_ERROR_NOTE,
    Quarantine,
    indented_after_first_line,
    names,
    passed_after_a_batch_failure,
)
from buildbot_steps.shard.history import measured_seconds
from buildbot_steps.shard.session import ShardSession

Figures = dict[str, int | float]


def count_sources(estimates: list[TestEstimate]) -> dict[str, int]:
    """How many estimates came from history, file medians, etc."""
    sources: dict[str, int] = {}
    for estimate in estimates:
        sources[estimate.source] = sources.get(estimate.source, 0) + 1
    return sources


def spread_text(estimates: list[TestEstimate]) -> str:
    """How much of the suite's run-to-run spread the history shows: the
    dispatcher sends one batch per worker only when it knows the suite to be
    predictable (see README, "How it schedules")."""
    total_s = sum(e.seconds for e in estimates)
    known = [e for e in estimates if e.spread_s is not None]
    known_s = sum(e.seconds for e in known)
    share = f"{known_s / total_s:.0%}" if total_s > 0 else "none"
    spread_s = math.sqrt(sum(e.spread_s**2 for e in known))
    return (
        f"run-to-run spread known for {share} of the estimated seconds ({len(known)} tests with two or more "
        f"runs); their total's spread: {spread_s:.2f} s"
    )


def plan_text(
    estimates: list[TestEstimate], plan: Plan, shards: int, history_builds: int, batch_overhead_s: float
) -> str:
    """The "plan" log: where the estimates came from, the bounds, each shard's static share."""
    sources = count_sources(estimates)
    lines = [
        f"tests: {len(estimates)}; shards: {shards}; earlier builds read: {history_builds}",
        "estimate sources: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())),
        spread_text(estimates),
        f"estimated total: {sum(e.seconds for e in estimates):.2f} s; "
        f"lower bound per shard: {plan.lower_bound_s:.2f} s "
        f"({plan.lower_bound_s + batch_overhead_s:.2f} s with one start-up); "
        f"static plan makespan: {plan.makespan_s:.2f} s",
        f"batch overhead learnt by earlier builds: {batch_overhead_s:.2f} s "
        "(the dispatcher refines it from this build's batches)",
    ]
    for index, shard in enumerate(plan.shards):
        lines.append(f"  shard {index}: {len(shard.tests)} tests, {shard.estimate_s:.2f} s")
    return "\n".join(lines) + "\n"


def figures(outcomes: list[TestOutcome], session: ShardSession, plan: Plan, shard_total: int) -> Figures:
    """The run's counts, makespan and bounds, each stored as a `tests_<key>` property."""
    counts = dict.fromkeys(Verdict.__members__.values(), 0)
    for outcome in outcomes:
        counts[outcome.verdict] += 1
    durations = [s for s in map(measured_seconds, outcomes) if s is not None]
    hosts = {puller.split("#")[0] for puller in session.workers_seen}
    workers = max(1, len(hosts) or shard_total)
    finished = [run.end_s for run in session.timeline if run.end_s is not None]
    started = [run.start_s for run in session.timeline]
    makespan = (max(finished) - min(started)) if finished and started else 0.0
    bound = max(max(durations, default=0.0), sum(durations) / workers)
    stats = session.batches.stats()
    # Every worker starts its runner at least once: the bound with start-ups.
    overhead = stats.batch_overhead_s
    return {
        "total": len(outcomes),
        "passed": counts[Verdict.passed],
        "failed": counts[Verdict.failed],
        "flaky": counts[Verdict.flaky],
        "skipped": counts[Verdict.skipped],
        "not_run": counts[Verdict.pending],
        "runner_errors": len(session.runner_errors),
        "workers": workers,
        "makespan_s": round(makespan, 3),
        "lower_bound_s": round(bound, 3),
        "lower_bound_with_startups_s": round(bound + overhead, 3),
        "batch_overhead_s": round(overhead, 3),
        "estimate_scale": round(stats.estimate_scale, 4),
        "planned_lower_bound_s": round(plan.lower_bound_s, 3),
        "batches": len(session.timeline),
        "requeued_batches": stats.requeued_batches,
        "straggler_copies": stats.speculative_batches,
        "whole_part_batches": stats.whole_part_batches,
        "workers_released": stats.workers_released,
        "files_split": stats.files_split,
        "isolated_runs": stats.isolated_runs,
        "batch_tests_cap": stats.batch_tests_cap,
    }


def verdict(outcomes: list[TestOutcome], run_figures: Figures, quarantine: Quarantine) -> tuple[int, str]:
    """The build result and its summary: a failure outside quarantine, or an
    error of a run outside any test, fails; flakes warn."""

    def bad(o: TestOutcome) -> bool:
        return o.verdict in NOT_PASSED

    gating = [o.id for o in outcomes if bad(o) and o.id not in quarantine]
    quarantined = [o.id for o in outcomes if bad(o) and o.id in quarantine]
    flaky = [o.id for o in outcomes if o.verdict == Verdict.flaky]
    rescued = [o.id for o in outcomes if passed_after_a_batch_failure(o)]
    text = (
        f"{run_figures['passed']} passed, {run_figures['failed']} failed, {run_figures['flaky']} flaky"
        + (f", {run_figures['skipped']} skipped" if run_figures["skipped"] else "")
        + (f", {run_figures['not_run']} not run" if run_figures["not_run"] else "")
        + f"; makespan {run_figures['makespan_s']:.1f} s vs bound {run_figures['lower_bound_s']:.1f} s "
        f"({run_figures['lower_bound_with_startups_s']:.1f} s with start-ups)"
    )
    problems = ([f"failed: {names(gating)}"] if gating else []) + (
        [f"{RUNNER_ERROR_NOTE}: {run_figures['runner_errors']} (see the failures log)"]
        if run_figures["runner_errors"]
        else []
    )
    if problems:
        return FAILURE, text + "; " + "; ".join(problems)
    notes = (
        ([f"flaky: {names(flaky)}"] if flaky else [])
        + ([f"quarantined failures: {names(quarantined)}"] if quarantined else [])
        + ([f"{BATCH_FAILURE_NOTE}: {names(rescued)}"] if rescued else [])
    )
    if notes:
        return WARNINGS, text + "; " + "; ".join(notes)
    return SUCCESS, text


def failures_text(outcomes: Sequence[TestOutcome], runner_errors: Sequence[str] = ()) -> str:
    """The "failures" log: the runs' errors outside any test, then every test
    that did not simply pass, with each attempt's message."""
    lines = [f"ERROR OUTSIDE ANY TEST: {indented_after_first_line(error)}" for error in runner_errors]
    for outcome in outcomes:
        rescued = passed_after_a_batch_failure(outcome)
        if outcome.verdict in (Verdict.passed, Verdict.skipped) and not rescued:
            continue
        lines.append(
            f"{'PASSED AFTER ITS BATCH FAILED' if rescued else outcome.verdict.name.upper()}: {outcome.id}"
        )
        for attempt in outcome.attempts:
            state = report.attempt_state(attempt)
            lines.append(f"  on {attempt.worker}: {state} {report.attempt_took(attempt)}")
            lines.extend(f"    {line}" for line in (attempt.message or "").splitlines())
    return "\n".join(lines) + "\n"
