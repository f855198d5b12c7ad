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

from buildbot_steps.canary.command_source import CommandSource
from buildbot_steps.canary.metrics import MetricConfig, metric_configs
from buildbot_steps.canary.sources import PrometheusQuerySource, ScrapeSource

__all__ = ["CommandSource", "MetricConfig", "PrometheusQuerySource", "ScrapeSource", "metric_configs"]
