"""TestHistory through Buildbot's real database layer: what a build stores, the next reads.

A master on a SQLite file (tests/harness/history_db.py: Buildbot's DBConnector,
DataConnector and schema); the durations are packed into a few rows, and the
sets of earlier builds that kept one row per test are still read.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile

from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_steps._core import Verdict
from buildbot_steps.shard import history as shard_history  # its TestHistory is no test class
from harness.history_db import BUILDER_ID, Attempt, HistoryDb, Outcome

DESCRIPTION = "sharded tests"
TESTS = 3000  # more than one packed row and more than one of Buildbot's 3,000-row batches
VERDICTS = [Verdict.passed] * 20 + [Verdict.failed, Verdict.flaky, Verdict.skipped]


def outcomes_of(build: int) -> list[Outcome]:
    rng = random.Random(build)
    return [
        Outcome(
            f"tests/test_mod{i // 100}.py::TestC::test_{i}",
            rng.choice(VERDICTS),
            [Attempt(round(rng.uniform(0.001, 5.0), 6))],  # many over PostgreSQL's 2.147 s
        )
        for i in range(TESTS)
    ]


class HistoryRoundTripTests(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        root = tempfile.mkdtemp(prefix="history-db-test-")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        url = f"sqlite:///{root}/state.sqlite"
        self.db = yield defer.ensureDeferred(HistoryDb.start(url, f"{root}/master", test=self))
        self.addCleanup(lambda: defer.ensureDeferred(self.db.stop()))

    async def store(self, outcomes: list[Outcome], overhead: dict[str, float] | None = None) -> int:
        step = await self.db.new_step()
        await shard_history.TestHistory(step, DESCRIPTION).store(outcomes, overhead)
        await self.db.finish_step(step)
        return step.build.buildid

    async def read(self):
        return await shard_history.TestHistory(await self.db.new_step(), DESCRIPTION).read(BUILDER_ID)

    @defer.inlineCallbacks
    def test_durations_flakes_and_overhead_come_back_as_written(self):
        builds = [outcomes_of(1), outcomes_of(2)]
        for outcomes in builds:
            yield defer.ensureDeferred(self.store(outcomes, {"w1#1": 2.0, "w2#1": 3.0, "w3#1": 40.0}))
        reading = yield defer.ensureDeferred(self.read())

        expected = [{o.id: o.attempts[-1].seconds for o in outcomes} for outcomes in builds]
        self.assertEqual(reading.durations, expected)
        flaky = [o.id for outcomes in builds for o in outcomes if o.verdict == Verdict.flaky]
        self.assertEqual(reading.flake_record, {t: flaky.count(t) for t in flaky})
        self.assertEqual(reading.batch_overhead_s, 3.0)

    @defer.inlineCallbacks
    def test_the_durations_are_a_few_rows_and_the_outcomes_one_per_test(self):
        outcomes = outcomes_of(1)
        buildid = yield defer.ensureDeferred(self.store(outcomes))
        data = self.db.master.data
        sets = yield data.get(("builds", buildid, "test_result_sets"))
        by_description = {s["description"]: s for s in sets}

        durations = by_description[f"{DESCRIPTION} durations"]
        rows = yield data.get(("test_result_sets", durations["test_result_setid"], "results"))
        self.assertTrue(1 < len(rows) < TESTS / 50, len(rows))
        self.assertTrue(all(len(r["value"].encode()) <= shard_history.PACKED_ROW_BYTES for r in rows))

        passed = sum(o.verdict in (Verdict.passed, Verdict.flaky) for o in outcomes)
        failed = sum(o.verdict == Verdict.failed for o in outcomes)
        pass_fail = by_description[DESCRIPTION]
        self.assertEqual((pass_fail["tests_passed"], pass_fail["tests_failed"]), (passed, failed))

    @defer.inlineCallbacks
    def test_an_earlier_build_with_one_row_per_test_is_still_read(self):
        step = yield defer.ensureDeferred(self.db.new_step())
        old_set = yield step.addTestResultSet(f"{DESCRIPTION} durations", "performance", "s")
        step.addTestResult(old_set, "2.513402", test_name="t.py::old")
        yield defer.ensureDeferred(self.db.finish_step(step))
        yield defer.ensureDeferred(self.store([Outcome("t.py::new", Verdict.passed, [Attempt(0.25)])]))

        reading = yield defer.ensureDeferred(self.read())
        self.assertEqual(reading.durations, [{"t.py::old": 2.513402}, {"t.py::new": 0.25}])


def test_a_test_id_longer_than_a_row_gets_a_row_of_its_own():
    long_id = "t.py::test_" + "x" * shard_history.PACKED_ROW_BYTES
    rows = shard_history.pack_durations({"a.py::t": 1.0, long_id: 2.0, "z.py::t": 3.0})
    assert [json.loads(row) for row in rows] == [{"a.py::t": 1.0}, {long_id: 2.0}, {"z.py::t": 3.0}]
