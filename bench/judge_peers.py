"""The peers bench/judge_bench.py runs next to our judge, each with the knob that sets how eagerly
it rolls back.

- naive: the seed's approach, Welch at `alpha` (0.05 published) on every look, the canary hosts after
  the flip against the same hosts before it (time points as samples);
- kayenta: NetflixACAJudge as published (Mann-Whitney `confidence` 98 % interval of the canary's time
  series against the control's, High when its lower end is above 0.25 x |Hodges-Lehmann estimate|,
  score = share of metrics passing, any interim analysis below `marginal` 75 fails); an analysis every
  20 s of the window over all time points so far;
- flagger: Flagger / Argo Rollouts fixed thresholds on the canary alone, per interval: success rate
  >= 99 % (errors <= 1 %) and p99 latency <= 500 ms, both multiplied by `scale` (1 published), rolled
  back at the first failed check (Argo's failureLimit 0).

Each judge takes a fleet and a list of settings and returns, per setting, the seconds after the flip at
which it rolled back each deploy (NaN: it did not): the costly part is computed once for all settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from judge_fleet import INTERVAL_S, WINDOW_LOOKS, Fleet
from scipy import stats

NAIVE_ALPHA = 0.05
KAYENTA_CONFIDENCE = 0.98
KAYENTA_TOLERANCE = 0.25
KAYENTA_MARGINAL = 75.0
KAYENTA_EVERY_LOOKS = 4  # an interim analysis every 20 s
FLAGGER_MAX_ERROR_RATE = 0.01
FLAGGER_MAX_P99_MS = 500.0


def first_look(fired: np.ndarray) -> np.ndarray:
    """(D, looks) booleans -> seconds of the first True, NaN if none."""
    any_fired = fired.any(axis=1)
    first = np.argmax(fired, axis=1)
    return np.where(any_fired, (first + 1) * INTERVAL_S, np.nan)


# ------------------------------------------------------------------ naive


def welch_p_greater(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """One-sided Welch p (after > before) per row."""
    n1, n2 = after.shape[1], before.shape[1]
    v1, v2 = after.var(axis=1, ddof=1) / n1, before.var(axis=1, ddof=1) / n2
    se2 = v1 + v2
    df = se2**2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (after.mean(axis=1) - before.mean(axis=1)) / np.sqrt(se2)
    return np.where(np.isfinite(t), stats.t.sf(t, df), 1.0)


def per_interval_metrics(fleet: Fleet, hosts: slice) -> dict[str, np.ndarray]:
    """Per host and interval values of the three metrics, (D, h, T)."""
    error_rate = fleet.errors[:, hosts] / np.maximum(fleet.requests[:, hosts], 1.0)
    return {"errors": error_rate, "latency": fleet.latency[:, hosts], "load": fleet.load[:, hosts]}


def judge_naive(fleet: Fleet, alphas: list[float]) -> list[np.ndarray]:
    b, c = fleet.baseline, fleet.canaries
    metrics = per_interval_metrics(fleet, slice(0, c))
    deploys = fleet.requests.shape[0]
    smallest_p = np.ones((deploys, WINDOW_LOOKS))
    for look in range(WINDOW_LOOKS):
        for values in metrics.values():
            after = values[:, :, b : b + look + 1].reshape(deploys, -1)
            before = values[:, :, :b].reshape(deploys, -1)
            smallest_p[:, look] = np.minimum(smallest_p[:, look], welch_p_greater(after, before))
    return [first_look(smallest_p < alpha) for alpha in alphas]


# ---------------------------------------------------------------- kayenta


@functools.cache
def wilcoxon_quantile(probability: float, m: int, n: int) -> int:
    """R's qwilcox: the smallest u with P(U <= u) >= probability, U the Mann-Whitney statistic."""
    counts = np.zeros((m + 1, n + 1, m * n + 1))
    counts[0, :, 0] = 1.0
    counts[:, 0, 0] = 1.0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            counts[i, j, j:] += counts[i - 1, j, : m * n + 1 - j]  # the largest value is from x
            counts[i, j] += counts[i, j - 1]  # ... or from y
    cdf = np.cumsum(counts[m, n]) / counts[m, n].sum()
    return int(np.searchsorted(cdf, probability - 1e-12))


def sorted_differences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sort((x[:, :, None] - y[:, None, :]).reshape(x.shape[0], -1), axis=1)


def mann_whitney_low(diffs: np.ndarray, m: int, n: int, confidence: float) -> np.ndarray:
    """Per row: the low end of R's wilcox.test(x, y, conf.int=TRUE, conf.level=confidence), exact."""
    upper_index = max(wilcoxon_quantile((1.0 - confidence) / 2.0, m, n), 1)
    return diffs[:, upper_index - 1]


def aggregate_series(fleet: Fleet, hosts: slice) -> dict[str, np.ndarray]:
    """One time series per arm, as a metrics store would report the server group: (D, T)."""
    return {
        "errors": fleet.errors[:, hosts].sum(axis=1) / np.maximum(fleet.requests[:, hosts].sum(axis=1), 1.0),
        "latency": fleet.latency[:, hosts].mean(axis=1),
        "load": fleet.load[:, hosts].mean(axis=1),
    }


def judge_kayenta(fleet: Fleet, settings: list[tuple[float, float]]) -> list[np.ndarray]:
    """Settings: (confidence, marginal score)."""
    b, c = fleet.baseline, fleet.canaries
    canary, control = aggregate_series(fleet, slice(0, c)), aggregate_series(fleet, slice(c, None))
    deploys = fleet.requests.shape[0]
    fired = np.zeros((len(settings), deploys, WINDOW_LOOKS), dtype=bool)
    for look in range(KAYENTA_EVERY_LOOKS - 1, WINDOW_LOOKS, KAYENTA_EVERY_LOOKS):
        passed = np.zeros((len(settings), deploys))
        for name in canary:
            x, y = canary[name][:, b : b + look + 1], control[name][:, b : b + look + 1]
            diffs = sorted_differences(x, y)
            estimate = np.median(diffs, axis=1)
            for index, (confidence, _) in enumerate(settings):
                low = mann_whitney_low(diffs, x.shape[1], y.shape[1], confidence)
                passed[index] += ~(low > KAYENTA_TOLERANCE * np.abs(estimate))
        for index, (_, marginal) in enumerate(settings):
            fired[index, :, look] = 100.0 * passed[index] / len(canary) < marginal
    return [first_look(f) for f in fired]


# ---------------------------------------------------------------- flagger


def judge_flagger(fleet: Fleet, scales: list[float]) -> list[np.ndarray]:
    b, c = fleet.baseline, fleet.canaries
    error_rate = fleet.errors[:, :c, b:].sum(axis=1) / np.maximum(fleet.requests[:, :c, b:].sum(axis=1), 1.0)
    p99 = fleet.latency[:, :c, b:].mean(axis=1)
    return [
        first_look((error_rate > FLAGGER_MAX_ERROR_RATE * s) | (p99 > FLAGGER_MAX_P99_MS * s)) for s in scales
    ]


# ------------------------------------------------------------- the ladder


@dataclass(frozen=True)
class Peer:
    """A peer, its published setting and its settings from loosest to strictest."""

    name: str
    judge: Callable[[Fleet, list[Any]], list[np.ndarray]]
    published: Any
    ladder: list[Any]
    describe: Callable[[Any], str]


# Naive: alpha from 0.05 down to 5e-13 in quarter decades (time points as
# samples and the fleet's trend make it far too eager, so far down).
NAIVE_LADDER = [NAIVE_ALPHA * 10 ** (-i / 4) for i in range(0, 45)]
# Kayenta: a wider interval first, then more metrics High at once (marginal
# 50: two of three, 25: all three).
KAYENTA_LADDER = [
    (confidence, marginal)
    for marginal in (75.0, 50.0, 25.0)
    for confidence in (0.98, 0.99, 0.995, 0.999, 0.9999)
]
# Flagger: both thresholds x1 .. x4 in steps of 5 %.
FLAGGER_LADDER = [1.0 + 0.05 * i for i in range(0, 61)]

PEERS = [
    Peer("naive", judge_naive, NAIVE_ALPHA, NAIVE_LADDER, lambda a: f"alpha {a:.2g}"),
    Peer(
        "kayenta",
        judge_kayenta,
        (KAYENTA_CONFIDENCE, KAYENTA_MARGINAL),
        KAYENTA_LADDER,
        lambda s: f"confidence {s[0]:g}, marginal {s[1]:.0f}",
    ),
    Peer(
        "flagger",
        judge_flagger,
        1.0,
        FLAGGER_LADDER,
        lambda s: (
            f"errors <= {100 * FLAGGER_MAX_ERROR_RATE * s:.2f} %, p99 <= {FLAGGER_MAX_P99_MS * s:.0f} ms"
        ),
    ),
]
