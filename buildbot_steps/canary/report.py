"""The canary's HTML log: one inline SVG chart per metric and the table of the deciding look.

Each chart plots, at every look, the canary arm and the control arm (in the
monitoring phase: every flipped host, and the same hosts' baseline) over time
since the step started, with the flips, rollbacks and the decision marked.
An arm's figure is the total events over the total exposure (counts) or the
mean of its hosts (continuous), over the window so far: what the judge saw.
"""

from __future__ import annotations

import re
from html import escape

WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 130, 20, 40
COLOURS = {"canary": "#d62728", "control": "#1f77b4"}
EVENT_COLOUR = "#555"
LABEL_ROW, LABEL_ROWS = 11, 4
# Host rows shown per metric in the HTML: a page stays readable; samples.json has every host.
MAX_HOST_ROWS = 200


def last_look(samples: dict, phase: str) -> dict | None:
    for record in samples.get("phases", []):
        if record["name"] == phase and record["looks"]:
            return record["looks"][-1]
    return None


def arm_figure(hosts: dict, count: bool, prefix: str = "") -> float | None:
    present = [f for f in hosts.values() if not f.get("missing")]
    if count:
        exposure = sum(f.get(prefix + "exposure", 0.0) for f in present)
        return sum(f.get(prefix + "events", 0.0) for f in present) / exposure if exposure > 0 else None
    values = [f[prefix + "value"] for f in present if prefix + "value" in f]
    return sum(values) / len(values) if values else None


def series_of(samples: dict, metric: dict) -> dict[str, list[tuple[float, float]]]:
    """Line name -> [(t, figure)] over every look of every phase."""
    count = metric["kind"] == "count"
    lines: dict[str, list[tuple[float, float]]] = {"canary": [], "control": []}
    for phase in samples.get("phases", []):
        for look in phase["looks"]:
            arms = look["data"].get(metric["name"], {})
            canary = arm_figure(arms.get("canary", {}), count)
            if arms.get("control"):
                control = arm_figure(arms["control"], count)
            else:  # before/after: the same hosts before the flip
                control = arm_figure(arms.get("canary", {}), count, "baseline_")
            for name, value in (("canary", canary), ("control", control)):
                if value is not None:
                    lines[name].append((look["t"], value))
    return lines


def chart(samples: dict, metric: dict, decision_t: float | None) -> str:
    lines = series_of(samples, metric)
    points = [p for line in lines.values() for p in line]
    events = samples.get("events", [])
    if not points:
        return f"<p>{escape(metric['name'])}: no data to plot</p>"
    times = [t for t, _ in points] + [e["t"] for e in events] + [0.0]
    t_max = max(times) or 1.0
    y_max = max(v for _, v in points) * 1.15 or 1.0
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(t: float) -> float:
        return MARGIN_LEFT + plot_w * t / t_max

    def y(v: float) -> float:
        return MARGIN_TOP + plot_h * (1 - v / y_max)

    unit = metric.get("unit") or ("events per exposure" if metric["kind"] == "count" else "")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(metric["name"])} over time">',
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP + plot_h}" x2="{MARGIN_LEFT + plot_w}" '
        f'y2="{MARGIN_TOP + plot_h}" stroke="black"/>',
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" '
        f'y2="{MARGIN_TOP + plot_h}" stroke="black"/>',
        f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 5}" text-anchor="middle" font-size="12">'
        "time since the step started (s)</text>",
        f'<text x="12" y="{MARGIN_TOP + plot_h / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2})">'
        f"{escape(metric['name'])} ({escape(unit)})</text>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{MARGIN_LEFT - 4}" y="{y(fraction * y_max) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{fraction * y_max:.3g}</text>'
        )
        parts.append(
            f'<text x="{x(fraction * t_max):.1f}" y="{MARGIN_TOP + plot_h + 14}" font-size="10" '
            f'text-anchor="middle">{fraction * t_max:.0f}</text>'
        )
    for event in events:
        # Labels on rows of their own: a flip and a rollback can be a second apart.
        row_y = MARGIN_TOP + 10 + LABEL_ROW * (events.index(event) % LABEL_ROWS)
        parts.append(_marker(x(event["t"]), plot_h, event["what"], EVENT_COLOUR, row_y))
    if decision_t is not None:
        parts.append(_marker(x(decision_t), plot_h, "decision", "black", MARGIN_TOP + plot_h - 4, "2,2"))
    for row, (name, line) in enumerate(lines.items()):
        if line:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
            parts.append(f'<polyline fill="none" stroke="{COLOURS[name]}" stroke-width="2" points="{path}"/>')
        legend_y = MARGIN_TOP + plot_h // 2 + 16 * row  # below the event labels
        parts.append(
            f'<rect x="{WIDTH - MARGIN_RIGHT + 10}" y="{legend_y - 8}" width="12" height="3" '
            f'fill="{COLOURS[name]}"/><text x="{WIDTH - MARGIN_RIGHT + 26}" y="{legend_y}" '
            f'font-size="11">{name if name == "canary" else "control / baseline"}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _marker(at: float, plot_h: float, label: str, colour: str, label_y: float, dash: str = "5,3") -> str:
    return (
        f'<line x1="{at:.1f}" y1="{MARGIN_TOP}" x2="{at:.1f}" y2="{MARGIN_TOP + plot_h}" stroke="{colour}" '
        f'stroke-dasharray="{dash}"/><text x="{at + 2:.1f}" y="{label_y:.1f}" font-size="9" '
        f'fill="{colour}">{escape(label)}</text>'
    )


def table(look: dict) -> str:
    head = (
        "metric",
        "status",
        "estimate",
        "interval",
        "always-valid p",
        "level",
        "threshold",
        "hosts used",
        "missing",
        "verdict",
    )
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in look.get("results", []):
        cells = (
            r["name"],
            r["status"],
            f"{r['estimate']:.4g}",
            f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]",
            f"{r['p_value']:.3g}",
            f"{r['level']:.3g}",
            f"{r['threshold']:.4g}",
            f"{r['canary_hosts']} / {r['control_hosts']}",
            f"{r['canary_missing']} / {r['control_missing']}",
            "FAIL" if r["failed"] else ("no data: " + r["reason"] if r["status"] != "TESTED" else "ok"),
        )
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    return '<table border="1" cellpadding="3" style="border-collapse:collapse">' + "".join(rows) + "</table>"


def host_figure(figures: dict, count: bool) -> str:
    """One host's figure in a look: its rate (count) or value, or why it was left out."""
    if figures.get("missing"):
        return "missing: " + str(figures.get("reason", ""))
    if count:
        exposure = figures.get("exposure", 0.0)
        rate = figures.get("events", 0.0) / exposure if exposure > 0 else 0.0
        return f"{figures.get('events', 0):g} / {exposure:g} = {rate:.4g}"
    return f"{figures.get('value', 0.0):.4g}"


def natural_key(name: str) -> list:
    """web2 before web10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def host_table(look: dict, metric: dict) -> str:
    """The deciding look's figures of `metric`, host by host, canary arm first."""
    count = metric["kind"] == "count"
    arms = look.get("data", {}).get(metric["name"], {})
    rows = [
        (arm, host, figures)
        for arm in ("canary", "control")
        for host, figures in sorted(arms.get(arm, {}).items(), key=lambda item: natural_key(item[0]))
    ]
    if not rows:
        return ""
    what = "events / exposure = rate" if count else "value"
    cells = "".join(
        f"<tr><td>{escape(host)}</td><td>{arm}</td><td>{escape(host_figure(figures, count))}</td></tr>"
        for arm, host, figures in rows[:MAX_HOST_ROWS]
    )
    more = (
        f"<p>{len(rows) - MAX_HOST_ROWS} more hosts in samples.json</p>" if len(rows) > MAX_HOST_ROWS else ""
    )
    return (
        f'<table class="hosts" border="1" cellpadding="3" style="border-collapse:collapse">'
        f"<tr><th>host</th><th>arm</th><th>{what}</th></tr>{cells}</table>{more}"
    )


def render(samples: dict, outcome) -> str:
    decision = last_look(samples, outcome.phase)
    parts = [
        "<html><body style='font-family:sans-serif'>",
        f"<h3>canary {escape(outcome.verdict)} in the {escape(outcome.phase)} phase: "
        f"{escape(outcome.action)}</h3>",
        f"<p>revision {escape(str(samples.get('revision', '')))}, alpha {samples.get('alpha')}"
        + (f", decided by <b>{escape(outcome.failed_metric)}</b>" if outcome.failed_metric else "")
        + (f": {escape(outcome.reason)}" if outcome.reason else "")
        + "</p>",
    ]
    if decision is not None:
        parts.append(
            f"<h4>look {decision['look']} of the {escape(outcome.phase)} phase</h4>{table(decision)}"
        )
    for metric in samples.get("metrics", []):
        parts.append(f"<h4>{escape(metric['name'])}</h4>")
        parts.append(chart(samples, metric, decision["t"] if decision else None))
        if decision is not None:
            parts.append(host_table(decision, metric))
    parts.append("<p>Every look's figures, host by host: the samples.json log.</p></body></html>")
    return "\n".join(parts)
