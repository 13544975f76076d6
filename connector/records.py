"""Record operations by GUID or alternate key: get, create, update, upsert, delete, associate, disassociate.

The rules that users of other connectors get wrong are applied here, from metadata, never guessed from names:

* a lookup in ``fields`` (``{"table": ..., "id"|"key": ...}``) becomes ``<nav>@odata.bind`` where ``<nav>`` is the
  relationship's ``ReferencingEntityNavigationPropertyName``: per target table for polymorphic columns
  (``customerid_account``), the one name for a column with a single relationship (``ownerid`` for a user or a team);
* choice labels are mapped to their integer through the option set;
* key values are typed from the column types and quoted; keys with characters Dataverse refuses in a key predicate go
  through a ``$filter`` lookup, and an upsert then becomes PATCH-by-GUID (found) or POST with a client GUID (not
  found; a duplicate-key answer to that POST is retried once as an update, since someone created it meanwhile);
* key columns are never repeated in an upsert body addressed by key.

:func:`input_problems` is the phase-two validation the runtime calls before any write: it reads metadata only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from connector import ids
from connector.errors import ConcurrencyError, FatalApiError, InputError, InputProblem, NotFoundError
from connector.metadata import TableMetadata
from connector.odata import (
    CHOICE_TYPES,
    LOOKUP_TYPES,
    NUMERIC_TYPES,
    STRING_TYPES,
    LiteralError,
    build_query_string,
    entity_id,
    filter_column,
    format_literal,
    key_is_url_safe,
    key_predicate,
)

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "RECORD_ACTIONS",
    "associate",
    "create_record",
    "delete_record",
    "disassociate",
    "get_record",
    "input_problems",
    "update_record",
    "upsert_record",
]

RECORD_ACTIONS = frozenset(
    {
        "get_entity",
        "create_entity",
        "update_entity",
        "upsert_entity",
        "delete_entity",
        "query_entities",
        "associate_entities",
        "disassociate_entities",
    }
)
ANNOTATIONS_ALL = 'odata.include-annotations="*"'
_DUPLICATE_CODES = frozenset({"0x80040237", "0x80060892"})


# -- validation (phase two) -----------------------------------------------------------------------------------------
class _Problems:
    """Collects problems; metadata misses trigger one fresh read of the table (a key may have just been created)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.items: list[InputProblem] = []
        self._refreshed: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.items.append(InputProblem(path, message))

    def table(self, name: str, path: str) -> TableMetadata | None:
        try:
            return self.connection.metadata.table(name, path=path)
        except InputError as exc:
            self.items += [InputProblem(path, p.message) for p in exc.problems]
            return None

    def fresh(self, meta: TableMetadata) -> TableMetadata:
        """Re-read a table once per validation, after a miss, before reporting the miss."""
        if meta.logical_name in self._refreshed:
            return meta
        self._refreshed.add(meta.logical_name)
        return self.connection.metadata.table(meta.logical_name, refresh=True)


def _unknown_column(meta: TableMetadata, column: str) -> str:
    close = difflib.get_close_matches(column, list(meta.attributes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown column {column!r} of table {meta.logical_name!r}{hint}"


def _columns_known(p: _Problems, meta: TableMetadata, columns: Sequence[str]) -> TableMetadata:
    if any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    return meta


def _check_key(p: _Problems, meta: TableMetadata, key: Mapping[str, Any], path: str) -> tuple[TableMetadata, bool]:
    """Problems of an alternate key: unknown columns, columns outside every key, no key of exactly these columns."""
    columns = frozenset(key)
    if meta.key_for(columns) is None or any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    ok = True
    in_keys = meta.key_columns()
    for column in key:
        if column not in meta.attributes:
            p.add(f"{path}.{column}", _unknown_column(meta, column))
            ok = False
        elif column not in in_keys:
            p.add(
                f"{path}.{column}",
                f"column {column!r} is not part of any alternate key of {meta.logical_name!r}; "
                f"{meta.describe_keys()}. Use id, or create an alternate key with this column",
            )
            ok = False
    if not ok:
        return meta, False
    found = meta.key_for(columns)
    if found is None:
        p.add(
            path, f"no alternate key of {meta.logical_name!r} is made of exactly these columns; {meta.describe_keys()}"
        )
        return meta, False
    if not found.active:
        p.add(
            path,
            f"the alternate key {found.schema_name!r} is {found.status}: its index is not ready; try again when "
            "EntityKeyIndexStatus is Active",
        )
        return meta, False
    for column, value in key.items():
        typ = meta.attributes[column].type
        try:
            format_literal(_key_value(p.connection, meta, column, value), typ)
        except (LiteralError, ValueError) as exc:
            p.add(f"{path}.{column}", str(exc))
            ok = False
    return meta, ok


def _key_value(connection: Connection, meta: TableMetadata, column: str, value: Any) -> Any:
    if meta.attributes[column].type in CHOICE_TYPES and isinstance(value, str):
        return connection.metadata.choice_value(meta.logical_name, column, value)
    return value


def _check_select(p: _Problems, meta: TableMetadata, select: Sequence[str], path: str) -> TableMetadata:
    meta = _columns_known(p, meta, select)
    for i, column in enumerate(select):
        if column not in meta.attributes:
            p.add(f"{path}[{i}]", _unknown_column(meta, column))
    return meta


def _check_expand(p: _Problems, meta: TableMetadata, expand: Sequence[Mapping[str, Any]], path: str) -> None:
    for i, item in enumerate(expand):
        nav = str(item.get("navigation"))
        found = meta.navigation_target(nav)
        if found is None:
            meta = p.fresh(meta)
            found = meta.navigation_target(nav)
        if found is None:
            close = difflib.get_close_matches(
                nav, [*meta.single_navigations, *meta.collection_navigations], n=3, cutoff=0.5
            )
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            p.add(f"{path}[{i}].navigation", f"{meta.logical_name!r} has no navigation property {nav!r}{hint}")
            continue
        target_name, _ = found
        if target_name == "owner" or not item.get("select"):
            continue
        target = p.table(target_name, f"{path}[{i}].navigation")
        if target is not None:
            _check_select(p, target, item["select"], f"{path}[{i}].select")


def _check_fields(
    p: _Problems,
    meta: TableMetadata,
    fields: Mapping[str, Any],
    path: str,
    *,
    for_create: bool,
) -> TableMetadata:
    meta = _columns_known(p, meta, list(fields))
    _build_body(p.connection, meta, fields, path, for_create=for_create, problems=p, resolve=False)
    return meta


def input_problems(action_id: str, inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase-two problems of a record action's inputs, found with metadata reads only (never a data read or write)."""
    if action_id not in RECORD_ACTIONS:
        return []
    p = _Problems(connection)
    meta = p.table(str(inputs["table"]), "$.table")
    if meta is None:
        return p.items
    if inputs.get("id") is not None and inputs.get("key") is not None:
        p.add("$.key", "give either id or key, not both")
    if inputs.get("key"):
        meta, _ = _check_key(p, meta, inputs["key"], "$.key")
    if inputs.get("select"):
        meta = _check_select(p, meta, inputs["select"], "$.select")
    if inputs.get("expand"):
        _check_expand(p, meta, inputs["expand"], "$.expand")
    if action_id in ("create_entity", "update_entity", "upsert_entity"):
        fields = inputs.get("fields") or {}
        meta = _check_fields(p, meta, fields, "$.fields", for_create=action_id != "update_entity")
        if action_id == "upsert_entity" and inputs.get("key"):
            for column, value in inputs["key"].items():
                if column in fields and fields[column] != value:
                    p.add(
                        f"$.fields.{column}",
                        f"{column!r} is a key column addressed by key with another value; an upsert cannot change "
                        "the key: remove it from fields",
                    )
    addressed = action_id in ("update_entity", "upsert_entity", "delete_entity", "get_entity")
    if (addressed or action_id.endswith("associate_entities")) and inputs.get("id") is None and not inputs.get("key"):
        p.add("$.id", "give the row's id or an alternate key")
    if action_id == "query_entities":
        from connector.paging import query_problems

        query_problems(p, meta, inputs)
    if action_id.endswith("associate_entities"):
        _check_association(p, meta, inputs, disassociate=action_id == "disassociate_entities")
    return p.items


def _check_association(p: _Problems, meta: TableMetadata, inputs: Mapping[str, Any], *, disassociate: bool) -> None:
    nav = str(inputs["navigation"])
    found = meta.navigation_target(nav)
    if found is None:
        meta = p.fresh(meta)
        found = meta.navigation_target(nav)
    if found is None:
        navs = sorted([*meta.single_navigations, *meta.collection_navigations])
        close = difflib.get_close_matches(nav, navs, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        p.add("$.navigation", f"{meta.logical_name!r} has no navigation property {nav!r}{hint}")
        return
    target_name, is_collection = found
    related = inputs.get("related")
    if related is None:
        if not (disassociate and not is_collection):
            p.add("$.related", f"{nav!r} needs the related row: related {{table, id}} or {{table, key}}")
        return
    target = p.table(str(related["table"]), "$.related.table")
    if target is None:
        return
    allowed = ("systemuser", "team") if target_name == "owner" else (target_name,)
    if target.logical_name not in allowed:
        p.add(
            "$.related.table",
            f"{nav!r} relates {meta.logical_name!r} to {' or '.join(allowed)}, not {target.logical_name!r}",
        )
        return
    if related.get("key"):
        _check_key(p, target, related["key"], "$.related.key")


# -- request bodies -------------------------------------------------------------------------------------------------
def _build_body(
    connection: Connection,
    meta: TableMetadata,
    fields: Mapping[str, Any],
    path: str,
    *,
    for_create: bool,
    problems: _Problems | None = None,
    resolve: bool = True,
    impersonate: str | None = None,
) -> dict[str, Any]:
    """The JSON body for ``fields``: lookups as ``@odata.bind``, labels as integers, values checked against types."""
    p = problems or _Problems(connection)
    body: dict[str, Any] = {}
    for column, value in fields.items():
        here = f"{path}.{column}"
        attr = meta.attributes.get(column)
        if attr is None:
            p.add(here, _unknown_column(meta, column))
            continue
        if for_create and not attr.valid_for_create:
            p.add(here, f"{column!r} cannot be set when a row is created (Dataverse sets it)")
            continue
        if not for_create and not attr.valid_for_update:
            p.add(here, f"{column!r} cannot be changed on update")
            continue
        typ = attr.type
        if typ in LOOKUP_TYPES:
            bound = _bind(p, meta, column, value, here, resolve=resolve, impersonate=impersonate)
            if bound is not None:
                body[bound[0]] = bound[1]
            continue
        if value is None:
            body[column] = None
            continue
        try:
            body[column] = _plain_value(connection, meta, column, typ, value)
        except (LiteralError, ValueError) as exc:
            p.add(here, str(exc))
    if problems is None and p.items:
        raise InputError(p.items)
    return body


def _plain_value(connection: Connection, meta: TableMetadata, column: str, typ: str, value: Any) -> Any:
    if typ in CHOICE_TYPES:
        if isinstance(value, str):
            return connection.metadata.choice_value(meta.logical_name, column, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise LiteralError(f"{column!r} is a choice column: give its integer value or its label")
        return value
    if typ in STRING_TYPES and not isinstance(value, str):
        raise LiteralError(f"{column!r} is a text column: give a string")
    if typ in NUMERIC_TYPES and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise LiteralError(f"{column!r} is a {typ} column: give a number")
    if typ in ("Integer", "BigInt") and isinstance(value, float) and not value.is_integer():
        raise LiteralError(f"{column!r} is a whole-number column")
    if typ == "Boolean" and not isinstance(value, bool):
        raise LiteralError(f"{column!r} is a yes/no column: give true or false")
    if typ in ("DateTime", "Uniqueidentifier"):
        format_literal(value, typ)
    return value


def _bind(
    p: _Problems,
    meta: TableMetadata,
    column: str,
    value: Any,
    path: str,
    *,
    resolve: bool,
    impersonate: str | None,
) -> tuple[str, Any] | None:
    """``(nav@odata.bind, "/set(id)")`` for a lookup value, with the navigation name from the relationship."""
    relationships = meta.lookups.get(column, ())
    if not relationships:
        p.add(path, f"{column!r} has no relationship in the metadata of {meta.logical_name!r}; it cannot be set")
        return None
    if value is None:
        return f"{relationships[0].navigation}@odata.bind", None
    if not isinstance(value, Mapping) or "table" not in value:
        p.add(path, f'{column!r} is a lookup: give {{"table": ..., "id": GUID}} or {{"table": ..., "key": {{...}}}}')
        return None
    target = p.table(str(value["table"]), f"{path}.table")
    if target is None:
        return None
    allowed: tuple[str, ...]
    if len(relationships) == 1:
        rel = relationships[0]
        allowed = ("systemuser", "team") if rel.target == "owner" else (rel.target,)
    else:
        matching = [r for r in relationships if r.target == target.logical_name]
        allowed = tuple(r.target for r in relationships)
        rel = matching[0] if matching else relationships[0]
    if target.logical_name not in allowed:
        p.add(f"{path}.table", f"{column!r} refers to {' or '.join(allowed)}, not {target.logical_name!r}")
        return None
    nav = f"{rel.navigation}@odata.bind"
    if value.get("id") is not None:
        return nav, f"/{target.entity_set}({value['id']})"
    key = value.get("key") or {}
    target, ok = _check_key(p, target, key, f"{path}.key")
    if not ok:
        return None
    if key_is_url_safe(key):
        return nav, f"/{target.entity_set}({_predicate(p.connection, target, key)})"
    if not resolve:
        return nav, None
    found = _find_by_key(p.connection, target, key, impersonate)
    if found is None:
        raise _not_found(target, key=key, what=f"the row {column!r} refers to")
    return nav, f"/{target.entity_set}({found})"


def _predicate(connection: Connection, meta: TableMetadata, key: Mapping[str, Any]) -> str:
    typed = {c: _key_value(connection, meta, c, v) for c, v in key.items()}
    return key_predicate(typed, meta.types)


# -- addressing -----------------------------------------------------------------------------------------------------
def _describe_key(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{c}={v!r}" for c, v in key.items())


def _not_found(
    meta: TableMetadata,
    *,
    id: str | None = None,
    key: Mapping[str, Any] | None = None,
    cause: NotFoundError | None = None,
    what: str = "the row",
) -> NotFoundError:
    named = f"id {id}" if id else f"key {_describe_key(key or {})}"
    extra: dict[str, Any] = {}
    if cause is not None:
        extra = {"status_code": cause.status_code, "code": cause.code, "request_id": cause.request_id}
    else:
        extra = {"status_code": 404}
    return NotFoundError(f"{what} of table {meta.logical_name!r} with {named} does not exist", **extra)


def _find_by_key(
    connection: Connection, meta: TableMetadata, key: Mapping[str, Any], impersonate: str | None
) -> str | None:
    """The GUID of the row with these key values, found through ``$filter`` (for values a key URL cannot carry)."""
    clauses = []
    for column, value in key.items():
        typ = meta.attributes[column].type
        literal = format_literal(_key_value(connection, meta, column, value), typ)
        clauses.append(f"{filter_column(column, typ)} eq {literal}")
    query = build_query_string({"$select": meta.primary_id, "$filter": " and ".join(clauses), "$top": "1"})
    body = connection.client.get_json(f"{meta.entity_set}?{query}", impersonate=impersonate)
    rows = body.get("value", []) if isinstance(body, dict) else []
    return str(rows[0][meta.primary_id]) if rows else None


def _address(
    connection: Connection,
    meta: TableMetadata,
    id: str | None,
    key: Mapping[str, Any] | None,
    impersonate: str | None,
) -> str:
    """``set(guid)`` or ``set(k='v')``; a key a URL cannot carry is first resolved to its GUID through $filter."""
    if id is not None:
        return f"{meta.entity_set}({id})"
    assert key
    if key_is_url_safe(key):
        return f"{meta.entity_set}({_predicate(connection, meta, key)})"
    found = _find_by_key(connection, meta, key, impersonate)
    if found is None:
        raise _not_found(meta, key=key)
    return f"{meta.entity_set}({found})"


def _with_query(path: str, params: Mapping[str, str]) -> str:
    query = build_query_string({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path


def _select_params(meta: TableMetadata, inputs: Mapping[str, Any], connection: Connection) -> dict[str, str]:
    params: dict[str, str] = {}
    if inputs.get("select"):
        params["$select"] = ",".join(filter_column(c, meta.attributes[c].type) for c in inputs["select"])
    if inputs.get("expand"):
        params["$expand"] = _expand_param(meta, inputs["expand"], connection)
    return params


def _expand_param(meta: TableMetadata, expand: Sequence[Mapping[str, Any]], connection: Connection) -> str:
    parts = []
    for item in expand:
        nav = str(item["navigation"])
        select = item.get("select")
        if select:
            target_name = meta.navigation_target(nav)
            columns = list(select)
            if target_name is not None and target_name[0] != "owner":
                target = connection.metadata.table(target_name[0])
                columns = [filter_column(c, target.attributes[c].type) if c in target.attributes else c for c in select]
            parts.append(f"{nav}($select={','.join(columns)})")
        else:
            parts.append(nav)
    return ",".join(parts)


def _id_from(response: httpx.Response, meta: TableMetadata) -> str | None:
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get(meta.primary_id):
            return str(body[meta.primary_id])
    return entity_id(response)


def _record(response: httpx.Response) -> dict[str, Any] | None:
    if not response.content:
        return None
    body = response.json()
    if isinstance(body, dict):
        body.pop("@odata.context", None)
        return body
    return None


def _prefer(inputs: Mapping[str, Any], *, representation: bool) -> list[str]:
    prefer = ["return=representation"] if representation else []
    if inputs.get("include_annotations"):
        prefer.append(ANNOTATIONS_ALL)
    return prefer


# -- actions --------------------------------------------------------------------------------------------------------
def get_record(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """GET one row by id or key, with ``select``/``expand`` and optional formatted values; not found is typed."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    id_, key = inputs.get("id"), inputs.get("key")
    path = _address(connection, meta, id_, key, impersonate)
    try:
        response = connection.client.request(
            "GET",
            _with_query(path, _select_params(meta, inputs, connection)),
            prefer=_prefer(inputs, representation=False),
            impersonate=impersonate,
        )
    except NotFoundError as exc:
        raise _not_found(meta, id=id_, key=key, cause=exc) from None
    record = _record(response) or {}
    return {
        "table": meta.logical_name,
        "id": str(record.get(meta.primary_id) or id_ or ""),
        "etag": record.get("@odata.etag"),
        "record": record,
    }


def create_record(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """POST a row; lookups bound through metadata, labels mapped; optional client id and duplicate detection."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    body = _build_body(
        connection, meta, inputs.get("fields") or {}, "$.fields", for_create=True, impersonate=impersonate
    )
    return_record = bool(inputs.get("return_record", True))
    headers = {"MSCRM.SuppressDuplicateDetection": "false"} if inputs.get("detect_duplicates") else None
    # A given id, or client_id, makes the create retry-safe: a resend after a lost answer is confirmed by a GET
    # instead of being reported as an unknown outcome (the client does this; see DataverseClient.create).
    client_id: bool | str = inputs.get("id") or bool(inputs.get("client_id"))
    result = connection.client.create(
        meta.entity_set,
        body,
        id_attribute=meta.primary_id,
        client_id=client_id,
        return_record=return_record,
        prefer=_prefer(inputs, representation=return_record),
        impersonate=impersonate,
        params=_select_params(meta, inputs, connection) if return_record else None,
        headers=headers,
    )
    out: dict[str, Any] = {"table": meta.logical_name, "id": result.id}
    if return_record:
        out["record"] = result.record
    return out


def update_record(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """PATCH an existing row (``If-Match: *`` or the given etag, so it never creates); 412 is a clear conflict."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    id_, key = inputs.get("id"), inputs.get("key")
    body = _build_body(
        connection, meta, inputs.get("fields") or {}, "$.fields", for_create=False, impersonate=impersonate
    )
    path = _address(connection, meta, id_, key, impersonate)
    return_record = bool(inputs.get("return_record", False))
    etag = inputs.get("etag")
    try:
        response = connection.client.request(
            "PATCH",
            _with_query(path, _select_params(meta, inputs, connection) if return_record else {}),
            json=body,
            headers={"If-Match": etag or "*"},
            prefer=_prefer(inputs, representation=return_record),
            impersonate=impersonate,
        )
    except NotFoundError as exc:
        raise _not_found(meta, id=id_, key=key, cause=exc) from None
    except FatalApiError as exc:
        if exc.status_code == 412 and etag:
            raise ConcurrencyError(
                f"the {meta.logical_name} row was changed by someone else since it was read (etag {etag} no longer "
                "matches): read it again, re-apply the change and retry",
                status_code=412,
                code=exc.code,
                request_id=exc.request_id,
                method="PATCH",
            ) from None
        raise
    out: dict[str, Any] = {"table": meta.logical_name, "id": _id_from(response, meta) or id_}
    if out["id"] is None and key:
        out["id"] = _find_by_key(connection, meta, key, impersonate)
    if return_record:
        out["record"] = _record(response)
    return out


def upsert_record(
    connection: Connection, inputs: Mapping[str, Any], *, new_id: Callable[[], str] | None = None
) -> dict[str, Any]:
    """Create or update by id or key; the output says which (201 vs 200 with ``return=representation``)."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    id_, key = inputs.get("id"), inputs.get("key")
    mode = inputs.get("mode", "upsert")
    fields = dict(inputs.get("fields") or {})
    for column in key or {}:
        fields.pop(column, None)  # key columns are never repeated in the body (server strips or refuses them)
    fields.pop(meta.primary_id, None)
    body = _build_body(connection, meta, fields, "$.fields", for_create=mode != "update_only", impersonate=impersonate)
    return_record = bool(inputs.get("return_record", False))
    select = _select_params(meta, inputs, connection) if return_record else {"$select": meta.primary_id}
    prefer = _prefer(inputs, representation=True)
    if key and not key_is_url_safe(key):
        return _upsert_by_filter(connection, meta, key, body, mode, select, prefer, impersonate, return_record, new_id)
    path = _address(connection, meta, id_, key, impersonate)
    headers = {"upsert": {}, "create_only": {"If-None-Match": "*"}, "update_only": {"If-Match": "*"}}[mode]
    try:
        response = connection.client.request(
            "PATCH", _with_query(path, select), json=body, headers=headers, prefer=prefer, impersonate=impersonate
        )
    except NotFoundError as exc:
        raise _not_found(meta, id=id_, key=key, cause=exc) from None
    return _upsert_output(meta, response, return_record, id_)


def _upsert_output(
    meta: TableMetadata, response: httpx.Response, return_record: bool, fallback_id: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "table": meta.logical_name,
        "id": _id_from(response, meta) or fallback_id,
        "operation": "created" if response.status_code == 201 else "updated",
    }
    if return_record:
        out["record"] = _record(response)
    return out


def _upsert_by_filter(
    connection: Connection,
    meta: TableMetadata,
    key: Mapping[str, Any],
    body: dict[str, Any],
    mode: str,
    select: Mapping[str, str],
    prefer: list[str],
    impersonate: str | None,
    return_record: bool,
    new_id: Callable[[], str] | None,
) -> dict[str, Any]:
    """The design's route for keys a URL cannot carry: find by $filter, then PATCH by GUID or POST with a new GUID."""
    client = connection.client

    def update(found: str) -> dict[str, Any]:
        if mode == "create_only":
            raise FatalApiError(
                f"a {meta.logical_name} row with key {_describe_key(key)} already exists (mode create_only)",
                status_code=412,
                code="0x80040237",
            )
        response = client.request(
            "PATCH",
            _with_query(f"{meta.entity_set}({found})", select),
            json=body,
            headers={"If-Match": "*"},
            prefer=prefer,
            impersonate=impersonate,
        )
        return {**_upsert_output(meta, response, return_record, found), "operation": "updated"}

    found = _find_by_key(connection, meta, key, impersonate)
    if found is not None:
        return update(found)
    if mode == "update_only":
        raise _not_found(meta, key=key)
    row_id = (new_id or ids.new_id)()  # time-ordered, as every client-generated id here
    create_body = {**body, **_key_body(connection, meta, key), meta.primary_id: row_id}
    try:
        response = client.request(
            "POST", _with_query(meta.entity_set, select), json=create_body, prefer=prefer, impersonate=impersonate
        )
    except FatalApiError as exc:
        if exc.status_code == 412 or (exc.code or "").lower() in _DUPLICATE_CODES:
            found = _find_by_key(connection, meta, key, impersonate)
            if found is not None:
                return update(found)
        raise
    return {**_upsert_output(meta, response, return_record, row_id), "operation": "created"}


def _key_body(connection: Connection, meta: TableMetadata, key: Mapping[str, Any]) -> dict[str, Any]:
    """Key values as body columns for a POST (a lookup key column is bound through its one relationship)."""
    out: dict[str, Any] = {}
    for column, value in key.items():
        typ = meta.attributes[column].type
        if typ in LOOKUP_TYPES:
            rel = meta.lookups[column][0]
            target = connection.metadata.table(rel.target)
            out[f"{rel.navigation}@odata.bind"] = f"/{target.entity_set}({value})"
        else:
            out[column] = _key_value(connection, meta, column, value)
    return out


def delete_record(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """DELETE by id or key; a missing row is a typed not-found error unless ``ignore_missing``."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    id_, key = inputs.get("id"), inputs.get("key")
    ignore = bool(inputs.get("ignore_missing", False))
    try:
        path = _address(connection, meta, id_, key, impersonate)
        headers = {"If-Match": inputs["etag"]} if inputs.get("etag") else None
        connection.client.request("DELETE", path, headers=headers, impersonate=impersonate)
    except NotFoundError as exc:
        if ignore:
            return {"table": meta.logical_name, "id": id_, "deleted": False}
        raise _not_found(meta, id=id_, key=key, cause=exc if exc.code else None) from None
    except FatalApiError as exc:
        if exc.status_code == 412 and inputs.get("etag"):
            raise ConcurrencyError(
                f"the {meta.logical_name} row was changed by someone else since it was read (etag {inputs['etag']} "
                "no longer matches): read it again and decide whether to delete it",
                status_code=412,
                code=exc.code,
                request_id=exc.request_id,
                method="DELETE",
            ) from None
        raise
    return {"table": meta.logical_name, "id": id_ or entity_id(path), "deleted": True}


def _related_id(
    connection: Connection, related: Mapping[str, Any], impersonate: str | None
) -> tuple[TableMetadata, str]:
    target = connection.metadata.table(related["table"])
    if related.get("id"):
        return target, str(related["id"])
    key = related["key"]
    if key_is_url_safe(key):
        try:
            body = connection.client.get_json(
                _with_query(
                    f"{target.entity_set}({_predicate(connection, target, key)})", {"$select": target.primary_id}
                ),
                impersonate=impersonate,
            )
        except NotFoundError as exc:
            raise _not_found(target, key=key, cause=exc, what="the related row") from None
        return target, str(body[target.primary_id])
    found = _find_by_key(connection, target, key, impersonate)
    if found is None:
        raise _not_found(target, key=key, what="the related row")
    return target, found


def associate(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Link two rows through a navigation property: PUT ``nav/$ref`` (single-valued) or POST (collection)."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    nav = str(inputs["navigation"])
    found = meta.navigation_target(nav)
    assert found is not None
    path = _address(connection, meta, inputs.get("id"), inputs.get("key"), impersonate)
    target, related_id = _related_id(connection, inputs["related"], impersonate)
    ref = {"@odata.id": f"{connection.client.api_url}/{target.entity_set}({related_id})"}
    method = "POST" if found[1] else "PUT"
    try:
        connection.client.request(method, f"{path}/{nav}/$ref", json=ref, impersonate=impersonate)
    except NotFoundError as exc:
        raise _not_found(meta, id=inputs.get("id"), key=inputs.get("key"), cause=exc) from None
    return _association_output(meta, path, nav, target, related_id)


def disassociate(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Unlink: DELETE ``nav/$ref`` (single-valued) or ``nav(<id>)/$ref`` (collection)."""
    meta = connection.metadata.table(inputs["table"])
    impersonate = inputs.get("impersonate")
    nav = str(inputs["navigation"])
    found = meta.navigation_target(nav)
    assert found is not None
    path = _address(connection, meta, inputs.get("id"), inputs.get("key"), impersonate)
    target: TableMetadata | None = None
    related_id: str | None = None
    if inputs.get("related"):
        target, related_id = _related_id(connection, inputs["related"], impersonate)
    ref_path = f"{path}/{nav}({related_id})/$ref" if found[1] else f"{path}/{nav}/$ref"
    try:
        connection.client.request("DELETE", ref_path, impersonate=impersonate)
    except NotFoundError as exc:
        raise _not_found(meta, id=inputs.get("id"), key=inputs.get("key"), cause=exc) from None
    return _association_output(meta, path, nav, target, related_id)


def _association_output(
    meta: TableMetadata, path: str, nav: str, target: TableMetadata | None, related_id: str | None
) -> dict[str, Any]:
    return {
        "table": meta.logical_name,
        "id": entity_id(path),
        "navigation": nav,
        "related_table": target.logical_name if target else None,
        "related_id": related_id,
    }
