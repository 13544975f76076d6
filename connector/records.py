"""Row operations by GUID or alternate key: get, create, update, upsert, delete.

The rules that users of other connectors get wrong are applied from metadata, never guessed from names: bodies are
built by :mod:`connector.body` (lookups bound, labels mapped), rows addressed by :mod:`connector.addressing`; here:

* key values are typed from the column types and quoted; keys with characters Dataverse refuses in a key predicate go
  through a ``$filter`` lookup, and an upsert then becomes PATCH-by-GUID (found) or POST with a client GUID (not
  found; a duplicate-key answer to that POST is retried once as an update, since someone created it meanwhile);
* key columns are never repeated in an upsert body addressed by key;
* an update or upsert whose retries ran out after a send that may have been applied (a dropped connection, a 5xx)
  reads the row back (:func:`_read_back`): it holds the written values -> success with ``confirmed_by_read``; it
  does not -> the error stands (not applied); otherwise :class:`OutcomeUnknownError` says why.

Each action has its phase-two check (``<action>_problems``), which the runtime calls before any write: it reads
metadata only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from connector import ids
from connector.addressing import address, describe_key, find_by_key, not_found, select_params, with_query
from connector.body import build_body, check_fields, key_body
from connector.errors import (
    ConcurrencyError,
    DataverseApiError,
    FatalApiError,
    InputProblem,
    NotFoundError,
    OutcomeUnknownError,
    RetriableApiError,
)
from connector.inputs import CreateEntity, DeleteEntity, GetEntity, UpdateEntity, UpsertEntity
from connector.metadata import TableMetadata
from connector.odata import ALL_ANNOTATIONS, entity_id, key_is_url_safe
from connector.problems import Problems, check_returned, check_table
from connector.written import Verdict, compare_written, read_columns

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "create_entity",
    "create_entity_problems",
    "delete_entity",
    "delete_entity_problems",
    "get_entity",
    "get_entity_problems",
    "update_entity",
    "update_entity_problems",
    "upsert_entity",
    "upsert_entity_problems",
]

_DUPLICATE_CODES = frozenset({"0x80040237", "0x80060892"})


# -- validation (phase two) -----------------------------------------------------------------------------------------
def get_entity_problems(inputs: GetEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``get_entity``: table, key, columns and expansions, with metadata reads only."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is not None:
        check_returned(p, meta, inputs.select, inputs.expand)
    return p.items


def create_entity_problems(inputs: CreateEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``create_entity``: columns settable on create, values of their types, lookups and labels."""
    p = Problems(connection)
    meta = check_table(p, inputs.table)
    if meta is not None:
        meta = check_returned(p, meta, inputs.select)
        check_fields(p, meta, inputs.fields, "$.fields", for_create=True)
    return p.items


def update_entity_problems(inputs: UpdateEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``update_entity``: the row's key, and columns that may be changed on update."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is not None:
        meta = check_returned(p, meta, inputs.select)
        check_fields(p, meta, inputs.fields, "$.fields", for_create=False)
    return p.items


def upsert_entity_problems(inputs: UpsertEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``upsert_entity``: as create, and a key column in ``fields`` may not contradict the key."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    meta = check_returned(p, meta, inputs.select)
    check_fields(p, meta, inputs.fields, "$.fields", for_create=True)
    for column, value in (inputs.key or {}).items():
        if column in inputs.fields and inputs.fields[column] != value:
            p.add(
                f"$.fields.{column}",
                f"{column!r} is a key column addressed by key with another value; an upsert cannot change the key: "
                "remove it from fields",
            )
    return p.items


def delete_entity_problems(inputs: DeleteEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``delete_entity``: the table and the row's key."""
    p = Problems(connection)
    check_table(p, inputs.table, inputs.key)
    return p.items


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


def _prefer(include_annotations: bool, *, representation: bool) -> list[str]:
    prefer = ["return=representation"] if representation else []
    if include_annotations:
        prefer.append(ALL_ANNOTATIONS)
    return prefer


def _read_back(
    connection: Connection,
    meta: TableMetadata,
    path: str,
    body: Mapping[str, Any],
    exc: DataverseApiError,
    impersonate: str | None,
) -> dict[str, Any]:
    """The row a PATCH (or a POST with a client id) wrote, read after its answer was lost with the outcome in doubt;
    raises unless it proves the write applied: the write's own error when the row proves it was not (after a timeout
    it may still be running, so only "applied" is proved then), :class:`OutcomeUnknownError` with the reason
    otherwise."""
    select = [*read_columns(meta, body), "createdon", "modifiedon"]
    select = [c for c in dict.fromkeys(select) if c.strip("_").removesuffix("_value") in meta.attributes]
    try:
        row = connection.client.get_json(with_query(path, {"$select": ",".join(select)}), impersonate=impersonate)
    except NotFoundError:
        row = None
    except DataverseApiError as read_exc:
        raise OutcomeUnknownError(
            f"{exc}; the read to check the row failed too ({read_exc})", code=exc.code, method="PATCH"
        ) from exc
    verdict = compare_written(meta, body, row if isinstance(row, dict) else None)
    if verdict is Verdict.APPLIED and isinstance(row, dict):
        row.pop("@odata.context", None)
        return row
    if verdict is Verdict.NOT_APPLIED and exc.code != "Timeout":
        raise exc
    raise OutcomeUnknownError(f"{exc}; the row read back proves neither", code=exc.code, method="PATCH") from exc


# -- actions --------------------------------------------------------------------------------------------------------
def get_entity(connection: Connection, inputs: GetEntity) -> dict[str, Any]:
    """GET one row by id or key, with ``select``/``expand`` and optional formatted values; not found is typed."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    id_, key = inputs.id, inputs.key
    path = address(connection, meta, id_, key, impersonate)
    try:
        response = connection.client.request(
            "GET",
            with_query(path, select_params(connection, meta, inputs.select, inputs.expand)),
            prefer=_prefer(inputs.include_annotations, representation=False),
            impersonate=impersonate,
        )
    except NotFoundError as exc:
        raise not_found(meta, id=id_, key=key, cause=exc) from None
    record = _record(response) or {}
    return {
        "table": meta.logical_name,
        "id": str(record.get(meta.primary_id) or id_ or ""),
        "etag": record.get("@odata.etag"),
        "record": record,
    }


def create_entity(connection: Connection, inputs: CreateEntity) -> dict[str, Any]:
    """POST a row; lookups bound through metadata, labels mapped; optional client id and duplicate detection."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    body = build_body(connection, meta, inputs.fields, "$.fields", for_create=True, impersonate=impersonate)
    return_record = inputs.return_record
    headers = {"MSCRM.SuppressDuplicateDetection": "false"} if inputs.detect_duplicates else None
    # A given id, or client_id, makes the create retry-safe: a resend after a lost answer is confirmed by a GET
    # instead of being reported as an unknown outcome (the client does this; see DataverseClient.create).
    client_id: bool | str = inputs.id or inputs.client_id
    result = connection.client.create(
        meta.entity_set,
        body,
        id_attribute=meta.primary_id,
        client_id=client_id,
        return_record=return_record,
        prefer=_prefer(inputs.include_annotations, representation=return_record),
        impersonate=impersonate,
        params=select_params(connection, meta, inputs.select) if return_record else None,
        headers=headers,
    )
    out: dict[str, Any] = {"table": meta.logical_name, "id": result.id}
    if return_record:
        out["record"] = result.record
    return out


def update_entity(connection: Connection, inputs: UpdateEntity) -> dict[str, Any]:
    """PATCH an existing row (``If-Match: *`` or the given etag, so it never creates); 412 is a clear conflict."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    id_, key = inputs.id, inputs.key
    body = build_body(connection, meta, inputs.fields, "$.fields", for_create=False, impersonate=impersonate)
    path = address(connection, meta, id_, key, impersonate)
    return_record = inputs.return_record
    etag = inputs.etag
    try:
        response = connection.client.request(
            "PATCH",
            with_query(path, select_params(connection, meta, inputs.select) if return_record else {}),
            json=body,
            headers={"If-Match": etag or "*"},
            prefer=_prefer(inputs.include_annotations, representation=return_record),
            impersonate=impersonate,
        )
    except NotFoundError as exc:
        raise not_found(meta, id=id_, key=key, cause=exc) from None
    except RetriableApiError as exc:
        row = _read_back(connection, meta, path, body, exc, impersonate)
        confirmed = {"table": meta.logical_name, "id": str(row.get(meta.primary_id) or id_), "confirmed_by_read": True}
        return {**confirmed, "record": row} if return_record else confirmed
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
        out["id"] = find_by_key(connection, meta, key, impersonate)
    if return_record:
        out["record"] = _record(response)
    return out


def upsert_entity(
    connection: Connection, inputs: UpsertEntity, *, new_id: Callable[[], str] | None = None
) -> dict[str, Any]:
    """Create or update by id or key; the output says which (201 vs 200 with ``return=representation``)."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    id_, key = inputs.id, inputs.key
    mode = inputs.mode
    fields = dict(inputs.fields)
    for column in key or {}:
        fields.pop(column, None)  # key columns are never repeated in the body (server strips or refuses them)
    fields.pop(meta.primary_id, None)
    body = build_body(connection, meta, fields, "$.fields", for_create=mode != "update_only", impersonate=impersonate)
    return_record = inputs.return_record
    select = select_params(connection, meta, inputs.select) if return_record else {"$select": meta.primary_id}
    prefer = _prefer(inputs.include_annotations, representation=True)
    if key and not key_is_url_safe(key):
        return _upsert_by_filter(connection, meta, key, body, mode, select, prefer, impersonate, return_record, new_id)
    path = address(connection, meta, id_, key, impersonate)
    headers = {"upsert": {}, "create_only": {"If-None-Match": "*"}, "update_only": {"If-Match": "*"}}[mode]
    try:
        response = connection.client.request(
            "PATCH", with_query(path, select), json=body, headers=headers, prefer=prefer, impersonate=impersonate
        )
    except NotFoundError as exc:
        raise not_found(meta, id=id_, key=key, cause=exc) from None
    except RetriableApiError as exc:
        return _upsert_read_back(_read_back(connection, meta, path, body, exc, impersonate), meta, return_record, id_)
    return _upsert_output(meta, response, return_record, id_)


def _upsert_read_back(
    row: dict[str, Any], meta: TableMetadata, return_record: bool, fallback_id: str | None
) -> dict[str, Any]:
    """The output of an upsert confirmed by reading: ``created`` when the row was never modified after its creation
    (``createdon`` = ``modifiedon``; every update moves ``modifiedon`` on), else ``updated``. A row created and then
    updated within the same second by someone else would read as created: the one case this cannot tell."""
    created = row.get("createdon") is not None and row.get("createdon") == row.get("modifiedon")
    out: dict[str, Any] = {
        "table": meta.logical_name,
        "id": str(row.get(meta.primary_id) or fallback_id),
        "operation": "created" if created else "updated",
        "confirmed_by_read": True,
    }
    return {**out, "record": row} if return_record else out


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
                f"a {meta.logical_name} row with key {describe_key(key)} already exists (mode create_only)",
                status_code=412,
                code="0x80040237",
            )
        response = client.request(
            "PATCH",
            with_query(f"{meta.entity_set}({found})", select),
            json=body,
            headers={"If-Match": "*"},
            prefer=prefer,
            impersonate=impersonate,
        )
        return {**_upsert_output(meta, response, return_record, found), "operation": "updated"}

    found = find_by_key(connection, meta, key, impersonate)
    if found is not None:
        return update(found)
    if mode == "update_only":
        raise not_found(meta, key=key)
    row_id = (new_id or ids.new_id)()  # time-ordered, as every client-generated id here
    create_body = {**body, **key_body(connection, meta, key), meta.primary_id: row_id}
    try:
        response = client.request(
            "POST", with_query(meta.entity_set, select), json=create_body, prefer=prefer, impersonate=impersonate
        )
    except (OutcomeUnknownError, RetriableApiError) as exc:  # the id is ours: a row with it is this create's
        row = _read_back(connection, meta, f"{meta.entity_set}({row_id})", create_body, exc, impersonate)
        return {**_upsert_read_back(row, meta, return_record, row_id), "operation": "created"}
    except FatalApiError as exc:
        if exc.status_code == 412 or (exc.code or "").lower() in _DUPLICATE_CODES:
            found = find_by_key(connection, meta, key, impersonate)
            if found is not None:
                return update(found)
        raise
    return {**_upsert_output(meta, response, return_record, row_id), "operation": "created"}


def delete_entity(connection: Connection, inputs: DeleteEntity) -> dict[str, Any]:
    """DELETE by id or key; a missing row is a typed not-found error unless ``ignore_missing``."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    id_, key = inputs.id, inputs.key
    ignore = inputs.ignore_missing
    try:
        path = address(connection, meta, id_, key, impersonate)
        headers = {"If-Match": inputs.etag} if inputs.etag else None
        connection.client.request("DELETE", path, headers=headers, impersonate=impersonate)
    except NotFoundError as exc:
        if ignore:
            return {"table": meta.logical_name, "id": id_, "deleted": False}
        raise not_found(meta, id=id_, key=key, cause=exc if exc.code else None) from None
    except FatalApiError as exc:
        if exc.status_code == 412 and inputs.etag:
            raise ConcurrencyError(
                f"the {meta.logical_name} row was changed by someone else since it was read (etag {inputs.etag} "
                "no longer matches): read it again and decide whether to delete it",
                status_code=412,
                code=exc.code,
                request_id=exc.request_id,
                method="DELETE",
            ) from None
        raise
    return {"table": meta.logical_name, "id": id_ or entity_id(path), "deleted": True}
