"""What the canary measures, and how raw readings become one figure per host.

A metric is configured as a mapping, one of four shapes (`source` names the
metric source, when a step has more than one):

    {"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total",
     "worse": "increase", "min_effect": 0.2}                 a count per exposure
    {"name": "latency", "ratio": ["app_request_latency_seconds_sum", "app_request_latency_seconds_count"],
     "scale": 1000, "unit": "ms"}                             a mean from two counters
    {"name": "load", "gauge": "node_load1"}                   the mean of a gauge
    {"name": "cpu", "rate": "process_cpu_seconds_total"}      a counter's increase per second

A count without `exposure` is per host-second. Counters become increases
between consecutive readings; a drop means the counter restarted (the process
did), so the new value is the increase since then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from buildbot_steps.errors import InvalidInputError

SHAPES = ("gauge", "rate", "ratio", "events")
DIRECTIONS = ("increase", "decrease")
METRIC_KEYS = {"name", "source", "worse", "min_effect", "scale", "unit", "exposure", *SHAPES}
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class MetricConfig:
    name: str
    shape: str  # gauge, rate, ratio or events (a count)
    series: tuple[str, ...]  # the raw series it reads, in the shape's order
    source: str = DEFAULT_SOURCE
    worse: str = "increase"
    min_effect: float = 0.0
    scale: float = 1.0  # continuous values are multiplied by it (1000: seconds to ms)
    unit: str = ""

    @property
    def is_count(self) -> bool:
        return self.shape == "events"

    @classmethod
    def from_entry(cls, entry: object, label: str = "metric") -> MetricConfig:
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{label}: expected a mapping such as {{'name': ..., 'gauge': ...}}")
        label = f"{label} {entry.get('name', '')!r}".rstrip()
        unknown = set(entry) - METRIC_KEYS
        if unknown:
            raise InvalidInputError(
                f"{label}: unknown key(s) {sorted(unknown)}; known: {sorted(METRIC_KEYS)}"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"{label}: 'name' is required")
        shapes = [s for s in SHAPES if s in entry]
        if len(shapes) != 1:
            raise InvalidInputError(f"{label}: give exactly one of {', '.join(SHAPES)}")
        shape = shapes[0]
        series = cls._series(entry, shape, label)
        worse = str(entry.get("worse", "increase")).lower()
        if worse not in DIRECTIONS:
            raise InvalidInputError(f"{label}: 'worse' must be 'increase' or 'decrease', got {worse!r}")
        min_effect = _number(entry.get("min_effect", 0.0), f"{label} min_effect")
        if not 0 <= min_effect < 1:
            raise InvalidInputError(f"{label}: min_effect is a relative change in [0, 1), got {min_effect}")
        scale = _number(entry.get("scale", 1.0), f"{label} scale")
        if scale <= 0:
            raise InvalidInputError(f"{label}: scale must be positive, got {scale}")
        source = entry.get("source", DEFAULT_SOURCE)
        unit = entry.get("unit", "per request" if shape == "events" and "exposure" in entry else "")
        return cls(name, shape, series, str(source), worse, min_effect, scale, str(unit))

    @staticmethod
    def _series(entry: dict, shape: str, label: str) -> tuple[str, ...]:
        value = entry[shape]
        if shape == "ratio":
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise InvalidInputError(f"{label}: 'ratio' is [numerator series, denominator series]")
            series = tuple(value)
        else:
            series = (value,)
        if shape == "events" and entry.get("exposure") is not None:
            series += (entry["exposure"],)
        elif "exposure" in entry and shape != "events":
            raise InvalidInputError(f"{label}: 'exposure' goes with 'events' only")
        if not all(isinstance(s, str) and s.strip() for s in series):
            raise InvalidInputError(f"{label}: series names must be non-empty strings")
        return tuple(s.strip() for s in series)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": "count" if self.is_count else "continuous",
            "worse": self.worse,
            "min_effect": self.min_effect,
            "unit": self.unit,
        }


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def metric_configs(entries: object) -> list[MetricConfig]:
    if not isinstance(entries, (list, tuple)) or not entries:
        raise InvalidInputError("metrics: expected a non-empty list of metric mappings")
    configs = [MetricConfig.from_entry(e, f"metrics[{i}]") for i, e in enumerate(entries)]
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(f"metrics: name(s) listed twice: {', '.join(duplicates)}")
    return configs


# --- readings ------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One host's values at one moment, or why there are none."""

    t: float  # seconds on the run's clock
    values: dict[str, float] | None  # series -> value; None: the host did not answer
    reason: str = ""


@dataclass
class HostFigure:
    """One host's aggregate for one metric over a window: what the judge gets."""

    missing: bool = False
    reason: str = ""
    value: float = 0.0
    events: float = 0.0
    exposure: float = 0.0

    def to_dict(self, count: bool) -> dict:
        if self.missing:
            return {"missing": True, "reason": self.reason}
        return {"events": self.events, "exposure": self.exposure} if count else {"value": self.value}


def counter_increase(values: list[float]) -> float:
    """The increase of a counter over consecutive readings, across restarts."""
    total = 0.0
    for before, after in zip(values, values[1:]):
        total += after - before if after >= before else after
    return total


@dataclass
class Timeline:
    """Every reading of every host, in order, for one source."""

    readings: dict[str, list[Reading]] = field(default_factory=dict)

    def add(self, host: str, reading: Reading) -> None:
        self.readings.setdefault(host, []).append(reading)

    def window(self, host: str, start: float, end: float) -> list[Reading]:
        return [r for r in self.readings.get(host, []) if start <= r.t <= end]


def host_figure(metric: MetricConfig, readings: list[Reading]) -> HostFigure:
    """The metric's aggregate over `readings` (one host, one window)."""
    figure = _aggregate(metric, readings)
    # Each value read is finite; their sums, differences and scaling need not be.
    if not figure.missing and not all(map(math.isfinite, (figure.value, figure.events, figure.exposure))):
        return HostFigure(missing=True, reason="values too large to combine (the figure overflows)")
    return figure


def _aggregate(metric: MetricConfig, readings: list[Reading]) -> HostFigure:
    if not readings:
        return HostFigure(missing=True, reason="no reading in the window")
    if readings[-1].values is None:
        return HostFigure(missing=True, reason=readings[-1].reason or "no answer")
    good = [r for r in readings if r.values is not None and all(s in r.values for s in metric.series)]
    absent = [s for s in metric.series if s not in (readings[-1].values or {})]
    if absent:
        return HostFigure(missing=True, reason=f"series {absent[0]!r} not reported")
    if metric.shape == "gauge":
        values = [r.values[metric.series[0]] for r in good]
        return HostFigure(value=metric.scale * sum(values) / len(values))
    if len(good) < 2:
        return HostFigure(missing=True, reason="fewer than two readings of a counter in the window")
    negative = next((s for s in metric.series for r in good if r.values[s] < 0), None)
    if negative is not None:
        return HostFigure(missing=True, reason=f"counter {negative!r} read below zero")
    increases = [counter_increase([r.values[s] for r in good]) for s in metric.series]
    seconds = good[-1].t - good[0].t
    if metric.shape == "rate":
        return HostFigure(
            value=metric.scale * increases[0] / seconds if seconds > 0 else 0.0,
            missing=seconds <= 0,
            reason="no time elapsed" if seconds <= 0 else "",
        )
    if metric.shape == "ratio":
        if increases[1] <= 0:
            return HostFigure(missing=True, reason=f"no increase of {metric.series[1]!r} in the window")
        return HostFigure(value=metric.scale * increases[0] / increases[1])
    exposure = increases[1] if len(increases) > 1 else seconds
    if increases[0] > 0 and exposure <= 0:
        # The judge takes events only with their exposure: counters out of
        # step (or a page counting errors of no request) say nothing.
        return HostFigure(missing=True, reason=f"{increases[0]:g} events with no exposure in the window")
    return HostFigure(events=increases[0], exposure=exposure)
