"""errors.preview: what an error message may show of a caller's value."""

from __future__ import annotations

import pytest

from connector.errors import preview


def test_short_string_is_quoted_whole() -> None:
    assert preview("abc") == "'abc'"


def test_oversize_string_shows_prefix_and_length_only() -> None:
    out = preview("abc" + "x" * 9_999_997)
    assert out == "'abcxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (10,000,000 characters)"
    assert len(out) < 80


def test_limit_is_respected() -> None:
    assert preview("abcdef", limit=3) == "'abc'… (6 characters)"
    assert preview("abc", limit=3) == "'abc'"


@pytest.mark.parametrize("value", ["\ud800" + "a" * 100, "\x00\x1b[31m\n" * 50])
def test_control_characters_and_lone_surrogates_print_as_escapes(value: str) -> None:
    out = preview(value)
    out.encode("utf-8")  # a lone surrogate would raise here
    assert "\n" not in out and "\x1b" not in out and "\x00" not in out


def test_bytes_and_other_values() -> None:
    assert preview(b"ab") == "b'ab'"
    assert preview(b"a" * 100, limit=2) == "b'aa'… (100 bytes)"
    assert preview(12) == "12"
    assert preview(True) == "True"
    assert preview(None) == "None"
    assert preview([1, 2]) == "[1, 2]"
    assert preview(list(range(1000))).endswith("… (4,890 characters)")


def test_huge_integer_is_described_not_rendered() -> None:
    assert preview(10**100_000) == "an integer of about 100,001 digits"


def test_deep_nesting_does_not_crash() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert preview(deep) == "a list too large to show"
