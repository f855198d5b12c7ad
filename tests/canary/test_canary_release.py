"""The canary release end to end on a real web fleet (14 HTTP server processes,
local deploy roots, a steady load): the judge loop the step runs (CanaryRun)
over the release engine's own push, flip and rollback.

Windows are short (1 s looks, a 10 s canary window) and the bad releases are
clearly bad (three times the errors), so the verdicts do not depend on the
machine's speed; the errors themselves are deterministic (webserver.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from buildbot_steps.canary import PrometheusQuerySource, ScrapeSource, metric_configs
from buildbot_steps.canary.controller import CanaryPlan, CanaryRun, Timing, judged
from buildbot_steps.canary.judging import PhaseOptions, make_judge, metric_looks
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.release import Selection
from harness.local_master import wait_until
from harness.webfleet import BAD, CANARIES, GOOD, LoadGenerator, live_revisions, set_behaviour

RATE_PER_HOST = 20  # requests a second: two errors a second per host at 10%
TIMING = Timing(baseline_s=3, canary_s=10, interval_s=1, monitor_s=0)
METRICS = [
    {"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total", "min_effect": 0.2},
    {
        "name": "latency",
        "ratio": ["app_request_latency_seconds_sum", "app_request_latency_seconds_count"],
        "scale": 1000,
        "unit": "ms",
        "min_effect": 0.5,
    },
]
LOAD_LIMIT_S = 120  # the load stops by itself if a test hangs
SAMPLES_FORMAT = "buildbot-cd/canary-samples/1"


def plan(web_fleet, pushed, source=None, timing=TIMING, metrics=METRICS, **options) -> CanaryPlan:
    canary = [f"web{i}" for i in range(1, CANARIES + 1)]
    sources = {"default": source or ScrapeSource(web_fleet.metrics_urls(), timeout_s=2)}
    return CanaryPlan("r2", canary, metric_configs(metrics), sources, pushed, timing, **options)


def run_under_load(web_fleet, runner, canary_plan, progress=None):
    with LoadGenerator(web_fleet.urls(), RATE_PER_HOST, LOAD_LIMIT_S, max_requests=5000):
        return CanaryRun(runner, canary_plan, progress).run()


def test_a_good_release_goes_to_every_host(web_fleet, deployed):
    runner, pushed = deployed(GOOD)
    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed))
    assert (outcome.verdict, outcome.action) == ("PASS", "promoted")
    assert set(live_revisions(runner).values()) == {"r2"}
    looks = outcome.samples["phases"][0]["looks"]
    assert len(looks) == 10 and looks[-1]["verdict"] == "PASS"
    errors = looks[-1]["results"][0]
    assert errors["status"] == "TESTED" and not errors["failed"] and errors["canary_hosts"] == CANARIES


def test_a_bad_release_is_rolled_back_within_the_canary_window(web_fleet, deployed):
    runner, pushed = deployed(BAD)
    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed))
    assert (outcome.verdict, outcome.action, outcome.failed_metric) == (
        "FAIL",
        "rolled back canary",
        "errors",
    )
    assert set(live_revisions(runner).values()) == {"r1"}
    looks = outcome.samples["phases"][0]["looks"]
    assert len(looks) < 10  # decided before the window was over
    errors = looks[-1]["results"][0]
    assert errors["failed"] and errors["estimate"] > 2  # three times the errors, roughly
    assert [e["what"] for e in outcome.samples["events"]] == ["flip canary", "roll back canary"]


def test_a_release_bad_only_after_the_full_flip_is_rolled_back_by_the_monitoring(web_fleet, deployed):
    runner, pushed = deployed(GOOD)

    def break_after_full_flip(event):
        # A release that fails only under the whole fleet's traffic, simulated:
        # it turns bad the moment everyone is on it.
        if event.get("what") == "flip all":
            for host in web_fleet.hosts:
                set_behaviour(host.deploy_root, BAD)

    timing = Timing(baseline_s=4, canary_s=6, interval_s=1, monitor_s=10)
    # Errors only: the monitoring compares each host with its own baseline
    # (before/after), and this shared machine's load alone can move a 2 ms
    # latency by half between the two; errors are counted, not timed.
    errors_only = plan(web_fleet, pushed, timing=timing, metrics=METRICS[:1])
    outcome = run_under_load(web_fleet, runner, errors_only, break_after_full_flip)
    assert (outcome.phase, outcome.verdict, outcome.action) == ("monitor", "FAIL", "rolled back all")
    assert outcome.failed_metric == "errors"
    assert outcome.samples["phases"][0]["looks"][-1]["verdict"] == "PASS"
    assert outcome.samples["phases"][1]["design"] == "before_after"
    assert set(live_revisions(runner).values()) == {"r1"}


def test_a_release_that_goes_dark_after_the_full_flip_is_rolled_back(web_fleet, deployed):
    runner, pushed = deployed(GOOD)

    def go_dark(event):
        if event.get("what") == "flip all":  # every host stops answering, metrics included
            for host in web_fleet.hosts:
                web_fleet.stop_host(host.name)

    timing = Timing(baseline_s=3, canary_s=6, interval_s=1, monitor_s=4)
    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed, timing=timing), go_dark)
    assert (outcome.phase, outcome.verdict, outcome.action) == ("monitor", "INCONCLUSIVE", "rolled back all")
    assert set(live_revisions(runner).values()) == {"r1"}


def test_a_host_the_full_flip_missed_is_named_not_released_in_silence(web_fleet, deployed):
    runner, pushed = deployed(GOOD)
    missed = "web9"  # a control host: on the old release through the canary window

    def lose_its_release(event):
        if event.get("what") == "flip canary":  # its copy of r2 is gone before the full flip
            status = runner.status(Selection(names=(missed,))).hosts[0].details
            slot = next(s for s, entry in status["slots"].items() if entry.get("revision") == "r2")
            (web_fleet.host(missed).deploy_root / "releases" / slot / ".release").unlink()

    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed), lose_its_release)
    assert (outcome.verdict, outcome.action, outcome.left_behind) == ("PASS", "promoted", [missed])
    live = live_revisions(runner)
    assert live[missed] == "r1" and {r for h, r in live.items() if h != missed} == {"r2"}


def test_a_metrics_endpoint_down_on_one_host_is_reported_not_counted(web_fleet, deployed):
    runner, pushed = deployed(GOOD)
    web_fleet.stop_host("web8")  # a control host: its /metrics (and its app) stop answering
    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed))
    assert (outcome.verdict, outcome.action) == ("PASS", "promoted")
    last = outcome.samples["phases"][0]["looks"][-1]
    assert last["data"]["errors"]["control"]["web8"]["missing"] is True
    assert "unreachable" in last["data"]["errors"]["control"]["web8"]["reason"]
    assert last["results"][0]["control_missing"] == 1 and last["results"][0]["control_hosts"] == 8


def test_zero_traffic_is_inconclusive_and_the_release_does_not_go_out(web_fleet, deployed):
    runner, pushed = deployed(GOOD)
    outcome = CanaryRun(runner, plan(web_fleet, pushed)).run()  # no load generator
    assert (outcome.verdict, outcome.action) == ("INCONCLUSIVE", "rolled back canary")
    assert set(live_revisions(runner).values()) == {"r1"}
    assert outcome.samples["phases"][0]["looks"][-1]["results"][0]["status"] == "INSUFFICIENT_DATA"


def test_the_judge_through_a_real_prometheus_server(web_fleet, deployed, prometheus, tmp_path):
    runner, pushed = deployed(BAD)
    source = PrometheusQuerySource(prometheus.url, host_label="host", timeout_s=5)
    hosts = runner.inventory.hosts
    wait_until(
        lambda: all(v is not None for v, _ in source.read(hosts, ["up"]).values()),
        60,
        "Prometheus to scrape every web host",
    )
    outcome = run_under_load(web_fleet, runner, plan(web_fleet, pushed, source=source))
    assert (outcome.verdict, outcome.action, outcome.failed_metric) == (
        "FAIL",
        "rolled back canary",
        "errors",
    )
    assert set(live_revisions(runner).values()) == {"r1"}
    # The samples log replays offline to the same verdict.
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(outcome.samples))
    replayed = run_judge(samples)
    assert replayed.returncode == 1, replayed.stderr
    assert "canary: FAIL" in replayed.stdout


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_the_judge_command_refuses_a_bad_alpha(tmp_path, alpha):
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"format": SAMPLES_FORMAT, "metrics": [], "phases": []}))
    check_judge_refuses(samples, "--alpha must be in (0, 1)", "--alpha", str(alpha))


@pytest.mark.parametrize(
    "phase, message",
    [
        ({"name": "canary"}, "missing 'design'"),
        (
            {"name": "canary", "design": "diff_in_diff", "looks_in_window": "many",
             "min_hosts_per_arm": 3, "max_missing_fraction": 0.5, "looks": []},
            "invalid literal",
        ),
    ],
)  # fmt: skip
def test_the_judge_command_refuses_a_log_no_run_wrote(tmp_path, phase, message):
    samples = tmp_path / "samples.json"
    document = {"format": SAMPLES_FORMAT, "metrics": [], "phases": [phase]}
    samples.write_text(json.dumps(document))
    check_judge_refuses(samples, f"phase 0: not a phase of a canary samples log ({message}")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
        (
            json.dumps({"format": SAMPLES_FORMAT, "metrics": [{"name": "errors"}], "phases": []}).encode(),
            "metrics: not those of a canary samples log (missing 'kind')",
        ),
        (
            json.dumps({"format": SAMPLES_FORMAT, "metrics": [], "phases": [
                {"name": "canary", "design": "diff_in_diff", "looks_in_window": 1e400,
                 "min_hosts_per_arm": 3, "max_missing_fraction": 0.5, "looks": []}]}).encode(),
            "phase 0: not a phase of a canary samples log",
        ),
    ],
)  # fmt: skip
def test_the_judge_command_refuses_a_file_that_is_no_log(tmp_path, content, message):
    samples = tmp_path / "samples.json"
    samples.write_bytes(content)
    check_judge_refuses(samples, message)


def run_judge(samples, *options: str) -> subprocess.CompletedProcess:
    """`buildbot-cd judge SAMPLES [OPTIONS]`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "buildbot_steps.cli", "judge", str(samples), *options],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_judge_refuses(samples, message: str, *options: str) -> None:
    done = run_judge(samples, *options)
    # 1 would mean "this canary would be rolled back": bad input is 2, one line.
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_figures_too_large_to_combine_stop_the_judge_with_a_named_error():
    judge = make_judge(
        [{"name": "latency", "kind": "continuous", "worse": "increase"}],
        PhaseOptions("canary", "diff_in_diff", 3, 0.01, 2, 0.5),
    )
    hosts = {"canary": {f"c{i}": {"value": 1e308} for i in range(3)}}
    hosts["control"] = {f"k{i}": {"value": 1.0} for i in range(3)}
    with pytest.raises(InvalidInputError, match="the judge cannot combine the hosts' figures"):
        judged(judge, metric_looks({"latency": hosts}))
