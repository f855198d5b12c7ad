"""The simulated fleet the canary judges of bench/judge_bench.py are run on.

A fleet of 100 hosts, the first few of them canaries, sampled every 5 s; the
canary window is 60 s (12 looks) after a baseline period before the flip.
Hosts differ the way real ones do: traffic (~30 %), error rate (~30 %) and
latency level (~15 %) per host, noise on load and latency per interval, and a
fleet-wide trend over time shared by every host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class Scenario:
    name: str
    errors: float = 1.0  # factor on the canaries' error rate after the flip
    latency: float = 1.0
    load: float = 1.0
    bad_hosts: int | None = None  # only this many canaries change (None: all)
    # A change no larger than the judge's allowed one (SPECS' min_effect): a
    # rollback here is a false one, and where the budget is spent.
    harmless: bool = False
    # Continuous metrics: add this share of the control hosts' mean at each
    # interval to the canaries (what the judge's margin is relative to: a
    # factor on each canary's own level would straddle the margin).
    added_share: float = 0.0
    # Factor on the canaries' per-interval latency noise after the flip (its
    # mean kept): a release that makes each host's latency jitter more.
    latency_noise: float = 1.0
    # Reported, but outside the goals and the peers' calibration: a harmless
    # change chosen to show what our design gives up.
    stress: bool = False


SCENARIOS = [
    Scenario("A/A (no change)", harmless=True),
    Scenario("each at the allowed +10%", errors=1.1, added_share=0.1, harmless=True),
    Scenario("errors x1.5", errors=1.5),
    Scenario("errors x2", errors=2.0),
    Scenario("errors x5", errors=5.0),
    Scenario("load +20%", load=1.2),
    Scenario("latency +30%", latency=1.3),
    Scenario("one bad canary (errors x5)", errors=5.0, bad_hosts=1),
    Scenario(
        "stress: allowed, 2x jitter",
        errors=1.1,
        added_share=0.1,
        latency_noise=2.0,
        harmless=True,
        stress=True,
    ),
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
    if scenario.latency_noise != 1.0:
        usual, wider = INTERVAL_NOISE["latency"], INTERVAL_NOISE["latency"] * scenario.latency_noise
        latency_noise[:, :changed, baseline:] = rng.lognormal(
            (usual**2 - wider**2) / 2.0, wider, (deploys, changed, WINDOW_LOOKS)
        )
    latency = latency_level[:, :, None] * np.sqrt(trend) * latency_noise * effect["latency"]
    load = LOAD * requests / (REQUESTS_PER_S * INTERVAL_S) * effect["load"]
    for values in (latency, load):
        values[:, :changed, baseline:] += (
            scenario.added_share * values[:, canaries:, baseline:].mean(axis=1)[:, None]
        )
    return Fleet(requests, errors, latency, load, baseline, canaries)
