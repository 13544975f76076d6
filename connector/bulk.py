"""The bulk writer: create, update or upsert any number of rows with one result per input record.

Why a writer of its own rather than a loop over the single-record actions (``peers.md`` section 4 items 2-3, pain
point 7): a bulk message (``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple``) counts as *one* request against the
service protection limits however many targets it carries (reference 15.6), so chunks of 100 rows move far more rows per
second than single requests. But on standard tables a bulk message is all-or-nothing and its error does not say which
target failed (reference 15.3), and UpsertMultiple over the Web API answers ``204`` with no per-record result. Users of
other connectors therefore lose a whole chunk to one bad row and cannot tell which rows were created. This module
closes those gaps:

* **one result per input record** (``created``, ``updated``, ``already_present``, ``failed`` with Dataverse's code
  and message, or ``unknown`` with the reason), with its id and input index, and a summary;
* an answer lost for good (retries spent after a send that may have been applied) is **read back** before anything
  is reported (:mod:`connector.written`): ``failed`` means the change did not apply, ``created``/``updated`` that
  the row holds the written values; a create with the records' own ids finds rows a previous run wrote
  (``already_present``) instead of failing them with "duplicate key";
* a failed chunk is **split in halves** until each bad row stands alone (at most ``2·⌈log2(chunk)⌉`` extra requests per
  bad row); the good rows land;
* **upsert** pre-reads which keys exist (one ``In`` read per chunk) to say created vs updated, and **update** by
  alternate key resolves keys to GUIDs the same way, since UpdateMultiple over the Web API takes no alternate keys;
* **duplicate** ids or keys within one run are merged before sending (later fields win) and reported with
  ``merged_into``: UpsertMultiple refuses duplicates and UpdateMultiple silently applies only the first;
* creates carry **client-generated, time-ordered ids** by default (:func:`connector.ids.new_id`), which makes a resend
  after a lost answer safe: the resend meets "duplicate key", a read by id confirms the rows, and they count as created
  once. With ``client_ids=False`` a chunk whose answer was lost is reported ``unknown`` (the design allows it only
  there);
* chunks run in parallel through the connection's :class:`~connector.governor.Governor` (``x-ms-dop-hint``, shared
  ``Retry-After``), and support for the bulk messages is probed once per table through ``sdkmessagefilters`` and cached
  on the connection. A table without them, or a probe that cannot be read, goes through ``$batch`` with
  ``Prefer: odata.continue-on-error``.

Each chunk is written by :class:`connector.bulk_chunks.ChunkWriter`. Bodies are built by :mod:`connector.body`
(lookups as ``<navigation>@odata.bind``, labels as integers), so a bulk row
means exactly what the same row means to ``create_entity``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.addressing import key_value
from connector.body import build_body
from connector.bulk_chunks import ChunkWriter, PlannedWrite, RowOutcome, not_sent, row_identity
from connector.errors import (
    DataverseApiError,
    InputError,
    InputProblem,
)
from connector.ids import new_id
from connector.inputs import WriteEntities
from connector.metadata import TableMetadata
from connector.odata import build_query_string
from connector.problems import Problems, check_key
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.governor import Outcome

__all__ = [
    "BYPASS_BUSINESS_LOGIC",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MODES",
    "RecordResult",
    "WriteOptions",
    "WriteReport",
    "bulk_support",
    "bypass_headers",
    "records_problems",
    "write_entities",
    "write_entities_problems",
]

MODES = ("create", "update", "upsert")
DEFAULT_CHUNK_SIZE = 100
"""Rows per bulk request: the low end of Microsoft's 100-1,000 for standard tables and the figure for elastic tables
(reference 7.3); small chunks also keep the cost of isolating a bad row low (one bisection level per doubling)."""
MAX_CHUNK_SIZE = 1000
"""The most rows one request may carry here: ``$batch`` takes at most 1,000 operations (reference 6.1)."""
BYPASS_BUSINESS_LOGIC = ("CustomSync", "CustomAsync")

log = logging.getLogger("connector.bulk")
_support_lock = threading.Lock()
_support: weakref.WeakKeyDictionary[Connection, dict[str, frozenset[str]]] = weakref.WeakKeyDictionary()


def bypass_headers(
    *,
    business_logic: Sequence[str] = (),
    custom_plugins: bool = False,
    suppress_callback_registration_expander_job: bool = False,
) -> dict[str, str]:
    """The optional headers of a bulk load: skip custom synchronous/asynchronous logic, custom plug-ins, or the job
    that fans out Power Automate callbacks (each needs its privilege in Dataverse; refused otherwise)."""
    headers: dict[str, str] = {}
    if business_logic:
        unknown = [b for b in business_logic if b not in BYPASS_BUSINESS_LOGIC]
        if unknown:
            raise InputError(f"bypass_business_logic takes {', '.join(BYPASS_BUSINESS_LOGIC)}, not {unknown}")
        headers["MSCRM.BypassBusinessLogicExecution"] = ",".join(dict.fromkeys(business_logic))
    if custom_plugins:
        headers["MSCRM.BypassCustomPluginExecution"] = "true"
    if suppress_callback_registration_expander_job:
        headers["MSCRM.SuppressCallbackRegistrationExpanderJob"] = "true"
    return headers


@dataclass(frozen=True)
class WriteOptions:
    """How to write: rows per request, client ids for creates, the bypass headers, impersonation."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    client_ids: bool = True
    bypass_business_logic: tuple[str, ...] = ()
    bypass_custom_plugins: bool = False
    suppress_callback_registration_expander_job: bool = False
    impersonate: str | None = None

    def headers(self) -> dict[str, str]:
        return bypass_headers(
            business_logic=self.bypass_business_logic,
            custom_plugins=self.bypass_custom_plugins,
            suppress_callback_registration_expander_job=self.suppress_callback_registration_expander_job,
        )


@dataclass
class RecordResult:
    """What happened to one input record. ``merged_into`` names the later record it was merged with (same id or key),
    whose write decided this record's status."""

    index: int
    status: str
    id: str | None = None
    code: str | None = None
    message: str | None = None
    merged_into: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status, "id": self.id}
        if self.status in ("failed", "unknown", "not_sent"):
            out["code"] = self.code
            out["message"] = self.message
        if self.merged_into is not None:
            out["merged_into"] = self.merged_into
        return out


@dataclass
class WriteReport:
    """Every record's result in input order, and what it took (requests by kind, the route taken). A run that was
    cancelled (``cancelled``) also counts its ``not_sent`` records in the summary."""

    table: str
    mode: str
    route: str
    results: list[RecordResult]
    chunks: int = 0
    split_requests: int = 0
    pre_reads: int = 0
    cancelled: bool = False

    def summary(self) -> dict[str, int]:
        counts = {"total": len(self.results), "created": 0, "updated": 0, "failed": 0, "unknown": 0}
        counts |= {"already_present": 0, "merged": 0}
        if self.cancelled:
            counts["not_sent"] = 0
        for r in self.results:
            counts[r.status] += 1
            if r.merged_into is not None:
                counts["merged"] += 1
        return {
            **counts,
            "chunks": self.chunks,
            "split_requests": self.split_requests,
            "pre_reads": self.pre_reads,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "mode": self.mode,
            "route": self.route,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
        }


# -- support probe --------------------------------------------------------------------------------------------------
def bulk_support(connection: Connection, meta: TableMetadata) -> frozenset[str]:
    """The bulk messages the table supports (``CreateMultiple``, ``UpdateMultiple`` and, when both, ``UpsertMultiple``),
    read once per table and connection from ``sdkmessagefilters`` (reference 7.2: UpsertMultiple has no rows)."""
    with _support_lock:
        cached = _support.get(connection, {}).get(meta.logical_name)
    if cached is not None:
        return cached
    filter_ = (
        "(sdkmessageid/name eq 'CreateMultiple' or sdkmessageid/name eq 'UpdateMultiple') and "
        f"primaryobjecttypecode eq '{meta.logical_name}'"
    )
    query = build_query_string(
        {"$select": "sdkmessagefilterid", "$filter": filter_, "$expand": "sdkmessageid($select=name)"}
    )
    body = connection.client.get_json(f"sdkmessagefilters?{query}")
    rows = body.get("value", []) if isinstance(body, dict) else []
    names = {str((row.get("sdkmessageid") or {}).get("name")) for row in rows if isinstance(row, dict)}
    found: set[str] = {n for n in ("CreateMultiple", "UpdateMultiple") if n in names}
    if len(found) == 2:
        found.add("UpsertMultiple")
    result = frozenset(found)
    with _support_lock:
        _support.setdefault(connection, {})[meta.logical_name] = result
    return result


def _supports(connection: Connection, meta: TableMetadata, message: str) -> bool:
    """Whether to send ``message``; a probe that cannot be read (retries spent) takes the ``$batch`` route, which
    every table supports, rather than ending the run without a result per record. Not cached: the next run asks."""
    try:
        return message in bulk_support(connection, meta)
    except DataverseApiError as exc:
        log.warning("the bulk-message probe for %s failed (%s); writing through $batch", meta.logical_name, exc)
        return False


# -- validation -----------------------------------------------------------------------------------------------------
def write_entities_problems(inputs: WriteEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``write_entities`` (metadata reads only): columns, values, labels, keys, addressing per mode."""
    return records_problems(connection, inputs.table, inputs.mode, inputs.records)


def records_problems(
    connection: Connection, table: str, mode: str, records: Sequence[Mapping[str, Any]]
) -> list[InputProblem]:
    """The same checks for rows given to the library (:func:`write_entities`) without the runtime in front."""
    p = Problems(connection, defer_values=True)  # a value that cannot be sent fails its record only: refused_records
    meta = p.table(table, "$.table")
    if meta is None:
        return p.items
    for i, record in enumerate(records):
        _record_problems(p, meta, mode, record, f"$.records[{i}]")
        if len(p.items) >= 50:  # a thousand copies of one mistake help nobody
            p.add("$.records", "more problems not listed; fix these first")
            break
    return p.items


def _record_problems(p: Problems, meta: TableMetadata, mode: str, record: Mapping[str, Any], path: str) -> None:
    id_, key = record.get("id"), record.get("key")
    fields = dict(record.get("fields") or {})
    if id_ is not None and key:
        p.add(f"{path}.key", "give either id or key, not both")
    if mode == "create" and key:
        p.add(f"{path}.key", "a create takes fields (and optionally id), not key; use mode upsert to write by key")
    if mode != "create" and id_ is None and not key:
        p.add(f"{path}.id", f"mode {mode} needs the row's id or an alternate key")
    if key:
        meta, _ = check_key(p, meta, key, f"{path}.key")
        if mode == "upsert":
            for column, value in key.items():
                if column in fields and fields[column] != value:
                    p.add(
                        f"{path}.fields.{column}",
                        f"{column!r} is a key column addressed by key with another value; an upsert cannot change "
                        "the key: remove it from fields",
                    )
    fields.pop(meta.primary_id, None)
    if mode == "upsert":
        for column in key or {}:
            fields.pop(column, None)
    build_body(p.connection, meta, fields, f"{path}.fields", for_create=mode != "update", problems=p, resolve=False)


def refused_records(
    connection: Connection, meta: TableMetadata, mode: str, records: Sequence[Mapping[str, Any]]
) -> dict[int, RowOutcome]:
    """Records holding a value that cannot be sent (``NaN``, a lone surrogate, text over the column's MaxLength, a
    number out of range, a lookup id that is not a GUID), each failed by itself before anything is sent.

    One such record used to fail its whole chunk (or be sent and refused by the server); the others still land.
    """
    out: dict[int, RowOutcome] = {}
    for i, record in enumerate(records):
        p = Problems(connection, defer_values=True)
        _record_problems(p, meta, mode, record, f"$.records[{i}]")
        if p.values:
            own = record.get("id")
            more = f" (and {len(p.values) - 1} more)" if len(p.values) > 1 else ""
            message = f"not sent: {p.values[0]}{more}"
            out[i] = RowOutcome("failed", own if isinstance(own, str) else None, "InputError", message)
    return out


# -- planning -------------------------------------------------------------------------------------------------------


def _plan(
    connection: Connection,
    meta: TableMetadata,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions,
    refused: Mapping[int, RowOutcome],
) -> list[PlannedWrite]:
    """Bodies built (lookups bound, labels mapped), key values typed, duplicates merged (later fields win)."""
    p = Problems(connection)
    items: list[PlannedWrite] = []
    by_identity: dict[tuple[Any, ...], PlannedWrite] = {}
    for i, record in enumerate(records):
        if i in refused:
            continue
        fields = dict(record.get("fields") or {})
        given = record.get("id") or fields.get(meta.primary_id)
        fields.pop(meta.primary_id, None)
        key = dict(record["key"]) if record.get("key") and given is None else None
        if mode == "upsert":
            for column in key or {}:
                fields.pop(column, None)
        body = build_body(
            connection,
            meta,
            fields,
            f"$.records[{i}].fields",
            for_create=mode != "update",
            problems=p,
            impersonate=options.impersonate,
        )
        if key:
            key = {c: key_value(connection, meta, c, v) for c, v in key.items()}
        item_id = str(given).lower() if given else None
        ident = row_identity(item_id, key)
        previous = by_identity.get(ident) if ident is not None else None
        if previous is not None:
            previous.merged.append(previous.index)
            previous.index = i
            previous.body = {**previous.body, **body}
            previous.key = key or previous.key  # the same key up to case: the last spelling wins too
            continue
        item = PlannedWrite(index=i, body=body, id=item_id, key=key)
        if mode == "create" and item.id is None and options.client_ids:
            item.id, item.generated = new_id(), True
        items.append(item)
        if ident is not None:
            by_identity[ident] = item
    if p.items:
        raise InputError(p.items)
    return items


# -- the writer -----------------------------------------------------------------------------------------------------
NO_ANSWER_MESSAGE = "sent, but the run stopped waiting for the answer (aborted); read the row to know its outcome"


def write_entities(
    connection: Connection,
    table: str,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions | None = None,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> WriteReport:
    """Write ``records`` (each ``{"fields": ..., "id"?: GUID, "key"?: {...}}``) to ``table``; never raises for a row.

    Every record ends with a result; only input problems (raised before any write, as :class:`InputError`) and
    failures to read metadata or the support probe raise. ``progress`` receives a snapshot per chunk done; once
    ``cancel`` is cancelled no new chunk is sent (its records are ``not_sent``) and the chunks in flight are waited
    for, unless the token is aborted or its grace period ends: their records are then ``unknown``. When it was the
    grace period, a read made right after (bounded by the token's ``confirm_s``) reports the rows it finds created.
    """
    options = options or WriteOptions()
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not 1 <= options.chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    headers = options.headers()
    meta = connection.metadata.table(table)
    problems = records_problems(connection, table, mode, records)
    if problems:
        raise InputError(problems)
    refused = refused_records(connection, meta, mode, records)
    items = _plan(connection, meta, mode, records, options, refused)
    message = {"create": "CreateMultiple", "update": "UpdateMultiple", "upsert": "UpsertMultiple"}[mode]
    use_bulk = bool(items) and _supports(connection, meta, message)
    writer = ChunkWriter(connection, meta, mode, options, headers, use_bulk, cancel=cancel)
    done: dict[int, RowOutcome] = {}
    tracker = Tracker(
        "write_entities",
        progress,
        total=len(records),
        clock=connection.governor.clock,
        throttle=connection.governor,
        cancel=cancel,
    )
    with tracker:
        if refused:
            tracker.advance({"failed": len(refused)})
        if mode == "update":  # keys become GUIDs first, so two records naming one row are merged like duplicates
            items, unresolved = writer.resolve_keys(items, done)
            tracker.advance(_tally(unresolved, done))
            chunks = [items[i : i + options.chunk_size] for i in range(0, len(items), options.chunk_size)]
            items = [*items, *unresolved]
        else:
            chunks = [items[i : i + options.chunk_size] for i in range(0, len(items), options.chunk_size)]

        def chunk_done(outcome: Outcome[dict[int, RowOutcome]]) -> None:
            done.update(_chunk_outcomes(chunks[outcome.index], outcome))
            tracker.advance(_tally(chunks[outcome.index], done))

        outcomes = connection.governor.map(writer.chunk, chunks, cancel=cancel, on_outcome=chunk_done)
        unfinished = [(c, o) for c, o in zip(chunks, outcomes, strict=True) if not o.started or not o.finished]
        for chunk, outcome in unfinished:
            done.update(_chunk_outcomes(chunk, outcome))
        lost = [chunk for chunk, outcome in unfinished if outcome.started]
        if lost and cancel is not None and not cancel.aborted:
            done.update(_confirm(writer, lost, cancel))
        if unfinished:  # one event for every chunk cancelled or given up on, not one line each
            tracker.advance(_tally([item for chunk, _ in unfinished for item in chunk], done))
    return WriteReport(
        table=meta.logical_name,
        mode=mode,
        route="bulk" if use_bulk else "batch",
        results=_results(len(records), items, done, refused),
        chunks=sum(1 for o in outcomes if o.started),
        split_requests=writer.split_requests,
        pre_reads=writer.pre_reads,
        cancelled=cancel is not None and cancel.cancelled,
    )


def _confirm(writer: ChunkWriter, lost: list[list[PlannedWrite]], cancel: CancellationToken) -> dict[int, RowOutcome]:
    """The rows of the chunks given up on when the grace period ended that a read finds, one read per chunk on a thread
    of its own, waited for at most ``cancel.confirm_s``. An abort skips it (a second Ctrl-C means "stop now"), and one
    during the read ends the wait with what is known. The rows not confirmed stay ``unknown``."""
    if cancel.confirm_s <= 0:
        return {}
    answers: queue.SimpleQueue[dict[int, RowOutcome] | None] = queue.SimpleQueue()

    def read() -> None:
        for chunk in lost:
            try:
                answers.put(writer.confirm(chunk))
            except Exception:  # a failed read confirms nothing: its rows stay unknown
                log.warning("the read confirming %d rows given up on failed", len(chunk), exc_info=True)
                answers.put({})

    out: dict[int, RowOutcome] = {}
    unsubscribe = cancel.subscribe(lambda: answers.put(None))
    try:
        threading.Thread(target=read, name="d365-confirm", daemon=True).start()
        deadline = time.monotonic() + cancel.confirm_s
        for _ in lost:
            try:
                answer = answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if answer is None:
                break
            out.update(answer)
    finally:
        unsubscribe()
    return out


def _chunk_outcomes(chunk: list[PlannedWrite], outcome: Outcome[dict[int, RowOutcome]]) -> dict[int, RowOutcome]:
    """One outcome per planned write of a chunk, whatever happened to the chunk (run, failed, never sent, no answer)."""
    if outcome.ok:
        return outcome.result()
    err = outcome.error
    out: dict[int, RowOutcome] = {}
    for item in chunk:
        own_id = None if item.generated else item.id
        if not outcome.started:
            out[item.index] = not_sent(item)
        elif not outcome.finished:
            out[item.index] = RowOutcome("unknown", item.id, None, NO_ANSWER_MESSAGE)
        else:  # a bug or a failure outside the per-row handling: still one honest result per row
            out[item.index] = RowOutcome("failed", own_id, getattr(err, "code", None) or type(err).__name__, str(err))
    return out


def _tally(items: Sequence[PlannedWrite], done: Mapping[int, RowOutcome]) -> dict[str, int]:
    """Records per status among ``items`` (each counts with the earlier records merged into it)."""
    counts: dict[str, int] = {}
    for item in items:
        status = done[item.index].status
        counts[status] = counts.get(status, 0) + 1 + len(item.merged)
    return counts


def _results(
    n: int, items: Sequence[PlannedWrite], done: Mapping[int, RowOutcome], refused: Mapping[int, RowOutcome]
) -> list[RecordResult]:
    results: list[RecordResult] = [RecordResult(i, "unknown") for i in range(n)]
    for i, r in refused.items():
        results[i] = RecordResult(i, r.status, r.id, r.code, r.message)
    for item in items:
        d = done[item.index]
        results[item.index] = RecordResult(item.index, d.status, d.id, d.code, d.message)
        for earlier in item.merged:
            results[earlier] = RecordResult(earlier, d.status, d.id, d.code, d.message, merged_into=item.index)
    return results
