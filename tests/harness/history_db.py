"""An in-process Buildbot master on a real database, for TestHistory's reads and writes.

`HistoryDb` holds Buildbot's own parts, not stand-ins: the real `DBConnector`
(SQLAlchemy, its thread pool, the schema upgraded by Buildbot) on a SQLite
file or a PostgreSQL URL, the real `DataConnector` (the `/test_result_sets`
endpoints and update methods that TestHistory calls) and the real `SimpleMQ`
a single master runs. Only the master object itself comes from Buildbot's
test harness (`fakemaster.make_master`), and the rows a build's test results
point at (builder, build request, build, step) are inserted with Buildbot's
`fakedb` rows, since no scheduler runs here.

`new_step()` gives a real `BuildStep` wired to a fresh build; `finish_step()`
flushes its test results exactly as `BuildStep.run` does when a step ends:
`addTestResult` only queues rows, the database work happens at the flush.
"""

from __future__ import annotations

import unittest
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

from buildbot.data.connector import DataConnector
from buildbot.mq.simple import SimpleMQ
from buildbot.process.buildstep import BuildStep, create_step_from_step_or_factory
from twisted.internet import defer

from buildbot_steps._core import Verdict

# Importing buildbot.test turns every warning into an error (for Buildbot's own
# trial runs); keep the filters of the process that imports this harness.
with warnings.catch_warnings():
    from buildbot.test import fakedb
    from buildbot.test.fake import fakemaster
    from buildbot.test.reactor import TestReactorMixin

BUILDER_ID = 1
MASTER_ID = fakedb.FakeDBConnector.MASTER_ID  # the id FakeMaster reports as its own
WORKER_ID = 1


class Attempt(NamedTuple):
    seconds: float
    timed: bool = True


class Outcome(NamedTuple):
    """What TestHistory.store reads of a _core.TestOutcome (which Python cannot construct)."""

    id: str
    verdict: Verdict
    attempts: list[Attempt]


class _TestCase(unittest.TestCase):
    """What make_master needs of a test case: a place for cleanups (unused here)."""

    def runTest(self) -> None:  # unittest needs a method to name; nothing runs it
        pass


@dataclass
class HistoryDb:
    master: fakemaster.FakeMaster
    _builds: int = 0

    @classmethod
    async def start(cls, db_url: str, basedir: str, test: TestReactorMixin | None = None) -> HistoryDb:
        """A master on `db_url` (an empty database: Buildbot creates its schema). With `test`
        (a trial test after setup_test_reactor), on its test reactor, where the database
        work runs synchronously; without, on the real reactor and Buildbot's thread pool."""
        master = await fakemaster.make_master(
            test or _TestCase(),
            wantDb=True,
            wantRealReactor=test is None,
            db_url=db_url,
            basedir=basedir,
            auto_shutdown=False,
        )
        master.mq = SimpleMQ()
        await master.mq.setServiceParent(master)
        master.data = DataConnector()
        await master.data.setServiceParent(master)
        await master.db.insert_test_data(
            [
                fakedb.Master(id=MASTER_ID, name="history-bench"),
                fakedb.Builder(id=BUILDER_ID, name="tests"),
                fakedb.Worker(id=WORKER_ID, name="worker"),
            ]
        )
        return cls(master)

    async def stop(self) -> None:
        """Closes the database; removes `basedir` (make_master's shutdown does)."""
        await self.master.test_shutdown()

    async def add_builder(self, builderid: int, name: str) -> None:
        await self.master.db.insert_test_data([fakedb.Builder(id=builderid, name=name)])

    async def new_step(self) -> BuildStep:
        """A BuildStep of a new build of the builder, as far as its test results need one."""
        self._builds += 1
        n = self._builds
        await self.master.db.insert_test_data(
            [
                fakedb.Buildset(id=n),
                fakedb.BuildRequest(id=n, buildsetid=n, builderid=BUILDER_ID),
                fakedb.Build(
                    id=n,
                    number=n,
                    buildrequestid=n,
                    builderid=BUILDER_ID,
                    workerid=WORKER_ID,
                    masterid=MASTER_ID,
                ),
                fakedb.Step(id=n, buildid=n, number=0, name="sharded-tests"),
            ]
        )
        step = create_step_from_step_or_factory(BuildStep(name="sharded-tests"))
        step.master = self.master
        step.stepid = n
        step.build = SimpleNamespace(buildid=n, getBuilderId=lambda: defer.succeed(BUILDER_ID))
        return step

    @staticmethod
    async def finish_step(step: BuildStep) -> None:
        """What BuildStep.run does with the step's test results when the step ends."""
        for submitter in step._test_result_submitters.values():
            await submitter.finish()
