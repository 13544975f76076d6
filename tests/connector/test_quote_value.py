"""quote_value: what an error message may show of a caller's value."""

from __future__ import annotations

import pytest

from connector.errors import quote_value


def test_short_string_is_quoted_whole() -> None:
    assert quote_value("abc") == "'abc'"


def test_oversize_string_shows_prefix_and_length_only() -> None:
    out = quote_value("abc" + "x" * 9_999_997)
    assert out == "'abcxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…' (10,000,000 characters)"
    assert len(out) < 80


def test_limit_is_respected() -> None:
    assert quote_value("abcdef", limit=3) == "'abc…' (6 characters)"
    assert quote_value("abc", limit=3) == "'abc'"


@pytest.mark.parametrize("value", ["\ud800" + "a" * 100, "\x00\x1b[31m\n" * 50])
def test_control_characters_and_lone_surrogates_print_as_escapes(value: str) -> None:
    out = quote_value(value)
    out.encode("utf-8")  # a lone surrogate would raise here
    assert "\n" not in out and "\x1b" not in out and "\x00" not in out


def test_bytes_and_other_values() -> None:
    assert quote_value(b"ab") == "b'ab'"
    assert quote_value(b"a" * 100, limit=2) == "b'aa'… (100 bytes)"
    assert quote_value(12) == "12"
    assert quote_value(True) == "True"
    assert quote_value(None) == "None"
    assert quote_value([1, 2]) == "[1, 2]"
    assert quote_value(list(range(1000))).endswith("… (4,890 characters)")


def test_huge_integer_is_described_not_rendered() -> None:
    assert quote_value(10**100_000) == "an integer of about 100,001 digits"


def test_deep_nesting_does_not_crash() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert quote_value(deep) == "a list too large to show"
