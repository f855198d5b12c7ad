"""The one way figures reach the core's judge, live and offline, and the samples log.

The samples log (JSON, written by the step as the `samples.json` log, read by
`buildbot-cd judge`) holds everything the judge was given, so a replay through
the same judge gives the same verdicts:

    {"format": "buildbot-cd/canary-samples/1",
     "revision": "abc123", "alpha": 0.01,
     "metrics": [{"name": "errors", "kind": "count", "worse": "increase", "min_effect": 0.2,
                  "unit": "per request"}, ...],
     "events": [{"t": 10.2, "what": "flip canary", "hosts": [...]}, ...],
     "phases": [{"name": "canary", "design": "diff_in_diff", "looks_in_window": 12,
                 "min_hosts_per_arm": 5, "max_missing_fraction": 0.2,
                 "looks": [{"look": 1, "t": 15.3, "elapsed_s": 5.0, "verdict": "CONTINUE",
                            "failed_metric": "", "reason": "",
                            "data": {"errors": {"canary": {"web1": {"events": 3, "exposure": 120}, ...},
                                                "control": {"web6": {"missing": true, "reason": "..."}}}},
                            "results": [{"name": "errors", "estimate": 3.1, "ci_low": ..., "ci_high": ...,
                                         "threshold": 1.2, "p_value": ..., "failed": true, ...}]}]},
                {"name": "monitor", "design": "before_after", ...}]}

Host figures: "value" (continuous) or "events" and "exposure" (counts), the
same with a "baseline_" prefix for the designs that use each host's own
before-flip figures, and "missing": true with a "reason" for a host left out.
`t` is seconds since the step started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from buildbot_steps import _core
from buildbot_steps.canary.metrics import MetricConfig
from buildbot_steps.errors import InvalidInputError

SAMPLES_FORMAT = "buildbot-cd/canary-samples/1"
DESIGNS = {"same_window": "SAME_WINDOW", "before_after": "BEFORE_AFTER", "diff_in_diff": "DIFF_IN_DIFF"}
FIGURE_KEYS = ("value", "events", "exposure", "baseline_value", "baseline_events", "baseline_exposure")
RESULT_FIELDS = (
    "name",
    "reason",
    "estimate",
    "ci_low",
    "ci_high",
    "threshold",
    "p_fixed",
    "p_value",
    "level",
    "failed",
    "canary_hosts",
    "control_hosts",
    "canary_missing",
    "control_missing",
)


@dataclass(frozen=True)
class PhaseOptions:
    name: str  # "canary" or "monitor"
    design: str  # a key of DESIGNS
    looks_in_window: int
    alpha: float = 0.01
    min_hosts_per_arm: int = 5
    max_missing_fraction: float = 0.2

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "design": self.design,
            "looks_in_window": self.looks_in_window,
            "min_hosts_per_arm": self.min_hosts_per_arm,
            "max_missing_fraction": self.max_missing_fraction,
        }


def metric_spec(metric: dict) -> _core.MetricSpec:
    kind = _core.MetricKind.COUNT if metric["kind"] == "count" else _core.MetricKind.CONTINUOUS
    worse = _core.Direction.INCREASE if metric["worse"] == "increase" else _core.Direction.DECREASE
    return _core.MetricSpec(metric["name"], kind, worse, float(metric.get("min_effect", 0.0)))


def make_judge(metrics: list[dict], phase: PhaseOptions) -> _core.Judge:
    if phase.design not in DESIGNS:
        raise InvalidInputError(f"design must be one of {sorted(DESIGNS)}, got {phase.design!r}")
    return _core.Judge(
        [metric_spec(m) for m in metrics],
        design=getattr(_core.Design, DESIGNS[phase.design]),
        alpha=phase.alpha,
        looks_in_window=phase.looks_in_window,
        min_hosts_per_arm=phase.min_hosts_per_arm,
        max_missing_fraction=phase.max_missing_fraction,
    )


def host_data(figure: dict) -> _core.HostData:
    if figure.get("missing"):
        return _core.HostData(missing=True)
    return _core.HostData(**{key: float(figure.get(key, 0.0)) for key in FIGURE_KEYS})


def metric_looks(data: dict) -> list[_core.MetricLook]:
    """{metric: {"canary": {host: figure}, "control": {...}}} -> the judge's input."""
    return [
        _core.MetricLook(
            name,
            [host_data(f) for f in arms.get("canary", {}).values()],
            [host_data(f) for f in arms.get("control", {}).values()],
        )
        for name, arms in data.items()
    ]


def result_dict(result) -> dict:
    """One look's outcome as plain data (for the log, the report and the summary)."""
    return {
        "verdict": result.verdict.name,
        "failed_metric": result.failed_metric,
        "reason": result.reason,
        "results": [
            {**{f: getattr(m, f) for f in RESULT_FIELDS}, "kind": m.kind.name, "status": m.status.name}
            for m in result.metrics
        ],
    }


# --- the samples log --------------------------------------------------------------


def samples_document(
    revision: str, alpha: float, metrics: list[MetricConfig], events: list[dict], phases: list[dict]
) -> dict:
    return {
        "format": SAMPLES_FORMAT,
        "revision": revision,
        "alpha": alpha,
        "metrics": [m.to_dict() for m in metrics],
        "events": events,
        "phases": phases,
    }


def load_samples(text: str, source: str = "samples") -> dict:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{source}: not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInputError(f"{source}: not a canary samples log (nested too deep)") from None
    if not isinstance(document, dict) or document.get("format") != SAMPLES_FORMAT:
        raise InvalidInputError(f"{source}: not a canary samples log (expected format {SAMPLES_FORMAT!r})")
    for key in ("metrics", "phases"):
        if not isinstance(document.get(key), list):
            raise InvalidInputError(f"{source}: '{key}' must be a list")
    return document


def replay(document: dict, alpha: float | None = None) -> list[dict]:
    """Every phase's looks through a fresh judge: [{"phase", "looks": [outcome...], "verdict"}].
    A log that is not what a run writes (a field missing or of the wrong kind)
    is InvalidInputError naming the phase, never a verdict."""
    try:
        alpha = float(document.get("alpha", 0.01)) if alpha is None else alpha
    except (TypeError, ValueError):
        raise InvalidInputError(f"alpha {document.get('alpha')!r} is not a number") from None
    try:
        for metric in document["metrics"]:
            metric_spec(metric)
    except LOG_ERRORS as error:
        raise InvalidInputError(f"metrics: not those of a canary samples log ({log_error(error)})") from None
    replayed = []
    for index, phase in enumerate(document["phases"]):
        try:
            replayed.append(_replay_phase(document["metrics"], phase, alpha))
        except LOG_ERRORS as error:
            if isinstance(error, InvalidInputError):
                raise
            raise InvalidInputError(
                f"phase {index}: not a phase of a canary samples log ({log_error(error)})"
            ) from None
    return replayed


# What reading a log no run wrote raises: a field missing or of another kind.
LOG_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


def log_error(error: Exception) -> str:
    return f"missing {error}" if isinstance(error, KeyError) else str(error)


def _replay_phase(metrics: list, phase: dict, alpha: float) -> dict:
    options = PhaseOptions(
        phase["name"],
        phase["design"],
        int(phase["looks_in_window"]),
        alpha,
        int(phase["min_hosts_per_arm"]),
        float(phase["max_missing_fraction"]),
    )
    judge = make_judge(metrics, options)
    outcomes = []
    for look in phase["looks"]:
        if judge.verdict != _core.CanaryVerdict.CONTINUE:
            break  # a lower alpha may decide earlier than the recorded run did
        outcomes.append(
            {
                "look": look["look"],
                "t": look.get("t"),
                **result_dict(judge.look(metric_looks(look["data"]))),
            }
        )
    return {"phase": phase["name"], "looks": outcomes, "verdict": judge.verdict.name}
