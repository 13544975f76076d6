"""Strict JSON: what Python's json lets through and Dataverse refuses is refused here, with the place named."""

from __future__ import annotations

import json

import pytest

from connector.strict_json import MAX_DEPTH, StrictJsonError, check_depth, check_value, loads


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


def test_check_depth_names_the_first_container_too_deep_and_lets_wide_shallow_values_pass() -> None:
    """The level-by-level walk builds no paths; the refusal still names the container a depth-first walk meets
    first, whichever of many wide records holds it."""
    records: list[object] = [{"key": {"k": f"A-{i}"}, "fields": {"name": "x", "n": [1, [2]]}} for i in range(3000)]
    check_depth({"records": records})  # wide, shallow: passes
    deep: object = "bottom"
    for _ in range(MAX_DEPTH):
        deep = {"a b": [deep]}
    records[1700] = {"fields": {"notes": deep}}
    with pytest.raises(StrictJsonError) as raised:
        check_depth({"records": records})
    assert raised.value.path == "$.records[1700].fields.notes" + "['a b'][0]" * 30
    assert raised.value.reason == f"nested deeper than {MAX_DEPTH} levels"
    check_depth({"records": records}, max_depth=4 + 2 * MAX_DEPTH)  # its deepest list is at 3 + 2 x MAX_DEPTH
    with pytest.raises(StrictJsonError):
        check_depth({"records": records}, max_depth=3 + 2 * MAX_DEPTH)


def test_check_depth_refuses_a_python_value_that_holds_itself() -> None:
    """Twice held, each level doubles: the walk falls back to depth first, which refuses it at the limit."""
    loop: list[object] = []
    loop += [loop, loop]
    with pytest.raises(StrictJsonError, match=f"nested deeper than {MAX_DEPTH} levels"):
        check_depth({"a": loop}, max_depth=MAX_DEPTH)
