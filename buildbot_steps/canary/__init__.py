"""Engine 3, the canary: metric sources, the judge loop, the CanaryRelease step.

metrics.py         metric configuration; raw readings -> one figure per host and window
sources.py         ScrapeSource (each host's /metrics), PrometheusQuerySource (/api/v1/query)
command_source.py  CommandSource: `name value` lines from a command run on each host
judging.py         figures -> the core's Judge; the samples log format; offline replay
controller.py      CanaryRun: baseline, canary flip, looks, full flip or rollback, monitoring
step.py            CanaryRelease for master.cfg
report.py          the HTML log: an SVG chart per metric, the table of the deciding look
cli.py             `buildbot-cd judge SAMPLES`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildbot_steps._lazy import lazy_attributes

if TYPE_CHECKING:
    from buildbot_steps.canary.command_source import CommandSource
    from buildbot_steps.canary.metrics import MetricConfig, metric_configs
    from buildbot_steps.canary.sources import PrometheusQuerySource, ScrapeSource

__all__ = ["CommandSource", "MetricConfig", "PrometheusQuerySource", "ScrapeSource", "metric_configs"]

# `buildbot-cd` imports this package to register `judge`: the sources (HTTP
# clients, prometheus_client) load when first asked for.
__getattr__ = lazy_attributes(
    __name__,
    {
        "CommandSource": "buildbot_steps.canary.command_source",
        "MetricConfig": "buildbot_steps.canary.metrics",
        "metric_configs": "buildbot_steps.canary.metrics",
        "PrometheusQuerySource": "buildbot_steps.canary.sources",
        "ScrapeSource": "buildbot_steps.canary.sources",
    },
)
