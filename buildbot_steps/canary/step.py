"""CanaryRelease: flip a few hosts, let the judge watch them, then everyone or back.

    from buildbot.plugins import steps
    factory.addStep(steps.PushRelease(inventory=hosts, source=..., ...))
    factory.addStep(steps.CanaryRelease(
        inventory=hosts, tag="canary",                     # or count=5 / fraction=0.05
        sources={"default": ScrapeSource("http://{address}:9100/metrics")},
        metrics=[{"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total",
                  "min_effect": 0.2},
                 {"name": "latency", "ratio": ["app_request_latency_seconds_sum",
                                               "app_request_latency_seconds_count"],
                  "scale": 1000, "unit": "ms", "min_effect": 0.1}],
        baseline=60, canary_window=60, interval=5, monitor=300, alpha=0.01))

Only hosts in the release_pushed_hosts property (set by PushRelease) are
flipped. The whole run (see controller.py) is in a thread; every look comes
back to the reactor with callFromThread for the live summary. Logs: `report`
(HTML: a chart per metric and the table of the deciding look), `samples.json`
(every look's figures: `buildbot-cd judge samples.json` replays them) and
`actions` (the flips and rollbacks, host by host). Properties: canary_verdict,
canary_failing_metric, canary_action, canary_phase, canary_hosts, canary_figures.
"""

from __future__ import annotations

import json

from buildbot import config
from buildbot.process import properties
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from twisted.internet import threads

from buildbot_steps import release
from buildbot_steps.canary import report
from buildbot_steps.canary.controller import (
    INCONCLUSIVE_ACTIONS,
    CanaryCancelled,
    CanaryPlan,
    CanaryRun,
    Timing,
    check_judge_options,
)
from buildbot_steps.canary.metrics import DEFAULT_SOURCE, metric_configs
from buildbot_steps.errors import CdError
from buildbot_steps.release.steps import PUSHED_HOSTS_PROPERTY, _ReleaseStep, with_build_summary

CANARY_PROPERTY_SOURCE = "CanaryRelease"
# The revision PushRelease recorded (a module-level renderable: B008).
RELEASE_REVISION = properties.Property("release_revision")
NEXT_ACTION = {"FAIL": "rolling back", "PASS": "going to every host", "INCONCLUSIVE": "not enough data"}


def describe_metric(result: dict, unit: str = "") -> str:
    """`errors +180% p=0.0004`: a count's ratio as a change, a difference with its unit."""
    if result.get("status") != "TESTED":
        return f"{result['name']} no data"
    estimate = result["estimate"]
    if result.get("kind") == "COUNT":
        change = f"{(estimate - 1) * 100:+.0f}%"
    else:
        change = f"{estimate:+.3g}{' ' + unit if unit else ''}"
    return f"{result['name']} {change} p={result['p_value']:.2g}"


def deciding_result(look: dict) -> dict | None:
    """The failing metric, else the tested one closest to failing."""
    results = look.get("results", [])
    for result in results:
        if result["name"] == look.get("failed_metric"):
            return result
    tested = [r for r in results if r.get("status") == "TESTED"]
    return min(tested, key=lambda r: r["p_value"]) if tested else (results[0] if results else None)


class CanaryRelease(_ReleaseStep):
    name = "canary_release"
    description = ["canary"]
    descriptionDone = ["canary"]
    action = "canary"

    def __init__(
        self,
        metrics=None,
        sources=None,
        baseline=60.0,
        canary_window=60.0,
        interval=5.0,
        monitor=300.0,
        alpha=0.01,
        on_inconclusive="rollback",
        min_hosts_per_arm=5,
        max_missing_fraction=0.2,
        revision=RELEASE_REVISION,
        only_pushed=True,
        **kwargs,
    ):
        self.only_pushed = only_pushed
        self.alpha = alpha
        self.on_inconclusive = on_inconclusive
        self.min_hosts_per_arm = min_hosts_per_arm
        self.max_missing_fraction = max_missing_fraction
        self.sources = sources if isinstance(sources, dict) else {DEFAULT_SOURCE: sources}
        super().__init__(revision=revision, **kwargs)
        self.metrics, self.timing = [], None
        self._guard(lambda: setattr(self, "metrics", metric_configs(metrics)))
        self._guard(lambda: setattr(self, "timing", Timing(baseline, canary_window, interval, monitor)))
        if sources is None:
            config.error("CanaryRelease: sources is required (e.g. {'default': ScrapeSource(urls)})")
        if on_inconclusive not in INCONCLUSIVE_ACTIONS:
            config.error(f"CanaryRelease: on_inconclusive must be one of {INCONCLUSIVE_ACTIONS}")
        if not (isinstance(alpha, float) and 0 < alpha < 1):
            config.error(f"CanaryRelease: alpha must be a number in (0, 1), got {alpha!r}")
        elif self._judge_option_types_ok(min_hosts_per_arm, max_missing_fraction) and self.metrics:
            self._guard(
                lambda: check_judge_options(self.metrics, alpha, min_hosts_per_arm, max_missing_fraction)
            )
        self._canary_run = None
        self._look = None  # the latest look, for the live summary
        self._outcome = None

    @staticmethod
    def _judge_option_types_ok(min_hosts_per_arm, max_missing_fraction) -> bool:
        ok = True
        if isinstance(min_hosts_per_arm, bool) or not isinstance(min_hosts_per_arm, int):
            config.error(f"CanaryRelease: min_hosts_per_arm must be an integer, got {min_hosts_per_arm!r}")
            ok = False
        if isinstance(max_missing_fraction, bool) or not isinstance(max_missing_fraction, (int, float)):
            config.error(
                f"CanaryRelease: max_missing_fraction must be a number, got {max_missing_fraction!r}"
            )
            ok = False
        return ok

    def _plan(self, runner: release.ReleaseRunner) -> CanaryPlan:
        if not self.revision:
            raise release.InvalidInput("no revision (set revision=, or run PushRelease first)")
        revision = release.check_word(self.revision, "revision")
        pushed = None
        if self.only_pushed:
            pushed = self.getProperty(PUSHED_HOSTS_PROPERTY)
            if pushed is None:
                raise release.InvalidInput(
                    f"no {PUSHED_HOSTS_PROPERTY} property: run PushRelease first, or set only_pushed=False"
                )
        eligible = [h for h in runner.inventory.hosts if pushed is None or h.name in set(pushed)]
        canary = [h.name for h in self._selection().apply(eligible)]
        if not canary:
            raise release.InvalidInput("no canary host: tag=, count= or fraction= matched no pushed host")
        if len(canary) >= len(runner.inventory.hosts):
            raise release.InvalidInput(
                "the canary selection takes every host: choose fewer (tag=, count= or fraction=) "
                "so that control hosts stay on the old release"
            )
        return CanaryPlan(
            revision,
            canary,
            self.metrics,
            self.sources,
            pushed,
            self.timing,
            self.alpha,
            self.on_inconclusive,
            self.min_hosts_per_arm,
            self.max_missing_fraction,
        )

    async def run(self):
        try:
            runner = release.ReleaseRunner(
                self._load_inventory(self.inventory), self._make_transport(), self.settings, self.slots
            )
            canary_run = CanaryRun(runner, self._plan(runner), progress=self._progress_from_run)
        except (CdError, ValueError) as error:
            return await self._refuse(f"bad configuration: {error}")
        self._canary_run = canary_run
        self.updateSummary()
        try:
            outcome = await threads.deferToThread(canary_run.run)
        except CanaryCancelled:
            await self._actions_log(canary_run.reports)
            return await self._refuse("cancelled; hosts stay as they are (see the actions log)")
        except CdError as error:
            await self._actions_log(canary_run.reports)
            return await self._refuse(str(error))
        finally:
            self._canary_run = None
        self._outcome = outcome
        await self._actions_log(outcome.reports)
        await self.addCompleteLog("samples.json", json.dumps(outcome.samples, indent=1) + "\n")
        await self.addHTMLLog("report", report.render(outcome.samples, outcome))
        self._set_canary_properties(outcome)
        if outcome.released:
            return SUCCESS if outcome.verdict == "PASS" and not outcome.left_behind else WARNINGS
        return FAILURE

    async def _actions_log(self, reports) -> None:
        """Every flip and rollback of the run, host by host: what moved, what did not."""
        await self.addCompleteLog("actions", "".join(r.to_text() for r in reports))

    def _set_canary_properties(self, outcome) -> None:
        last = report.last_look(outcome.samples, outcome.phase) or {}
        figures = {
            r["name"]: {k: r[k] for k in ("estimate", "ci_low", "ci_high", "threshold", "p_value")}
            for r in last.get("results", [])
            if r.get("status") == "TESTED"
        }
        phases = outcome.samples.get("phases", [])
        values = {
            "canary_verdict": outcome.verdict,
            "canary_failing_metric": outcome.failed_metric,
            "canary_action": outcome.action,
            "canary_phase": outcome.phase,
            "canary_hosts": phases[0]["canary_hosts"] if phases else [],
            "canary_figures": figures,
        }
        for name, value in values.items():
            self.setProperty(name, value, CANARY_PROPERTY_SOURCE)

    # -- live summary ----------------------------------------------------

    def _progress_from_run(self, event: dict) -> None:
        # Called in the run's thread: hand over to the reactor.
        self.master.reactor.callFromThread(self._on_event, event)

    def _on_event(self, event: dict) -> None:
        if event["kind"] == "look":
            self._look = event
        else:
            self._look = {**(self._look or {}), "action_now": event["what"]}
        self.updateSummary()

    def getCurrentSummary(self):
        look = self._look
        if look is None:
            return {"step": "canary: baseline"}
        if "elapsed_s" not in look:
            return {"step": f"canary: {look.get('action_now', '')}"}
        text = f"{look['phase']} {look['elapsed_s']:.0f}/{look['window_s']:.0f} s"
        result = deciding_result(look)
        if result is not None:
            text += f": {describe_metric(result, self._unit(result['name']))}"
        if look["verdict"] in NEXT_ACTION:
            text += f": {NEXT_ACTION[look['verdict']]}"
        return {"step": text}

    def _unit(self, metric: str) -> str:
        return next((m.unit for m in self.metrics if m.name == metric), "")

    def getResultSummary(self):
        message = getattr(self, "_failure_message", None)
        outcome = self._outcome
        if message:
            return with_build_summary(f"canary: {message}")
        if outcome is None:
            return super().getResultSummary()
        text = f"canary {outcome.verdict} ({outcome.phase}): {outcome.action}"
        if outcome.left_behind:
            where = (
                "still on the old release"
                if outcome.released
                else "the rollback failed, still on the new release"
            )
            text += f" ({where}: {', '.join(outcome.left_behind)})"
        last = report.last_look(outcome.samples, outcome.phase)
        result = deciding_result(last) if last else None
        if result is not None and (outcome.failed_metric or outcome.verdict != "PASS"):
            text += f"; {describe_metric(result, self._unit(result['name']))}"
        return with_build_summary(text)

    def interrupt(self, reason):
        canary_run = self._canary_run
        if canary_run is not None:
            canary_run.cancel()
        return super().interrupt(reason)
