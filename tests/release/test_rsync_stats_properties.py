"""Property: the parser of rsync --stats output (C++, cpp/src/fanout.cpp)
reads back every byte count rsync can print, in any locale's grouping, and
turns any other output, however hostile, into a count in int64 range,
never a crash or an exception."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from buildbot_steps._core import parse_rsync_bytes_sent

BOUNDED = settings(max_examples=200, deadline=None)
INT64_MAX = 2**63 - 1
LABEL = "Total bytes sent:"


def grouped(number: int, separator: str) -> str:
    text = f"{number:,}"
    return text.replace(",", separator)


@BOUNDED
@given(
    number=st.integers(min_value=0, max_value=INT64_MAX // 10),
    separator=st.sampled_from(["", ",", ".", "'"]),
    before=st.text(max_size=40),
    after=st.sampled_from(["\n", "\nTotal bytes received: 35\n", " \n", ""]),
    spaces=st.integers(min_value=0, max_value=3),
)
@example(number=1234567, separator=".", before="", after="\n", spaces=1)
def test_every_count_rsync_prints_is_read_back(number, separator, before, after, spaces):
    text = grouped(number, separator) if separator else str(number)
    # An earlier, different count in the output: the last one wins.
    output = f"{before}\n{LABEL} 999\n{LABEL}{' ' * spaces}{text}{after}"
    assert parse_rsync_bytes_sent(output.encode("utf-8")) == number


@BOUNDED
@given(output=st.binary(max_size=200) | st.text(max_size=80).map(lambda t: (LABEL + t).encode("utf-8")))
@example(output=(LABEL + " " + "9" * 40).encode())  # past int64: not a byte count
@example(output=(LABEL + " 1,2345,678").encode())
@example(output=LABEL.encode())
@example(output=b"Total bytes sent: \xff\xfe12")
def test_any_output_gives_a_count_in_range_and_never_raises(output):
    count = parse_rsync_bytes_sent(output)
    assert type(count) is int and 0 <= count <= INT64_MAX
    if LABEL.encode() not in output:
        assert count == 0
