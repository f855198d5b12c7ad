"""The canary release, start to end, in one thread: baseline, canary flip, looks,
full flip or rollback, monitoring, rollback on a regression.

    run = CanaryRun(runner, CanaryPlan(revision="abc", canary=["web1", ...], metrics=[...],
                                       sources={"default": ScrapeSource(urls)}))
    outcome = run.run()          # blocks for baseline + canary window + monitoring

The step runs it with threads.deferToThread and hears about every look
through `progress` (called in this thread). Waiting between looks is on an
Event, so `cancel()` ends a wait at once.

Phases and the judge's design for each:
  canary    each host's change from its own baseline, the canary hosts
            against the control hosts (every other host, on the old release)
            in the same window: DIFF_IN_DIFF (fixed per-host levels and the
            fleet-wide trend both cancel; the baseline is read anyway)
  monitor   after the full flip there is no control left: each flipped host
            against its own figures from the baseline window: BEFORE_AFTER
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from buildbot_steps import _core
from buildbot_steps.canary.judging import (
    PhaseOptions,
    make_judge,
    metric_looks,
    result_dict,
    samples_document,
)
from buildbot_steps.canary.metrics import MetricConfig, Reading, Timeline, host_figure
from buildbot_steps.errors import CdError, InvalidInputError
from buildbot_steps.release.inventory import ALL_HOSTS, Selection
from buildbot_steps.release.runner import ReleaseRunner, RunReport

INCONCLUSIVE_ACTIONS = ("rollback", "promote")


class CanaryCancelled(CdError):
    """The step was interrupted: the run stopped where it was."""


@dataclass(frozen=True)
class Timing:
    baseline_s: float = 60.0
    canary_s: float = 60.0
    interval_s: float = 5.0
    monitor_s: float = 300.0  # 0: no monitoring after the full flip

    def __post_init__(self):
        for name in ("baseline_s", "canary_s", "interval_s", "monitor_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"{name} must be a number of seconds, got {value!r}")
        if self.interval_s <= 0 or self.canary_s < self.interval_s:
            raise InvalidInputError(
                "the sampling interval must be positive and no longer than the canary window"
            )
        if self.baseline_s < self.interval_s or self.monitor_s < 0:
            raise InvalidInputError("the baseline window must hold at least one interval (two readings)")

    def looks(self, window_s: float) -> int:
        return max(1, round(window_s / self.interval_s))


@dataclass
class CanaryPlan:
    revision: str
    canary: list[str]  # host names to flip first
    metrics: list[MetricConfig]
    sources: dict  # source name -> an object with read(hosts, series)
    pushed: list[str] | None = None  # hosts that may be flipped (None: all)
    timing: Timing = field(default_factory=Timing)
    alpha: float = 0.01
    on_inconclusive: str = "rollback"
    min_hosts_per_arm: int = 5
    max_missing_fraction: float = 0.2

    def __post_init__(self):
        if not self.canary:
            raise InvalidInputError("no canary hosts selected")
        if self.on_inconclusive not in INCONCLUSIVE_ACTIONS:
            raise InvalidInputError(f"on_inconclusive must be one of {INCONCLUSIVE_ACTIONS}")
        unknown = sorted({m.source for m in self.metrics} - set(self.sources))
        if unknown:
            raise InvalidInputError(
                f"metric source(s) {unknown} not configured; sources: {sorted(self.sources)}"
            )
        check_judge_options(self.metrics, self.alpha, self.min_hosts_per_arm, self.max_missing_fraction)


def judged(judge: _core.Judge, looks: list) -> object:
    """The judge's look. Each figure is finite, but an arm's sum of them may
    not be (two hosts' 1e308): the statistics library's error becomes ours,
    named, and the run rolls back as after any error."""
    try:
        return judge.look(looks)
    except ValueError as error:
        if isinstance(error, CdError):
            raise
        raise InvalidInputError(f"the judge cannot combine the hosts' figures: {error}") from None


def check_judge_options(
    metrics: list, alpha: float, min_hosts_per_arm: int, max_missing_fraction: float
) -> None:
    """InvalidInputError now for options the judge refuses: found at the first
    look, they would stop the run after the canary flip."""
    options = PhaseOptions("canary", "diff_in_diff", 1, alpha, min_hosts_per_arm, max_missing_fraction)
    make_judge([m.to_dict() for m in metrics], options)


@dataclass
class Outcome:
    verdict: str  # PASS, FAIL or INCONCLUSIVE of the phase that decided
    phase: str  # canary or monitor
    action: str  # promoted, rolled back canary, rolled back all, kept
    failed_metric: str = ""
    reason: str = ""
    samples: dict = field(default_factory=dict)
    reports: list[RunReport] = field(default_factory=list)
    # Hosts the last flip or rollback failed on: still on the old release
    # after a flip, still on the new one after a rollback.
    left_behind: list[str] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self.action in ("promoted", "kept")


# progress(event): a look ({"kind": "look", ...}) or an action ({"kind": "action", ...})
Progress = Callable[[dict], None]


class CanaryRun:
    def __init__(
        self,
        runner: ReleaseRunner,
        plan: CanaryPlan,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runner = runner
        self.plan = plan
        self.progress = progress or (lambda event: None)
        self.clock = clock
        self.hosts = list(runner.inventory.hosts)
        self.timelines = {name: Timeline() for name in plan.sources}
        self.events: list[dict] = []
        self.phases: list[dict] = []
        self.reports: list[RunReport] = []
        self._started = clock()
        self._cancel = threading.Event()

    # -- the run ---------------------------------------------------------

    def run(self) -> Outcome:
        try:
            return self._run()
        except CanaryCancelled:
            raise  # the runner is cancelled too: hosts stay as they are, the step says so
        except Exception:
            # Never leave a half-released fleet behind an error: whoever is on
            # the new revision goes back, then the error is reported.
            if self.events:
                self._act(
                    "roll back all, after an error",
                    lambda: self.runner.rollback(self.plan.revision, ALL_HOSTS),
                )
            raise

    def _run(self) -> Outcome:
        plan, timing = self.plan, self.plan.timing
        baseline = self._baseline()
        flipped = self._act(
            "flip canary",
            lambda: self.runner.flip(
                plan.revision, Selection(names=tuple(plan.canary)), only_hosts=plan.pushed
            ),
        )
        canary = [h for h in plan.canary if h in flipped.ok_hosts]
        control = [h.name for h in self.hosts if h.name not in plan.canary]
        if not canary or not control:
            reason = "the canary flip failed on every canary host" if not canary else "no control hosts left"
            back = self._roll_back_canary()
            outcome = Outcome("INCONCLUSIVE", "canary", "", reason=reason)
            return self._finish(outcome, "rolled back canary", back.failed_hosts)
        verdict = self._phase("canary", "diff_in_diff", timing.canary_s, canary, control, baseline)
        decided = self._outcome(verdict, "canary")
        if self._rolls_back(verdict):
            return self._finish(decided, "rolled back canary", self._roll_back_canary().failed_hosts)
        everyone = self._act(
            "flip all", lambda: self.runner.flip(plan.revision, ALL_HOSTS, only_hosts=plan.pushed)
        )
        if timing.monitor_s <= 0 or not everyone.ok_hosts:
            return self._finish(decided, "promoted", everyone.failed_hosts)
        verdict = self._phase("monitor", "before_after", timing.monitor_s, everyone.ok_hosts, [], baseline)
        if self._rolls_back(verdict):
            back = self._act("roll back all", lambda: self.runner.rollback(plan.revision, ALL_HOSTS))
            return self._finish(self._outcome(verdict, "monitor"), "rolled back all", back.failed_hosts)
        return self._finish(self._outcome(verdict, "monitor"), "kept", everyone.failed_hosts)

    def _rolls_back(self, decided: _Decided) -> bool:
        """A regression; or, unless on_inconclusive="promote", too little data
        to pass: hosts gone dark count as much in the monitor as in the canary."""
        return decided.verdict == _core.CanaryVerdict.FAIL or (
            decided.verdict == _core.CanaryVerdict.INCONCLUSIVE and self.plan.on_inconclusive == "rollback"
        )

    def _roll_back_canary(self) -> RunReport:
        # Every canary host, not only those whose flip answered: a flip whose
        # answer was lost may have taken effect, and rollback(revision) leaves
        # a host not live on the revision as it is.
        names = tuple(self.plan.canary)
        return self._act(
            "roll back canary", lambda: self.runner.rollback(self.plan.revision, Selection(names=names))
        )

    def cancel(self) -> None:
        """Thread-safe: ends the current wait; a running flip is cancelled by the runner."""
        self._cancel.set()
        self.runner.cancel()

    def now(self) -> float:
        return self.clock() - self._started

    # -- phases ----------------------------------------------------------

    def _baseline(self) -> tuple[float, float]:
        start = self.now()
        self._sample()
        self._looks_until(start, self.plan.timing.baseline_s, lambda: None)
        return start, self.now()

    def _phase(
        self,
        name: str,
        design: str,
        window_s: float,
        canary: list[str],
        control: list[str],
        baseline: tuple[float, float],
    ):
        plan = self.plan
        options = PhaseOptions(
            name,
            design,
            plan.timing.looks(window_s),
            plan.alpha,
            plan.min_hosts_per_arm,
            plan.max_missing_fraction,
        )
        judge = make_judge([m.to_dict() for m in plan.metrics], options)
        record = {**options.to_dict(), "canary_hosts": canary, "control_hosts": control, "looks": []}
        self.phases.append(record)
        start = self.now()
        self._sample()
        last = None

        def look() -> bool:
            nonlocal last
            data = self._look_data(start, canary, control, baseline if design != "same_window" else None)
            result = result_dict(judged(judge, metric_looks(data)))
            entry = {
                "look": judge.looks,
                "t": round(self.now(), 3),
                "elapsed_s": round(self.now() - start, 3),
                "data": data,
                **result,
            }
            record["looks"].append(entry)
            last = entry
            self.progress({"kind": "look", "phase": name, "window_s": window_s, **entry})
            return judge.verdict != _core.CanaryVerdict.CONTINUE

        self._looks_until(start, options.looks_in_window * plan.timing.interval_s, look)
        return _Decided(
            getattr(_core.CanaryVerdict, last["verdict"]) if last else _core.CanaryVerdict.INCONCLUSIVE, last
        )

    def _looks_until(self, start: float, window_s: float, look: Callable[[], bool | None]) -> None:
        """Sample every interval from `start`, call `look` after each, until it says
        done or the window is over."""
        interval = self.plan.timing.interval_s
        for index in range(1, max(1, round(window_s / interval)) + 1):
            if self._cancel.wait(max(0.0, start + index * interval - self.now())):
                raise CanaryCancelled("canary cancelled")
            self._sample()
            if look():
                return

    # -- readings and figures --------------------------------------------

    def _sample(self) -> None:
        for source_name, source in self.plan.sources.items():
            series = {s for m in self.plan.metrics if m.source == source_name for s in m.series}
            t = self.now()
            answers = source.read(self.hosts, series)
            for host in self.hosts:
                values, reason = answers.get(host.name, (None, "no answer from the source"))
                self.timelines[source_name].add(host.name, Reading(t, values, reason))

    def _look_data(
        self, start: float, canary: list[str], control: list[str], baseline: tuple[float, float] | None
    ) -> dict:
        end = self.now()
        data = {}
        for metric in self.plan.metrics:
            arms = {"canary": canary, "control": control}
            data[metric.name] = {
                arm: {host: self._host_entry(metric, host, start, end, baseline) for host in hosts}
                for arm, hosts in arms.items()
            }
        return data

    def _host_entry(
        self, metric: MetricConfig, host: str, start: float, end: float, baseline: tuple[float, float] | None
    ) -> dict:
        """One host's figures for the judge: the window's, plus its baseline's when the design wants it."""
        timeline = self.timelines[metric.source]
        figure = host_figure(metric, timeline.window(host, start, end))
        entry = figure.to_dict(metric.is_count)
        if baseline is None or figure.missing:
            return entry
        before = host_figure(metric, timeline.window(host, *baseline))
        if before.missing:
            return {"missing": True, "reason": f"baseline: {before.reason}"}
        entry.update({f"baseline_{k}": v for k, v in before.to_dict(metric.is_count).items()})
        return entry

    # -- actions and the end ---------------------------------------------

    def _act(self, what: str, action: Callable[[], RunReport]) -> RunReport:
        report = action()
        self.reports.append(report)
        event = {
            "t": round(self.now(), 3),
            "what": what,
            "hosts": report.ok_hosts,
            "failed": report.failed_hosts,
        }
        self.events.append(event)
        self.progress({"kind": "action", **event})
        return report

    @staticmethod
    def _outcome(decided, phase: str) -> Outcome:
        last = decided.last or {}
        return Outcome(decided.verdict.name, phase, "", last.get("failed_metric", ""), last.get("reason", ""))

    def _finish(self, outcome: Outcome, action: str, left_behind: list[str]) -> Outcome:
        outcome.action = action
        outcome.left_behind = list(left_behind)
        outcome.reports = self.reports
        outcome.samples = samples_document(
            self.plan.revision, self.plan.alpha, self.plan.metrics, self.events, self.phases
        )
        return outcome


@dataclass
class _Decided:
    verdict: object  # _core.CanaryVerdict
    last: dict | None
