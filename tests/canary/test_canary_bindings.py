"""The canary judge through its Python binding: Welch's t and the rate-ratio
test agree with scipy on many random cases, the judge's verdicts on
constructed deploys, and bad input arriving as InvalidInputError."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from buildbot_steps import _core

INCREASE = _core.Direction.INCREASE
DECREASE = _core.Direction.DECREASE
REL = 1e-9
ALTERNATIVE = {INCREASE: "greater", DECREASE: "less"}


def close(ours: float, theirs: float) -> bool:
    return math.isclose(ours, theirs, rel_tol=REL, abs_tol=1e-300)


def test_enums_are_python_enums() -> None:
    import enum

    assert issubclass(_core.CanaryVerdict, enum.Enum)
    assert {v.name for v in _core.CanaryVerdict} == {"CONTINUE", "PASS", "FAIL", "INCONCLUSIVE"}
    assert {d.name for d in _core.Design} == {"SAME_WINDOW", "BEFORE_AFTER", "DIFF_IN_DIFF"}


def test_welch_matches_scipy_on_random_samples() -> None:
    rng = random.Random(20240901)
    for _ in range(400):
        a = [rng.gauss(rng.uniform(-5, 5), rng.uniform(0.1, 4)) for _ in range(rng.randint(2, 40))]
        b = [rng.gauss(rng.uniform(-5, 5), rng.uniform(0.1, 4)) for _ in range(rng.randint(2, 40))]
        worse = rng.choice([INCREASE, DECREASE])
        ours = _core.welch_test(a, b, worse)
        theirs = stats.ttest_ind(a, b, equal_var=False, alternative=ALTERNATIVE[worse])
        assert close(ours.statistic, float(theirs.statistic))
        assert close(ours.df, float(theirs.df))
        assert close(ours.p_value, float(theirs.pvalue)), (a, b, worse)
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert close(ours.ci_low, float(interval.low))
        assert close(ours.ci_high, float(interval.high))


def test_welch_from_summary_reproduces_the_nist_example() -> None:
    result = _core.welch_from_summary(
        _core.Summary(249, 20.14458, 6.4147), _core.Summary(79, 30.48101, 6.10771), DECREASE
    )
    assert result.df == pytest.approx(136.87, abs=0.005)
    assert result.statistic == pytest.approx(-12.946, abs=0.0005)
    summary = _core.summarize([1.0, 2.0, 3.0, 4.0])
    assert (summary.n, summary.mean) == (4, 2.5)
    assert summary.sd == pytest.approx(np.std([1, 2, 3, 4], ddof=1), rel=REL)


def test_rate_ratio_matches_scipy_binomtest() -> None:
    rng = random.Random(7)
    for _ in range(400):
        canary_events, control_events = rng.randint(0, 60), rng.randint(0, 200)
        canary_exposure, control_exposure = rng.uniform(1, 1e4), rng.uniform(1, 1e5)
        allowed = rng.choice([1.0, 1.2, 1.5, 0.8])
        worse = rng.choice([INCREASE, DECREASE])
        ours = _core.rate_ratio_test(
            canary_events, canary_exposure, control_events, control_exposure, worse, allowed
        )
        p0 = canary_exposure * allowed / (canary_exposure * allowed + control_exposure)
        assert close(ours.null_share, p0)
        total = canary_events + control_events
        if total == 0:
            assert ours.p_value == 1.0
            continue
        theirs = stats.binomtest(canary_events, total, p0, alternative=ALTERNATIVE[worse])
        assert close(ours.p_value, float(theirs.pvalue)), (canary_events, total, p0, worse)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
)
def test_welch_one_sided_p_values_are_complements(a: list[float], b: list[float]) -> None:
    if np.std(a) == 0 and np.std(b) == 0:
        return  # no spread: the degenerate case has its own C++ test
    up = _core.welch_test(a, b, INCREASE).p_value
    down = _core.welch_test(a, b, DECREASE).p_value
    assert up + down == pytest.approx(1.0, abs=1e-12)


def specs() -> list[_core.MetricSpec]:
    return [
        _core.MetricSpec("latency", _core.MetricKind.CONTINUOUS, INCREASE, 0.1),
        _core.MetricSpec("errors", _core.MetricKind.COUNT, INCREASE, 0.2),
    ]


def look(
    rng: np.random.Generator,
    latency_shift: float = 0.0,
    error_factor: float = 1.0,
    canary_exposure: float = 1e4,
) -> list[_core.MetricLook]:
    canary_latency = rng.normal(100 + latency_shift, 5, 10)
    control_latency = rng.normal(100, 5, 50)
    canary_events = rng.poisson(0.01 * error_factor * canary_exposure, 10).astype(float)
    control_events = rng.poisson(0.01 * 1e4, 50).astype(float)
    return [
        _core.MetricLook.continuous("latency", canary_latency.tolist(), control_latency.tolist()),
        _core.MetricLook.count(
            "errors", canary_events.tolist(), [canary_exposure] * 10, control_events.tolist(), [1e4] * 50
        ),
    ]


def test_a_quiet_deploy_continues_then_passes() -> None:
    rng = np.random.default_rng(1)
    judge = _core.Judge(specs(), looks_in_window=4)
    verdicts = [judge.look(look(rng)).verdict for _ in range(4)]
    assert verdicts == [_core.CanaryVerdict.CONTINUE] * 3 + [_core.CanaryVerdict.PASS]
    assert judge.verdict == _core.CanaryVerdict.PASS
    with pytest.raises(_core.InvalidStateError):
        judge.look(look(rng))


def test_every_sequential_method_is_bound() -> None:
    rng = np.random.default_rng(4)
    for method in _core.Sequential:
        judge = _core.Judge(specs(), sequential=method)
        assert judge.sequential == method
        assert judge.look(look(rng, latency_shift=60.0)).verdict == _core.CanaryVerdict.FAIL
    assert {m.name for m in _core.Sequential} == {"SPENDING", "MIXTURE", "GROUP_SEQUENTIAL"}
    assert _core.Judge(specs()).sequential == _core.Sequential.GROUP_SEQUENTIAL


def test_group_sequential_gives_a_smaller_valid_p_than_the_union_bound_on_the_same_looks() -> None:
    rng = np.random.default_rng(5)
    grouped = _core.Judge(specs(), sequential=_core.Sequential.GROUP_SEQUENTIAL)
    spending = _core.Judge(specs(), sequential=_core.Sequential.SPENDING)
    data = look(rng, latency_shift=14.0)
    first, second = grouped.look(data).metrics, spending.look(data).metrics
    for a, b in zip(first, second, strict=True):
        assert a.p_fixed == b.p_fixed
        assert a.p_value <= b.p_value
    assert first[0].p_value < second[0].p_value  # the latency shift: evidence, though not enough yet


def test_errors_five_times_fail_naming_the_metric() -> None:
    rng = np.random.default_rng(2)
    judge = _core.Judge(specs())
    result = judge.look(look(rng, error_factor=5.0))
    assert result.verdict == _core.CanaryVerdict.FAIL
    assert result.failed_metric == "errors"
    errors = result.metrics[1]
    assert errors.failed and errors.status == _core.MetricStatus.TESTED
    assert errors.estimate == pytest.approx(5.0, rel=0.2)
    assert errors.threshold == pytest.approx(1.2)
    assert errors.ci_low < errors.estimate < errors.ci_high
    assert errors.p_value <= errors.level
    assert "errors" in result.reason


def test_zero_canary_traffic_is_inconclusive() -> None:
    rng = np.random.default_rng(3)
    judge = _core.Judge(specs(), looks_in_window=2)
    assert judge.look(look(rng, canary_exposure=0.0)).verdict == _core.CanaryVerdict.CONTINUE
    result = judge.look(look(rng, canary_exposure=0.0))
    assert result.verdict == _core.CanaryVerdict.INCONCLUSIVE
    assert result.metrics[1].status == _core.MetricStatus.INSUFFICIENT_DATA
    assert result.metrics[1].canary_missing == 10


def test_missing_hosts_are_counted_not_taken_as_good() -> None:
    judge = _core.Judge(specs()[:1], looks_in_window=1)
    values = [100.0] * 6 + [float("nan")] * 4
    missing = [False] * 6 + [True] * 4
    result = judge.look(
        [_core.MetricLook.continuous("latency", values, [100.0, 101.0] * 20, canary_missing=missing)]
    )
    assert result.verdict == _core.CanaryVerdict.INCONCLUSIVE
    assert (result.metrics[0].canary_hosts, result.metrics[0].canary_missing) == (6, 4)


def test_diff_in_diff_with_host_data_objects() -> None:
    def host(level: float, change: float) -> _core.HostData:
        return _core.HostData(value=level + change, baseline_value=level)

    canary = [host(300 + 5 * i, 0.1 * (i % 3)) for i in range(8)]
    control = [host(100 + 5 * i, 0.1 * (i % 3)) for i in range(40)]
    same = _core.Judge(specs()[:1], looks_in_window=1)
    assert same.look([_core.MetricLook("latency", canary, control)]).verdict == _core.CanaryVerdict.FAIL
    did = _core.Judge(specs()[:1], design=_core.Design.DIFF_IN_DIFF, looks_in_window=1)
    assert did.look([_core.MetricLook("latency", canary, control)]).verdict == _core.CanaryVerdict.PASS


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"canary": [1.0, float("nan"), 3.0, 4.0, 5.0]}, "canary host 1: value"),
        ({"control": [1.0, float("inf")] * 5}, "control host 1: value"),
        ({"canary": []}, "canary arm is empty"),
        ({"control": []}, "control arm is empty"),
        ({"metric": "throughput"}, "unknown metric 'throughput'"),
        ({"canary_missing": [False]}, "canary_missing"),
    ],
)
def test_bad_continuous_input_raises(bad: dict[str, object], match: str) -> None:
    judge = _core.Judge(specs(), looks_in_window=3)
    arguments: dict[str, object] = {"metric": "latency", "canary": [1.0, 2.0, 3.0, 4.0, 5.0]}
    arguments["control"] = [1.0, 2.0] * 5
    arguments.update(bad)
    with pytest.raises(_core.InvalidInputError, match=match):
        judge.look([_core.MetricLook.continuous(**arguments)])  # type: ignore[arg-type]
    assert judge.looks == 0


def test_bad_counts_raise() -> None:
    judge = _core.Judge(specs())
    with pytest.raises(_core.InvalidInputError, match="canary host 2: events"):
        judge.look([_core.MetricLook.count("errors", [1, 1, -1, 1, 1], [10] * 5, [1] * 9, [10] * 9)])
    with pytest.raises(_core.InvalidInputError, match="control host 0: exposure"):
        judge.look([_core.MetricLook.count("errors", [1] * 5, [10] * 5, [1] * 9, [-10] + [10] * 8)])
    with pytest.raises(_core.InvalidInputError, match="canary_exposure"):
        _core.MetricLook.count("errors", [1] * 5, [10] * 4, [1] * 9, [10] * 9)
    with pytest.raises(ValueError):
        _core.rate_ratio_test(1, 0, 1, 1, INCREASE)


def test_bad_specs_and_options_raise() -> None:
    with pytest.raises(_core.InvalidInputError, match="listed twice"):
        _core.Judge(specs() + specs())
    with pytest.raises(_core.InvalidInputError, match="min_effect"):
        _core.Judge([_core.MetricSpec("x", _core.MetricKind.COUNT, INCREASE, 1.5)])
    with pytest.raises(_core.InvalidInputError, match="min_hosts_per_arm"):
        _core.Judge(specs(), min_hosts_per_arm=1)
    with pytest.raises(_core.InvalidInputError, match="alpha"):
        _core.Judge(specs(), alpha=1.0)
