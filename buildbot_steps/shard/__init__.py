"""Engine 1, test sharding: the suite split over many Buildbot workers.

parent_step.py    ShardedTest: lists, plans, runs the shard builds, gates the build
shard_builds.py   the shard builds: Triggerable, worker count and shard cap, trigger, links
results.py        the parent's plan log, figures, gating verdict and failures log
shard_step.py     RunShard (in each shard build) and shard_builder_config for master.cfg
session.py        what the parent and its shards share: batch sources, timeline
commands.py       test command templates, collect-only listings, shard properties
history.py        durations and flakes in Buildbot's own test-result tables
junit.py          reading the runner's JUnit XML (untrusted input)
report.py         the HTML report with its SVG timeline
planning.py       duration files, plans and virtual-clock simulation outside Buildbot
cli.py            `buildbot-cd plan | simulate`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildbot_steps.shard.parent_step import ShardedTest
    from buildbot_steps.shard.shard_step import RunShard, shard_builder_config

__all__ = ["RunShard", "ShardedTest", "shard_builder_config"]

# The steps are imported when first asked for (PEP 562): `buildbot-cd plan`
# imports this package for planning alone, and loading Buildbot and Twisted
# would cost it about a second.
_MODULE_OF = {
    "ShardedTest": "buildbot_steps.shard.parent_step",
    "RunShard": "buildbot_steps.shard.shard_step",
    "shard_builder_config": "buildbot_steps.shard.shard_step",
}


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
