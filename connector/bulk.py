"""The bulk writer: create, update or upsert any number of rows with one result per input record.

Why a writer of its own rather than a loop over the single-record actions (``peers.md`` section 4 items 2-3, pain
point 7): a bulk message (``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple``) counts as *one* request against the
service protection limits however many targets it carries (reference 15.6), so chunks of 100 rows move far more rows per
second than single requests. But on standard tables a bulk message is all-or-nothing and its error does not say which
target failed (reference 15.3), and UpsertMultiple over the Web API answers ``204`` with no per-record result. Users of
other connectors therefore lose a whole chunk to one bad row and cannot tell which rows were created. This module
closes those gaps:

* **one result per input record** (``created``, ``updated``, ``failed`` with Dataverse's code and message, or
  ``unknown``), with its id and input index, and a summary;
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
  on the connection. A table without them goes through ``$batch`` with ``Prefer: odata.continue-on-error``.

Bodies are built by :mod:`connector.records` (lookups as ``<navigation>@odata.bind``, labels as integers), so a bulk row
means exactly what the same row means to ``create_entity``.
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.client import DUPLICATE_RECORD
from connector.errors import (
    DataverseApiError,
    FatalApiError,
    InputError,
    InputProblem,
    OutcomeUnknownError,
    RetriableApiError,
)
from connector.ids import new_id
from connector.metadata import TableMetadata
from connector.multipart import BatchOperation, MultipartError, OperationResponse, decode_batch_response, encode_batch
from connector.odata import build_query_string, entity_id, filter_column, format_literal, key_is_url_safe, quote_string
from connector.records import _build_body, _check_key, _key_body, _key_value, _predicate, _Problems

if TYPE_CHECKING:
    from connector.connection import Connection

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
    "write_problems",
    "write_records",
]

MODES = ("create", "update", "upsert")
DEFAULT_CHUNK_SIZE = 100
"""Rows per bulk request: the low end of Microsoft's 100-1,000 for standard tables and the figure for elastic tables
(reference 7.3); small chunks also keep the cost of isolating a bad row low (one bisection level per doubling)."""
MAX_CHUNK_SIZE = 1000
"""The most rows one request may carry here: ``$batch`` takes at most 1,000 operations (reference 6.1)."""
READ_VALUES = 250
"""Values per ``In`` read: 250 GUIDs keep the URL under 16 KB, well inside the URL limit (reference 1.2)."""
BYPASS_BUSINESS_LOGIC = ("CustomSync", "CustomAsync")
NOT_FOUND = "0x80040217"
_NS = "Microsoft.Dynamics.CRM."
_DUPLICATE_CODES = frozenset({DUPLICATE_RECORD, "0x80060892"})  # duplicate primary key; duplicate alternate key
_NO_SPLIT_STATUS = frozenset({401, 403})  # the caller's rights, not a row: every half would fail the same way

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
        if self.status in ("failed", "unknown"):
            out["code"] = self.code
            out["message"] = self.message
        if self.merged_into is not None:
            out["merged_into"] = self.merged_into
        return out


@dataclass
class WriteReport:
    """Every record's result in input order, and what it took (requests by kind, the route taken)."""

    table: str
    mode: str
    route: str
    results: list[RecordResult]
    chunks: int = 0
    split_requests: int = 0
    pre_reads: int = 0

    def summary(self) -> dict[str, int]:
        counts = {"total": len(self.results), "created": 0, "updated": 0, "failed": 0, "unknown": 0, "merged": 0}
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


# -- validation -----------------------------------------------------------------------------------------------------
def write_problems(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase-two problems of a bulk write (metadata reads only): columns, values, labels, keys, addressing per mode."""
    p = _Problems(connection)
    meta = p.table(str(inputs["table"]), "$.table")
    if meta is None:
        return p.items
    mode = str(inputs.get("mode", "upsert"))
    for i, record in enumerate(inputs.get("records") or ()):
        _record_problems(p, meta, mode, record, f"$.records[{i}]")
        if len(p.items) >= 50:  # a thousand copies of one mistake help nobody
            p.add("$.records", "more problems not listed; fix these first")
            break
    return p.items


def _record_problems(p: _Problems, meta: TableMetadata, mode: str, record: Mapping[str, Any], path: str) -> None:
    id_, key = record.get("id"), record.get("key")
    fields = dict(record.get("fields") or {})
    if id_ is not None and key:
        p.add(f"{path}.key", "give either id or key, not both")
    if mode == "create" and key:
        p.add(f"{path}.key", "a create takes fields (and optionally id), not key; use mode upsert to write by key")
    if mode != "create" and id_ is None and not key:
        p.add(f"{path}.id", f"mode {mode} needs the row's id or an alternate key")
    if key:
        meta, _ = _check_key(p, meta, key, f"{path}.key")
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
    _build_body(p.connection, meta, fields, f"{path}.fields", for_create=mode != "update", problems=p, resolve=False)


# -- planning -------------------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """One write after merging duplicates: the last record with this id or key, and the earlier ones merged into it."""

    index: int
    body: dict[str, Any]
    id: str | None = None
    key: dict[str, Any] | None = None
    generated: bool = False  # the id was generated here (so it cannot have existed before this run)
    exists: bool | None = None  # upsert: whether the pre-read found the row
    merged: list[int] = field(default_factory=list)


@dataclass
class _Done:
    status: str
    id: str | None = None
    code: str | None = None
    message: str | None = None


def _norm(value: Any) -> Any:
    """Key values compared as Dataverse compares them: text case-insensitively (default collation)."""
    return value.casefold() if isinstance(value, str) else value


def _identity(item_id: str | None, key: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if item_id is not None:
        return ("id", str(item_id).lower())
    if key:
        return ("key", tuple(sorted((c, _norm(v)) for c, v in key.items())))
    return None


def _plan(
    connection: Connection, meta: TableMetadata, mode: str, records: Sequence[Mapping[str, Any]], options: WriteOptions
) -> list[_Item]:
    """Bodies built (lookups bound, labels mapped), key values typed, duplicates merged (later fields win)."""
    p = _Problems(connection)
    items: list[_Item] = []
    by_identity: dict[tuple[Any, ...], _Item] = {}
    for i, record in enumerate(records):
        fields = dict(record.get("fields") or {})
        given = record.get("id") or fields.get(meta.primary_id)
        fields.pop(meta.primary_id, None)
        key = dict(record["key"]) if record.get("key") and given is None else None
        if mode == "upsert":
            for column in key or {}:
                fields.pop(column, None)
        body = _build_body(
            connection,
            meta,
            fields,
            f"$.records[{i}].fields",
            for_create=mode != "update",
            problems=p,
            impersonate=options.impersonate,
        )
        if key:
            key = {c: _key_value(connection, meta, c, v) for c, v in key.items()}
        item_id = str(given).lower() if given else None
        ident = _identity(item_id, key)
        previous = by_identity.get(ident) if ident is not None else None
        if previous is not None:
            previous.merged.append(previous.index)
            previous.index = i
            previous.body = {**previous.body, **body}
            previous.key = key or previous.key  # the same key up to case: the last spelling wins too
            continue
        item = _Item(index=i, body=body, id=item_id, key=key)
        if mode == "create" and item.id is None and options.client_ids:
            item.id, item.generated = new_id(), True
        items.append(item)
        if ident is not None:
            by_identity[ident] = item
    if p.items:
        raise InputError(p.items)
    return items


# -- the writer -----------------------------------------------------------------------------------------------------
def write_records(
    connection: Connection,
    table: str,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions | None = None,
) -> WriteReport:
    """Write ``records`` (each ``{"fields": ..., "id"?: GUID, "key"?: {...}}``) to ``table``; never raises for a row.

    Every record ends with a result; only input problems (raised before any write, as :class:`InputError`) and
    failures to read metadata or the support probe raise.
    """
    options = options or WriteOptions()
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not 1 <= options.chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    headers = options.headers()
    meta = connection.metadata.table(table)
    problems = write_problems({"table": table, "mode": mode, "records": records}, connection)
    if problems:
        raise InputError(problems)
    items = _plan(connection, meta, mode, records, options)
    chunks = [items[i : i + options.chunk_size] for i in range(0, len(items), options.chunk_size)]
    message = {"create": "CreateMultiple", "update": "UpdateMultiple", "upsert": "UpsertMultiple"}[mode]
    use_bulk = bool(items) and message in bulk_support(connection, meta)
    writer = _Writer(connection, meta, mode, options, headers, use_bulk)
    done: dict[int, _Done] = {}
    if mode == "update":  # keys become GUIDs first, so two records naming one row are merged like duplicates
        items, unresolved = writer.resolve_keys(items, done)
        chunks = [items[i : i + options.chunk_size] for i in range(0, len(items), options.chunk_size)]
        items = [*items, *unresolved]
    outcomes = connection.governor.map(writer.chunk, chunks)
    for chunk, outcome in zip(chunks, outcomes, strict=True):
        if outcome.ok:
            done.update(outcome.result())
        else:  # a bug or a failure outside the per-row handling: still one honest result per row
            err = outcome.error
            code = getattr(err, "code", None) or type(err).__name__
            for item in chunk:
                done[item.index] = _Done("failed", None if item.generated else item.id, code, str(err))
    results: list[RecordResult] = [RecordResult(i, "unknown") for i in range(len(records))]
    for item in items:
        d = done[item.index]
        results[item.index] = RecordResult(item.index, d.status, d.id, d.code, d.message)
        for earlier in item.merged:
            results[earlier] = RecordResult(earlier, d.status, d.id, d.code, d.message, merged_into=item.index)
    return WriteReport(
        table=meta.logical_name,
        mode=mode,
        route="bulk" if use_bulk else "batch",
        results=results,
        chunks=len(chunks),
        split_requests=writer.split_requests,
        pre_reads=writer.pre_reads,
    )


def _failure(item: _Item, exc: DataverseApiError) -> _Done:
    """A failed record keeps its id only when the row exists (an update); an id generated here names no row."""
    return _Done("failed", None if item.generated else item.id, exc.code or type(exc).__name__, str(exc))


class _Writer:
    """The per-chunk work, run on the governor's threads; counters are shared, so they are locked."""

    def __init__(
        self,
        connection: Connection,
        meta: TableMetadata,
        mode: str,
        options: WriteOptions,
        headers: Mapping[str, str],
        use_bulk: bool,
    ) -> None:
        self.connection = connection
        self.client = connection.client
        self.meta = meta
        self.mode = mode
        self.options = options
        self.headers = dict(headers)
        self.use_bulk = use_bulk
        self._lock = threading.Lock()
        self.split_requests = 0
        self.pre_reads = 0

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    # -- one chunk --------------------------------------------------------------------------------------------------
    def chunk(self, items: list[_Item]) -> dict[int, _Done]:
        """Prepare (pre-reads) and write one chunk; one result per item."""
        done: dict[int, _Done] = {}
        if self.mode == "create":
            ready = self._drop_existing_ids(items, done)
        elif self.mode == "update":
            ready = items  # keys were resolved before chunking (resolve_keys)
        else:
            ready = self._pre_read(items)
        if not ready:
            return done
        send: Callable[[list[_Item]], dict[int, _Done]] = self._bulk if self.use_bulk else self._batch
        done.update(send(ready))
        return done

    # -- reads ------------------------------------------------------------------------------------------------------
    def _read(self, column: str, typ: str, values: Sequence[Any], select: Sequence[str]) -> list[dict[str, Any]]:
        """Rows whose ``column`` is one of ``values``, through ``In`` reads of at most :data:`READ_VALUES` values."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(values), READ_VALUES):
            part = values[start : start + READ_VALUES]
            literals = ",".join(quote_string(str(v)) for v in part)
            filter_ = f"{_NS}In(PropertyName='{filter_column(column, typ)}',PropertyValues=[{literals}])"
            rows += self._get(filter_, select)
        return rows

    def _get(self, filter_: str, select: Sequence[str]) -> list[dict[str, Any]]:
        query = build_query_string({"$select": ",".join(dict.fromkeys(select)), "$filter": filter_})
        self._count("pre_reads")
        out: list[dict[str, Any]] = []
        url: str | None = f"{self.meta.entity_set}?{query}"
        while url:
            body = self.client.get_json(url, prefer=["odata.maxpagesize=5000"], impersonate=self.options.impersonate)
            out += [r for r in body.get("value", []) if isinstance(r, dict)] if isinstance(body, dict) else []
            url = body.get("@odata.nextLink") if isinstance(body, dict) else None
        return out

    def _existing_ids(self, ids: Sequence[str]) -> set[str]:
        pid = self.meta.primary_id
        rows = self._read(pid, "Uniqueidentifier", list(ids), [pid])
        return {str(r[pid]).lower() for r in rows if r.get(pid)}

    def _find_keys(self, items: Sequence[_Item]) -> dict[tuple[Any, ...], str]:
        """GUIDs of the rows with these keys: ``In`` over a one-column key, ``or`` of ``and`` for a composite key."""
        meta, pid = self.meta, self.meta.primary_id
        found: dict[tuple[Any, ...], str] = {}
        by_columns: dict[tuple[str, ...], list[_Item]] = {}
        for item in items:
            assert item.key is not None
            by_columns.setdefault(tuple(sorted(item.key)), []).append(item)
        for columns, group in by_columns.items():
            props = {c: filter_column(c, meta.attributes[c].type) for c in columns}
            select = [pid, *props.values()]
            if len(columns) == 1:
                (column,) = columns
                values = list(dict.fromkeys(item.key[column] for item in group if item.key is not None))
                rows = self._read(column, meta.attributes[column].type, values, select)
            else:
                rows = []
                for start in range(0, len(group), READ_VALUES // 2):
                    clauses = []
                    for item in group[start : start + READ_VALUES // 2]:
                        assert item.key is not None
                        parts = [
                            f"{props[c]} eq {format_literal(item.key[c], meta.attributes[c].type)}" for c in columns
                        ]
                        clauses.append("(" + " and ".join(parts) + ")")
                    rows += self._get(" or ".join(clauses), select)
            for row in rows:
                ident = ("key", tuple(sorted((c, _norm(row.get(props[c]))) for c in columns)))
                found[ident] = str(row[pid]).lower()
        return found

    def _drop_existing_ids(self, items: list[_Item], done: dict[int, _Done]) -> list[_Item]:
        """Creates with ids the caller chose: rows that already have them fail now, before the write. Afterwards a
        duplicate-key answer can only mean that an earlier send of this very chunk was applied."""
        given = [item.id for item in items if item.id is not None and not item.generated]
        if not given:
            return items
        existing = self._existing_ids(given)
        ready = []
        for item in items:
            if item.id in existing and not item.generated:
                done[item.index] = _Done(
                    "failed", item.id, DUPLICATE_RECORD, "A record with matching key values already exists."
                )
            else:
                ready.append(item)
        return ready

    def resolve_keys(self, items: list[_Item], done: dict[int, _Done]) -> tuple[list[_Item], list[_Item]]:
        """Update by alternate key: keys become GUIDs (one ``In`` read per chunk of keys, in parallel), since
        UpdateMultiple over the Web API takes no alternate keys. A key with no row fails as not found. Records that
        now name the same row are merged (later fields win): UpdateMultiple would apply only the first of them.
        Returns the items to write and the items already decided."""
        keyed = [item for item in items if item.id is None]
        size = self.options.chunk_size
        parts = [keyed[i : i + size] for i in range(0, len(keyed), size)]
        decided: list[_Item] = []
        for part, outcome in zip(parts, self.connection.governor.map(self._find_keys, parts), strict=True):
            found = outcome.value if outcome.ok and outcome.value is not None else {}
            for item in part:
                ident = _identity(None, item.key)
                if outcome.error is not None:
                    code = getattr(outcome.error, "code", None) or type(outcome.error).__name__
                    done[item.index] = _Done("failed", None, code, f"the key could not be read: {outcome.error}")
                elif ident in found:
                    item.id = found[ident]
                    continue
                else:
                    done[item.index] = _Done("failed", None, NOT_FOUND, self._missing(item))
                decided.append(item)
        ready: list[_Item] = []
        slot: dict[str, int] = {}
        for item in items:
            if item.index in done:
                continue
            assert item.id is not None
            if item.id in slot:  # the earlier record is merged into this later one, which takes its place
                earlier = ready[slot[item.id]]
                item.merged = [*earlier.merged, earlier.index, *item.merged]
                item.body = {**earlier.body, **item.body}
                ready[slot[item.id]] = item
                continue
            slot[item.id] = len(ready)
            ready.append(item)
        return ready, decided

    def _pre_read(self, items: list[_Item]) -> list[_Item]:
        """Upsert: which rows exist already (UpsertMultiple answers 204 without per-record results, reference 15.3).

        Rows found by key are then addressed by their GUID; rows to create get a new client id (with the key columns
        in the body), so every result carries its id and a resend after a lost answer updates instead of duplicating.
        """
        by_id = [item.id for item in items if item.id is not None]
        existing = self._existing_ids(by_id) if by_id else set()
        keyed = [item for item in items if item.id is None]
        found = self._find_keys(keyed) if keyed else {}
        for item in items:
            if item.id is not None:
                item.exists = item.id in existing
                continue
            ident = _identity(None, item.key)
            assert ident is not None and item.key is not None
            if ident in found:
                item.id, item.exists = found[ident], True
                continue
            item.exists = False
            if self.options.client_ids or not key_is_url_safe(item.key):
                item.id, item.generated = new_id(), True
                item.body = {**item.body, **_key_body(self.connection, self.meta, item.key)}
        return items

    def _missing(self, item: _Item) -> str:
        named = ", ".join(f"{c}={v!r}" for c, v in (item.key or {}).items()) or f"id {item.id}"
        return f"{self.meta.logical_name} With {named} Does Not Exist"

    # -- bulk messages ----------------------------------------------------------------------------------------------
    def _target(self, item: _Item) -> dict[str, Any]:
        meta = self.meta
        target: dict[str, Any] = {"@odata.type": f"{_NS}{meta.logical_name}"}
        if item.id is not None:
            target[meta.primary_id] = item.id
        elif item.key:  # an upsert to create by a URL-safe key without client ids
            target["@odata.id"] = f"{meta.entity_set}({_predicate(self.connection, meta, item.key)})"
        target.update(item.body)
        return target

    def _bulk(self, items: list[_Item], *, split: bool = False) -> dict[int, _Done]:
        """Send one bulk message; on a row's failure, split in halves until the bad rows stand alone."""
        if split:
            self._count("split_requests")
        message = {"create": "CreateMultiple", "update": "UpdateMultiple", "upsert": "UpsertMultiple"}[self.mode]
        retry_safe = self.mode != "create" or all(item.id is not None for item in items)  # a PATCH-like write is safe
        try:
            response = self.client.request(
                "POST",
                f"{self.meta.entity_set}/{_NS}{message}",
                json={"Targets": [self._target(item) for item in items]},
                headers=self.headers,
                impersonate=self.options.impersonate,
                idempotent=retry_safe,
            )
        except FatalApiError as exc:
            if self.mode == "create" and exc.code == DUPLICATE_RECORD and retry_safe:
                confirmed = self._confirm_created(items)
                if confirmed is not None:
                    return confirmed
            if len(items) == 1 and self._created_meanwhile(items[0], exc):
                return self._bulk(items)  # now addressed to the row someone else created: an update, sent once
            if len(items) == 1 or exc.status_code in _NO_SPLIT_STATUS:
                return {item.index: _failure(item, exc) for item in items}
            half = math.ceil(len(items) / 2)
            return {**self._bulk(items[:half], split=True), **self._bulk(items[half:], split=True)}
        except OutcomeUnknownError as exc:
            return {item.index: _Done("unknown", item.id, exc.code, str(exc)) for item in items}
        except RetriableApiError as exc:
            if self.mode == "create" and retry_safe:
                # the retry budget is spent, but an earlier send may have been applied: the rows say which
                existing = self._existing_ids([item.id for item in items if item.id is not None])
                return {
                    item.index: _Done("created", item.id) if item.id in existing else _failure(item, exc)
                    for item in items
                }
            return {item.index: _failure(item, exc) for item in items}
        if self.mode == "create":
            ids = _created_ids(response) or [item.id for item in items]
            return {item.index: _Done("created", rid or item.id) for item, rid in zip(items, ids, strict=False)}
        if self.mode == "update":
            return {item.index: _Done("updated", item.id) for item in items}
        return {item.index: _Done("created" if not item.exists else "updated", item.id) for item in items}

    def _created_meanwhile(self, item: _Item, exc: FatalApiError) -> bool:
        """An upsert planned as a create by key met "duplicate key": another writer created the key after the pre-read.
        Re-read the key; if the row is there, re-address the item to it (an update) and say so."""
        if self.mode != "upsert" or item.exists or not item.generated or item.key is None:
            return False
        if (exc.code or "").lower() not in _DUPLICATE_CODES and exc.status_code != 412:
            return False
        found = self._find_keys([item]).get(_identity(None, item.key) or ())
        if found is None:
            return False
        item.id, item.exists, item.generated = found, True, False
        return True

    def _confirm_created(self, items: list[_Item]) -> dict[int, _Done] | None:
        """A create chunk met "duplicate key" and every id is ours: rows that exist were created by an earlier send
        whose answer was lost (all-or-nothing: usually all of them); the rest are sent again. None if none exist."""
        ids = [item.id for item in items if item.id is not None]
        existing = self._existing_ids(ids)
        if not existing:
            return None
        done = {item.index: _Done("created", item.id) for item in items if item.id in existing}
        rest = [item for item in items if item.id not in existing]
        if rest:
            done.update(self._bulk(rest))
        return done

    # -- $batch fallback --------------------------------------------------------------------------------------------
    def _batch(self, items: list[_Item]) -> dict[int, _Done]:
        """Tables without the bulk messages: the chunk as one ``$batch`` with ``Prefer: odata.continue-on-error``.

        Every operation gets its own answer, in order (reference 6.4), so no bisection is needed. Each operation is
        addressed by GUID (creates carry their client id), so the whole batch may be sent again after a lost answer;
        a create that then meets "duplicate key" on an id generated here was applied by the earlier send.
        """
        api_path = urlsplit(self.connection.api_url).path.rstrip("/")
        meta = self.meta
        operations = []
        for item in items:
            body = dict(item.body)
            headers: list[tuple[str, str]] = [("Content-Type", "application/json; type=entry")]
            if self.mode == "create":
                if item.id is not None:
                    body[meta.primary_id] = item.id
                method, url = "POST", f"{api_path}/{meta.entity_set}"
            else:
                address = (
                    item.id
                    if item.id is not None
                    else _predicate(self.connection, meta, item.key or {})  # upsert by a URL-safe key
                )
                method, url = "PATCH", f"{api_path}/{meta.entity_set}({address})"
                if self.mode == "update":
                    headers.append(("If-Match", "*"))
            headers += list(self.headers.items())
            operations.append(BatchOperation(method, url, tuple(headers), json.dumps(body).encode()))
        retry_safe = self.mode != "create" or all(item.id is not None for item in items)  # a PATCH-like write is safe
        content_type, payload = encode_batch(operations)
        try:
            response = self.client.request(
                "POST",
                "$batch",
                content=payload,
                headers={"Content-Type": content_type},
                prefer=["odata.continue-on-error"],
                impersonate=self.options.impersonate,
                idempotent=retry_safe,
                keep_response=lambda r: str(r.headers.get("Content-Type", "")).startswith("multipart/mixed"),
            )
            answers = decode_batch_response(response.headers.get("Content-Type", ""), response.content)
        except OutcomeUnknownError as exc:
            return {item.index: _Done("unknown", item.id, exc.code, str(exc)) for item in items}
        except DataverseApiError as exc:
            return {item.index: _failure(item, exc) for item in items}
        except MultipartError as exc:
            error = FatalApiError(f"Dataverse answered the $batch with a body that cannot be read ({exc})")
            return {item.index: _failure(item, error) for item in items}
        done: dict[int, _Done] = {}
        for n, item in enumerate(items):
            answer = answers[n] if n < len(answers) else None
            if not isinstance(answer, OperationResponse):
                done[item.index] = _Done(
                    "failed",
                    None if item.generated else item.id,
                    "NoAnswer",
                    "Dataverse sent no answer for this operation",
                )
                continue
            if answer.status < 400:
                done[item.index] = self._batch_success(item, answer)
                continue
            error = answer.json()
            detail = error.get("error", {}) if isinstance(error, dict) else {}
            code = str(detail.get("code") or f"HTTP {answer.status}")
            if self.mode == "create" and item.generated and code == DUPLICATE_RECORD:
                done[item.index] = _Done("created", item.id)  # an id made in this run: an earlier send created it
                continue
            message = str(detail.get("message") or answer.reason or "failed")
            done[item.index] = _Done("failed", None if item.generated else item.id, code, message)
        return done

    def _batch_success(self, item: _Item, answer: OperationResponse) -> _Done:
        if self.mode == "create":
            return _Done("created", item.id or entity_id(answer.header("OData-EntityId")))
        if self.mode == "update":
            return _Done("updated", item.id)
        created = item.id or entity_id(answer.header("OData-EntityId"))
        return _Done("updated" if item.exists else "created", created)


def _created_ids(response: Any) -> list[str | None]:
    try:
        body = response.json()
    except ValueError:
        return []
    ids = body.get("Ids") if isinstance(body, dict) else None
    return [str(i).lower() if i else None for i in ids] if isinstance(ids, list) else []
