"""Quick tests: enough of them that batches hold several tests each."""

import pytest


@pytest.mark.parametrize("number", range(24))
def test_square_is_non_negative(number):
    assert number * number >= 0


class TestStrings:
    def test_upper(self):
        assert "shard".upper() == "SHARD"

    def test_split(self):
        assert "a::b".split("::") == ["a", "b"]
