"""A sync definition: the YAML or JSON file that says which source rows go into which table, and how.

``schemas/sync.schema.json`` is the source of truth (the CLI's flags and the ``sync_records`` action's inputs are the
same fields); the models here give the rest of the sync typed access, and ``tests/sync/test_definition.py`` proves
model and schema agree. A definition is refused whole, before any row is read or any request sent: the schema's
problems first, then the rules a schema cannot state across fields (one kind of source, one kind of match), then the
operator policy (#13) on every file, SQL database and state URL it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from connector.errors import ConnectionConfigError, ContractError, InputError, InputProblem, preview
from connector.policy import OperatorPolicy
from connector.schemas import validate
from connector.strict_json import StrictJsonError
from connector.strict_json import loads as strict_loads

__all__ = [
    "SCHEMA",
    "AudienceModel",
    "DestinationSpec",
    "LookupSpec",
    "MappingEntry",
    "MatchSpec",
    "SourceSpec",
    "SyncDefinition",
    "check_policy",
    "file_format",
    "load_definition",
    "resolve_path",
]

SCHEMA = "sync.schema.json"
FORMATS = ("csv", "parquet", "jsonl")


class _Strict(BaseModel):
    """Frozen, strict and closed, as the action inputs are: built after the schema check, so a refusal is our bug."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", hide_input_in_errors=True)


def _problem(path: str, message: str) -> InputError:
    return InputError([InputProblem(path, message)])


class _Refusal(ValueError):
    """A cross-field rule broken inside a model: ``field`` is relative to the model, completed into a JSON path by
    :func:`_typed` from pydantic's location (``$.mapping[2]`` + ``lookup``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SourceSpec(_Strict):
    """Where rows come from; exactly one kind (see the schema's ``$defs/source``)."""

    path: str | None = None
    format: Literal["csv", "parquet", "jsonl"] | None = None
    duckdb: str | None = None
    url: str | None = None
    table: str | None = None
    sql: str | None = None
    stdin: bool = False

    @property
    def kind(self) -> Literal["file", "duckdb", "sql", "url", "stdin"]:
        """The reader this source needs: ``sql`` is a query over files in an in-memory DuckDB."""
        if self.stdin:
            return "stdin"
        if self.url is not None:
            return "url"
        if self.duckdb is not None:
            return "duckdb"
        return "file" if self.path is not None else "sql"

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [name for name in ("path", "duckdb", "url") if getattr(self, name) is not None]
        if self.stdin:
            given.append("stdin")
        if len(given) > 1:
            raise _Refusal("", f"give one of path, duckdb, url or stdin, not {' and '.join(given)}")
        if not given and self.sql is None:
            raise _Refusal("", "give path (files), duckdb (a database file), url (SQLAlchemy), sql or stdin")
        kind = self.kind
        if kind in ("duckdb", "url") and (self.table is None) == (self.sql is None):
            raise _Refusal(kind, "give either table or sql with it (one of the two)")
        if self.table is not None and kind not in ("duckdb", "url"):
            raise _Refusal("table", "table belongs with duckdb or url; over files use path (or sql)")
        if self.format is not None and kind != "file":
            raise _Refusal("format", "format belongs with path")
        if kind == "stdin" and self.sql is not None:
            raise _Refusal("sql", "stdin takes JSON lines as they are; transform them before the pipe")
        if kind == "file" and self.format is None and file_format(self.path or "") is None:
            shown = preview(self.path)
            raise _Refusal("format", f"cannot tell the format of {shown}: give format csv, parquet or jsonl")
        return self


def file_format(path: str) -> Literal["csv", "parquet", "jsonl"] | None:
    """The format a file's extension names (``.csv``, ``.parquet``, ``.jsonl``/``.ndjson``), else None."""
    lowered = path.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if lowered.endswith(suffix):
            return fmt  # type: ignore[return-value]
    return None


class MatchSpec(_Strict):
    """How a source row finds its Dataverse row: ``key``, ``id`` (+ ``id_insert``) or ``column`` (+ ``stamp``)."""

    key: str | list[str] | None = None
    id: str | None = None
    id_insert: bool = False
    column: str | None = None
    source: str | None = None
    stamp: str | None = None

    @property
    def kind(self) -> Literal["key", "id", "column"]:
        return "key" if self.key is not None else "id" if self.id is not None else "column"

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [name for name in ("key", "id", "column") if getattr(self, name) is not None]
        if len(given) != 1:
            found = given or "none"
            raise _Refusal(
                "",
                "give exactly one of key (an alternate key or its columns), id (a GUID source column) or column "
                f"(a Dataverse column matched by query); found {found}",
            )
        if self.id_insert and self.id is None:
            raise _Refusal("id_insert", "id_insert belongs with id")
        for name in ("source", "stamp"):
            if getattr(self, name) is not None and self.column is None:
                raise _Refusal(name, f"{name} belongs with column")
        return self


class LookupSpec(_Strict):
    """A related row by alternate key (key column -> source column) or by a GUID source column."""

    table: str
    key: dict[str, str] | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _key_or_id(self) -> Self:
        if (self.key is None) == (self.id is None):
            raise _Refusal("", "give either key ({key column: source column}) or id (a GUID source column)")
        return self


class MappingEntry(_Strict):
    """One target column and its value: a source column, a constant or a lookup (exactly one)."""

    target: str
    source: str | None = None
    constant: str | int | float | bool | None = None
    lookup: LookupSpec | None = None
    null: Literal["keep", "clear"] = "keep"
    create_only: bool = False

    @property
    def source_columns(self) -> list[str]:
        """The source columns this entry reads (none for a constant)."""
        if self.lookup is not None:
            return list(self.lookup.key.values()) if self.lookup.key else [self.lookup.id or ""]
        return [self.source] if self.source is not None else []

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        given = [name for name in ("source", "lookup") if getattr(self, name) is not None]
        if "constant" in self.model_fields_set:
            given.append("constant")
        if len(given) != 1:
            raise _Refusal("", f"give exactly one of source, constant or lookup; found {given or 'none'}")
        return self


class DestinationSpec(_Strict):
    """Which existing rows the sync may update or remove: structured ``where`` or OData ``filter`` text (one)."""

    where: list[dict[str, Any]] | None = None
    filter: str | None = None
    allow_creates: bool = True

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.where is None) == (self.filter is None):
            raise _Refusal("", "give either where (conditions as query_entities takes them) or filter (OData text)")
        return self


class AudienceModel(_Strict):
    """A segment kept in step with a marketing list (``list``) or a membership column (``column``): one of the two."""

    mode: Literal["add", "remove", "mirror", "upsert"]
    list: str | None = None
    column: str | None = None
    value: str | int | bool | None = None
    out_value: str | int | bool | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.list is None) == (self.column is None):
            raise _Refusal("", "give either list (a marketing list's id or name) or column (a boolean or choice)")
        for name in ("value", "out_value"):
            if getattr(self, name) is not None and self.column is None:
                raise _Refusal(name, f"{name} belongs with column")
        return self


class SyncDefinition(_Strict):
    """The typed definition; :func:`load_definition` is how one is read (schema, cross-field rules, policy)."""

    name: str
    source: SourceSpec
    target: str
    match: MatchSpec
    mode: Literal["upsert", "insert", "update", "mirror"] = "upsert"
    mapping: list[MappingEntry]
    batch_size: int = 100
    parallelism: int | None = None
    bypass_business_logic: list[Literal["CustomSync", "CustomAsync"]] = []
    bypass_custom_plugins: bool = False
    # mode mirror (connector.sync.mirror)
    delete: Literal["auto", "remove", "deactivate", "clear"] = "auto"
    max_delete_fraction: float = 0.2
    destination_filter: DestinationSpec | None = None
    audience: AudienceModel | None = None
    state: str | None = Field(default=None, repr=False)  # a database URL may hold a password

    @model_validator(mode="after")
    def _mirror_fields(self) -> Self:
        audience_mirror = self.audience is not None and self.audience.mode == "mirror"
        if self.delete != "auto" and self.mode != "mirror":  # the schema's default, which forms fill in, passes
            raise _Refusal("delete", f"delete belongs with mode mirror (mode is {self.mode})")
        if self.max_delete_fraction != 0.2 and self.mode != "mirror" and not audience_mirror:
            raise _Refusal(
                "max_delete_fraction", "max_delete_fraction belongs with mode mirror or audience mode mirror"
            )
        if self.audience is not None and self.mode == "mirror":
            raise _Refusal("audience", "an audience keeps membership: use audience.mode mirror, with mode upsert")
        return self

    @model_validator(mode="after")
    def _targets_once(self) -> Self:
        seen: set[str] = set()
        for index, entry in enumerate(self.mapping):
            if entry.target.lower() in seen:
                raise _Refusal(f"mapping[{index}].target", f"{entry.target!r} is mapped twice: keep one entry")
            seen.add(entry.target.lower())
        if self.match.id_insert and self.mode == "update":
            raise _Refusal("match.id_insert", "update never creates rows: drop id_insert or use mode upsert")
        return self


def _read_file(path: Path) -> Any:
    """YAML (``.yaml``/``.yml``) or JSON; JSON through the strict reader (no NaN, no 1e400, bounded depth)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.__class__.__name__
        raise _problem("$", f"cannot read the definition {path.name} ({reason}): check the path") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return strict_loads(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _problem("$", f"{path.name} is not valid YAML{where}: fix its syntax") from None
    except StrictJsonError as exc:
        raise _problem(exc.path, f"{path.name} is not valid JSON: {exc.reason}") from None


def _typed(data: Mapping[str, Any]) -> SyncDefinition:
    """The model of schema-valid data; a cross-field rule raises InputError itself, anything else is our bug."""
    try:
        return SyncDefinition.model_validate(dict(data))
    except ValidationError as exc:
        refused = [
            InputProblem(_json_path(e["loc"], e["ctx"]["error"].field), e["ctx"]["error"].message)
            for e in exc.errors()
            if isinstance(e.get("ctx", {}).get("error"), _Refusal)
        ]
        if refused:
            raise InputError(refused) from None
        problems = [f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}" for e in exc.errors()]
        raise ContractError([f"SyncDefinition disagrees with {SCHEMA}: {p}" for p in problems]) from None


def _json_path(loc: tuple[int | str, ...], field: str) -> str:
    parts = [*loc, field] if field else list(loc)
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def load_definition(
    source: Path | Mapping[str, Any],
    *,
    policy: OperatorPolicy,
    overrides: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> SyncDefinition:
    """Read, check and type a definition; ``overrides`` (CLI flags, action inputs) replace top-level fields.

    Relative paths and SQLite URLs are made absolute against ``base_dir`` (default: the file's folder, else the
    working directory) and ``state`` gets its default, so what the policy checked is exactly what is opened later.
    Raises :class:`InputError` (exit 2) naming the field and the fix; the policy's refusals keep their own class
    (:class:`ConnectionConfigError`, exit 3), as for connections.
    """
    if isinstance(source, Path):
        policy.check_path(source, "definition")
        data = _read_file(source)
        base_dir = base_dir or source.expanduser().resolve().parent
    else:
        data = source
    if not isinstance(data, Mapping):
        raise _problem("$", "a sync definition is an object (name, source, target, match, mapping)")
    merged = {**data, **(overrides or {})}
    problems = validate(merged, SCHEMA)
    if problems:
        raise InputError(problems)
    definition = _typed(_anchored(merged, (base_dir or Path.cwd()).resolve()))
    check_policy(definition, policy)
    return definition


def _anchored(data: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Schema-valid data with every file absolute and the state store's default filled in."""
    source = dict(data["source"])
    for name in ("path", "duckdb"):
        if source.get(name) is not None:
            source[name] = str(resolve_path(source[name], base_dir))
    if source.get("url") is not None:
        source["url"] = _anchored_url(source["url"], base_dir, "source.url")
    state = data.get("state") or f"sqlite:///{base_dir / (str(data['name']) + '.sync.sqlite')}"
    return {**data, "source": source, "state": _anchored_url(state, base_dir, "state")}


def resolve_path(value: str, base_dir: Path) -> Path:
    """A definition's path, relative to its folder unless absolute (``~`` expanded)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _anchored_url(url: str, base_dir: Path, name: str) -> str:
    """A SQLAlchemy URL, a relative SQLite file made absolute (SQLAlchemy would take it from the working directory)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise _problem(f"$.{name}", "is not a SQLAlchemy URL: write dialect://... (sqlite:///file.db)") from None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return url
    return parsed.set(database=str(resolve_path(database, base_dir))).render_as_string(hide_password=False)


def check_policy(definition: SyncDefinition, policy: OperatorPolicy) -> None:
    """The operator policy on everything the definition reads or writes, before anything is opened.

    In ``hosted`` a file (source path, DuckDB file, SQLite database, state file) must lie under D365_ALLOWED_PATHS,
    and a SQLAlchemy URL must be a SQLite file: a network database is a place credentials and rows would go that the
    operator did not list. A glob is checked by its fixed prefix (the folder before the first wildcard) and may not
    climb out of it with ``..``; SQL over files is confined at run time by DuckDB's own ``allowed_directories``
    (connector.sync.sources).
    """
    spec = definition.source
    if spec.path is not None:
        root, pattern = _glob_split(spec.path)
        if ".." in Path(pattern).parts and policy.preset == "hosted":
            raise _problem("$.source.path", "a glob may not climb out of its folder with ..: name the folder itself")
        policy.check_path(Path(root), "source.path")
    if spec.duckdb is not None:
        policy.check_path(Path(spec.duckdb), "source.duckdb")
    if spec.url is not None:
        check_url_policy(spec.url, policy, "source.url")
    check_url_policy(definition.state or "", policy, "state", state=True)


def _glob_split(path: str) -> tuple[str, str]:
    """A glob's fixed folder (every file it can match lies below it) and the wildcard part after it."""
    cut = min((i for i, ch in enumerate(path) if ch in "*?["), default=len(path))
    if cut == len(path):
        return path, ""
    folder = path[:cut].rpartition("/")[0] or "/"
    return folder, path[len(folder) :]


def check_url_policy(url: str, policy: OperatorPolicy, name: str, *, state: bool = False) -> None:
    """In ``hosted``, a SQLAlchemy URL must be a SQLite file under the allowed folders or, for a ``state`` store, a
    database the operator listed in D365_ALLOWED_STATE_URLS (never a source: the listing is for state)."""
    if policy.preset == "local" or (state and policy.allows_state_url(url)):
        return
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        listed = (
            " or a database the operator lists in D365_ALLOWED_STATE_URLS=dialect://host:port/database (no "
            "credentials; this one is not listed)"
            if state
            else ""
        )
        raise ConnectionConfigError(
            f"{name} names a {parsed.get_backend_name()} database that is not a SQLite file: a hosted connector "
            f"reads and writes only SQLite files under D365_ALLOWED_PATHS{listed} (D365_POLICY=local where the "
            "person running it is the operator)",
            field=name,
        )
    policy.check_path(Path(database), name)
