"""The shard builds of one `ShardedTest` run, on the shard builder's Triggerable scheduler.

Finding that scheduler on the master, counting the workers of its builders
(the default shard count, and the cap on a forced one), triggering one build
per shard and waiting for them all, linking each request and finished build
from the step, and cancelling the requests when the parent is interrupted.
The step itself (parent_step.py) decides what runs; this module only deals
with Buildbot's scheduler, build requests and builds.
"""

from __future__ import annotations

from buildbot.interfaces import ITriggerableScheduler
from buildbot.process.buildstep import BuildStep
from buildbot.process.properties import Properties
from buildbot.process.results import statusToString
from buildbot.reporters.utils import getURLForBuild, getURLForBuildrequest
from buildbot.schedulers.triggerable import Triggerable
from twisted.internet import defer

from buildbot_steps.shard.commands import ShardedTestError

# Without max_shards, a build may ask for at most this many shards per shard
# worker: a few more shards than workers still balance (each worker runs a
# few in turn), while a typo or a hostile force form (shards=300, or 10**9)
# must not flood the master with build requests.
SHARDS_PER_WORKER_CAP = 4

# No configuration may allow more: every shard is a build request, a build and
# a row in the database, all held by one master.
ABSOLUTE_MAX_SHARDS = 1024


class ShardBuilds:
    """The shard builds that `step` triggers on the Triggerable named `scheduler_name`."""

    def __init__(self, step: BuildStep, scheduler_name: str) -> None:
        self._step = step
        self._scheduler_name = scheduler_name
        self._brids: list[int] = []
        self._cancelled = False
        self.scheduler = self._find_scheduler()

    def _find_scheduler(self) -> Triggerable:
        schedulers = self._step.master.scheduler_manager.namedServices
        scheduler = schedulers.get(self._scheduler_name)
        if scheduler is None or not ITriggerableScheduler.providedBy(scheduler):
            raise ShardedTestError(
                f"shard_scheduler {self._scheduler_name!r} is not a Triggerable scheduler of this master"
            )
        return scheduler

    def worker_count(self) -> int:
        """The distinct workers of the scheduler's shard builders: one shard each by default."""
        names = set()
        for builder_name in self.scheduler.builderNames:
            builder = self._step.master.botmaster.builders.get(builder_name)
            if builder is not None and builder.config is not None:
                names.update(builder.config.workernames)
        if not names:
            raise ShardedTestError(f"the shard builders of {self._scheduler_name!r} list no workers")
        return len(names)

    def capped_shard_count(self, requested: int | None, max_shards: int | None) -> int | None:
        """The shards asked for, refused above the cap (before anything runs); None: one per worker."""
        if requested is None:
            return None
        if max_shards is not None:
            cap, why = max_shards, "max_shards"
        else:
            workers = self.worker_count()
            cap = min(SHARDS_PER_WORKER_CAP * workers, ABSOLUTE_MAX_SHARDS)
            why = f"{SHARDS_PER_WORKER_CAP} per shard worker, {workers} workers"
        if requested > cap:
            raise ShardedTestError(
                f"refusing {requested} shards: at most {cap} ({why}); ask for fewer shards, "
                "or raise max_shards in the ShardedTest step"
            )
        return requested

    async def run(self, shard_properties: list[Properties]) -> None:
        """Triggers one shard build per entry (its properties) and waits until all have finished."""
        step = self._step
        sourcestamps = [ss.asDict() for ss in step.build.getAllSourceStamps()]
        waiting = []
        for index, properties in enumerate(shard_properties):
            if self._cancelled:  # the parent was stopped: trigger no more
                break
            ids, finished = self.scheduler.trigger(
                waited_for=True,
                sourcestamps=sourcestamps,
                set_props=properties,
                parent_buildid=step.build.buildid,
                parent_relationship="shard of",
            )
            _, brids = await ids
            for brid in brids.values():
                self._brids.append(brid)
                if self._cancelled:  # stopped while this one was being triggered
                    self._cancel_request(brid)
                await step.addURL(f"shard {index} (request {brid})", getURLForBuildrequest(step.master, brid))
            waiting.append(finished)
        await defer.DeferredList(waiting, consumeErrors=True)
        await self._link_finished_builds()

    async def _link_finished_builds(self) -> None:
        """One link per finished shard build, as Buildbot's Trigger step adds.

        The web UI counts a request without a build link as a pending build:
        without these, a finished step would still read "N pending builds".
        """
        master = self._step.master
        for brid in self._brids:
            builds = await master.db.builds.getBuilds(buildrequestid=brid)
            for build in builds:
                label = f"{statusToString(build.results)}: shard build #{build.number}"
                await self._step.addURL(label, getURLForBuild(master, build.builderid, build.number))

    def cancel(self) -> None:
        """Cancels every shard request triggered so far (those already finished
        ignore it), and any that run() triggers after this."""
        self._cancelled = True
        for brid in self._brids:
            self._cancel_request(brid)

    def _cancel_request(self, brid: int) -> None:
        self._step.master.data.control(
            "cancel", {"reason": "parent build was interrupted"}, ("buildrequests", brid)
        )
