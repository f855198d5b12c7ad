"""Read a test runner's JUnit XML report back into per-test results.

The report comes from a worker, so it is untrusted input: it is parsed with
defusedxml (no DTD, no entities, no external references), its size is capped
before parsing, and anything unreadable is one JUnitReportError that the
caller turns into a failed batch, never into a master crash.

Data shapes:
    parse_junit_report(b"<testsuites>...", ["tests/a.py::test_x", ...])
      -> [JUnitTestResult(id="tests/a.py::test_x", passed=True, seconds=0.12, message=""), ...]
    Tests of the batch that the report does not mention are left out: the
    dispatcher counts them as failed attempts ("no result reported").
"""

from __future__ import annotations

import dataclasses
import math
import re
import xml.etree.ElementTree as ElementTree

import defusedxml
import defusedxml.ElementTree

# Reports bigger than this are refused before parsing: a JUnit file of 100k
# test cases with captured output is a few MB; 32 MiB means a runaway runner.
MAX_REPORT_BYTES = 32 * 1024 * 1024

# Failure text kept per attempt: enough for an assertion and a traceback,
# small enough that thousands of failures do not bloat the HTML report.
MAX_MESSAGE_CHARS = 8000

# A test case marked by one of these children did not pass.
FAILURE_TAGS = ("failure", "error")


class JUnitReportError(Exception):
    """The report cannot be used; the message says why, for the build log."""


@dataclasses.dataclass(frozen=True)
class JUnitTestResult:
    id: str
    passed: bool
    seconds: float
    message: str = ""


def parse_junit_report(
    data: bytes, batch_tests: list[str], max_bytes: int = MAX_REPORT_BYTES
) -> list[JUnitTestResult]:
    """Results for the tests of `batch_tests` found in the report `data`."""
    if len(data) > max_bytes:
        raise JUnitReportError(f"JUnit report is {len(data)} bytes, over the {max_bytes} byte cap")
    if not data.strip():
        raise JUnitReportError("JUnit report is empty")
    root = _parse_untrusted_xml(data)
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitReportError(f"not a JUnit report: root element is <{root.tag}>")
    matcher = _TestCaseMatcher(batch_tests)
    merged: dict[str, JUnitTestResult] = {}
    for case in root.iter("testcase"):
        test_id = matcher.test_id(case)
        if test_id is None:
            continue
        merged[test_id] = _merge(merged.get(test_id), _result_of(test_id, case))
    return list(merged.values())


def _parse_untrusted_xml(data: bytes) -> ElementTree.Element:
    try:
        return defusedxml.ElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as error:
        raise JUnitReportError(f"JUnit report refused (unsafe XML): {error!r}") from None
    except ElementTree.ParseError as error:
        raise JUnitReportError(f"JUnit report is not well-formed XML (truncated?): {error}") from None


def _result_of(test_id: str, case: ElementTree.Element) -> JUnitTestResult:
    problems = [child for child in case if child.tag in FAILURE_TAGS]
    message = "\n".join(_describe(problem) for problem in problems)
    return JUnitTestResult(
        id=test_id,
        passed=not problems,
        seconds=_seconds(case.get("time")),
        message=message[:MAX_MESSAGE_CHARS],
    )


def _merge(earlier: JUnitTestResult | None, later: JUnitTestResult) -> JUnitTestResult:
    # pytest writes a second <testcase> for an error in teardown: the test
    # did not pass if any of its entries says so, and it took both times.
    if earlier is None:
        return later
    return JUnitTestResult(
        id=later.id,
        passed=earlier.passed and later.passed,
        seconds=earlier.seconds + later.seconds,
        message="\n".join(m for m in (earlier.message, later.message) if m)[:MAX_MESSAGE_CHARS],
    )


def _describe(problem: ElementTree.Element) -> str:
    headline = problem.get("message") or problem.tag
    details = (problem.text or "").strip()
    return f"{problem.tag}: {headline}\n{details}".strip()


def _seconds(text: str | None) -> float:
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


class _TestCaseMatcher:
    """Maps a <testcase> back to the test id the runner was given.

    pytest writes classname="tests.test_a.TestX" name="test_y[1]" for the id
    "tests/test_a.py::TestX::test_y[1]"; other runners use the id as the name
    or as classname + "." + name. Each form is tried, exact matches first.
    """

    def __init__(self, batch_tests: list[str]):
        self._ids = set(batch_tests)
        self._by_pytest_address = {_pytest_address(test_id): test_id for test_id in batch_tests}

    def test_id(self, case: ElementTree.Element) -> str | None:
        classname = case.get("classname") or ""
        name = case.get("name") or ""
        found = self._by_pytest_address.get((classname, name))
        if found is not None:
            return found
        candidates = [name, f"{classname}::{name}", f"{classname}.{name}"]
        if case.get("file"):
            candidates.append(f"{case.get('file')}::{name}")
        return next((c for c in candidates if c in self._ids), None)


def _pytest_address(test_id: str) -> tuple[str, str]:
    """(classname, name) as pytest's junitxml plugin derives them from a node id."""
    path, bracket, params = test_id.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]
