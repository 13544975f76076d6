"""``run_batch_operations``: up to 1,000 record operations in one ``$batch`` request, one result per operation.

Why results are mapped with care (``peers.md`` pain point 7): users of other connectors get the batch's raw multipart
text back, or an array they cannot tie to their input rows. Here every input operation gets exactly one result, in
input order, with its index, and a failure carries Dataverse's own code and message:

* operations outside change sets are answered in order, so the n-th answer belongs to the n-th such operation;
* operations inside a change set carry ``Content-ID: <index + 1>``, which Dataverse echoes, so answers are matched by
  id; a failed change set answers with the failing operation only (reference 6.4), and the others are reported
  ``rolled_back`` with the changeset's failure, never as succeeded;
* without ``continue_on_error`` Dataverse stops at the first failure: the operations it never reached are ``not_run``.

Bodies, URLs and lookups are built by :mod:`connector.records` (the same rules as the single-record actions): keys
typed and quoted, lookups as ``<navigation>@odata.bind``, choice labels mapped. A lookup may name an earlier create
of the same change set (``{"operation": 3}``), sent as the ``$4`` Content-ID reference Dataverse resolves to the row
created there. Keys a URL cannot carry are resolved to GUIDs (reads) before the batch is sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector.addressing import address, find_by_key, with_query
from connector.body import build_body, check_fields, key_body
from connector.errors import DataverseApiError, FatalApiError, InputError, InputProblem, MultipartError
from connector.inputs import RunBatchOperations
from connector.metadata import TableMetadata
from connector.multipart import (
    BatchOperation,
    ChangeSet,
    ChangeSetResponse,
    OperationResponse,
    decode_batch_response,
    encode_batch,
)
from connector.odata import ALL_ANNOTATIONS, entity_id, filter_column, key_is_url_safe
from connector.problems import Problems, check_key, check_select
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.client import DataverseClient
    from connector.connection import Connection

__all__ = ["MAX_OPERATIONS", "post_batch", "run_batch_operations", "run_batch_operations_problems"]

MAX_OPERATIONS = 1000
_WRITES = ("create", "update", "upsert")


def _ref(value: Any) -> int | None:
    """The operation index of a lookup that names an earlier operation's created row (``{"operation": n}``)."""
    if isinstance(value, Mapping) and set(value) == {"operation"} and isinstance(value["operation"], int):
        return int(value["operation"])
    return None


# -- phase two ------------------------------------------------------------------------------------------------------
def run_batch_operations_problems(inputs: RunBatchOperations, connection: Connection) -> list[InputProblem]:
    """Every operation checked against metadata (tables, keys, columns, lookups, change set rules); reads only."""
    ops: Sequence[Mapping[str, Any]] = inputs.operations
    p = Problems(connection)
    if len(ops) > MAX_OPERATIONS:
        p.add("$.operations", f"at most {MAX_OPERATIONS} operations per batch (Dataverse's limit); got {len(ops)}")
        return p.items
    closed: set[str] = set()
    current: str | None = None
    for i, op in enumerate(ops):
        here = f"$.operations[{i}]"
        changeset = op.get("changeset")
        if changeset != current:
            if current is not None:
                closed.add(current)
            if changeset is not None and changeset in closed:
                p.add(f"{here}.changeset", f"the operations of change set {changeset!r} must be next to each other")
            current = changeset
        _operation_problems(p, ops, i, here)
    return p.items


def _operation_problems(p: Problems, ops: Sequence[Mapping[str, Any]], i: int, here: str) -> None:
    op = ops[i]
    action = op["action"]
    meta = p.table(str(op["table"]), f"{here}.table")
    if meta is None:
        return
    if op.get("id") is not None and op.get("key") is not None:
        p.add(f"{here}.key", "give either id or key, not both")
    if action == "create" and op.get("key"):
        p.add(f"{here}.key", "a create takes no key (give the key columns in fields, or use upsert)")
    if action != "create" and op.get("id") is None and not op.get("key"):
        p.add(f"{here}.id", f"{action} needs the row's id or an alternate key")
    if op.get("key"):
        meta, _ = check_key(p, meta, op["key"], f"{here}.key")
    if action == "get" and op.get("changeset") is not None:
        p.add(f"{here}.changeset", "Dataverse does not allow a get inside a change set; take it out of the change set")
    if op.get("select"):
        meta = check_select(p, meta, op["select"], f"{here}.select")
    fields = dict(op.get("fields") or {})
    if action not in _WRITES:
        if fields:
            p.add(f"{here}.fields", f"{action} takes no fields")
        return
    for column, value in list(fields.items()):
        ref = _ref(value)
        if ref is None:
            continue
        del fields[column]
        _ref_problem(p, ops, i, meta, column, ref, f"{here}.fields.{column}")
    check_fields(p, meta, fields, f"{here}.fields", for_create=action != "update")


def _ref_problem(
    p: Problems, ops: Sequence[Mapping[str, Any]], i: int, meta: TableMetadata, column: str, ref: int, path: str
) -> None:
    op = ops[i]
    if not 0 <= ref < i:
        p.add(path, f"operation {ref} is not an earlier operation of this batch")
        return
    target = ops[ref]
    if op.get("changeset") is None or target.get("changeset") != op.get("changeset"):
        p.add(path, "a reference to another operation's row works only inside the same change set")
        return
    if target["action"] != "create":
        p.add(path, f"operation {ref} is a {target['action']}; only a created row can be referenced")
        return
    if column not in meta.attributes:
        meta = p.fresh(meta)
    if column not in meta.lookups:
        p.add(path, f"{column!r} is not a lookup column of {meta.logical_name!r}")
        return
    target_meta = p.connection.metadata.table(str(target["table"]))
    if _navigation(meta, column, target_meta.logical_name) is None:
        allowed = " or ".join(r.target for r in meta.lookups[column])
        p.add(path, f"{column!r} refers to {allowed}, not {target_meta.logical_name!r} (operation {ref})")


def _navigation(meta: TableMetadata, column: str, target: str) -> str | None:
    relationships = meta.lookups.get(column, ())
    if len(relationships) == 1:
        rel = relationships[0]
        allowed = ("systemuser", "team") if rel.target == "owner" else (rel.target,)
        return rel.navigation if target in allowed else None
    return next((r.navigation for r in relationships if r.target == target), None)


# -- execution ------------------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    """One input operation: its request (or the local failure that kept it from being sent)."""

    index: int
    op: Mapping[str, Any]
    meta: TableMetadata
    request: BatchOperation | None = None
    failure: DataverseApiError | None = None
    known_id: str | None = None


@dataclass
class _Group:
    """A change set (``name`` set) or one stand-alone operation, in batch order."""

    name: str | None
    members: list[_Planned] = field(default_factory=list)


def _prefer_header(op: Mapping[str, Any], inputs: RunBatchOperations, representation: bool) -> list[tuple[str, str]]:
    prefer = ["return=representation"] if representation else []
    if inputs.include_annotations:
        prefer.append(ALL_ANNOTATIONS)
    return [("Prefer", ", ".join(prefer))] if prefer else []


def _plan(connection: Connection, inputs: RunBatchOperations, index: int, api_path: str) -> _Planned:
    ops: Sequence[Mapping[str, Any]] = inputs.operations
    op = ops[index]
    action = op["action"]
    meta = connection.metadata.table(str(op["table"]))
    planned = _Planned(index, op, meta)
    impersonate = inputs.impersonate
    id_, key = op.get("id"), op.get("key")
    return_record = bool(op.get("return_record", False))
    columns = [filter_column(c, meta.attributes[c].type) if c in meta.attributes else c for c in op.get("select") or []]
    select = {"$select": ",".join(columns)} if columns else {}
    headers: list[tuple[str, str]] = []
    body: dict[str, Any] | None = None
    if action in _WRITES:
        fields = dict(op.get("fields") or {})
        refs = {c: r for c, v in fields.items() if (r := _ref(v)) is not None}
        for column in refs:
            del fields[column]
        if action == "upsert":
            for column in key or {}:
                fields.pop(column, None)
        body = build_body(
            connection,
            meta,
            fields,
            f"$.operations[{index}].fields",
            for_create=action != "update",
            impersonate=impersonate,
        )
        for column, ref in refs.items():
            target = connection.metadata.table(str(ops[ref]["table"]))
            nav = _navigation(meta, column, target.logical_name)
            body[f"{nav}@odata.bind"] = f"${ref + 1}"
    try:
        if action == "create":
            if id_:
                assert body is not None
                body[meta.primary_id] = id_
                planned.known_id = id_
            method, path = "POST", with_query(meta.entity_set, select if return_record else {})
            headers += _prefer_header(op, inputs, return_record)
        elif action == "upsert" and key and not key_is_url_safe(key):
            assert body is not None
            found = find_by_key(connection, meta, key, impersonate)
            if found is None:  # create it with a GUID of ours, key columns in the body
                planned.known_id = str(uuid.uuid4())
                body = {**body, **key_body(connection, meta, key), meta.primary_id: planned.known_id}
                method, path = "POST", with_query(meta.entity_set, {"$select": meta.primary_id})
            else:
                planned.known_id = found
                method, path = "PATCH", with_query(f"{meta.entity_set}({found})", {"$select": meta.primary_id})
                headers.append(("If-Match", "*"))
            headers += _prefer_header(op, inputs, True)
        else:
            row_path = address(connection, meta, id_, key, impersonate)
            planned.known_id = entity_id(row_path)
            if action == "update":
                method, path = "PATCH", with_query(row_path, select if return_record else {})
                headers.append(("If-Match", "*"))
                headers += _prefer_header(op, inputs, return_record)
            elif action == "upsert":
                # representation tells created (201) from updated (200); $select keeps it to the id
                method, path = "PATCH", with_query(row_path, select if return_record else {"$select": meta.primary_id})
                headers += _prefer_header(op, inputs, True)
            elif action == "delete":
                method, path = "DELETE", row_path
            else:
                method, path = "GET", with_query(row_path, select)
                headers += _prefer_header(op, inputs, False)
    except FatalApiError as exc:  # a key resolved through $filter that matched no row
        planned.failure = exc
        return planned
    content = b""
    if body is not None:
        headers.insert(0, ("Content-Type", "application/json; type=entry"))
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    cid = str(index + 1) if op.get("changeset") is not None else None
    planned.request = BatchOperation(method, f"{api_path}/{path}", tuple(headers), content, cid)
    return planned


def _groups(planned: list[_Planned]) -> list[_Group]:
    groups: list[_Group] = []
    for item in planned:
        name = item.op.get("changeset")
        if name is not None and groups and groups[-1].name == name:
            groups[-1].members.append(item)
        else:
            groups.append(_Group(name, [item]))
    return groups


def _result(item: _Planned, status: str) -> dict[str, Any]:
    op = item.op
    return {
        "index": item.index,
        "action": op["action"],
        "table": item.meta.logical_name,
        "changeset": op.get("changeset"),
        "status": status,
        "http_status": None,
        "id": item.known_id,
        "record": None,
        "code": None,
        "message": None,
    }


def _error_of(answer: OperationResponse) -> tuple[str | None, str]:
    body = answer.json()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return (str(code) if code is not None else None), str(error.get("message") or answer.reason)
    text = answer.body.decode("utf-8", "replace").strip()
    return None, text or answer.reason or f"HTTP {answer.status}"


def _fill(result: dict[str, Any], item: _Planned, answer: OperationResponse) -> None:
    result["http_status"] = answer.status
    if answer.status >= 400:
        result["status"] = "failed"
        result["code"], result["message"] = _error_of(answer)
        return
    result["status"] = "succeeded"
    body = answer.json()
    record = None
    if isinstance(body, dict) and "error" not in body:
        body.pop("@odata.context", None)
        record = body
    entity = entity_id(answer.header("OData-EntityId"))
    if record is not None and record.get(item.meta.primary_id):
        result["id"] = str(record[item.meta.primary_id])
    elif entity:
        result["id"] = entity
    action = item.op["action"]
    if action == "upsert":
        created = answer.status == 201 or (item.request is not None and item.request.method == "POST")
        result["operation"] = "created" if created else "updated"
    if record is not None and (action == "get" or item.op.get("return_record")):
        result["record"] = record


def _local_failure(result: dict[str, Any], error: DataverseApiError) -> None:
    result.update(status="failed", http_status=error.status_code, code=error.code, message=str(error))


def run_batch_operations(
    connection: Connection,
    inputs: RunBatchOperations,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """Send the operations as one ``$batch`` and return one result per operation, in input order, with a summary.

    ``progress`` hears the start and the end (the batch is one request); a ``cancel`` that comes before the request
    leaves: nothing is sent and every operation is ``not_run``. Once sent, the batch is waited for.
    """
    ops: Sequence[Mapping[str, Any]] = inputs.operations
    if len(ops) > MAX_OPERATIONS:
        raise InputError([InputProblem("$.operations", f"at most {MAX_OPERATIONS} operations per batch")])
    governor = connection.governor
    tracker = Tracker(
        "run_batch_operations", progress, total=len(ops), clock=governor.clock, throttle=governor, cancel=cancel
    )
    with tracker:
        results = _run(connection, inputs, cancel)
        statuses = ("succeeded", "failed", "rolled_back", "not_run")
        counts = {s: sum(1 for r in results if r["status"] == s) for s in statuses}
        tracker.set(counts, done=len(results))
    return {"results": results, **counts, "total": len(results)}


def _run(connection: Connection, inputs: RunBatchOperations, cancel: CancellationToken | None) -> list[dict[str, Any]]:
    ops: Sequence[Mapping[str, Any]] = inputs.operations
    api_path = urlsplit(connection.api_url).path.rstrip("/")
    planned = [_plan(connection, inputs, i, api_path) for i in range(len(ops))]
    continue_on_error = inputs.continue_on_error
    results = [_result(item, "not_run") for item in planned]
    items: list[BatchOperation | ChangeSet] = []
    sent: list[_Group] = []
    for group in _groups(planned):
        failed = [m for m in group.members if m.failure is not None]
        if not failed:
            requests = [m.request for m in group.members if m.request is not None]
            items.append(ChangeSet(tuple(requests)) if group.name is not None else requests[0])
            sent.append(group)
            continue
        # an operation that failed before sending (its key matched no row) is never sent; its change set neither
        for m in group.members:
            if m.failure is not None:
                _local_failure(results[m.index], m.failure)
            else:
                results[m.index].update(status="rolled_back", message="another operation of the change set failed")
        if not continue_on_error:
            break  # as Dataverse does: nothing after the first failure runs
    if items and cancel is not None and cancel.cancelled:
        for group in sent:
            for m in group.members:
                results[m.index]["message"] = "not sent: the run was cancelled before the batch was sent"
    elif items:
        _send(connection, inputs, items, sent, results, continue_on_error)
    return results


def post_batch(
    client: DataverseClient,
    parts: Sequence[BatchOperation | ChangeSet],
    *,
    prefer: Sequence[str] = (),
    impersonate: str | Mapping[str, str] | None = None,
    idempotent: bool | None = None,
    what: str = "the $batch",
) -> tuple[httpx.Response, list[OperationResponse | ChangeSetResponse]]:
    """One ``$batch`` of ``parts``: the response and its answers, one per part in order; the one way this connector
    sends a ``$batch`` (this action, the bulk writer's reads and fallback, FetchXML too long for a URL). A body that
    cannot be read is a :class:`~connector.errors.FatalApiError` naming ``what`` was sent."""
    content_type, payload = encode_batch(parts)
    response = client.request(
        "POST",
        "$batch",
        content=payload,
        headers={"Content-Type": content_type},
        prefer=prefer,
        impersonate=impersonate,
        idempotent=idempotent,
        keep_response=_is_multipart,
    )
    try:
        return response, decode_batch_response(response.headers.get("Content-Type", ""), response.content)
    except MultipartError as exc:
        raise FatalApiError(
            f"Dataverse answered {what} with a body this connector cannot read ({exc})",
            status_code=response.status_code,
            method="POST",
        ) from exc


def _send(
    connection: Connection,
    inputs: RunBatchOperations,
    items: list[BatchOperation | ChangeSet],
    sent: list[_Group],
    results: list[dict[str, Any]],
    continue_on_error: bool,
) -> None:
    prefer = ["odata.continue-on-error"] if continue_on_error else []
    response, answers = post_batch(connection.client, items, prefer=prefer, impersonate=inputs.impersonate)
    if len(answers) > len(sent):
        raise FatalApiError(
            f"Dataverse answered {len(answers)} parts to a $batch of {len(sent)}; results cannot be attributed",
            status_code=response.status_code,
            method="POST",
        )
    for group, answer in zip(sent, answers, strict=False):
        if group.name is None:
            if isinstance(answer, ChangeSetResponse):
                raise FatalApiError("Dataverse answered a single operation with a change set response", method="POST")
            _fill(results[group.members[0].index], group.members[0], answer)
            continue
        _fill_changeset(group, answer, results)


def _fill_changeset(
    group: _Group, answer: OperationResponse | ChangeSetResponse, results: list[dict[str, Any]]
) -> None:
    answers = answer.responses if isinstance(answer, ChangeSetResponse) else (answer,)
    by_id = {m.request.content_id: m for m in group.members if m.request is not None}
    failure = next((a for a in answers if a.status >= 400), None)
    if failure is None:
        for a in answers:
            member = by_id.get(a.content_id or "")
            if member is not None:
                _fill(results[member.index], member, a)
        return
    code, message = _error_of(failure)
    blamed = by_id.get(failure.content_id or "")
    for m in group.members:
        result = results[m.index]
        if m is blamed:
            _fill(result, m, failure)
        elif blamed is None:  # the change set failed as a whole: every member shares the failure
            result.update(status="failed", http_status=failure.status, code=code, message=message)
        else:
            result.update(
                status="rolled_back",
                id=None if m.op["action"] == "create" and not m.op.get("id") else result["id"],
                code=code,
                message=f"not applied: operation {blamed.index} of change set {group.name!r} failed ({message})",
            )


def _is_multipart(response: httpx.Response) -> bool:
    """A batch stopped at its first failure answers with that status and a multipart body: results, not an error."""
    return str(response.headers.get("Content-Type", "")).lower().startswith("multipart/mixed")
