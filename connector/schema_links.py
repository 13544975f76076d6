"""``x-d365-options``: the links from an input to the data source that fills it, checked against the manifest.

A builder follows a link at run time (the user picked a table, so the ``columns`` dropdown can be filled), so a link
that names a missing source or a parameter the input does not have fails in front of a user, far from here. The
contract check therefore walks every bundled input and parameters schema and proves each link: the source is
declared, its required parameters are given, and every relative JSON pointer lands on a property the schema defines
at that place. An input named ``table``, ``columns``, ``select``, ``key`` or ``fields`` must be linked, or say why
not. The annotation's shape is ``manifest.schema.json#/$defs/options_link``, which says what the pointers are
relative to (the annotated instance's own location).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator

from connector.errors import ContractError
from connector.schemas import SchemaStore

__all__ = ["LINK", "LINKED_NAMES", "link_problems", "links", "unlinked"]

LINK = "x-d365-options"
#: Inputs by these names take their values from the table picked (or the tables there are): each must be linked.
LINKED_NAMES = frozenset({"table", "columns", "select", "key", "fields"})
_LINK_SHAPE = "manifest.schema.json#/$defs/options_link"
#: Keywords whose schemas apply to the same instance as the schema holding them.
_SAME_INSTANCE = ("allOf", "anyOf", "oneOf", "if", "then", "else")
#: Keywords whose schemas apply to a child instance (an item, or a property not named in ``properties``).
_CHILD = ("items", "additionalProperties")

Chain = tuple[Mapping[str, Any], ...]


def links(schema: Mapping[str, Any]) -> Iterator[tuple[str, Any, Chain]]:
    """Every link of a bundled schema: the JSON path of the annotated input, the annotation, and the schemas of the
    instance's ancestors (outermost first, the annotated instance's own last), which the pointers climb."""
    yield from _walk(schema, (), schema, "$")


def _walk(node: Any, above: Chain, owner: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any, Chain]]:
    if not isinstance(node, Mapping):
        return
    if LINK in node:
        yield path, node[LINK], (*above, owner)
    for name, sub in (node.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            yield from _walk(sub, (*above, owner), sub, f"{path}.{name}")
    for key in _CHILD:
        if isinstance(node.get(key), Mapping):
            yield from _walk(node[key], (*above, owner), node[key], f"{path}[]")
    for key in _SAME_INSTANCE:
        value = node.get(key)
        for sub in value if isinstance(value, list) else [value]:
            yield from _walk(sub, above, owner, path)


def _property(node: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The schema of property ``name`` wherever ``node`` defines it: its ``properties`` or one of its branches."""
    found = (node.get("properties") or {}).get(name)
    if isinstance(found, Mapping):
        return found
    for key in _SAME_INSTANCE:
        value = node.get(key)
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, Mapping) and (hit := _property(sub, name)) is not None:
                return hit
    return None


def _pointer_problem(chain: Chain, pointer: str) -> str | None:
    """Why ``pointer`` does not name a property defined at that place, or None when it does."""
    up, *segments = pointer.split("/")
    if int(up) >= len(chain):
        return f"climbs {up} levels, above the input (the instance is {len(chain) - 1} deep)"
    node: Mapping[str, Any] | None = chain[-1 - int(up)]
    for segment in segments:
        name = segment.replace("~1", "/").replace("~0", "~")
        node = _property(node, name) if node is not None else None
        if node is None:
            return f"names {name!r}, which the schema does not define there"
    return None


def _one_link(store: SchemaStore, sources: Mapping[str, str], chain: Chain, link: Any) -> list[str]:
    shape = store.validate(link, _LINK_SHAPE)
    if shape:
        return [f"is not a link ({'; '.join(str(p) for p in shape)})"]
    if "none" in link:
        return []
    source = sources.get(link["source"])
    if source is None:
        return [f"names data source {link['source']!r}, which the manifest lacks"]
    params_schema = store.bundled(source)
    params, fixed = dict(link.get("params") or {}), dict(link.get("fixed") or {})
    given = set(params) | set(fixed)
    required = [p for p in params_schema.get("required", []) if p not in given]
    problems = [f"does not give parameter {p!r} of {link['source']!r}" for p in required]
    known = set(params_schema.get("properties") or {})
    problems += [f"gives {p!r}, which {link['source']!r} does not take" for p in sorted(given - known)]
    for name, value in sorted(fixed.items()):
        prop = (params_schema.get("properties") or {}).get(name)
        if isinstance(prop, Mapping) and not Draft202012Validator(prop).is_valid(value):
            problems.append(f"fixes {name!r} to {value!r}, which {link['source']!r} refuses")
    for name, pointer in sorted(params.items()):
        why = _pointer_problem(chain, pointer)
        if why:
            problems.append(f"parameter {name!r}: pointer {pointer!r} {why}")
    return problems


def unlinked(node: Any, path: str = "$") -> Iterator[str]:
    """The inputs named like something a data source fills (:data:`LINKED_NAMES`) that neither link to a source
    nor say why they cannot (``{"none": ...}``): a builder would show a blank text box where a picker belongs."""
    if not isinstance(node, Mapping):
        return
    for name, sub in (node.get("properties") or {}).items():
        if name in LINKED_NAMES and isinstance(sub, Mapping) and LINK not in sub:
            yield f"{path}.{name}"
        yield from unlinked(sub, f"{path}.{name}")
    for key in _CHILD:
        yield from unlinked(node.get(key), f"{path}[]")
    for key in _SAME_INSTANCE:
        value = node.get(key)
        for sub in value if isinstance(value, list) else [value]:
            yield from unlinked(sub, path)


def link_problems(store: SchemaStore, schema_ref: str, sources: Mapping[str, str]) -> list[str]:
    """Every broken link of one schema, as sentences naming the input; ``sources`` maps each data source of the
    effective manifest to its parameters schema. A schema that cannot be bundled is reported elsewhere."""
    try:
        bundled = store.bundled(schema_ref)
    except ContractError:
        return []
    found = [
        f"{path}: {LINK} {problem}"
        for path, link, chain in links(bundled)
        for problem in _one_link(store, sources, chain, link)
    ]
    return found + [
        f"{path}: no {LINK} (link it to a data source, or say why not with none)" for path in unlinked(bundled)
    ]
