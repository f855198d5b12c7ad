"""The HTML log of a sharded test run.

Buildbot's web UI does not display test results, so the step renders its own
report: failures with their output, flaky tests, slowest tests, and a
per-worker timeline drawn as inline SVG (no scripts: dashboards that inject
HTML do not run them).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from buildbot_steps._core import Attempt, TestOutcome, Verdict
from buildbot_steps.shard.commands import NOT_PASSED
from buildbot_steps.shard.history import measured_seconds
from buildbot_steps.shard.session import BatchRun

# Slowest tests listed: enough to spot what to split or speed up.
SLOWEST_LISTED = 20

# Timeline geometry, in SVG user units.
TIMELINE_WIDTH = 900
ROW_HEIGHT = 22
LABEL_WIDTH = 160

AXIS_HEIGHT = 30  # the time axis under the rows: tick marks and their labels
LEGEND_HEIGHT = 24
TARGET_TICKS = 8  # about this many labelled ticks, at a round step
ROUND_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

PASSED_COLOUR = "#4caf50"
FAILED_COLOUR = "#e53935"
LOST_COLOUR = "#9e9e9e"
RUNNING_COLOUR = "#2196f3"
RETRY_COLOUR = "#ff9800"
SPECULATIVE_COLOUR = "#8e24aa"

# The legend, in drawing order: (colour, what a batch of that colour is).
LEGEND = (
    (PASSED_COLOUR, "all passed"),
    (FAILED_COLOUR, "a test failed, or the batch failed"),
    (RETRY_COLOUR, "re-run, all passed"),
    (SPECULATIVE_COLOUR, "straggler copy, all passed"),
    (LOST_COLOUR, "worker lost"),
    (RUNNING_COLOUR, "still running"),
)

VALUE_CELL = "align='right' style='padding-left:2em'"  # a label never runs into its value

# The summary figures as a person reads them: label, and how to show the value.
FIGURE_LABELS = {
    "total": ("Tests", "{}"),
    "passed": ("Passed", "{}"),
    "failed": ("Failed", "{}"),
    "flaky": ("Flaky (failed, then passed)", "{}"),
    "skipped": ("Skipped", "{}"),
    "not_run": ("Not run", "{}"),
    "runner_errors": ("Runner errors outside any test (a session's teardown: see the failures log)", "{}"),
    "workers": ("Workers", "{}"),
    "makespan_s": ("Wall time of the test run", "{:.1f} s"),
    "lower_bound_s": ("Shortest possible on these workers", "{:.1f} s"),
    "planned_lower_bound_s": ("Shortest possible, from the estimates", "{:.1f} s"),
    "lower_bound_with_startups_s": ("Shortest possible with one runner start-up per worker", "{:.1f} s"),
    "batch_overhead_s": ("Runner start-up per batch (learnt)", "{:.2f} s"),
    "estimate_scale": ("Guessed estimates scaled by", "{:.3g}"),
    "batches": ("Batches run", "{}"),
    "requeued_batches": ("Batches re-queued (worker lost)", "{}"),
    "straggler_copies": ("Straggler copies started", "{}"),
    "whole_part_batches": ("Batches cut as a worker's whole part (suite predictable by its history)", "{}"),
    "workers_released": ("Workers let go early (nothing queued, enough others waiting)", "{}"),
    "files_split": ("Files split to cut a part to the test (their set-up paid once more)", "{}"),
    "isolated_runs": ("Re-runs isolated to find the test that failed its batch as a whole", "{}"),
    "batch_tests_cap": ("Tests per batch at most (a share by count when the history shows surprises)", "{}"),
}


def render_report(
    outcomes: Sequence[TestOutcome],
    timeline: Sequence[BatchRun],
    summary: Mapping[str, object],
    quarantine: set[str],
    flake_record: dict[str, int] | None = None,
) -> str:
    """`flake_record`: test id -> number of earlier builds it was flaky in."""
    parts = [
        "<html><body style='font-family:sans-serif'>",
        _summary_table(summary),
        _failures(outcomes, quarantine),
        _flaky(outcomes, flake_record or {}),
        _skipped(outcomes),
        _flake_record(flake_record or {}),
        _slowest(outcomes),
        "<h3>Timeline per worker</h3>",
        timeline_svg(timeline),
        "</body></html>",
    ]
    return "\n".join(parts)


def figure_row(key: str, value: object) -> tuple[str, str]:
    """A summary figure as (label, value with its unit); unknown keys as they are."""
    label, form = FIGURE_LABELS.get(key, (key, "{}"))
    try:
        return label, form.format(value)
    except (TypeError, ValueError):
        return label, str(value)


def _summary_table(summary: Mapping[str, object]) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td {VALUE_CELL}>{html.escape(text)}</td></tr>"
        for label, text in (figure_row(k, v) for k, v in summary.items())
    )
    return f"<h3>Summary</h3><table>{rows}</table>"


def _failures(outcomes: Sequence[TestOutcome], quarantine: set[str]) -> str:
    failed = [o for o in outcomes if o.verdict in NOT_PASSED]
    if not failed:
        return "<h3>Failures</h3><p>none</p>"
    items = []
    for outcome in failed:
        note = " (quarantined: does not gate)" if outcome.id in quarantine else ""
        if outcome.verdict == Verdict.pending:
            note += " (never ran to completion)"
        items.append(f"<h4>{html.escape(outcome.id)}{note}</h4>{_attempts(outcome)}")
    return "<h3>Failures</h3>" + "".join(items)


def _earlier_flakes(count: int) -> str:
    if count == 0:
        return " (first time flaky)"
    return f" (also flaky in {count} earlier build{'s' if count > 1 else ''})"


def _flaky(outcomes: Sequence[TestOutcome], flake_record: dict[str, int]) -> str:
    flaky = [o for o in outcomes if o.verdict == Verdict.flaky]
    if not flaky:
        return "<h3>Flaky tests</h3><p>none</p>"
    items = "".join(
        f"<h4>{html.escape(o.id)}{_earlier_flakes(flake_record.get(o.id, 0))}</h4>{_attempts(o)}"
        for o in flaky
    )
    return "<h3>Flaky tests (failed, then passed on another attempt)</h3>" + items


def _flake_record(flake_record: dict[str, int]) -> str:
    if not flake_record:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(test)}</td><td align='right'>{count}</td></tr>"
        for test, count in sorted(flake_record.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        "<h3>Flake record of the earlier builds read for durations</h3>"
        f"<table><tr><th>test</th><th>builds flaky in</th></tr>{rows}</table>"
        "<p>Tests that keep flaking are candidates for the quarantine list.</p>"
    )


def _skipped(outcomes: list[TestOutcome]) -> str:
    skipped = [o for o in outcomes if o.verdict == Verdict.skipped]
    if not skipped:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(o.id)}</td><td>{html.escape(_skip_reason(o))}</td></tr>" for o in skipped
    )
    return (
        f"<h3>Skipped tests ({len(skipped)}: not run by the runner, do not gate)</h3>"
        f"<table><tr><th>test</th><th>reason</th></tr>{rows}</table>"
    )


def _skip_reason(outcome: TestOutcome) -> str:
    message = outcome.attempts[-1].message if outcome.attempts else ""
    return message.splitlines()[0] if message else ""


def attempt_took(attempt: Attempt) -> str:
    """How long the attempt took, as the failures log and the report say it."""
    return f"in {attempt.seconds:.3f} s" if attempt.timed else "with no time reported"


def attempt_state(attempt: Attempt) -> str:
    if attempt.skipped:
        return "skipped"
    return "passed" if attempt.passed else "failed"


def _attempts(outcome: TestOutcome) -> str:
    rows = []
    for number, attempt in enumerate(outcome.attempts, start=1):
        verdict = attempt_state(attempt)
        rows.append(
            f"<li>attempt {number} on {html.escape(attempt.worker)}: {verdict} "
            f"{attempt_took(attempt)}<pre>{html.escape(attempt.message or '')}</pre></li>"
        )
    return f"<ul>{''.join(rows)}</ul>"


def _slowest(outcomes: Sequence[TestOutcome]) -> str:
    measured = [(seconds, o) for o in outcomes if (seconds := measured_seconds(o)) is not None]
    timed = sorted(measured, key=lambda pair: -pair[0])[:SLOWEST_LISTED]
    rows = "".join(
        f"<tr><td>{html.escape(o.id)}</td><td align='right'>{seconds:.3f}</td>"
        f"<td align='right'>{o.estimate_s:.3f}</td></tr>"
        for seconds, o in timed
    )
    return (
        f"<h3>Slowest {len(timed)} tests</h3><table><tr><th>test</th><th>seconds</th>"
        f"<th>estimate</th></tr>{rows}</table>"
    )


def timeline_svg(timeline: Sequence[BatchRun]) -> str:
    workers = sorted({run.worker for run in timeline})
    if not workers:
        return "<p>no batches ran</p>"
    end = max((run.end_s if run.end_s is not None else run.start_s) for run in timeline) or 1.0
    scale = (TIMELINE_WIDTH - LABEL_WIDTH - 20) / end
    rows_height = ROW_HEIGHT * len(workers)
    height = LEGEND_HEIGHT + rows_height + AXIS_HEIGHT
    shapes = [_legend()]
    for row, worker in enumerate(workers):
        y = LEGEND_HEIGHT + row * ROW_HEIGHT
        shapes.append(f"<text x='4' y='{y + 15}' font-size='12'>{html.escape(worker)}</text>")
        for run in (r for r in timeline if r.worker == worker):
            shapes.append(_batch_rect(run, y, scale, end))
    shapes.append(_time_axis(LEGEND_HEIGHT + rows_height, scale, end))
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{TIMELINE_WIDTH}' height='{height}' "
        "font-family='sans-serif'>" + "".join(shapes) + "</svg>"
    )


def _legend() -> str:
    parts, x = [], 4
    for colour, meaning in LEGEND:
        parts.append(
            f"<rect x='{x}' y='4' width='12' height='12' fill='{colour}' stroke='#333' stroke-width='0.5'/>"
            f"<text x='{x + 16}' y='14' font-size='11'>{html.escape(meaning)}</text>"
        )
        x += 22 + 6 * len(meaning)  # about 6 units a character at this size
    return "<g class='legend'>" + "".join(parts) + "</g>"


def tick_step(end_s: float) -> float:
    """The smallest round step that gives at most TARGET_TICKS ticks up to `end_s`."""
    for step in ROUND_STEPS_S:
        if end_s / step <= TARGET_TICKS:
            return step
    return ROUND_STEPS_S[-1] * (int(end_s / ROUND_STEPS_S[-1] / TARGET_TICKS) + 1)


def _time_axis(y: int, scale: float, end: float) -> str:
    step = tick_step(end)
    right = LABEL_WIDTH + end * scale
    parts = [f"<line x1='{LABEL_WIDTH}' y1='{y}' x2='{right:.1f}' y2='{y}' stroke='#333'/>"]
    count = int(end / step + 1e-9)
    for index in range(count + 1):
        seconds = index * step
        x = LABEL_WIDTH + seconds * scale
        label = f"{seconds:g} s"
        parts.append(
            f"<line x1='{x:.1f}' y1='{y}' x2='{x:.1f}' y2='{y + 5}' stroke='#333'/>"
            f"<text x='{x:.1f}' y='{y + 17}' font-size='11' text-anchor='middle'>{label}</text>"
        )
    parts.append(f"<text x='4' y='{y + 17}' font-size='11'>time since start</text>")
    return "<g class='time-axis'>" + "".join(parts) + "</g>"


def batch_colour(run: BatchRun) -> str:
    if run.outcome == "reported" and run.failed_tests:
        return FAILED_COLOUR
    if run.outcome == "reported":
        if run.speculative:
            return SPECULATIVE_COLOUR
        return RETRY_COLOUR if run.retry else PASSED_COLOUR
    return {"error": FAILED_COLOUR, "lost": LOST_COLOUR}.get(run.outcome, RUNNING_COLOUR)


def _batch_rect(run: BatchRun, y: int, scale: float, end: float) -> str:
    finish = run.end_s if run.end_s is not None else end
    x = LABEL_WIDTH + run.start_s * scale
    width = max(1.0, (finish - run.start_s) * scale)
    failed = run.failed_tests
    title = (
        f"batch {run.batch_id}: {run.tests} tests, {run.start_s:.2f}-{finish:.2f} s, {run.outcome}"
        + (f", {failed} failed" if failed else "")
        + (", retry" if run.retry else "")
        + (", speculative copy" if run.speculative else "")
    )
    return (
        f"<rect x='{x:.1f}' y='{y + 3}' width='{width:.1f}' height='{ROW_HEIGHT - 6}' "
        f"fill='{batch_colour(run)}' stroke='#333' stroke-width='0.5'>"
        f"<title>{html.escape(title)}</title></rect>"
    )
