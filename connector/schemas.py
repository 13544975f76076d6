"""Loading ``manifest.json`` and ``schemas/``, and validating instances against them.

The files live at the repository root (where builders and reviewers look for them) and are copied into
``connector/_data/`` when the wheel is built. :func:`data_root` is the one place that knows both layouts, so a checkout
(editable install) and an installed wheel read the same files through the same code.

Every schema has an ``$id`` under :data:`SCHEMA_BASE`; ``$ref`` between files is resolved through one
``referencing.Registry``. Validators are built once per schema and use the 2020-12 format checker, without which
``format`` would be an annotation only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable

from connector.errors import ContractError, InputProblem, preview

if TYPE_CHECKING:
    from referencing._core import Resolver

SCHEMA_BASE = "https://d365-connector.dev/schemas/"
_FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


def data_root() -> Traversable:
    """Where ``manifest.json`` and ``schemas/`` are: inside the wheel, else the checkout this module runs from."""
    packaged = resources.files("connector") / "_data"
    if packaged.joinpath("manifest.json").is_file():
        return packaged
    return Path(__file__).resolve().parents[1]


def load_json(relpath: str, root: Traversable | None = None) -> Any:
    """Read one JSON file below the data root (``manifest.json``, ``schemas/actions/x.input.json``)."""
    node = root or data_root()
    for part in relpath.split("/"):
        node = node / part
    return json.loads(node.read_text(encoding="utf-8"))


def iter_schema_files(root: Traversable) -> Iterator[tuple[str, Traversable]]:
    """Every ``*.json`` below ``root``, with its path relative to it (``actions/x.input.json``)."""

    def walk(node: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".json"):
                yield f"{prefix}{child.name}", child

    return walk(root, "")


class SchemaStore:
    """All schemas known to one runtime (built-in plus packs), with cached validators.

    Packs register their own schema folders; their files must carry an ``$id`` of their own (they may ``$ref`` the
    built-in ``common/defs.json`` by its absolute ``$id``).
    """

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, Any]] = {}
        self._registry: Registry[Any] = Registry()
        self._validators: dict[str, Draft202012Validator] = {}

    def add_folder(self, root: Traversable, base: str = SCHEMA_BASE) -> tuple[list[str], dict[str, str]]:
        """Register every schema below ``root``.

        Returns the problems (unreadable JSON, missing or duplicate ``$id``) and the ``$id`` of each registered file by
        its path relative to ``root``.
        """
        problems: list[str] = []
        added: dict[str, str] = {}
        for rel, node in iter_schema_files(root):
            try:
                schema = json.loads(node.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"schema {rel}: not readable JSON ({exc})")
                continue
            expected = base + rel
            sid = schema.get("$id") if isinstance(schema, dict) else None
            if base == SCHEMA_BASE and sid != expected:
                problems.append(f"schema {rel}: $id must be {expected!r}, found {sid!r}")
                continue
            if not isinstance(sid, str) or not sid:
                problems.append(f"schema {rel}: has no $id")
                continue
            if sid in self._schemas:
                problems.append(f"schema {rel}: $id {sid!r} is already registered")
                continue
            self.add(sid, schema)
            added[rel] = sid
        return problems, added

    def add(self, schema_id: str, schema: dict[str, Any]) -> None:
        """Register one schema under its ``$id``."""
        self._schemas[schema_id] = schema
        self._registry = self._registry.with_resource(schema_id, Resource.from_contents(schema))
        self._validators.clear()

    def ids(self) -> list[str]:
        return sorted(self._schemas)

    def has(self, ref: str) -> bool:
        return self.resolve_id(ref) in self._schemas

    def get(self, ref: str) -> dict[str, Any]:
        """A schema by ``$id`` or by path relative to ``schemas/`` (``actions/get_entity.input.json``)."""
        sid = self.resolve_id(ref).partition("#")[0]
        try:
            return self._schemas[sid]
        except KeyError:
            raise KeyError(f"no schema {ref!r} is registered") from None

    @staticmethod
    def resolve_id(ref: str) -> str:
        if "://" in ref or ref.startswith("urn:"):
            return ref
        return SCHEMA_BASE + ref.removeprefix("schemas/")

    def check(self, ref: str) -> list[str]:
        """Problems with one schema itself: not a valid 2020-12 schema, or a ``$ref`` that does not resolve."""
        schema = self.get(ref)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            return [f"schema {ref}: invalid JSON Schema: {exc.message}"]
        errors: list[str] = []
        resolver = self._registry.resolver(base_uri=self.resolve_id(ref))
        for target in _refs(schema):
            try:
                resolver.lookup(target)
            except Unresolvable:
                errors.append(f"schema {ref}: $ref {target!r} does not resolve")
        return errors

    def resolver(self, ref: str) -> Resolver[Any]:
        """A ``$ref`` resolver based at one schema, for reading defaults behind references."""
        return self._registry.resolver(base_uri=self.resolve_id(ref))

    def bundled(self, ref: str) -> dict[str, Any]:
        """One schema with every ``$ref`` replaced by what it points to: a self-contained document.

        Builders, a form renderer or a runtime server then need no registry of ours. A reference's sibling keywords
        are kept: annotations (title, description, default, examples) override the target's, and any other keyword
        keeps its meaning through ``allOf``. ``$defs`` are dropped, since nothing refers to them any more.
        """
        sid = self.resolve_id(ref)
        resolved = self._registry.resolver(base_uri=sid.partition("#")[0]).lookup(sid)
        bundle = _inline(resolved.contents, resolved.resolver, (), ref)
        if not isinstance(bundle, dict):
            raise ContractError([f"schema {ref}: is not a JSON object"])
        return bundle

    def validator(self, ref: str) -> Draft202012Validator:
        sid = self.resolve_id(ref)
        validator = self._validators.get(sid)
        if validator is None:
            schema = {"$ref": sid} if "#" in sid else self.get(sid)
            validator = Draft202012Validator(schema, registry=self._registry, format_checker=_FORMAT_CHECKER)
            self._validators[sid] = validator
        return validator

    def validate(self, instance: Any, ref: str) -> list[InputProblem]:
        """Every problem at once, each with its JSON path and what is expected; secrets are never echoed."""
        instance = _without_plain_items(instance, self.resolve_id(ref))
        errors = sorted(self.validator(ref).iter_errors(instance), key=lambda e: (list(e.absolute_path), e.message))
        # A GUID fails both its pattern and format "uuid": one message per value is enough.
        patterned = {_json_path(e.absolute_path) for e in errors if e.validator == "pattern"}
        errors = [e for e in errors if not (e.validator == "format" and _json_path(e.absolute_path) in patterned)]
        root = self.validator(ref).schema
        return [_problem(e, root) for e in errors]


#: Keywords whose value is data, not a schema: a ``$ref`` key inside an example is not a reference.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples"})
#: Keywords whose value maps names to schemas, or lists schemas, or is one schema (Draft 2020-12).
_SCHEMA_MAPS = frozenset({"dependentSchemas", "patternProperties", "properties"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset(
    {"additionalProperties", "contains", "else", "if", "items", "not", "propertyNames", "then"}
    | {"unevaluatedItems", "unevaluatedProperties"}
)
#: Sibling keywords of a ``$ref`` that may simply override the target's: they describe, they do not constrain.
_ANNOTATIONS = frozenset(
    {"$comment", "default", "deprecated", "description", "examples", "readOnly", "title", "writeOnly", "x-d365-options"}
)
#: Dropped from the bundle: identities and definitions mean nothing once every reference is inlined.
_RESOURCE_KEYWORDS = frozenset({"$anchor", "$defs", "$id", "$schema", "definitions"})


def _inline(node: Any, resolver: Resolver[Any], path: tuple[int, ...], ref: str) -> Any:
    """``node`` with its references inlined; ``path`` holds the targets being inlined, to refuse a cycle."""
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    target = node.get("$ref")
    constrained: list[Any] = []
    if isinstance(target, str):
        try:
            resolved = resolver.lookup(target)
        except Unresolvable:
            raise ContractError([f"schema {ref}: $ref {target!r} does not resolve"]) from None
        key = id(resolved.contents)
        if key in path:
            raise ContractError([f"schema {ref}: $ref {target!r} refers back to itself and cannot be inlined"])
        inner = _inline(resolved.contents, resolved.resolver, (*path, key), ref)
        if isinstance(inner, dict):
            inner = {k: v for k, v in inner.items() if k not in _RESOURCE_KEYWORDS}
        if isinstance(inner, dict) and set(node) - {"$ref"} <= _ANNOTATIONS:
            out.update(inner)
        else:
            constrained.append(inner)
    for key, value in node.items():
        if key == "$ref" or (key in _RESOURCE_KEYWORDS and key not in ("$id", "$schema")):
            continue
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: _inline(sub, resolver, path, ref) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_inline(sub, resolver, path, ref) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = _inline(value, resolver, path, ref)
        else:
            out[key] = value
    if constrained:
        out["allOf"] = [*constrained, *out.get("allOf", [])]
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _problem(error: ValidationError, root: Any) -> InputProblem:
    """One problem, placed on the input a person must fix.

    An exclusive choice (``oneOf`` branches that each require one input, such as id or key) fails on the object; the
    message names the inputs and sits on the first of them (the one to give, or the first of those given), not on
    the object with "does not match any of the oneOf schemas".
    """
    path = _json_path(error.absolute_path)
    choice = _choice(error.schema, str(error.validator))
    if choice is not None and error.validator == "anyOf":
        return InputProblem(path, f"give at least one of {', '.join(choice)}")
    if choice is not None and isinstance(error.instance, Mapping):
        given = [name for name in choice if name in error.instance]
        if len(given) > 1:
            return InputProblem(f"{path}.{given[0]}", f"give either {' or '.join(given)}, not both")
        return InputProblem(f"{path}.{choice[0]}", f"give {' or '.join(choice)}")
    inner = _branch_error(error)
    if inner is not None:
        return _problem(inner, root)
    if error.validator == "required" and list(error.relative_schema_path)[-2:] == ["then", "required"]:
        needed_by = _if_required(root, list(error.relative_schema_path)[:-2])
        wanted = error.validator_value if isinstance(error.validator_value, list) else []
        if needed_by and isinstance(error.instance, Mapping):
            missing = ", ".join(repr(m) for m in wanted if m not in error.instance)
            return InputProblem(
                path, f"required property {missing} is missing: {', '.join(map(repr, needed_by))} needs it"
            )
    return InputProblem(path, _describe(error))


def _branch_error(error: ValidationError) -> ValidationError | None:
    """The error inside the one ``oneOf``/``anyOf`` branch whose type the value has: that branch is what was meant."""
    branches = error.validator_value if error.validator in ("oneOf", "anyOf") else None
    if not isinstance(branches, list) or not error.context:
        return None
    fitting = {
        i
        for i, b in enumerate(branches)
        if isinstance(b, Mapping) and _fits_a_type(error.instance, [str(b.get("type"))])
    }
    if len(fitting) != 1:
        return None
    inside = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] in fitting]
    return best_match(inside) if inside else None


def _choice(schema: Any, keyword: str) -> list[str] | None:
    """The inputs of a choice: ``oneOf`` or ``anyOf`` branches that each only require one input (and a title)."""
    branches = schema.get(keyword, []) if keyword in ("oneOf", "anyOf") and isinstance(schema, Mapping) else []
    names = [b.get("required") for b in branches if isinstance(b, Mapping) and set(b) <= {"title", "required"}]
    if len(names) < 2 or len(names) != len(branches) or any(not isinstance(n, list) or len(n) != 1 for n in names):
        return None
    return [str(n[0]) for n in names if isinstance(n, list)]


def _if_required(root: Any, at: list[Any]) -> list[str]:
    """The flags whose being set makes a ``then`` apply: an ``if`` that requires them with ``const: true``.

    Only such an ``if`` reads as "fetch_all needs it"; any other condition (``$ref`` on the way, a value other than
    true) keeps the plain "required property is missing".
    """
    node = root
    for part in at:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = node.get(part) if isinstance(node, Mapping) else None
    condition = node.get("if") if isinstance(node, Mapping) else None
    if not isinstance(condition, Mapping):
        return []
    flags = condition.get("properties", {})
    required = [str(r) for r in condition.get("required", [])]
    set_flags = [r for r in required if isinstance(flags.get(r), Mapping) and flags[r].get("const") is True]
    return set_flags if set_flags == required else []


def _describe(error: ValidationError) -> str:
    """A message that says what is expected.

    Values are echoed only when they are scalars outside ``writeOnly`` (secret) properties: an object-level message
    would otherwise print the whole object, secrets included.
    """
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    title = schema.get("title")
    hint = f" ({title})" if isinstance(title, str) and title else ""
    v = error.validator
    if v == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"required property {missing!r} is missing"
    if v == "dependentRequired" and isinstance(error.instance, Mapping) and isinstance(error.validator_value, Mapping):
        needs = [
            (key, dep)
            for key, deps in error.validator_value.items()
            if key in error.instance
            for dep in deps
            if dep not in error.instance
        ]
        if needs:
            return "; ".join(f"required property {dep!r} is missing: {key!r} needs it" for key, dep in needs)
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = (
            [k for k in error.instance if k not in schema.get("properties", {})]
            if isinstance(error.instance, Mapping)
            else []
        )
        return f"unexpected property {', '.join(map(repr, extra))}; allowed properties: {', '.join(allowed)}"
    branches = schema.get(v) if v in ("oneOf", "anyOf") else None
    if isinstance(branches, list) and branches and all(isinstance(b, Mapping) and "const" in b for b in branches):
        # A titled enum (oneOf of const + title): the allowed values, as a bare enum would list them.
        shown_values = ", ".join(json.dumps(b["const"]) for b in branches)
        return f"{_show(error.instance)} is not allowed; expected one of {shown_values}"
    typed = isinstance(branches, list) and all(
        isinstance(b, Mapping) and isinstance(b.get("type"), str) for b in branches
    )
    if typed and branches and not _fits_a_type(error.instance, [b["type"] for b in branches]):
        # A value of several types (text, number, list...): name them rather than "must satisfy one of".
        kinds = [str(b.get("title") or b["type"]).lower() for b in branches]
        return f"expected {', '.join(kinds[:-1])} or {kinds[-1]}, got {_json_type(error.instance)}{hint}"
    if v in ("oneOf", "anyOf"):
        options = [s.get("title") or s.get("description") for s in schema.get(v, []) if isinstance(s, Mapping)]
        named = [str(o) for o in options if o]
        return f"must satisfy {'exactly one' if v == 'oneOf' else 'at least one'} of: {'; '.join(named) or v}{hint}"
    if schema.get("writeOnly") or _secret_path(error):
        return f"the secret does not satisfy {v!r}{hint}; check the value supplied"
    shown = _show(error.instance)
    if v == "pattern":
        expected = str(schema.get("description") or f"pattern {schema.get('pattern')}")
        # Descriptions are written as sentences ("A Dataverse row id: ..."); mid-message they read lower-case.
        if expected[:1].isupper() and not expected[1:2].isupper():
            expected = expected[0].lower() + expected[1:]
        return f"{shown} is not valid here: expected {expected}"
    if v == "format":
        return f"{shown} is not a valid {schema.get('format')}{hint}"
    if v in ("enum", "const"):
        allowed_values = schema.get("enum", [schema.get("const")])
        return f"{shown} is not allowed; expected one of {', '.join(json.dumps(x) for x in allowed_values)}"
    if v == "type":
        return f"expected {schema.get('type')}, got {_json_type(error.instance)}{hint}"
    message = error.message
    if isinstance(error.instance, str):
        # jsonschema quotes the whole value ("'...' is too long"): 10 MB in would be 10 MB on stderr.
        return f"{message.replace(repr(error.instance), shown, 1)}{hint}"
    if not isinstance(error.instance, (Mapping, list)):
        return f"{message}{hint}"
    return f"{message.replace(repr(error.instance), 'the value')}{hint}"


def _secret_path(error: ValidationError) -> bool:
    """True when the failing value sits under a schema marked ``writeOnly`` (e.g. inside a secret's oneOf branch)."""
    parent = error.parent
    while parent is not None:
        if isinstance(parent.schema, Mapping) and parent.schema.get("writeOnly"):
            return True
        parent = parent.parent
    return False


def _fits_a_type(value: Any, kinds: list[str]) -> bool:
    kind = _json_type(value)
    return kind in kinds or (kind == "integer" and "number" in kinds)


def _show(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return f"the {_json_type(value)}"
    if isinstance(value, str) and len(value) > 80:
        return preview(value)
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    for name, kind in (("null", type(None)), ("boolean", bool), ("integer", int), ("number", float), ("string", str)):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "object"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_KEY_VALUE_TYPES = frozenset({str, int, float, bool})
_COLUMN_VALUE_TYPES = _KEY_VALUE_TYPES | {type(None)}
_RECORD_KEYS = frozenset({"id", "key", "fields"})


@lru_cache(maxsize=4096, typed=True)
def _plain_name(name: Any) -> bool:
    """Remembered: every record of a bulk write repeats the same column names (names are dict keys: hashable)."""
    return type(name) is str and _NAME.fullmatch(name) is not None


def _plain_names(values: dict[Any, Any], types: frozenset[type]) -> bool:
    """Every name plain and every value of ``types``, asked through ``map`` (no Python frame per value)."""
    return types.issuperset(map(type, values.values())) and all(map(_plain_name, values))


def _plain_key(key: Any) -> bool:
    """``common/defs.json#/$defs/key``: 1 to 16 named text, number or yes/no values."""
    return type(key) is dict and 1 <= len(key) <= 16 and _plain_names(key, _KEY_VALUE_TYPES)


def _plain_lookup(value: Any) -> bool:
    """``common/defs.json#/$defs/lookup``: a table's name and exactly one of a GUID id or a plain key."""
    if type(value) is not dict or not value.keys() <= {"table", "id", "key"} or len(value) != 2:
        return False
    table, row = value.get("table"), value.get("id")
    found = type(row) is str and _GUID.fullmatch(row) is not None if row is not None else _plain_key(value.get("key"))
    return found and type(table) is str and _NAME.fullmatch(table) is not None


def plain_record(record: Any) -> bool:
    """True only for a ``write_entities`` record the schema accepts: ``fields`` of text, numbers, yes/no, null and
    lookups by name, and a GUID ``id`` or a plain ``key``. False means "ask jsonschema", never "invalid".

    jsonschema walks each record through five ``$ref``s (0.7 ms a record: 14 of a 20,000-record write's 19 CPU
    seconds); this takes 3 us. ``tests/test_schemas.py`` runs both over valid and invalid samples."""
    if type(record) is not dict or not record.keys() <= _RECORD_KEYS:
        return False
    fields, row = record.get("fields"), record.get("id")
    if type(fields) is not dict or not all(map(_plain_name, fields)):
        return False
    scalars = _COLUMN_VALUE_TYPES.issuperset(map(type, fields.values()))
    if not scalars and not all(type(v) in _COLUMN_VALUE_TYPES or _plain_lookup(v) for v in fields.values()):
        return False
    if "id" in record and not (type(row) is str and _GUID.fullmatch(row)):
        return False
    return "key" not in record or _plain_key(record["key"])


#: Arrays whose items :meth:`SchemaStore.validate` checks with a predicate first: (property, predicate, and the
#: inputs the predicate speaks for). When every item passes, jsonschema sees the inputs with an empty array (the other
#: properties are still its to judge); when one does not, jsonschema judges the whole input, so its messages and
#: paths are unchanged. ``plain_record`` speaks only for the modes that write fields: a removal's records must carry
#: none, which the schema says and the predicate does not.
PLAIN_ITEMS: dict[str, tuple[str, Callable[[Any], bool], Callable[[dict[str, Any]], bool]]] = {
    SCHEMA_BASE + "actions/write_entities.input.json": (
        "records",
        plain_record,
        lambda inputs: inputs.get("mode") in ("create", "update", "upsert"),
    ),
}


def _without_plain_items(instance: Any, schema_id: str) -> Any:
    found = PLAIN_ITEMS.get(schema_id)
    if found is None or type(instance) is not dict:
        return instance
    name, plain, applies = found
    items = instance.get(name)
    if not applies(instance) or type(items) is not list or not all(map(plain, items)):
        return instance
    return {**instance, name: []}


@lru_cache(maxsize=1)
def builtin_store() -> SchemaStore:
    """The store of the built-in schemas, read once per process."""
    store = SchemaStore()
    problems, _ = store.add_folder(data_root() / "schemas")
    if problems:
        raise ContractError(problems)
    return store


def validate(instance: Any, ref: str) -> list[InputProblem]:
    """Validate against a built-in schema given by path relative to ``schemas/``."""
    return builtin_store().validate(instance, ref)
