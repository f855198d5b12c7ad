"""Read a test runner's JUnit XML report back into per-test results.

The report comes from a worker, so it is untrusted input: it is parsed with
defusedxml (no DTD, no entities, no external references), its size is capped
before parsing, and anything unreadable is one JUnitReportError that the
caller turns into a failed batch, never into a master crash.

Data shapes:
    parse_junit_report(b"<testsuites>...", ["tests/a.py::test_x", ...])
      -> [JUnitTestResult(id="tests/a.py::test_x", passed=True, seconds=0.12, message="",
                          skipped=False), ...]
    Tests of the batch that the report does not mention are left out: the
    dispatcher counts them as failed attempts ("no result reported").
    Every result has 0 <= seconds <= MAX_TEST_DURATION_S: a time the
    dispatcher would refuse makes the whole report a JUnitReportError.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import xml.etree.ElementTree as ElementTree

import defusedxml
import defusedxml.ElementTree

from buildbot_steps.shard.planning import MAX_TEST_DURATION_S

# Reports bigger than this are refused before parsing: a JUnit file of 100k
# test cases with captured output is a few MB; 32 MiB means a runaway runner.
MAX_REPORT_BYTES = 32 * 1024 * 1024

# Failure text kept per attempt: enough for an assertion and a traceback,
# small enough that thousands of failures do not bloat the HTML report.
MAX_MESSAGE_CHARS = 8000

# Nesting allowed in a report. A real one is testsuites > testsuite >
# testcase > failure (a few more with nested suites); 100,000 nested
# elements fit in the size cap and would take seconds to parse and walk.
MAX_REPORT_DEPTH = 64

# A test case marked by one of these children did not pass.
FAILURE_TAGS = ("failure", "error")
# A test case marked by this child (and no failure) was not run: pytest's
# skip, skipif and xfail. It is neither passed nor failed.
SKIPPED_TAG = "skipped"


class JUnitReportError(Exception):
    """The report cannot be used; the message says why, for the build log."""


@dataclasses.dataclass(frozen=True)
class JUnitTestResult:
    id: str
    passed: bool
    seconds: float
    message: str = ""
    skipped: bool = False


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
    """The root of the report, refusing unsafe XML and nesting past
    MAX_REPORT_DEPTH as soon as the parser reaches it."""
    root = None
    depth = 0
    try:
        events = defusedxml.ElementTree.iterparse(
            io.BytesIO(data),
            events=("start", "end"),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
        for event, element in events:
            if event == "end":
                depth -= 1
                continue
            depth += 1
            if depth > MAX_REPORT_DEPTH:
                raise JUnitReportError(f"JUnit report refused: elements nested over {MAX_REPORT_DEPTH} deep")
            if root is None:
                root = element
    except defusedxml.DefusedXmlException as error:
        raise JUnitReportError(f"JUnit report refused (unsafe XML): {error!r}") from None
    except ElementTree.ParseError as error:
        raise JUnitReportError(f"JUnit report is not well-formed XML (truncated?): {error}") from None
    except (LookupError, ValueError) as error:
        # The declared encoding: unknown (LookupError), multi-byte (expat
        # reads none: ValueError) or one the bytes are not in (UnicodeError).
        raise JUnitReportError(f"JUnit report cannot be decoded: {error}") from None
    if root is None:
        raise JUnitReportError("JUnit report has no elements")
    return root


def _result_of(test_id: str, case: ElementTree.Element) -> JUnitTestResult:
    problems = [child for child in case if child.tag in FAILURE_TAGS]
    skips = [child for child in case if child.tag == SKIPPED_TAG] if not problems else []
    message = "\n".join(_describe(entry) for entry in problems or skips)
    return JUnitTestResult(
        id=test_id,
        passed=not problems and not skips,
        seconds=_seconds(case.get("time"), test_id),
        message=message[:MAX_MESSAGE_CHARS],
        skipped=bool(skips),
    )


def _merge(earlier: JUnitTestResult | None, later: JUnitTestResult) -> JUnitTestResult:
    # pytest writes a second <testcase> for an error in teardown: the test
    # did not pass if any of its entries says so, and it took both times.
    # It was skipped if an entry says so and none says it failed.
    if earlier is None:
        return later
    failed = any(not r.passed and not r.skipped for r in (earlier, later))
    skipped = not failed and (earlier.skipped or later.skipped)
    return JUnitTestResult(
        id=later.id,
        passed=not failed and not skipped,
        seconds=_checked_seconds(earlier.seconds + later.seconds, later.id),
        message="\n".join(m for m in (earlier.message, later.message) if m)[:MAX_MESSAGE_CHARS],
        skipped=skipped,
    )


def _describe(problem: ElementTree.Element) -> str:
    headline = problem.get("message") or problem.tag
    details = (problem.text or "").strip()
    return f"{problem.tag}: {headline}\n{details}".strip()


def _seconds(text: str | None, test_id: str) -> float:
    """A test case's time attribute: absent or empty is 0; anything but a
    number of seconds the dispatcher accepts refuses the whole report."""
    if text is None or not text.strip():
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise JUnitReportError(
            f"JUnit report: test {test_id!r} has time {text[:40]!r}, not a number"
        ) from None
    return _checked_seconds(value, test_id)


def _checked_seconds(value: float, test_id: str) -> float:
    if not (math.isfinite(value) and 0 <= value <= MAX_TEST_DURATION_S):
        raise JUnitReportError(
            f"JUnit report: test {test_id!r} took {value} s; times are seconds "
            f"between 0 and {MAX_TEST_DURATION_S:.0f}"
        )
    return value


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
