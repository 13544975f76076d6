"""JSON read from people we do not trust: no ``NaN``/``Infinity``, bounded depth, no lone surrogates.

Python's ``json`` accepts three things Dataverse and every other JSON reader refuse: the bare words ``NaN``,
``Infinity`` and ``-Infinity`` (so ``json.dumps`` later writes a body no server parses), nesting as deep as the
recursion limit (100,000 levels end in ``RecursionError``, a traceback instead of a refusal), and ``\\ud800`` escapes
that decode to a lone surrogate (the later UTF-8 encode raises ``UnicodeEncodeError`` in the middle of a request).
Every place that reads JSON an operator or a caller wrote (CLI inputs, ``--set key:=json``, connection files, webhook
bodies) reads it here, so each refusal is a :class:`StrictJsonError` that names what is wrong and where, raised
before anything is sent.

Numbers too large for a float (``1e400``) are refused as well: Python reads them as ``inf``.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "StrictJsonError", "check_depth", "check_value", "loads"]

MAX_DEPTH = 64
"""Deeper than any Dataverse body or action input (a deep ``$expand`` answer nests about a dozen levels)."""


class StrictJsonError(ValueError):
    """The text is not JSON we accept; ``path`` is the JSON path of the offending value (``$`` for the document)."""

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(f"{path}: {reason}" if path != "$" else reason)
        self.reason = reason
        self.path = path


class _Refused:
    """A value the parser met and we refuse, kept in place so :func:`check_value` reports it with its path."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_constant(word: str) -> Any:
    return _Refused(f"{word} is not JSON: send a number, or null for no value")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isinf(value):
        return _Refused(f"the number {text[:24]}{'…' if len(text) > 24 else ''} is too large for a double")
    return value


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` as strict JSON; raise :class:`StrictJsonError` for anything :func:`check_value` refuses.

    A document nested deeper than the interpreter's recursion limit makes the C decoder raise ``RecursionError``
    (caught: no stack is overflowed), and :func:`check_value` walks the result without recursion, so depth costs
    no scan of the text of its own (a scan in Python took longer than the parse itself).
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJsonError(f"not UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_float)
    except StrictJsonError:
        raise
    except RecursionError:
        raise StrictJsonError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    check_value(value, max_depth=max_depth)
    return value


def check_value(value: Any, *, max_depth: int = MAX_DEPTH, path: str = "$") -> None:
    """Refuse non-finite floats, lone surrogates (in keys and strings) and nesting deeper than ``max_depth``.

    For values that did not come through :func:`loads` (pydantic models, Python callers of the library, YAML).
    Iterative, so depth itself cannot overflow the stack.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, _Refused):
            raise StrictJsonError(node.reason, where)
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise StrictJsonError(f"{node!r} is not a JSON number: send a finite number, or null", where)
        elif isinstance(node, dict | list | tuple):
            if depth >= max_depth:
                raise StrictJsonError(f"nested deeper than {max_depth} levels", where)
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str):
                    _check_text(key, f"{where}[{key[:40]!r}]")  # repr escapes the surrogate; a long key is cut
                    stack.append((child, f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]", depth + 1))
                else:
                    stack.append((child, f"{where}[{key}]", depth + 1))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StrictJsonError(
            f"holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: it cannot be sent as "
            "UTF-8; remove it or pair it",
            where,
        ) from None


def check_depth(value: Any, *, max_depth: int = MAX_DEPTH, path: str = "$") -> None:
    """Only the depth of :func:`check_value`: for values whose other problems are judged later, item by item (a
    ``write_entities`` record with ``NaN`` fails alone), but whose depth would overflow a recursive reader first.

    Every input of a bulk write passes here, so the walk goes level by level over containers alone and builds no
    path; a value found too deep is walked again, path by path, for the path the refusal names. So is a level
    larger than any JSON document holds: a Python value that refers to itself twice doubles each level, and the
    walk path by path refuses it at ``max_depth``.
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    for _ in range(max_depth):
        if not level:
            return
        if len(level) > _MAX_LEVEL:
            break
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, _CONTAINERS)
        ]
    if level:
        _walk_depth(value, max_depth, path)


_CONTAINERS = (dict, list, tuple)
_MAX_LEVEL = 1 << 18


def _walk_depth(value: Any, max_depth: int, path: str) -> None:
    """:func:`check_depth` depth first, building each path: the first container at ``max_depth`` is refused."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth >= max_depth:
                raise StrictJsonError(f"nested deeper than {max_depth} levels", where)
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                named = isinstance(key, str) and key.isidentifier()
                stack.append((child, f"{where}.{key}" if named else f"{where}[{key!r:.40}]", depth + 1))
