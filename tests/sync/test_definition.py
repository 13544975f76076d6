"""The sync definition: model equals schema, files read as YAML or JSON, refusals name the field and the fix, and the
operator policy sees every file, database and state store before anything is opened."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from connector.errors import ConnectionConfigError, InputError
from connector.policy import OperatorPolicy
from connector.schemas import builtin_store
from connector.sync.definition import (
    SCHEMA,
    LookupSpec,
    MappingEntry,
    MatchSpec,
    SourceSpec,
    SyncDefinition,
    load_definition,
)

LOCAL = OperatorPolicy(preset="local")
_JSON = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}
_MISSING = object()

MINIMAL: dict[str, Any] = {
    "name": "accounts",
    "source": {"path": "companies.csv"},
    "target": "account",
    "match": {"key": "accountnumber"},
    "mapping": [{"source": "number", "target": "accountnumber"}, {"source": "company", "target": "name"}],
}


def _resolved(node: dict[str, Any]) -> dict[str, Any]:
    store = builtin_store()
    if "$ref" not in node:
        return node
    target: dict[str, Any] = store.resolver(SCHEMA).lookup(node["$ref"]).contents
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _schema_types(node: dict[str, Any]) -> set[str]:
    """The JSON types a property admits, null left out (the model's ``None`` default), integer within number."""
    node = _resolved(node)
    if "enum" in node:
        found = {_JSON[type(v)] for v in node["enum"] if v is not None}
    elif node.get("oneOf") and all("const" in b for b in node["oneOf"]):
        found = {_JSON[type(b["const"])] for b in node["oneOf"]}
    elif "anyOf" in node:
        found = set().union(*(_schema_types(b) for b in node["anyOf"]))
    else:
        declared = node.get("type", [])
        found = {declared} if isinstance(declared, str) else set(declared)
    return found - {"null"}


def _model_types(annotation: Any) -> set[str]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_model_types(a) for a in typing.get_args(annotation) if a is not type(None)))
    if origin is typing.Literal:
        return {_JSON[type(v)] for v in typing.get_args(annotation)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"object"}
    return {_JSON[origin or annotation]}


def _number(types_: set[str]) -> set[str]:
    return types_ - {"integer"} if "number" in types_ else types_


@pytest.mark.parametrize(
    ("model", "pointer"),
    [
        (SyncDefinition, ""),
        (SourceSpec, "/$defs/source"),
        (MatchSpec, "/$defs/match"),
        (MappingEntry, "/$defs/mapping_entry"),
        (LookupSpec, "/$defs/lookup"),
    ],
)
def test_each_model_equals_its_schema(model: type[BaseModel], pointer: str) -> None:
    store = builtin_store()
    schema = store.resolver(SCHEMA).lookup(f"{store.resolve_id(SCHEMA)}#{pointer}").contents
    properties = schema["properties"]
    assert set(model.model_fields) == set(properties)
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert required == set(schema.get("required", []))
    assert schema.get("additionalProperties") is False
    for name, field in model.model_fields.items():
        prop = properties[name]
        expected = _MISSING if name in required else prop.get("default")
        actual = _MISSING if field.is_required() else field.get_default(call_default_factory=True)
        assert actual == expected, f"{model.__name__}.{name} default"
        assert _number(_model_types(field.annotation)) == _number(_schema_types(prop)), f"{model.__name__}.{name}"


def _write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(data) if name.endswith(".json") else _yaml(data), encoding="utf-8")
    return path


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data)


@pytest.mark.parametrize("name", ["accounts.yaml", "accounts.yml", "accounts.json"])
def test_a_file_is_read_as_yaml_or_json_and_relative_paths_anchor_at_its_folder(tmp_path: Path, name: str) -> None:
    definition = load_definition(_write(tmp_path, name, MINIMAL), policy=LOCAL)
    assert definition.source.path == str(tmp_path.resolve() / "companies.csv")
    assert definition.state == f"sqlite:///{tmp_path.resolve() / 'accounts.sync.sqlite'}"
    assert (definition.mode, definition.batch_size, definition.parallelism) == ("upsert", 100, None)
    assert definition.mapping[0] == MappingEntry(source="number", target="accountnumber")
    assert definition.mapping[1].null == "keep" and definition.mapping[1].create_only is False


def test_overrides_replace_top_level_fields_and_are_checked_too(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.yaml", MINIMAL)
    assert load_definition(path, policy=LOCAL, overrides={"mode": "insert", "batch_size": 10}).batch_size == 10
    with pytest.raises(InputError, match=r"\$\.batch_size"):
        load_definition(path, policy=LOCAL, overrides={"batch_size": 5000})


def test_a_relative_sqlite_url_is_anchored_and_other_urls_are_kept(tmp_path: Path) -> None:
    data = {**MINIMAL, "source": {"url": "sqlite:///wh.db", "table": "companies"}, "state": "sqlite:///st/s.db"}
    definition = load_definition(data, policy=LOCAL, base_dir=tmp_path)
    assert definition.source.url == f"sqlite:///{tmp_path.resolve() / 'wh.db'}"
    assert definition.state == f"sqlite:///{tmp_path.resolve() / 'st/s.db'}"
    remote = {**MINIMAL, "source": {"url": "postgresql://u:p@db.example/wh", "sql": "select 1"}}
    assert load_definition(remote, policy=LOCAL, base_dir=tmp_path).source.url == "postgresql://u:p@db.example/wh"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"mode": "merge"}, "$.mode", ""),
        ({"name": "a b"}, "$.name", ""),
        ({"colour": 1}, "$", "colour"),
        ({"source": {"path": "a.csv", "duckdb": "w.duckdb"}}, "$.source", "not path and duckdb"),
        ({"source": {}}, "$.source", "give path"),
        ({"source": {"duckdb": "w.duckdb"}}, "$.source.duckdb", "table or sql"),
        ({"source": {"path": "a.csv", "table": "t"}}, "$.source.table", "duckdb or url"),
        ({"source": {"path": "a.txt"}}, "$.source.format", "give format csv"),
        ({"source": {"stdin": True, "sql": "select 1"}}, "$.source.sql", "before the pipe"),
        ({"match": {"key": "k", "id": "crm_id"}}, "$.match", "exactly one of key"),
        ({"match": {"key": "k", "id_insert": True}}, "$.match.id_insert", "belongs with id"),
        ({"match": {"key": "k", "stamp": "x"}}, "$.match.stamp", "belongs with column"),
        ({"match": {"id": "crm_id", "id_insert": True}, "mode": "update"}, "$.match.id_insert", "never creates"),
        ({"mapping": [{"target": "name", "source": "a", "constant": "b"}]}, "$.mapping[0]", "exactly one of"),
        ({"mapping": [{"target": "name"}]}, "$.mapping[0]", "found none"),
        (
            {"mapping": [{"target": "name", "source": "a"}, {"target": "Name", "source": "b"}]},
            "$.mapping[1].target",
            "twice",
        ),
        (
            {"mapping": [{"target": "parentaccountid", "lookup": {"table": "account"}}]},
            "$.mapping[0].lookup",
            "key ({key column",
        ),
        ({"mapping": [{"target": "name", "source": "a", "null": "erase"}]}, "$.mapping[0].null", ""),
        ({"state": "not a url"}, "$.state", "SQLAlchemy URL"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_field(change: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        load_definition({**MINIMAL, **change}, policy=LOCAL, base_dir=Path("/tmp"))
    assert caught.value.exit_code == 2
    assert any(p.path == path and words in p.message for p in caught.value.problems), caught.value.problems


def test_a_constant_may_be_null_to_clear_a_column() -> None:
    data = {**MINIMAL, "mapping": [*MINIMAL["mapping"], {"target": "fax", "constant": None}]}
    entry = load_definition(data, policy=LOCAL, base_dir=Path("/tmp")).mapping[2]
    assert "constant" in entry.model_fields_set and entry.constant is None and entry.source_columns == []


def test_unreadable_files_say_what_to_fix(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"not valid YAML at line \d: fix its syntax"):
        load_definition(tmp_path / "bad.yaml", policy=LOCAL)
    (tmp_path / "bad.json").write_text('{"name": NaN}', encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        load_definition(tmp_path / "bad.json", policy=LOCAL)
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="is an object"):
        load_definition(tmp_path / "list.yaml", policy=LOCAL)
    with pytest.raises(InputError, match="check the path"):
        load_definition(tmp_path / "missing.yaml", policy=LOCAL)


def _hosted(folder: Path) -> OperatorPolicy:
    return OperatorPolicy(preset="hosted", allowed_paths=(folder.resolve(),))


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"path": "/etc/passwd", "format": "csv"}, "source.path"),
        ({"path": "../outside/*.csv"}, "source.path"),
        ({"duckdb": "/var/wh.duckdb", "table": "t"}, "source.duckdb"),
        ({"url": "sqlite:////var/wh.db", "table": "t"}, "source.url"),
        ({"url": "postgresql://u:p@db.example/wh", "table": "t"}, "source.url"),
        ({"url": "sqlite://", "table": "t"}, "source.url"),
    ],
)
def test_hosted_refuses_sources_outside_the_operators_folders(tmp_path: Path, source: Any, field: str) -> None:
    inside = tmp_path / "in"
    inside.mkdir()
    with pytest.raises(ConnectionConfigError) as caught:
        load_definition({**MINIMAL, "source": source}, policy=_hosted(inside), base_dir=inside)
    assert caught.value.field == field
    assert "p@db" not in str(caught.value)


def test_hosted_refuses_a_glob_climbing_out_and_a_state_store_elsewhere(tmp_path: Path) -> None:
    policy = _hosted(tmp_path)
    with pytest.raises(InputError, match="climb out"):
        load_definition({**MINIMAL, "source": {"path": "data/*/../../x.csv"}}, policy=policy, base_dir=tmp_path)
    for state in ("sqlite:////var/state.db", "postgresql://db.example/state"):
        with pytest.raises(ConnectionConfigError) as caught:
            load_definition({**MINIMAL, "state": state}, policy=policy, base_dir=tmp_path)
        assert caught.value.field == "state"


def test_hosted_accepts_files_and_sqlite_under_the_operators_folders(tmp_path: Path) -> None:
    policy = _hosted(tmp_path)
    for source in (
        {"path": "data/*.parquet"},
        {"duckdb": "w.duckdb", "sql": "select 1"},
        {"url": "sqlite:///w.db", "table": "t"},
    ):
        load_definition({**MINIMAL, "source": source}, policy=policy, base_dir=tmp_path)
    path = _write(tmp_path, "d.yaml", MINIMAL)
    assert load_definition(path, policy=policy).state == f"sqlite:///{tmp_path.resolve() / 'accounts.sync.sqlite'}"
    with pytest.raises(ConnectionConfigError, match="definition"):
        load_definition(path, policy=_hosted(tmp_path / "elsewhere"))
