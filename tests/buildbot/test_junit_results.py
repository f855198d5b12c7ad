"""JUnit XML from workers: mapping back to test ids, and hostile input."""

from __future__ import annotations

import pytest

from buildbot_steps.shard.junit import (
    MAX_REPORT_BYTES,
    MAX_REPORT_DEPTH,
    JUnitReportError,
    parse_junit_report,
)

IDS = [
    "tests/test_a.py::test_plain",
    "tests/test_a.py::TestGroup::test_method[1-x]",
    "tests/sub/test_b.py::test_teardown_error",
]


def report(*cases: str) -> bytes:
    return ("<testsuites><testsuite>" + "".join(cases) + "</testsuite></testsuites>").encode()


def test_pytest_ids_are_mapped_back_with_outcome_and_time():
    data = report(
        '<testcase classname="tests.test_a" name="test_plain" time="0.25"/>',
        '<testcase classname="tests.test_a.TestGroup" name="test_method[1-x]" time="2.5">'
        '<failure message="assert 1 == 2">Traceback...</failure></testcase>',
    )
    results = {r.id: r for r in parse_junit_report(data, IDS)}
    assert set(results) == set(IDS[:2])  # the absent test is left to the dispatcher
    assert results[IDS[0]].passed and results[IDS[0]].seconds == 0.25
    assert not results[IDS[1]].passed
    assert "assert 1 == 2" in results[IDS[1]].message and "Traceback" in results[IDS[1]].message


def test_teardown_error_entry_makes_the_test_fail():
    data = report(
        '<testcase classname="tests.sub.test_b" name="test_teardown_error" time="1.0"/>',
        '<testcase classname="tests.sub.test_b" name="test_teardown_error" time="0.5">'
        '<error message="teardown">boom</error></testcase>',
    )
    (result,) = parse_junit_report(data, IDS)
    assert not result.passed and result.seconds == 1.5


def test_other_runners_id_forms_and_skips():
    ids = ["suite.Case.test_x", "plain-name"]
    data = report(
        '<testcase classname="suite.Case" name="test_x">'
        '<skipped type="pytest.skip" message="needs a GPU"/></testcase>',
        '<testcase name="plain-name" time=""/>',
    )
    results = {r.id: r for r in parse_junit_report(data, ids)}
    skipped = results["suite.Case.test_x"]
    assert skipped.skipped and not skipped.passed and skipped.seconds == 0.0
    assert "needs a GPU" in skipped.message
    assert results["plain-name"].passed and not results["plain-name"].skipped
    assert results["plain-name"].seconds == 0.0  # an empty time is no time


def test_a_skip_with_a_teardown_error_is_a_failure_not_a_skip():
    data = report(
        '<testcase classname="tests.sub.test_b" name="test_teardown_error"><skipped/></testcase>',
        '<testcase classname="tests.sub.test_b" name="test_teardown_error">'
        '<error message="teardown">boom</error></testcase>',
    )
    (result,) = parse_junit_report(data, IDS)
    assert not result.passed and not result.skipped


@pytest.mark.parametrize(
    "cases, reason",
    [
        # Each time is finite, their sum is not: before, the dispatcher refused
        # it after taking the batch out of flight, and the build stalled.
        (
            [
                '<testcase classname="tests.test_a" name="test_plain" time="1e308"/>',
                '<testcase classname="tests.test_a" name="test_plain" time="1e308"/>',
            ],
            "took 1e+308 s",
        ),
        (['<testcase classname="tests.test_a" name="test_plain" time="inf"/>'], "took inf s"),
        (['<testcase classname="tests.test_a" name="test_plain" time="nan"/>'], "took nan s"),
        (['<testcase classname="tests.test_a" name="test_plain" time="-3"/>'], "took -3.0 s"),
        (
            ['<testcase classname="tests.test_a" name="test_plain" time="bad"/>'],
            "has time 'bad', not a number",
        ),
        (
            [
                '<testcase classname="tests.test_a" name="test_plain" time="400000"/>',
                '<testcase classname="tests.test_a" name="test_plain" time="400000"/>',
            ],
            "took 800000.0 s; times are seconds between 0 and 604800",
        ),
    ],
    ids=["sum-overflows", "inf", "nan", "negative", "not-a-number", "sum-over-the-bound"],
)
def test_times_the_dispatcher_would_refuse_refuse_the_report(cases, reason):
    with pytest.raises(JUnitReportError) as raised:
        parse_junit_report(report(*cases), IDS)
    assert reason in str(raised.value)


def test_deep_nesting_is_refused_by_depth_before_the_whole_report_is_parsed():
    # 100,000 nested elements are 1.3 MB, well inside the size cap.
    depth = 100_000
    data = b"<testsuites>" + b"<a>" * depth + b"</a>" * depth + b"</testsuites>"
    assert len(data) < MAX_REPORT_BYTES
    with pytest.raises(JUnitReportError, match=f"nested over {MAX_REPORT_DEPTH} deep"):
        parse_junit_report(data, IDS)
    # Refused while parsing: the same prefix, truncated right after the limit,
    # fails the same way (not as malformed XML), so the rest was never needed.
    prefix = b"<testsuites>" + b"<a>" * MAX_REPORT_DEPTH
    with pytest.raises(JUnitReportError, match="nested over"):
        parse_junit_report(prefix, IDS)


def test_nesting_at_the_limit_is_accepted():
    inner = MAX_REPORT_DEPTH - 3  # testsuites, testsuite, testcase
    case = (
        '<testcase classname="tests.test_a" name="test_plain" time="1">'
        + "<system-out>" * inner
        + "</system-out>" * inner
        + "</testcase>"
    )
    (result,) = parse_junit_report(report(case), IDS)
    assert result.passed and result.seconds == 1.0


@pytest.mark.parametrize(
    "data, reason",
    [
        (report('<testcase name="x"/>')[:-20], "not well-formed XML (truncated?)"),
        (b"", "empty"),
        (b"<html><body/></html>", "root element is <html>"),
        (
            b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<testsuites><testcase name="&b;"/></testsuites>',
            "unsafe XML",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<testsuites><testcase name="&x;"/></testsuites>',
            "unsafe XML",
        ),
        (b'<!DOCTYPE testsuites SYSTEM "http://127.0.0.1:1/x.dtd"><testsuites/>', "unsafe XML"),
        (b'<?xml version="1.0" encoding="x-bogus"?><testsuites/>', "cannot be decoded"),
        (b'<?xml version="1.0" encoding="utf-32"?><testsuites/>', "cannot be decoded"),
        (b'<?xml version="1.0" encoding="idna"?><testsuites/>', "cannot be decoded"),
    ],
    ids=[
        "truncated",
        "empty",
        "not-junit",
        "entity-expansion",
        "external-entity",
        "external-dtd",
        "unknown-encoding",
        "multi-byte-encoding",
        "codec-not-for-text",
    ],  # fmt: skip
)
def test_hostile_or_broken_reports_are_one_clear_error(data, reason):
    with pytest.raises(JUnitReportError) as raised:
        parse_junit_report(data, IDS)
    assert reason in str(raised.value)


def test_huge_report_is_refused_before_parsing():
    data = report('<testcase name="x"/>' * 1000)
    with pytest.raises(JUnitReportError, match="over the 1000 byte cap"):
        parse_junit_report(data, IDS, max_bytes=1000)


def test_long_failure_text_is_capped():
    data = report(
        f'<testcase classname="tests.test_a" name="test_plain"><failure>{"x" * 100_000}</failure></testcase>'
    )
    (result,) = parse_junit_report(data, IDS)
    assert len(result.message) <= 8000
