"""A pass_fail test-result set of one row per test, written in one executemany.

Buildbot's own path (BuildStep.addTestResult -> data API addTestResults ->
db/test_results.py addTestResults) inserts each batch of 3,000 rows as ONE
multi-row `INSERT ... VALUES (...), (...), ...` whose 7 bind parameters per row
SQLAlchemy compiles one by one: ~0.3-0.5 ms a row, 5-40 s for 15,000-100,000
tests. Here the same rows go into the same table as an executemany
(`conn.execute(table.insert(), rows)`: the statement is compiled once per
chunk, the driver binds the rows), in one transaction through Buildbot's own
`master.db.pool`, with the test names resolved by Buildbot's own connector.

What ends up in the database is what Buildbot writes: the set created and
completed through the data API (`addTestResultSet`, `completeTestResultSet`
with the passed/failed counts Buildbot's TestResultSubmitter computes for a
pass_fail boolean set, so the 'new' and 'completed' events still go out) and
rows with the same columns (builderid, test_result_setid, test_nameid,
test_code_pathid None, line None, duration_ns, value). Plain SQLAlchemy Core,
no dialect-specific SQL: SQLite, PostgreSQL and MySQL alike; except that on
PostgreSQL through psycopg2 the rows go by COPY (bench/history_db_bench.py,
100,000 tests: the executemany took ~6 s there, ~4 s of it the server's three
foreign-key checks a row, which any insert pays; COPY saves most of the rest:
no statement of 7,000 parameters to build in Python and parse per 1,000 rows).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from buildbot.process.buildstep import BuildStep
from twisted.internet import defer

PASS_FAIL_CATEGORY = "pass_fail"
PASS_FAIL_UNIT = "boolean"

# Rows per executemany (or COPY). SQLAlchemy processes an execute's parameters all at once
# (on PostgreSQL it renders them into batched INSERTs of 1,000 rows), so the bound
# keeps that working copy to a few MB whatever the suite's size; the compiled
# statement is cached, so 10 executes for 100,000 tests cost no more than one.
ROWS_PER_EXECUTE = 10_000

# The columns Buildbot's addTestResults writes, in the order of the rows handed to _insert_rows.
ROW_COLUMNS = (
    "builderid",
    "test_result_setid",
    "test_nameid",
    "test_code_pathid",
    "line",
    "duration_ns",
    "value",
)

# From this many names on, the builder's known names are read in one query rather than looked
# up in Buildbot's batches of 3,000 (see resolve_test_name_ids): below it, one batch does, and
# a small suite does not read the names of a builder that once ran a big one.
READ_ALL_NAMES_FROM = 3_000


class ResultRow(NamedTuple):
    test_name: str
    value: str  # "1" passed, "0" failed: the pass_fail boolean set's values
    duration_ns: int | None


def writes_through_buildbot_db(step: BuildStep) -> bool:
    """Whether the step's test results reach Buildbot's database. Buildbot's step test harness
    (TestBuildStepMixin) replaces addTestResultSet/addTestResult on the step to record the calls,
    and its result set ids are not in any database: there the rows must go through those calls."""
    return getattr(step.addTestResultSet, "__func__", None) is BuildStep.addTestResultSet


async def store_pass_fail_set(step: BuildStep, description: str, rows: Sequence[ResultRow]) -> int:
    """Creates, fills and completes the step's pass_fail set of `rows`; returns its id."""
    if not writes_through_buildbot_db(step):
        setid = await step.addTestResultSet(description, PASS_FAIL_CATEGORY, PASS_FAIL_UNIT)
        for row in rows:
            step.addTestResult(setid, row.value, test_name=row.test_name, duration_ns=row.duration_ns)
        return setid
    builderid = await step.build.getBuilderId()
    updates = step.master.data.updates
    setid = await updates.addTestResultSet(
        builderid, step.build.buildid, step.stepid, description, PASS_FAIL_CATEGORY, PASS_FAIL_UNIT
    )
    name_ids = await resolve_test_name_ids(step, builderid, {row.test_name for row in rows})
    values = [
        (builderid, setid, name_ids[row.test_name], None, None, row.duration_ns, row.value) for row in rows
    ]
    await step.master.db.pool.do_with_transaction(_insert_rows, step.master.db.model.test_results, values)
    passed = sum(bool(int(row.value)) for row in rows)  # as TestResultSubmitter counts them
    await updates.completeTestResultSet(setid, tests_passed=passed, tests_failed=len(rows) - passed)
    return setid


async def resolve_test_name_ids(step: BuildStep, builderid: int, names: set[str]) -> dict[str, int]:
    """{test name: test_names.id} for the builder, adding the names it lacks.

    A big suite's names are looked up in ONE read of the builder's names (name and id only):
    Buildbot's own lookup asks in batches of 3,000 `name IN (...)`, and PostgreSQL answers each
    batch by scanning the builder's whole index range (its planner prefers that to 3,000 probes),
    ~50 ms a batch at 100,000 names: 3 s of the 100,000-test write, growing as the square of the
    suite. The names still missing, and every small suite's names, go through Buildbot's
    `_add_names`, so new names are inserted exactly as Buildbot inserts them."""
    if len(names) >= READ_ALL_NAMES_FROM:
        known = await step.master.db.pool.do(_name_ids_of_builder, step.master.db.model.test_names, builderid)
        ids = {name: known[name] for name in names if name in known}
        missing = names - ids.keys()
    else:
        ids, missing = {}, names
    if missing:
        ids.update(await add_names_as_buildbot_does(step, builderid, missing))
    return ids


def add_names_as_buildbot_does(
    step: BuildStep, builderid: int, names: set[str]
) -> defer.Deferred[dict[str, int]]:
    """A Deferred of {name: id} for `names`, adding those the builder lacks.

    `_add_names` is private: it is what Buildbot's addTestResults itself calls (Buildbot 4.3),
    and it handles what a copy would have to redo: batches of 3,000 names, RETURNING where the
    database has it, and a competing writer of the same names (IntegrityError: it reads again).
    tests/buildbot/test_history_db.py pins that contract."""
    return step.master.db.test_results._add_names(builderid, names)


def _name_ids_of_builder(conn: sa.engine.Connection, table: sa.Table, builderid: int) -> dict[str, int]:
    query = sa.select(table.c.name, table.c.id).where(table.c.builderid == builderid)
    return {name: nameid for name, nameid in conn.execute(query)}  # rows unpack as tuples


def _insert_rows(conn: sa.engine.Connection, table: sa.Table, values: list[tuple[Any, ...]]) -> None:
    """`values` (tuples in ROW_COLUMNS order) into `table`, in the caller's transaction."""
    by_copy = uses_postgresql_copy(conn)
    for start in range(0, len(values), ROWS_PER_EXECUTE):
        chunk = values[start : start + ROWS_PER_EXECUTE]
        if by_copy:
            copy_into_postgresql(conn, table, chunk)
        else:
            conn.execute(table.insert(), [dict(zip(ROW_COLUMNS, row)) for row in chunk])


def uses_postgresql_copy(conn: sa.engine.Connection) -> bool:
    """PostgreSQL through psycopg2 (SQLAlchemy's default driver for it) takes the rows by COPY;
    any other database or driver by the portable executemany."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"


def copy_into_postgresql(conn: sa.engine.Connection, table: sa.Table, values: list[tuple[Any, ...]]) -> None:
    """COPY FROM STDIN of `values` through the connection's psycopg2 cursor, so in its transaction."""
    quote = conn.dialect.identifier_preparer
    columns = ", ".join(quote.quote(column) for column in ROW_COLUMNS)
    statement = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN"
    text = "".join("\t".join(map(_copy_field, row)) + "\n" for row in values)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(statement, io.StringIO(text))
    finally:
        cursor.close()


# COPY's text format: \N is NULL; a backslash, tab, newline or carriage return in a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    return value.translate(_COPY_ESCAPES) if isinstance(value, str) else str(value)
