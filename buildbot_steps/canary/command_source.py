"""Metric readings from a command run on each host, for hosts with no exporter.

The command (an argument vector; {deploy_root} and {name} are replaced by the
host's own) runs over the release engine's transport and fan-out, and prints
one `name value` line per series, e.g.

    load1 0.42
    errors_total 17

Lines that are not `name value` are ignored; a value that is not a finite
number, or a host whose command fails or times out, makes that host missing
with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from buildbot_steps.canary.sources import HostValues
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.release.inventory import Host, Inventory, Selection
from buildbot_steps.release.runner import FanoutSettings, ReleaseRunner
from buildbot_steps.release.transports import host_words

# A probe is quick (cat /proc/loadavg, grep -c on a log); a host slower than
# this is not answering.
DEFAULT_TIMEOUT_S = 10.0
LINE = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:.-]*)\s+(\S+)\s*$")


def parse_lines(text: str, wanted: set[str]) -> HostValues:
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match is None or match.group(1) not in wanted:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            return None, f"{match.group(1)}: {match.group(2)!r} is not a number"
        if not math.isfinite(value):
            return None, f"{match.group(1)} is {value}"
        values[match.group(1)] = value
    return values, ""


class CommandSource:
    def __init__(
        self, argv: list[str], transport=None, timeout_s: float = DEFAULT_TIMEOUT_S, concurrency: int = 32
    ):
        host_words(Host("check", "check", 22, "root", "/"), argv)  # refuses a bad argv now
        if not timeout_s > 0:
            raise InvalidInputError(f"command source: timeout must be positive, got {timeout_s!r}")
        self.argv = list(argv)
        self.transport = transport
        # One try per reading: a retry would land in the next interval anyway.
        self.settings = FanoutSettings(concurrency=concurrency, host_timeout_s=timeout_s, max_retries=0)

    def read(self, hosts: Iterable[Host], series: Iterable[str]) -> dict[str, HostValues]:
        hosts = list(hosts)
        runner = ReleaseRunner(Inventory(tuple(hosts)), self.transport, self.settings)
        report = runner.run_command(self.argv, Selection(names=tuple(h.name for h in hosts)))
        wanted = set(series)
        answers: dict[str, HostValues] = {}
        for host_report in report.hosts:
            if host_report.ok:
                answers[host_report.host] = parse_lines(host_report.details.get("stdout", ""), wanted)
            else:
                answers[host_report.host] = (None, f"command {host_report.status}: {host_report.error}")
        return answers
