"""Property: a duration file or test list, whatever its bytes, is read into
valid durations or refused with InvalidInputError; nothing else escapes.

Bounded runs (max_examples) keep the suite fast; the examples that found
real bugs are pinned with @example so they run every time.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buildbot_steps.errors import InvalidInputError
from buildbot_steps.shard import planning

BOUNDED = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Any character, lone surrogates included (JSON can spell them as \ud800).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
ids = st.text(ANY_CHAR, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(ANY_CHAR, max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ids, inner, max_size=4),
    max_leaves=12,
)
# Number tokens json.dumps never writes: huge integers, huge exponents.
number_tokens = st.from_regex(r"-?[0-9]{1,600}(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)


def documents() -> st.SearchStrategy[bytes]:
    as_json = json_values.map(lambda value: json.dumps(value).encode())
    objects = st.dictionaries(ids, json_values, max_size=6).map(lambda value: json.dumps(value).encode())
    numbers = st.lists(st.tuples(ids, number_tokens), max_size=4).map(
        lambda pairs: ("{" + ",".join(f"{json.dumps(k)}: {n}" for k, n in pairs) + "}").encode()
    )
    return as_json | objects | numbers | st.binary(max_size=64)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("durations") / "durations.json"


@BOUNDED
@given(data=documents())
@example(data=b'{"a": 1e999}')
@example(data=b'{"a": 1' + b"0" * 400 + b"}")
@example(data=b'{"a": ' + b"9" * 5000 + b"}")
@example(data=b"[" * 50_000)
@example(data=b'{"\\ud800": 1}')
@example(data=b'{"a\xff": 1}')
def test_a_duration_file_is_read_or_refused_cleanly(scratch, data):
    scratch.write_bytes(data)
    try:
        durations = planning.read_durations(scratch)
    except InvalidInputError as refused:
        assert "\n" not in str(refused)
        return
    for test_id, seconds in durations.items():
        test_id.encode("utf-8")  # no lone surrogate got through
        assert type(seconds) is float and math.isfinite(seconds)
        assert 0 <= seconds <= planning.MAX_TEST_DURATION_S


@BOUNDED
@given(lines=st.lists(st.text(ANY_CHAR, max_size=10), max_size=6))
@example(lines=["\ud800"])
@example(lines=["a", " a "])
def test_a_test_list_is_read_or_refused_cleanly(lines):
    try:
        tests = planning.read_test_list(lines, "the list")
    except InvalidInputError:
        return
    assert tests and len(set(tests)) == len(tests)
    for test in tests:
        test.encode("utf-8")
        assert test == test.strip() and not test.startswith("#")


@BOUNDED
@given(text=st.text(ANY_CHAR, max_size=20))
@example(text="a\nshard 9\x1b[31m")
def test_printable_ids_are_one_line_of_printable_text(text):
    shown = planning.printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text
