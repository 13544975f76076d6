"""Strict JSON: what Python's json lets through and Dataverse refuses is refused here, with the place named."""

from __future__ import annotations

import json

import pytest

from connector.strict_json import MAX_DEPTH, StrictJsonError, check_value, loads


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": Infinity}', "Infinity is not JSON"),
        ("[-Infinity]", "-Infinity is not JSON"),
        ('{"a": 1e400}', "too large for a double"),
        ('{"a": "\\ud800"}', "lone surrogate (U+D800)"),
        ('{"\\udfff": 1}', "lone surrogate (U+DFFF)"),
        ("[" * 100_000 + "]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        ("{'a': 1}", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_loads_refuses_what_dataverse_refuses(text: str | bytes, fragment: str) -> None:
    with pytest.raises(StrictJsonError) as raised:
        loads(text)
    assert fragment in str(raised.value)


def test_loads_accepts_ordinary_json_and_brackets_inside_strings() -> None:
    text = json.dumps({"name": '[[[[{{{{ \\" }', "n": [1, 2.5, None, True], "emoji": "\U0001f600"})
    assert loads(text) == json.loads(text)
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_check_value_names_the_path() -> None:
    with pytest.raises(StrictJsonError) as raised:
        check_value({"fields": {"revenue": float("nan")}})
    assert raised.value.path == "$.fields.revenue"
    with pytest.raises(StrictJsonError) as raised:
        check_value({"records": [{"name": "ok"}, {"name": "bad\udc00"}]})
    assert raised.value.path == "$.records[1].name"
