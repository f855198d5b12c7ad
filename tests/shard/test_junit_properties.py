"""Property: a JUnit report from a worker, whatever its bytes, gives results
only for the tests asked about, with times the dispatcher accepts, or one
JUnitReportError; nothing else escapes."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape, quoteattr

from hypothesis import example, given, settings
from hypothesis import strategies as st

from buildbot_steps.shard.junit import JUnitReportError, parse_junit_report
from buildbot_steps.shard.planning import MAX_TEST_DURATION_S

BOUNDED = settings(max_examples=200, deadline=None)

IDS = ["tests/test_a.py::test_one", "tests/test_a.py::T::test_two[1]", "plain"]
TAGS = ["testsuites", "testsuite", "testcase", "failure", "error", "skipped", "system-out", "properties"]
times = st.sampled_from(["0.5", "1e308", "inf", "-inf", "nan", "-3", "", "x", "1e-320", "604800", "9e5"]) | (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
)
attribute_values = {
    "classname": st.sampled_from(["tests.test_a", "tests.test_a.T", "", "x"]),
    "name": st.sampled_from(["test_one", "test_two[1]", "plain", "other", ""]),
    "time": times,
    "file": st.sampled_from(["tests/test_a.py", "x"]),
    "message": st.text(max_size=10),
}
attributes = st.dictionaries(st.sampled_from(sorted(attribute_values)), st.just(None), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({key: attribute_values[key] for key in keys})
)


def element(children: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    def render(tag: str, attrs: dict[str, str], kids: list[str], text: str) -> str:
        rendered = "".join(f" {key}={quoteattr(value)}" for key, value in attrs.items())
        return f"<{tag}{rendered}>{escape(text)}{''.join(kids)}</{tag}>"

    return st.builds(render, st.sampled_from(TAGS), attributes, children, st.text(max_size=6))


trees = st.recursive(element(st.just([])), lambda inner: element(st.lists(inner, max_size=4)), max_leaves=15)


def reports() -> st.SearchStrategy[bytes]:
    whole = trees.map(lambda tree: tree.encode("utf-8", "surrogatepass"))
    cut = st.tuples(whole, st.integers(min_value=0, max_value=400)).map(lambda pair: pair[0][: pair[1]])
    return whole | cut | st.binary(max_size=80)


@BOUNDED
@given(data=reports(), asked=st.lists(st.sampled_from(IDS), unique=True))
@example(
    data=b'<testsuites><testcase classname="tests.test_a" name="test_one" time="1e308"/>'
    b'<testcase classname="tests.test_a" name="test_one" time="1e308"/></testsuites>',
    asked=IDS,
)
@example(data=b"<testsuites>" + b"<a>" * 70 + b"</a>" * 70 + b"</testsuites>", asked=IDS)
def test_a_report_gives_acceptable_results_or_one_error(data, asked):
    try:
        results = parse_junit_report(data, asked)
    except JUnitReportError:
        return
    seen = [result.id for result in results]
    assert len(seen) == len(set(seen)) and set(seen) <= set(asked)
    for result in results:
        assert math.isfinite(result.seconds) and 0 <= result.seconds <= MAX_TEST_DURATION_S
        assert not (result.passed and result.skipped)
        assert len(result.message) <= 8000
