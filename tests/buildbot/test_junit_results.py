"""JUnit XML from workers: mapping back to test ids, and hostile input."""

from __future__ import annotations

import pytest

from buildbot_steps.shard.junit import JUnitReportError, parse_junit_report

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
        '<testcase classname="suite.Case" name="test_x" time="bad"><skipped/></testcase>',
        '<testcase name="plain-name" time="-3"/>',
    )
    results = {r.id: r for r in parse_junit_report(data, ids)}
    assert results["suite.Case.test_x"].passed and results["suite.Case.test_x"].seconds == 0.0
    assert results["plain-name"].seconds == 0.0


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
    ],
    ids=["truncated", "empty", "not-junit", "entity-expansion", "external-entity", "external-dtd"],
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
