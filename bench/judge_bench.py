"""Canary judges side by side on one simulated fleet.

A fleet of 100 hosts, 5 of them canaries, sampled every 5 s; the canary window
is 60 s (12 looks) after a baseline period before the flip. Hosts differ the
way real ones do: traffic (~30 %), error rate (~30 %) and latency level
(~15 %) per host, noise on load and latency per interval, and a fleet-wide
trend over time shared by every host. Each scenario simulates the same
deploys once and hands them to every judge:

- ours: buildbot_steps._core.Judge (host as the unit, difference in
  differences against each host's own baseline, alpha spent over the looks,
  Holm over the metrics); ours-msprt: the same with the mixture SPRT;
- naive: the seed's approach, Welch at 0.05 on every look, the canary hosts
  after the flip against the same hosts before it (time points as samples);
- kayenta: NetflixACAJudge as published (Mann-Whitney 98 % interval of the
  canary's time series against the control's, High when its lower end is
  above 0.25 x |Hodges-Lehmann estimate|, score = share of metrics passing,
  pass 95 / marginal 75, any interim analysis below marginal fails); an
  analysis every 20 s of the window over all time points so far;
- flagger: Flagger / Argo Rollouts fixed thresholds on the canary alone, per
  interval: success rate >= 99 % (errors <= 1 %) and p99 latency <= 500 ms,
  rolled back at the first failed check (Argo's failureLimit 0).

Run: .venv/bin/python bench/judge_bench.py [--deploys 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from buildbot_steps import _core

INTERVAL_S = 5.0
WINDOW_LOOKS = 12  # 60 s canary window at 5 s intervals
HOSTS = 100
REQUESTS_PER_S = 40.0  # a busy web host: tens of requests per second
ERROR_RATE = 0.005
P99_LATENCY_MS = 300.0
LOAD = 2.0
HOST_SPREAD = {"traffic": 0.30, "errors": 0.30, "latency": 0.15}  # log-sd between hosts
INTERVAL_NOISE = {"load": 0.10, "latency": 0.10}  # log-sd per host per interval
TREND_STEP = 0.01  # log-sd of the fleet-wide random walk per interval (~11 % over 11 min)
FLAGGER_MAX_ERROR_RATE = 0.01
FLAGGER_MAX_P99_MS = 500.0
KAYENTA_CONFIDENCE = 0.98
KAYENTA_TOLERANCE = 0.25
KAYENTA_MARGINAL = 75.0
KAYENTA_EVERY_LOOKS = 4  # an interim analysis every 20 s
NAIVE_ALPHA = 0.05
CHUNK = 100  # deploys simulated at once: bounds memory to ~100 MB

# The judge's metrics: what a web deploy watches, with the change worth a
# rollback (10 % worse each).
SPECS = [
    _core.MetricSpec("errors", _core.MetricKind.COUNT, _core.Direction.INCREASE, 0.1),
    _core.MetricSpec("latency", _core.MetricKind.CONTINUOUS, _core.Direction.INCREASE, 0.1),
    _core.MetricSpec("load", _core.MetricKind.CONTINUOUS, _core.Direction.INCREASE, 0.1),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    errors: float = 1.0  # factor on the canaries' error rate after the flip
    latency: float = 1.0
    load: float = 1.0
    bad_hosts: int | None = None  # only this many canaries change (None: all)


SCENARIOS = [
    Scenario("A/A (no change)"),
    Scenario("errors x1.5", errors=1.5),
    Scenario("errors x2", errors=2.0),
    Scenario("errors x5", errors=5.0),
    Scenario("load +20%", load=1.2),
    Scenario("latency +30%", latency=1.3),
    Scenario("one bad canary (errors x5)", errors=5.0, bad_hosts=1),
]


@dataclass
class Fleet:
    """Per deploy, host and interval (D, H, T); the flip happens at interval `baseline`."""

    requests: np.ndarray
    errors: np.ndarray
    latency: np.ndarray
    load: np.ndarray
    baseline: int
    canaries: int


def simulate(
    rng: np.random.Generator, deploys: int, scenario: Scenario, canaries: int, baseline: int
) -> Fleet:
    shape = (deploys, HOSTS)
    periods = baseline + WINDOW_LOOKS
    traffic = REQUESTS_PER_S * rng.lognormal(0.0, HOST_SPREAD["traffic"], shape)
    error_level = ERROR_RATE * rng.lognormal(0.0, HOST_SPREAD["errors"], shape)
    latency_level = P99_LATENCY_MS * rng.lognormal(0.0, HOST_SPREAD["latency"], shape)
    trend = np.exp(np.cumsum(rng.normal(0.0, TREND_STEP, (deploys, periods)), axis=1))[:, None, :]
    load_noise = rng.lognormal(0.0, INTERVAL_NOISE["load"], (*shape, periods))
    expected = traffic[:, :, None] * trend * INTERVAL_S * load_noise
    requests = rng.poisson(expected).astype(float)
    effect = {name: np.ones((*shape, periods)) for name in ("errors", "latency", "load")}
    changed = canaries if scenario.bad_hosts is None else scenario.bad_hosts
    for name in effect:
        effect[name][:, :changed, baseline:] = getattr(scenario, name)
    errors = rng.poisson(requests * error_level[:, :, None] * effect["errors"]).astype(float)
    latency_noise = rng.lognormal(0.0, INTERVAL_NOISE["latency"], (*shape, periods))
    latency = latency_level[:, :, None] * np.sqrt(trend) * latency_noise * effect["latency"]
    load = LOAD * requests / (REQUESTS_PER_S * INTERVAL_S) * effect["load"]
    return Fleet(requests, errors, latency, load, baseline, canaries)


# ------------------------------------------------------------------- ours


def judge_ours(
    fleet: Fleet, design: _core.Design, min_hosts: int, sequential: _core.Sequential
) -> np.ndarray:
    """Seconds after the flip at which our judge rolled back, NaN if it did not."""
    b, c = fleet.baseline, fleet.canaries
    window = {name: np.cumsum(getattr(fleet, name)[:, :, b:], axis=2) for name in ("requests", "errors")}
    mean_after = {
        name: np.cumsum(getattr(fleet, name)[:, :, b:], axis=2) / np.arange(1, WINDOW_LOOKS + 1)
        for name in ("latency", "load")
    }
    before = {name: getattr(fleet, name)[:, :, :b] for name in ("requests", "errors", "latency", "load")}
    base_requests, base_errors = before["requests"].sum(axis=2), before["errors"].sum(axis=2)
    base_mean = {name: before[name].mean(axis=2) for name in ("latency", "load")}
    deploys = fleet.requests.shape[0]
    detected = np.full(deploys, np.nan)
    for d in range(deploys):
        judge = _core.Judge(
            SPECS,
            design=design,
            looks_in_window=WINDOW_LOOKS,
            min_hosts_per_arm=min_hosts,
            sequential=sequential,
        )
        for look in range(WINDOW_LOOKS):
            data = [
                _core.MetricLook.count(
                    "errors",
                    window["errors"][d, :c, look].tolist(),
                    window["requests"][d, :c, look].tolist(),
                    window["errors"][d, c:, look].tolist(),
                    window["requests"][d, c:, look].tolist(),
                    canary_baseline_events=base_errors[d, :c].tolist(),
                    canary_baseline_exposure=base_requests[d, :c].tolist(),
                    control_baseline_events=base_errors[d, c:].tolist(),
                    control_baseline_exposure=base_requests[d, c:].tolist(),
                )
            ]
            for name in ("latency", "load"):
                data.append(
                    _core.MetricLook.continuous(
                        name,
                        mean_after[name][d, :c, look].tolist(),
                        mean_after[name][d, c:, look].tolist(),
                        canary_baseline=base_mean[name][d, :c].tolist(),
                        control_baseline=base_mean[name][d, c:].tolist(),
                    )
                )
            verdict = judge.look(data).verdict
            if verdict == _core.CanaryVerdict.FAIL:
                detected[d] = (look + 1) * INTERVAL_S
            if verdict != _core.CanaryVerdict.CONTINUE:
                break
    return detected


# ------------------------------------------------------------------ peers


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


def first_look(fired: np.ndarray) -> np.ndarray:
    """(D, looks) booleans -> seconds of the first True, NaN if none."""
    any_fired = fired.any(axis=1)
    first = np.argmax(fired, axis=1)
    return np.where(any_fired, (first + 1) * INTERVAL_S, np.nan)


def judge_naive(fleet: Fleet) -> np.ndarray:
    b, c = fleet.baseline, fleet.canaries
    metrics = per_interval_metrics(fleet, slice(0, c))
    deploys = fleet.requests.shape[0]
    fired = np.zeros((deploys, WINDOW_LOOKS), dtype=bool)
    for look in range(WINDOW_LOOKS):
        for values in metrics.values():
            after = values[:, :, b : b + look + 1].reshape(deploys, -1)
            before = values[:, :, :b].reshape(deploys, -1)
            fired[:, look] |= welch_p_greater(after, before) < NAIVE_ALPHA
    return first_look(fired)


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


def mann_whitney_interval(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: R's wilcox.test(x, y, conf.int=TRUE, conf.level=0.98), exact: (low, high, estimate)."""
    m, n = x.shape[1], y.shape[1]
    diffs = np.sort((x[:, :, None] - y[:, None, :]).reshape(x.shape[0], -1), axis=1)
    upper_index = max(wilcoxon_quantile((1.0 - KAYENTA_CONFIDENCE) / 2.0, m, n), 1)
    low = diffs[:, upper_index - 1]
    high = diffs[:, m * n - upper_index]
    return low, high, np.median(diffs, axis=1)


def aggregate_series(fleet: Fleet, hosts: slice) -> dict[str, np.ndarray]:
    """One time series per arm, as a metrics store would report the server group: (D, T)."""
    return {
        "errors": fleet.errors[:, hosts].sum(axis=1) / np.maximum(fleet.requests[:, hosts].sum(axis=1), 1.0),
        "latency": fleet.latency[:, hosts].mean(axis=1),
        "load": fleet.load[:, hosts].mean(axis=1),
    }


def judge_kayenta(fleet: Fleet) -> np.ndarray:
    b, c = fleet.baseline, fleet.canaries
    canary, control = aggregate_series(fleet, slice(0, c)), aggregate_series(fleet, slice(c, None))
    deploys = fleet.requests.shape[0]
    fired = np.zeros((deploys, WINDOW_LOOKS), dtype=bool)
    for look in range(KAYENTA_EVERY_LOOKS - 1, WINDOW_LOOKS, KAYENTA_EVERY_LOOKS):
        passed = np.zeros(deploys)
        for name in canary:
            x, y = canary[name][:, b : b + look + 1], control[name][:, b : b + look + 1]
            low, _, estimate = mann_whitney_interval(x, y)
            high_metric = low > KAYENTA_TOLERANCE * np.abs(estimate)
            passed += ~high_metric
        score = 100.0 * passed / len(canary)
        fired[:, look] = score < KAYENTA_MARGINAL
    return first_look(fired)


def judge_flagger(fleet: Fleet) -> np.ndarray:
    b, c = fleet.baseline, fleet.canaries
    errors = fleet.errors[:, :c, b:].sum(axis=1)
    requests = np.maximum(fleet.requests[:, :c, b:].sum(axis=1), 1.0)
    p99 = fleet.latency[:, :c, b:].mean(axis=1)
    fired = (errors / requests > FLAGGER_MAX_ERROR_RATE) | (p99 > FLAGGER_MAX_P99_MS)
    return first_look(fired)


# ------------------------------------------------------- count test alone

COUNT_TESTS = ["pooled binomial", "quasi-binomial, same window", "quasi-binomial, diff-in-diff"]


def count_test_false_positives(fleet: Fleet) -> dict[str, list[bool]]:
    """A/A only: does one test of the error counts over the whole window reject at alpha?

    The pooled binomial is the textbook exact test on the arms' totals, blind to host-to-host rate
    differences; the other two are our judge with that one metric and a single look.
    """
    b, c = fleet.baseline, fleet.canaries
    errors, requests = fleet.errors[:, :, b:].sum(axis=2), fleet.requests[:, :, b:].sum(axis=2)
    base_errors, base_requests = fleet.errors[:, :, :b].sum(axis=2), fleet.requests[:, :, :b].sum(axis=2)
    alpha = _core.Judge(SPECS).alpha
    # No allowed increase here: a margin would hide how far each test is from its promise.
    spec = _core.MetricSpec("errors", _core.MetricKind.COUNT, _core.Direction.INCREASE, 0.0)
    fired: dict[str, list[bool]] = {name: [] for name in COUNT_TESTS}
    for d in range(errors.shape[0]):
        pooled = _core.rate_ratio_test(
            errors[d, :c].sum(),
            requests[d, :c].sum(),
            errors[d, c:].sum(),
            requests[d, c:].sum(),
            _core.Direction.INCREASE,
        )
        fired[COUNT_TESTS[0]].append(pooled.p_value < alpha)
        data = [
            _core.MetricLook.count(
                "errors",
                errors[d, :c].tolist(),
                requests[d, :c].tolist(),
                errors[d, c:].tolist(),
                requests[d, c:].tolist(),
                canary_baseline_events=base_errors[d, :c].tolist(),
                canary_baseline_exposure=base_requests[d, :c].tolist(),
                control_baseline_events=base_errors[d, c:].tolist(),
                control_baseline_exposure=base_requests[d, c:].tolist(),
            )
        ]
        for name, design in zip(COUNT_TESTS[1:], (_core.Design.SAME_WINDOW, _core.Design.DIFF_IN_DIFF)):
            judge = _core.Judge([spec], design=design, looks_in_window=1, min_hosts_per_arm=c)
            fired[name].append(judge.look(data).metrics[0].p_value < alpha)
    return fired


# ------------------------------------------------------------------ report


@dataclass
class Outcome:
    times: list[float] = field(default_factory=list)  # NaN: not rolled back

    def rate(self) -> float:
        return float(np.mean(~np.isnan(self.times)))

    def median_s(self) -> float:
        hit = [t for t in self.times if not np.isnan(t)]
        return statistics.median(hit) if hit else float("nan")


JUDGES = ["ours", "ours-msprt", "naive", "kayenta", "flagger"]
PEERS = ["naive", "kayenta", "flagger"]


Outcomes = dict[str, dict[str, Outcome]]


def run(
    deploys: int, seed: int, canaries: int, baseline: int, design: _core.Design
) -> tuple[Outcomes, dict[str, list[bool]]]:
    outcomes = {s.name: {j: Outcome() for j in JUDGES} for s in SCENARIOS}
    count_tests: dict[str, list[bool]] = {name: [] for name in COUNT_TESTS}
    for index, scenario in enumerate(SCENARIOS):
        rng = np.random.default_rng([seed, index])
        for start in range(0, deploys, CHUNK):
            fleet = simulate(rng, min(CHUNK, deploys - start), scenario, canaries, baseline)
            results = {
                "ours": judge_ours(fleet, design, canaries, _core.Sequential.SPENDING),
                "ours-msprt": judge_ours(fleet, design, canaries, _core.Sequential.MIXTURE),
                "naive": judge_naive(fleet),
                "kayenta": judge_kayenta(fleet),
                "flagger": judge_flagger(fleet),
            }
            for judge, times in results.items():
                outcomes[scenario.name][judge].times.extend(times.tolist())
            if index == 0:
                for name, fired in count_test_false_positives(fleet).items():
                    count_tests[name].extend(fired)
    return outcomes, count_tests


def time_one_look(
    hosts: int = 1000, metrics: int = 20, canaries: int = 50, repeat: int = 200
) -> tuple[float, float]:
    """Median thread CPU seconds of one look over `hosts` x `metrics`: (judge.look alone, with building
    the columns in Python). CPU time, because other builds share this machine's cores."""
    rng = np.random.default_rng(0)
    specs = [
        _core.MetricSpec(
            f"m{k}",
            _core.MetricKind.COUNT if k % 2 else _core.MetricKind.CONTINUOUS,
            _core.Direction.INCREASE,
            0.2,
        )
        for k in range(metrics)
    ]

    def build() -> list[_core.MetricLook]:
        data = []
        for k in range(metrics):
            if k % 2:
                events = rng.poisson(5.0, hosts).astype(float).tolist()
                exposure = [1000.0] * hosts
                data.append(
                    _core.MetricLook.count(
                        f"m{k}",
                        events[:canaries],
                        exposure[:canaries],
                        events[canaries:],
                        exposure[canaries:],
                    )
                )
            else:
                values = rng.normal(100.0, 5.0, hosts).tolist()
                data.append(_core.MetricLook.continuous(f"m{k}", values[:canaries], values[canaries:]))
        return data

    judge = _core.Judge(specs, looks_in_window=10**9)
    data = build()
    look_only, with_build = [], []
    for _ in range(repeat):
        started = time.thread_time()
        judge.look(data)
        look_only.append(time.thread_time() - started)
        started = time.thread_time()
        judge.look(build())
        with_build.append(time.thread_time() - started)
    return statistics.median(look_only), statistics.median(with_build)


def fmt_rate(outcome: Outcome) -> str:
    return f"{100 * outcome.rate():5.1f}%"


def fmt_median(outcome: Outcome) -> str:
    median = outcome.median_s()
    return "   -" if np.isnan(median) else f"{median:4.0f}s"


def print_table(outcomes: Outcomes) -> None:
    header = f"{'scenario':<30}" + "".join(f"{j:>17}" for j in JUDGES)
    print(header)
    print(f"{'':<30}" + "".join(f"{'rolled back  med':>17}" for _ in JUDGES))
    for scenario in SCENARIOS:
        row = outcomes[scenario.name]
        cells = "".join(f"{fmt_rate(row[j]):>11} {fmt_median(row[j]):>5}" for j in JUDGES)
        print(f"{scenario.name:<30}{cells}")
    aa = outcomes[SCENARIOS[0].name]
    x2 = outcomes["errors x2"]
    print()
    print("ratios against ours (peer / ours):")
    for judge in JUDGES[1:]:
        if aa["ours"].rate() > 0:
            false_ratio = f"x{aa[judge].rate() / aa['ours'].rate():6.1f}"
        else:
            false_ratio = f"{100 * aa[judge].rate():.1f}% vs none"
        ttd = x2[judge].median_s() / x2["ours"].median_s()
        print(
            f"  {judge:<10} A/A false rollbacks {false_ratio:>14}   errors x2 detection "
            f"{x2[judge].rate() / max(x2['ours'].rate(), 1e-9):5.2f}x   median time to detect x{ttd:5.2f}"
        )


def upper_bound(rate: float, n: int, z: float = 1.96) -> float:
    """Wilson score upper 95 % bound of a proportion."""
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


def print_goals(outcomes: Outcomes) -> None:
    aa = outcomes[SCENARIOS[0].name]
    x2 = outcomes["errors x2"]["ours"]
    within_60 = float(np.mean([not np.isnan(t) and t <= 60.0 for t in x2.times]))
    print()
    bound = upper_bound(aa["ours"].rate(), len(aa["ours"].times))
    print(
        f"goal: ours <= 1% false rollbacks per deploy: {100 * aa['ours'].rate():.2f}% "
        f"(95% upper bound {100 * bound:.2f}%) "
        f"-> {'met' if aa['ours'].rate() <= 0.01 else 'MISSED'}"
    )
    print(
        f"goal: errors x2 detected within 60 s in >= 95%: {100 * within_60:.1f}% "
        f"-> {'met' if within_60 >= 0.95 else 'MISSED'}"
    )
    for judge in PEERS:
        worse = [
            scenario.name
            for scenario in SCENARIOS[1:]
            if outcomes[scenario.name]["ours"].rate() < outcomes[scenario.name][judge].rate()
        ]
        fewer_false = aa["ours"].rate() < aa[judge].rate()
        print(
            f"vs {judge:<8}: fewer false rollbacks: {'yes' if fewer_false else 'NO'}; "
            f"scenarios where ours detects less: {', '.join(worse) if worse else 'none'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deploys", type=int, default=1000, help="simulated deploys per scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--canaries",
        type=int,
        default=_core.Judge(SPECS).min_hosts_per_arm,
        help="canary hosts (default: the judge's smallest allowed canary)",
    )
    parser.add_argument(
        "--baseline-s",
        type=float,
        default=600.0,
        help="each host's history before the flip (any metrics store keeps 10 minutes)",
    )
    parser.add_argument("--design", choices=[d.name.lower() for d in _core.Design], default="diff_in_diff")
    args = parser.parse_args()
    baseline = int(args.baseline_s / INTERVAL_S)
    design = _core.Design[args.design.upper()]
    print(
        f"{args.deploys} deploys per scenario; {HOSTS} hosts, {args.canaries} canaries, "
        f"{INTERVAL_S:.0f} s looks, {WINDOW_LOOKS * INTERVAL_S:.0f} s window, "
        f"{args.baseline_s:.0f} s baseline; "
        f"ours: {design.name.lower()}, alpha {_core.Judge(SPECS).alpha} over 3 metrics and all looks"
    )
    started = time.perf_counter()
    outcomes, count_tests = run(args.deploys, args.seed, args.canaries, baseline, design)
    print(f"(simulated and judged in {time.perf_counter() - started:.0f} s)")
    print()
    print_table(outcomes)
    print_goals(outcomes)
    print()
    print(
        f"error counts alone, A/A, one test over the whole window at alpha {_core.Judge(SPECS).alpha}, "
        "no allowed increase:"
    )
    for name, fired in count_tests.items():
        print(f"  {name:<30} rejects {100 * float(np.mean(fired)):5.2f}% of deploys that changed nothing")
    look_only, with_build = time_one_look()
    print()
    print(
        f"one look over 1,000 hosts x 20 metrics: {1e6 * look_only:.0f} us CPU "
        f"({1e6 * with_build:.0f} us with building the columns in Python)"
    )


if __name__ == "__main__":
    main()
