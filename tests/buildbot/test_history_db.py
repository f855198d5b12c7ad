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

import pytest
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_steps._core import Verdict
from buildbot_steps.shard import history as shard_history  # its TestHistory is no test class
from buildbot_steps.shard import result_rows
from buildbot_steps.shard.result_rows import ResultRow
from harness.history_db import BUILDER_ID, Attempt, HistoryDb, Outcome

DESCRIPTION = "sharded tests"
OTHER_BUILDER = 2
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


class SqliteHistoryDbCase(TestReactorMixin, unittest.TestCase):
    """A HistoryDb per test, on a SQLite file in a temporary directory."""

    def db_url(self, root: str) -> str:
        return f"sqlite:///{root}/state.sqlite"

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        root = tempfile.mkdtemp(prefix="history-db-test-")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        url = self.db_url(root)
        self.db = yield defer.ensureDeferred(HistoryDb.start(url, f"{root}/master", test=self))
        self.addCleanup(lambda: defer.ensureDeferred(self.db.stop()))


class HistoryRoundTripTests(SqliteHistoryDbCase):
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
    def test_builds_that_timed_no_test_take_no_place_among_the_recent_runs(self):
        timed = [[Outcome("t.py::slow", Verdict.passed, [Attempt(float(n))])] for n in range(10, 13)]
        for outcomes in timed:
            yield defer.ensureDeferred(self.store(outcomes))
        for _ in range(shard_history.HISTORY_BUILDS):  # e.g. their shards never ran: nothing timed
            yield defer.ensureDeferred(
                self.store([Outcome("t.py::slow", Verdict.failed, [Attempt(0.0, False)])])
            )
        reading = yield defer.ensureDeferred(self.read())
        self.assertEqual(
            reading.durations, [{"t.py::slow": 10.0}, {"t.py::slow": 11.0}, {"t.py::slow": 12.0}]
        )

    @defer.inlineCallbacks
    def test_an_id_too_long_for_the_names_index_keeps_its_duration(self):
        long_id = "t.py::test[" + "x" * 3000 + "]"
        buildid = yield defer.ensureDeferred(
            self.store(
                [
                    Outcome(long_id, Verdict.passed, [Attempt(1.5)]),
                    Outcome("t.py::ok", Verdict.passed, [Attempt(2.0)]),
                ]
            )
        )
        reading = yield defer.ensureDeferred(self.read())
        self.assertEqual(reading.durations, [{long_id: 1.5, "t.py::ok": 2.0}])
        sets = yield self.db.master.data.get(("builds", buildid, "test_result_sets"))
        (pass_fail,) = [s for s in sets if s["description"] == DESCRIPTION]
        self.assertEqual((pass_fail["tests_passed"], pass_fail["complete"]), (1, True))

    @defer.inlineCallbacks
    def test_an_earlier_build_with_one_row_per_test_is_still_read(self):
        step = yield defer.ensureDeferred(self.db.new_step())
        old_set = yield step.addTestResultSet(f"{DESCRIPTION} durations", "performance", "s")
        step.addTestResult(old_set, "2.513402", test_name="t.py::old")
        yield defer.ensureDeferred(self.db.finish_step(step))
        yield defer.ensureDeferred(self.store([Outcome("t.py::new", Verdict.passed, [Attempt(0.25)])]))

        reading = yield defer.ensureDeferred(self.read())
        self.assertEqual(reading.durations, [{"t.py::old": 2.513402}, {"t.py::new": 0.25}])


def test_a_test_without_a_reported_time_is_no_duration_to_learn_from():
    # A hang or a crash fails the batch as a whole: its tests' attempts carry 0 s, not their time.
    hangs = Outcome("t.py::hangs", Verdict.failed, [Attempt(0.0, timed=False), Attempt(0.0, timed=False)])
    flaky = Outcome("t.py::flaky", Verdict.flaky, [Attempt(0.0, timed=False), Attempt(1.5)])
    late = Outcome("t.py::late", Verdict.failed, [Attempt(2.0), Attempt(0.0, timed=False)])
    pass_fail, _, durations = shard_history.rows_of([hangs, flaky, late])
    assert durations == {"t.py::flaky": 1.5, "t.py::late": 2.0}
    assert [(row.test_name, row.duration_ns) for row in pass_fail] == [
        ("t.py::hangs", None), ("t.py::flaky", 1_500_000_000), ("t.py::late", 2_000_000_000),
    ]  # fmt: skip


def pass_fail_rows(build: int, tests: int = TESTS) -> list[ResultRow]:
    return shard_history.rows_of(outcomes_of(build)[:tests])[0]


# What a result set and its rows are, whichever path wrote them: no ids, no description.
SET_FIELDS = ("builderid", "category", "value_unit", "tests_passed", "tests_failed", "complete")
ROW_FIELDS = ("builderid", "test_name", "test_code_path", "line", "duration_ns", "value")


class PassFailRowsSqliteTests(SqliteHistoryDbCase):
    """result_rows' executemany writes what Buildbot's addTestResult path writes, read back through
    Buildbot's data API."""

    rows_go_by_copy = False  # PostgreSQL's COPY, or the portable executemany

    async def fast_write(self, description: str, rows: list[ResultRow]) -> int:
        step = await self.db.new_step()
        setid = await result_rows.store_pass_fail_set(step, description, rows)
        await self.db.finish_step(step)
        return setid

    async def buildbot_write(self, description: str, rows: list[ResultRow]) -> int:
        step = await self.db.new_step()
        setid = await step.addTestResultSet(description, "pass_fail", "boolean")
        for row in rows:
            step.addTestResult(setid, row.value, test_name=row.test_name, duration_ns=row.duration_ns)
        await self.db.finish_step(step)
        return setid

    async def written(self, setid: int) -> tuple[dict, list[dict]]:
        data = self.db.master.data
        result_set = await data.get(("test_result_sets", setid))
        rows = await data.get(("test_result_sets", setid, "results"))
        rows = sorted(rows, key=lambda r: r["test_name"])
        return {f: result_set[f] for f in SET_FIELDS}, [{f: r[f] for f in ROW_FIELDS} for r in rows]

    @defer.inlineCallbacks
    def test_the_executemany_writes_what_buildbot_writes(self):
        self.patch(result_rows, "ROWS_PER_EXECUTE", 1000)  # several chunks of TESTS rows
        rows = pass_fail_rows(1)
        fast = yield defer.ensureDeferred(self.fast_write("fast", rows))  # the names are new
        slow = yield defer.ensureDeferred(self.buildbot_write("buildbot", rows))
        fast_set, fast_rows = yield defer.ensureDeferred(self.written(fast))
        slow_set, slow_rows = yield defer.ensureDeferred(self.written(slow))

        self.assertEqual(fast_set, slow_set)
        self.assertEqual(fast_rows, slow_rows)
        expected = sorted((r.test_name, r.value, r.duration_ns) for r in rows)
        self.assertEqual([(r["test_name"], r["value"], r["duration_ns"]) for r in fast_rows], expected)
        passed = sum(r.value == "1" for r in rows)
        self.assertEqual(
            (fast_set["tests_passed"], fast_set["tests_failed"], fast_set["complete"]),
            (passed, len(rows) - passed, True),
        )

    @defer.inlineCallbacks
    def test_known_and_new_test_names_get_their_own_ids(self):
        yield defer.ensureDeferred(self.fast_write("first", pass_fail_rows(1, tests=100)))
        rows = pass_fail_rows(2, tests=200)  # the first 100 names known, the next 100 new
        setid = yield defer.ensureDeferred(self.fast_write("second", rows))
        _, written = yield defer.ensureDeferred(self.written(setid))
        self.assertEqual(
            [(r["test_name"], r["value"]) for r in written], sorted((r.test_name, r.value) for r in rows)
        )

    @defer.inlineCallbacks
    def test_buildbots_add_names_gives_the_ids_of_known_and_new_names(self):
        """Pins the contract result_rows relies on in Buildbot's private `_add_names` (4.3): a set
        of names in, {name: id} out for all of them, known names keeping their id."""
        add_names = self.db.master.db.test_results._add_names
        first = yield add_names(BUILDER_ID, {"a.py::t", "b.py::t"})
        second = yield add_names(BUILDER_ID, {"b.py::t", "c.py::t"})
        self.assertEqual(set(first), {"a.py::t", "b.py::t"})
        self.assertEqual(set(second), {"b.py::t", "c.py::t"})
        self.assertEqual(second["b.py::t"], first["b.py::t"])
        self.assertEqual(len({*first.values(), *second.values()}), 3)
        names = yield self.db.master.db.test_results.getTestNames(BUILDER_ID)
        self.assertEqual(sorted(names), ["a.py::t", "b.py::t", "c.py::t"])

    @defer.inlineCallbacks
    def test_a_big_suites_names_are_read_at_once_and_keep_their_ids(self):
        self.patch(result_rows, "READ_ALL_NAMES_FROM", 50)  # 100 and 200 names: the one-read path
        add_names = self.db.master.db.test_results._add_names
        yield defer.ensureDeferred(self.db.add_builder(OTHER_BUILDER, "other"))
        first = pass_fail_rows(1, tests=100)
        yield defer.ensureDeferred(self.fast_write("first", first))
        # The same names on another builder, newer rows: ids that must not be taken for this one.
        yield add_names(OTHER_BUILDER, {r.test_name for r in first})
        rows = pass_fail_rows(2, tests=200)  # the first 100 names known, the next 100 new
        names = {r.test_name for r in rows}
        setid = yield defer.ensureDeferred(self.fast_write("second", rows))

        _, written = yield defer.ensureDeferred(self.written(setid))
        self.assertEqual(
            [(r["test_name"], r["value"]) for r in written], sorted((r.test_name, r.value) for r in rows)
        )
        builder_names = yield self.db.master.db.test_results.getTestNames(BUILDER_ID)
        # Each name once: the two builds' names (a test skipped in one has no row there).
        self.assertEqual(sorted(builder_names), sorted(names | {r.test_name for r in first}))
        step = yield defer.ensureDeferred(self.db.new_step())
        read_at_once = yield defer.ensureDeferred(result_rows.resolve_test_name_ids(step, BUILDER_ID, names))
        self.assertEqual(read_at_once, (yield add_names(BUILDER_ID, names)))  # Buildbot's own ids

    @defer.inlineCallbacks
    def test_known_names_read_at_once_do_not_go_through_buildbots_lookup(self):
        self.patch(result_rows, "READ_ALL_NAMES_FROM", 50)
        rows = pass_fail_rows(1, tests=100)
        yield defer.ensureDeferred(self.fast_write("first", rows))
        asked: list[set[str]] = []
        real_add_names = self.db.master.db.test_results._add_names

        def add_names(builderid: int, names: set[str]):
            asked.append(names)
            return real_add_names(builderid, names)

        self.patch(self.db.master.db.test_results, "_add_names", add_names)
        yield defer.ensureDeferred(self.fast_write("again", rows))
        yield defer.ensureDeferred(self.fast_write("one more", rows + [ResultRow("new.py::t", "1", 5)]))
        self.assertEqual(asked, [{"new.py::t"}])

    @defer.inlineCallbacks
    def test_the_rows_insert_writes_values_nulls_and_escapes_as_given(self):
        """What _insert_rows is handed comes back, whichever way it writes (COPY's text format
        escapes backslashes, tabs and line ends, and spells NULL \\N)."""
        step = yield defer.ensureDeferred(self.db.new_step())
        setid = yield step.addTestResultSet("odd values", "pass_fail", "boolean")
        names = ["a.py::t", "b.py::t", "c.py::t", "d.py::t"]
        ids = yield self.db.master.db.test_results._add_names(BUILDER_ID, set(names))
        odd = {"a.py::t": ("tab\there", 7), "b.py::t": ("back\\slash\\N", None)}
        odd |= {"c.py::t": ("line\nend\r", 0), "d.py::t": ("\\N", 2**31 - 1)}
        values = [(BUILDER_ID, setid, ids[n], None, None, odd[n][1], odd[n][0]) for n in names]
        db = self.db.master.db
        yield db.pool.do_with_transaction(result_rows._insert_rows, db.model.test_results, values)

        _, written = yield defer.ensureDeferred(self.written(setid))
        self.assertEqual(
            [(r["test_name"], r["value"], r["duration_ns"]) for r in written], [(n, *odd[n]) for n in names]
        )
        self.assertEqual({(r["line"], r["test_code_path"]) for r in written}, {(None, None)})

    @defer.inlineCallbacks
    def test_the_rows_go_by_copy_exactly_where_expected(self):
        copies = []
        real_copy = result_rows.copy_into_postgresql

        def copy(conn, table, values):
            copies.append(len(values))
            real_copy(conn, table, values)

        self.patch(result_rows, "copy_into_postgresql", copy)
        self.patch(result_rows, "ROWS_PER_EXECUTE", 100)
        rows = pass_fail_rows(1, tests=250)
        setid = yield defer.ensureDeferred(self.fast_write("fast", rows))
        _, written = yield defer.ensureDeferred(self.written(setid))
        self.assertEqual(len(written), len(rows))
        expected_copies = [100, 100, len(rows) - 200] if self.rows_go_by_copy else []
        self.assertEqual(copies, expected_copies)


class PassFailRowsPostgresTests(PassFailRowsSqliteTests):
    """The same on Debian's PostgreSQL (RETURNING for the names, COPY for the rows)."""

    rows_go_by_copy = True

    @pytest.fixture(autouse=True)
    def _postgres(self, postgres_url):
        self._postgres_url = postgres_url

    def db_url(self, root: str) -> str:
        return self._postgres_url


class PassFailRowsPostgresExecutemanyTests(PassFailRowsPostgresTests):
    """The portable executemany on PostgreSQL too: what another driver (psycopg 3, asyncpg) takes."""

    rows_go_by_copy = False

    def setUp(self):
        self.patch(result_rows, "uses_postgresql_copy", lambda conn: False)
        return super().setUp()


def test_a_test_id_longer_than_a_row_gets_a_row_of_its_own():
    long_id = "t.py::test_" + "x" * shard_history.PACKED_ROW_BYTES
    rows = shard_history.pack_durations({"a.py::t": 1.0, long_id: 2.0, "z.py::t": 3.0})
    assert [json.loads(row) for row in rows] == [{"a.py::t": 1.0}, {long_id: 2.0}, {"z.py::t": 3.0}]
