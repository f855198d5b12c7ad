"""Canary judges side by side on one simulated fleet (bench/judge_fleet.py).

Each scenario simulates the same deploys once and hands them to every judge:

- ours: buildbot_steps._core.Judge with its default group-sequential boundary (host as the unit,
  difference in differences against each host's own baseline, Pocock-type alpha spending over the
  correlated looks, Holm over the metrics); ours-spending: the same with the union-bound spending
  (Sequential.SPENDING, the default before);
- the peers of bench/judge_peers.py (the seed's naive Welch, Kayenta's NetflixACAJudge, Flagger / Argo
  fixed thresholds), three times: at their published settings, and calibrated twice: the setting of
  each one's own knob whose false-rollback rate is the highest at or below our budget (1 %) on separate
  deploys (other random streams, as many deploys), so that detection is compared at equal false
  rollbacks. "@1%" counts only A/A deploys as false rollbacks; "@1%all" counts every deploy that must
  not be rolled back (A/A and the allowed change), which is what our budget promises.

Run: .venv/bin/python bench/judge_bench.py [--deploys 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from judge_fleet import HOSTS, INTERVAL_S, SCENARIOS, WINDOW_LOOKS, Fleet, simulate
from judge_peers import PEERS, Peer

from buildbot_steps import _core

CHUNK = 100  # deploys simulated at once: bounds memory to ~100 MB
CALIBRATION_STREAM = 1000  # the calibration's deploys: random streams no scenario uses
# Suffixes of a peer calibrated to our budget: which deploys count as false rollbacks there, and
# whether that is every harmless scenario (else A/A alone).
CALIBRATIONS = {"@1%": ("A/A deploys", False), "@1%all": ("every deploy that must not be rolled back", True)}

# The judge's metrics: what a web deploy watches, with the change worth a
# rollback (10 % worse each).
SPECS = [
    _core.MetricSpec("errors", _core.MetricKind.COUNT, _core.Direction.INCREASE, 0.1),
    _core.MetricSpec("latency", _core.MetricKind.CONTINUOUS, _core.Direction.INCREASE, 0.1),
    _core.MetricSpec("load", _core.MetricKind.CONTINUOUS, _core.Direction.INCREASE, 0.1),
]
BUDGET = _core.Judge(SPECS).alpha
GOALS = [s for s in SCENARIOS if not s.stress]  # the scenarios the goals and calibrations count
OURS = {"ours": _core.Sequential.GROUP_SEQUENTIAL, "ours-spending": _core.Sequential.SPENDING}


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
    alpha = BUDGET
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


# ------------------------------------------------------------- calibration


def calibrate(
    peer: Peer, deploys: int, seed: int, canaries: int, baseline: int, every_harmless: bool
) -> tuple[Any, float]:
    """The peer's setting with the highest false-rollback rate at or below BUDGET (the loosest first
    among equals), on deploys no scenario sees; the strictest setting if none is. The rate is the A/A
    one, or with `every_harmless` the highest over every scenario that must not roll back."""
    harmless = [s for s in GOALS if s.harmless] if every_harmless else SCENARIOS[:1]
    rates = np.zeros(len(peer.ladder))
    for index, scenario in enumerate(harmless):
        rng = np.random.default_rng([seed, CALIBRATION_STREAM + index])
        rolled_back = np.zeros(len(peer.ladder))
        for start in range(0, deploys, CHUNK):
            fleet = simulate(rng, min(CHUNK, deploys - start), scenario, canaries, baseline)
            rolled_back += [np.sum(~np.isnan(times)) for times in peer.judge(fleet, peer.ladder)]
        rates = np.maximum(rates, rolled_back / deploys)
    within = [i for i in range(len(rates)) if rates[i] <= BUDGET] or [len(rates) - 1]
    best = max(within, key=lambda i: (rates[i], -i))
    return peer.ladder[best], float(rates[best])


# ------------------------------------------------------------------ report


@dataclass
class Outcome:
    times: list[float] = field(default_factory=list)  # NaN: not rolled back

    def rate(self) -> float:
        return float(np.mean(~np.isnan(self.times)))

    def median_s(self) -> float:
        hit = [t for t in self.times if not np.isnan(t)]
        return statistics.median(hit) if hit else float("nan")


Outcomes = dict[str, dict[str, Outcome]]


def run(
    deploys: int,
    seed: int,
    canaries: int,
    baseline: int,
    design: _core.Design,
    calibrated: dict[str, dict[str, Any]],
) -> tuple[Outcomes, dict[str, list[bool]]]:
    """`calibrated`: per calibration suffix, each peer's setting."""
    columns = [*OURS, *(p.name + suffix for suffix in ["", *CALIBRATIONS] for p in PEERS)]
    outcomes = {s.name: {j: Outcome() for j in columns} for s in SCENARIOS}
    count_tests: dict[str, list[bool]] = {name: [] for name in COUNT_TESTS}
    for index, scenario in enumerate(SCENARIOS):
        rng = np.random.default_rng([seed, index])
        for start in range(0, deploys, CHUNK):
            fleet = simulate(rng, min(CHUNK, deploys - start), scenario, canaries, baseline)
            results = {name: judge_ours(fleet, design, canaries, method) for name, method in OURS.items()}
            for peer in PEERS:
                settings = {"": peer.published} | {k: calibrated[k][peer.name] for k in CALIBRATIONS}
                for suffix, times in zip(settings, peer.judge(fleet, list(settings.values())), strict=True):
                    results[peer.name + suffix] = times
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

    def make() -> _core.Judge:
        return _core.Judge(specs, looks_in_window=WINDOW_LOOKS)

    judge = make()
    data = build()
    look_only, with_build = [], []
    for _ in range(repeat):
        if judge.looks >= WINDOW_LOOKS - 1 or judge.verdict != _core.CanaryVerdict.CONTINUE:
            judge = make()  # a new deploy: the window holds two more looks
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


def print_table(outcomes: Outcomes, columns: list[str]) -> None:
    print(f"{'scenario':<30}" + "".join(f"{j:>17}" for j in columns))
    print(f"{'':<30}" + "".join(f"{'rolled back  med':>17}" for _ in columns))
    for scenario in SCENARIOS:
        row = outcomes[scenario.name]
        cells = "".join(f"{fmt_rate(row[j]):>11} {fmt_median(row[j]):>5}" for j in columns)
        print(f"{scenario.name:<30}{cells}")


def upper_bound(rate: float, n: int, z: float = 1.96) -> float:
    """Wilson score upper 95 % bound of a proportion."""
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


def print_goals(outcomes: Outcomes) -> None:
    for name in OURS:
        x2 = outcomes["errors x2"][name]
        within_60 = float(np.mean([not np.isnan(t) and t <= 60.0 for t in x2.times]))
        for scenario in (s for s in SCENARIOS if s.harmless):
            false = outcomes[scenario.name][name]
            bound = upper_bound(false.rate(), len(false.times))
            verdict = "not a goal" if scenario.stress else "met" if false.rate() <= BUDGET else "MISSED"
            print(
                f"{'stress' if scenario.stress else 'goal'} ({name}): <= {100 * BUDGET:g}% false rollbacks "
                f"per deploy, {scenario.name}: {100 * false.rate():.2f}% "
                f"(95% upper bound {100 * bound:.2f}%) -> {verdict}"
            )
        print(
            f"goal ({name}): errors x2 detected within 60 s in >= 95%: {100 * within_60:.1f}% "
            f"-> {'met' if within_60 >= 0.95 else 'MISSED'}"
        )


def print_both_axes(outcomes: Outcomes, peer_columns: list[str]) -> None:
    """Ours better on both axes at once: false rollbacks <= the peer's in every scenario that must not
    roll back, and detection >= in every scenario with a harmful change."""
    harmless = [s.name for s in GOALS if s.harmless]
    harmful = [s.name for s in GOALS if not s.harmless]
    for peer in peer_columns:

        def rates(name: str, peer: str = peer) -> tuple[float, float]:
            return outcomes[name]["ours"].rate(), outcomes[name][peer].rate()

        more_false = [name for name in harmless if rates(name)[0] > rates(name)[1]]
        less = [name for name in harmful if rates(name)[0] < rates(name)[1]]
        false = "; ".join(
            f"{name} {100 * rates(name)[0]:.1f}% vs {100 * rates(name)[1]:.1f}%" for name in harmless
        )
        verdict = "YES" if not more_false and not less else "no"
        print(
            f"ours vs {peer:<14}: better on both axes at once: {verdict}"
            f" (false rollbacks: {false}; ours detects less in: {', '.join(less) if less else 'none'})"
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
    if args.deploys < 1 or args.canaries < 2 or args.canaries >= HOSTS:
        parser.error(f"--deploys must be >= 1 and --canaries in [2, {HOSTS - 1}]")
    baseline = int(args.baseline_s / INTERVAL_S)
    design = _core.Design[args.design.upper()]
    print(
        f"{args.deploys} deploys per scenario; {HOSTS} hosts, {args.canaries} canaries, "
        f"{INTERVAL_S:.0f} s looks, {WINDOW_LOOKS * INTERVAL_S:.0f} s window, "
        f"{args.baseline_s:.0f} s baseline; "
        f"ours: {design.name.lower()}, alpha {BUDGET} over 3 metrics and all looks"
    )
    started = time.perf_counter()
    calibrated: dict[str, dict[str, Any]] = {suffix: {} for suffix in CALIBRATIONS}
    for suffix, (counted, every_harmless) in CALIBRATIONS.items():
        print(f"peers{suffix}: calibrated on {args.deploys} other deploys of each kind, counting {counted}:")
        for peer in PEERS:
            setting, rate = calibrate(peer, args.deploys, args.seed, args.canaries, baseline, every_harmless)
            calibrated[suffix][peer.name] = setting
            print(
                f"  {peer.name:<8} published {peer.describe(peer.published)}; "
                f"calibrated {peer.describe(setting)} ({100 * rate:.1f}% on the calibration deploys)"
            )
    outcomes, count_tests = run(args.deploys, args.seed, args.canaries, baseline, design, calibrated)
    print(f"(calibrated, simulated and judged in {time.perf_counter() - started:.0f} s)")
    print()
    print("published settings:")
    print_table(outcomes, [*OURS, *(p.name for p in PEERS)])
    print()
    for suffix, (counted, _) in CALIBRATIONS.items():
        print(f"peers calibrated to <= {100 * BUDGET:g}% false rollbacks on {counted}:")
        print_table(outcomes, ["ours", *(p.name + suffix for p in PEERS)])
        print()
    print_goals(outcomes)
    print_both_axes(outcomes, [p.name + suffix for suffix in ["", *CALIBRATIONS] for p in PEERS])
    print()
    print(f"error counts alone, A/A, one test over the whole window at alpha {BUDGET}, no allowed increase:")
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
