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
* **upsert** pre-reads which keys exist (``In`` reads, one request for two chunks: :mod:`connector.bulk_reads`,
  :class:`connector.bulk_run.ReadAhead`) to say created vs updated, and **update** by alternate key resolves keys to
  GUIDs the same way, since UpdateMultiple over the Web API takes no alternate keys;
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

* :func:`write_entities_stream` takes records from an iterator of any length (a sync reading a source) and hands each
  chunk's results to a callback as the chunk is decided, holding at most ``2 x max_parallelism`` chunks; the list form
  checks and merges the whole list first, then is driven the same way (:mod:`connector.bulk_run`).

Each chunk is written by :class:`connector.bulk_chunks.ChunkWriter`. Bodies are built by :mod:`connector.body`
(lookups as ``<navigation>@odata.bind``, labels as integers), so a bulk row
means exactly what the same row means to ``create_entity``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.body import build_body
from connector.bulk_chunks import NOT_SENT_MESSAGE, ChunkWriter, RowOutcome
from connector.bulk_plan import ListPlan, planned
from connector.bulk_remove import REMOVE_MODES, removal_problems, remove_entities
from connector.bulk_run import Chunk, Merger, RecordResult, StreamSummary, run_chunks, sorted_results
from connector.bulk_support import bulk_support, supports
from connector.errors import (
    InputError,
    InputProblem,
)
from connector.inputs import WriteEntities
from connector.metadata import TableMetadata
from connector.problems import Problems, check_key
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "BYPASS_BUSINESS_LOGIC",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MODES",
    "REMOVE_MODES",
    "CheckedRecords",
    "RecordResult",
    "StreamSummary",
    "WriteOptions",
    "WriteReport",
    "bulk_support",
    "bypass_headers",
    "check_records",
    "records_problems",
    "write_entities",
    "write_entities_problems",
    "write_entities_stream",
]

MODES = ("create", "update", "upsert")
"""The modes that write fields; ``delete`` and ``deactivate`` (:mod:`connector.bulk_remove`) remove rows."""
DEFAULT_CHUNK_SIZE = 1000
"""Rows per bulk request: the high end of Microsoft's 100-1,000 for standard tables (reference 7.3; pass 100 for an
elastic table). Fewer requests is what the service protection limits reward: an upsert chunk is two requests (the
pre-read and the write), so chunks of 100 spend the 6,000 requests per 5 minutes at 2,000 rows/s where chunks of 1,000
reach the execution-time limit first. A bad row costs more to isolate (10 bisection levels instead of 7, 2 requests
each), but phase two refuses most bad rows before sending, so the rows a server refuses are few."""
MAX_CHUNK_SIZE = 1000
"""The most rows one request may carry here: ``$batch`` takes at most 1,000 operations (reference 6.1)."""
BYPASS_BUSINESS_LOGIC = ("CustomSync", "CustomAsync")

log = logging.getLogger("connector.bulk")


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
        if self.mode in REMOVE_MODES:
            counts |= {"deleted" if self.mode == "delete" else "deactivated": 0, "absent": 0}
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


# -- validation -----------------------------------------------------------------------------------------------------
def write_entities_problems(inputs: WriteEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``write_entities`` (metadata reads only): columns, values, labels, keys, addressing per mode."""
    return records_problems(connection, inputs.table, inputs.mode, inputs.records)


def records_problems(
    connection: Connection, table: str, mode: str, records: Sequence[Mapping[str, Any]]
) -> list[InputProblem]:
    """The same checks for rows given to the library (:func:`write_entities`) without the runtime in front."""
    return check_records(connection, table, mode, records).problems


@dataclass(frozen=True)
class CheckedRecords:
    """Phase two's verdict on one list of records: its problems, each record's body or refusal. Handed to
    :func:`write_entities` with that same list, it spares the write a second pass (the runtime checks, then writes:
    a third of the client's CPU on 20,000 records)."""

    records: Sequence[Mapping[str, Any]]
    table: str
    mode: str
    meta: TableMetadata | None
    problems: list[InputProblem]
    bodies: dict[int, dict[str, Any]]
    refused: dict[int, RowOutcome]


def check_records(
    connection: Connection, table: str, mode: str, records: Sequence[Mapping[str, Any]]
) -> CheckedRecords:
    """Phase two of a write of ``records``, kept (see :class:`CheckedRecords`)."""
    p = Problems(connection, defer_values=True)  # a value that cannot be sent fails its record only: refused_records
    meta = p.table(table, "$.table")
    if meta is None:
        return CheckedRecords(records, table, mode, None, p.items, {}, {})
    if mode in REMOVE_MODES:
        removal_problems(p, meta, mode, records)
        return CheckedRecords(records, table, mode, meta, p.items, {}, {})
    bodies, refused = _checked_all(p, meta, mode, records)
    return CheckedRecords(records, table, mode, meta, p.items, bodies, refused)


def _checked_all(
    p: Problems, meta: TableMetadata, mode: str, records: Sequence[Mapping[str, Any]]
) -> tuple[dict[int, dict[str, Any]], dict[int, RowOutcome]]:
    """One pass over the records: problems of structure in ``p.items`` (the run is refused), each record's body
    (built without resolving lookups) or its refusal (a value that cannot be sent fails that record only)."""
    bodies: dict[int, dict[str, Any]] = {}
    refused: dict[int, RowOutcome] = {}
    for i, record in enumerate(records):
        body, values = _checked(p, meta, mode, record, f"$.records[{i}]")
        if values:
            refused[i] = _refusal(record, values)
        else:
            bodies[i] = body
        if len(p.items) >= 50:  # a thousand copies of one mistake help nobody
            p.add("$.records", "more problems not listed; fix these first")
            break
    return bodies, refused


def _checked(
    p: Problems, meta: TableMetadata, mode: str, record: Mapping[str, Any], path: str
) -> tuple[dict[str, Any], list[InputProblem]]:
    """A record's problems of structure (added to ``p``), its body and the problems of its values (taken from ``p``)."""
    before = len(p.values)
    body = _record_problems(p, meta, mode, record, path)
    if len(p.values) == before:  # most records
        return body, []
    values = p.values[before:]
    del p.values[before:]
    return body, values


def _record_problems(
    p: Problems, meta: TableMetadata, mode: str, record: Mapping[str, Any], path: str
) -> dict[str, Any]:
    id_, key = record.get("id"), record.get("key")
    fields = record.get("fields") or {}
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
    addressed = key if mode == "upsert" and key else {}  # an upsert's key columns are sent as the key
    if meta.primary_id in fields or not fields.keys().isdisjoint(addressed):  # most records carry neither
        fields = {c: v for c, v in fields.items() if c != meta.primary_id and c not in addressed}
    return build_body(
        p.connection, meta, fields, f"{path}.fields", for_create=mode != "update", problems=p, resolve=False
    )


def _refusal(record: Mapping[str, Any], values: Sequence[InputProblem]) -> RowOutcome:
    own = record.get("id")
    more = f" (and {len(values) - 1} more)" if len(values) > 1 else ""
    return RowOutcome("failed", own if isinstance(own, str) else None, "InputError", f"not sent: {values[0]}{more}")


def refused_records(
    connection: Connection, meta: TableMetadata, mode: str, records: Sequence[Mapping[str, Any]]
) -> dict[int, RowOutcome]:
    """Records holding a value that cannot be sent (``NaN``, a lone surrogate, text over the column's MaxLength, a
    number out of range, a lookup id that is not a GUID), each failed by itself before anything is sent.

    One such record used to fail its whole chunk (or be sent and refused by the server); the others still land.
    """
    return _checked_all(Problems(connection, defer_values=True), meta, mode, records)[1]


# -- the writers ----------------------------------------------------------------------------------------------------
def _checked_options(mode: str, options: WriteOptions | None, modes: Sequence[str] = MODES) -> WriteOptions:
    options = options or WriteOptions()
    if mode not in modes:
        raise InputError(f"mode must be one of {', '.join(modes)}, not {mode!r}")
    if not 1 <= options.chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    return options


def write_entities(
    connection: Connection,
    table: str,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions | None = None,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
    checked: CheckedRecords | None = None,
) -> WriteReport:
    """Write ``records`` (each ``{"fields": ..., "id"?: GUID, "key"?: {...}}``) to ``table``; never raises for a row.

    Every record ends with a result; only input problems (raised before any write, as :class:`InputError`) and
    failures to read metadata or the support probe raise. ``progress`` receives a snapshot per chunk done; once
    ``cancel`` is cancelled no new chunk is sent (its records are ``not_sent``) and the chunks in flight are waited
    for, unless the token is aborted or its grace period ends: their records are then ``unknown``. When it was the
    grace period, a read made right after (bounded by the token's ``confirm_s``) reports the rows it finds created.

    The whole list is checked and its duplicates merged before anything is sent; then it is written as
    :func:`write_entities_stream` writes a stream. ``checked``, :func:`check_records`' verdict on this same list,
    spares the second check. Modes ``delete`` and ``deactivate`` remove the rows the records name (``{"id": GUID}`` or
    ``{"key": {...}}``), see :mod:`connector.bulk_remove`.
    """
    options = _checked_options(mode, options, (*MODES, *REMOVE_MODES))
    if mode in REMOVE_MODES:
        meta = connection.metadata.table(table)
        done = remove_entities(
            connection, meta, mode, records, options, lambda m: supports(connection, meta, m), progress, cancel
        )
        return WriteReport(
            meta.logical_name,
            mode,
            done.route,
            done.results,
            done.chunks,
            done.split_requests,
            done.pre_reads,
            done.cancelled,
        )
    same = checked is not None and checked.records is records and (checked.table, checked.mode) == (table, mode)
    if checked is not None and same and checked.meta is not None:
        meta, bodies, refused = checked.meta, checked.bodies, checked.refused
        if checked.problems:
            raise InputError(checked.problems)
    else:
        meta = connection.metadata.table(table)
        p = Problems(connection, defer_values=True)
        bodies, refused = _checked_all(p, meta, mode, records)
        if p.items:
            raise InputError(p.items)
    with _heap_still():  # see _heap_still
        route = _probe_meanwhile(connection, meta, mode) if bodies else None
        plan = ListPlan(connection, meta, mode, records, bodies, options)
        run = _Run(connection, meta, mode, options, bool(plan.order), cancel, route)
        first = Chunk([], dict(refused), send=False)
        chunks: Iterable[Chunk] = itertools.chain([first], (Chunk(part) for part in plan.parts()))
        if mode == "update":  # keys become GUIDs first, so two records naming one row are merged like duplicates
            items, first.items = run.writer.resolve_keys([x for part in plan.parts() for x in part], first.decided)
            size = options.chunk_size
            chunks = [first] + [Chunk(items[i : i + size]) for i in range(0, len(items), size)]
        collected: list[RecordResult] = []
        summary = run.run(chunks, collected.extend, progress, total=len(records))
    return WriteReport(
        table=meta.logical_name,
        mode=mode,
        route=summary.route,
        results=sorted_results(len(records), collected),
        chunks=summary.chunks,
        split_requests=summary.split_requests,
        pre_reads=summary.pre_reads,
        cancelled=summary.cancelled,
    )


_MESSAGES = {"create": "CreateMultiple", "update": "UpdateMultiple", "upsert": "UpsertMultiple"}


@contextlib.contextmanager
def _heap_still() -> Iterator[None]:
    """Keep the objects alive when a list write starts (the caller's records, their checked bodies) out of the
    garbage collector's full passes until it ends (``gc.freeze``), then hand them back (``gc.unfreeze``).

    Why: a write of 20,000 records allocates results while every record is alive, and each full pass walks them all:
    two pauses of 36 and 42 ms in one run, taken with every thread stopped, so the governor's places stood idle. Objects
    made during the write are collected as before; a write running in another thread at the same time only makes a
    pass skip objects that outlive both."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _probe_meanwhile(connection: Connection, meta: TableMetadata, mode: str) -> Callable[[], bool]:
    """Start the bulk-message probe (one request on a table's first write) on a thread while the list is planned;
    the callable waits for its answer. On a cold connection the two were 30 and 50 ms one after the other."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="d365-probe")
    try:
        return pool.submit(supports, connection, meta, _MESSAGES[mode]).result
    finally:
        pool.shutdown(wait=False)


class _Run:
    """One run of the writer, list or stream: the route (probed once), the chunk writer, the counts."""

    def __init__(
        self,
        connection: Connection,
        meta: TableMetadata,
        mode: str,
        options: WriteOptions,
        any_items: bool,
        cancel: CancellationToken | None,
        route: Callable[[], bool] | None = None,
    ) -> None:
        """``route``: the answer of a bulk-message probe already under way (:func:`_probe_meanwhile`)."""
        self.connection, self.meta, self.mode, self.cancel = connection, meta, mode, cancel
        probe = route or (lambda: supports(connection, meta, _MESSAGES[mode]))
        self.use_bulk = any_items and probe()
        self.writer = ChunkWriter(connection, meta, mode, options, options.headers(), self.use_bulk, cancel=cancel)

    def run(
        self,
        chunks: Iterable[Chunk],
        on_chunk: Callable[[list[RecordResult]], None],
        progress: Reporter | None,
        *,
        total: int | None,
    ) -> StreamSummary:
        counts: dict[str, int] = {}

        def delivered(results: list[RecordResult]) -> None:
            for r in results:
                counts["total"] = counts.get("total", 0) + 1
                counts[r.status] = counts.get(r.status, 0) + 1
                if r.merged_into is not None:
                    counts["merged"] = counts.get("merged", 0) + 1
            on_chunk(results)

        governor = self.connection.governor
        tracker = Tracker(
            "write_entities", progress, total=total, clock=governor.clock, throttle=governor, cancel=self.cancel
        )
        with tracker:
            stats = run_chunks(self.writer, chunks, tracker=tracker, cancel=self.cancel, on_chunk=delivered)
        return StreamSummary(
            table=self.meta.logical_name,
            mode=self.mode,
            route="bulk" if self.use_bulk else "batch",
            counts=counts,
            chunks=stats.chunks,
            split_requests=self.writer.split_requests,
            pre_reads=self.writer.pre_reads,
            cancelled=stats.cancelled,
        )


def write_entities_stream(
    connection: Connection,
    table: str,
    mode: str,
    records: Iterable[Mapping[str, Any]],
    options: WriteOptions | None = None,
    *,
    on_chunk: Callable[[list[RecordResult]], None],
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> StreamSummary:
    """:func:`write_entities` for records from an iterator of any length, in bounded memory: at most
    ``2 x max_parallelism`` chunks are held, and ``on_chunk`` receives each chunk's results (``index``: the record's
    position in the stream) on the calling thread as soon as the chunk is decided, every record exactly once.

    Records are checked as they are read: a problem of structure (an unknown column, a key missing) raises
    :class:`InputError` when it is in the first chunk, before anything is sent; later, it fails its record only.
    Duplicates are merged within a chunk; a record whose row a chunk still in flight writes waits for that chunk, so
    one row's writes land in input order. Update by key resolves keys chunk by chunk. Once ``cancel`` is cancelled
    the records not yet sent are read on without being checked and delivered ``not_sent``.
    """
    options = _checked_options(mode, options)
    meta = connection.metadata.table(table)
    run = _Run(connection, meta, mode, options, True, cancel)
    chunks = _StreamChunks(connection, meta, mode, options, cancel)
    return run.run(chunks.read(records), on_chunk, progress, total=None)


class _StreamChunks:
    """Chunks planned record by record from a stream (see :func:`write_entities_stream`)."""

    def __init__(
        self,
        connection: Connection,
        meta: TableMetadata,
        mode: str,
        options: WriteOptions,
        cancel: CancellationToken | None,
    ) -> None:
        self.connection, self.meta, self.mode, self.options, self.cancel = connection, meta, mode, options, cancel
        self.in_flight: dict[tuple[Any, ...], Chunk] = {}  # identities of the chunks sent and maybe not yet written
        self.sent: deque[tuple[Chunk, list[tuple[Any, ...]]]] = deque()
        self.first = True

    def read(self, records: Iterable[Mapping[str, Any]]) -> Iterator[Chunk]:
        p = Problems(self.connection, defer_values=True)
        merger = Merger(self.mode, self.options)
        chunk, identities, n = Chunk([], resolve=self.mode == "update"), list[tuple[Any, ...]](), 0
        for i, record in enumerate(records):
            n += 1
            if self.cancel is not None and self.cancel.cancelled:
                own = record.get("id") if isinstance(record, Mapping) else None
                message = NOT_SENT_MESSAGE
                chunk.decided[i] = RowOutcome("not_sent", own if isinstance(own, str) else None, None, message)
            else:
                ident = self._plan(p, merger, chunk, record, i)
                if ident is not None:
                    identities.append(ident)
                    if ident in self.in_flight:
                        self._wait(self.in_flight[ident])
            if n >= self.options.chunk_size:
                yield self._close(chunk, merger, identities)
                chunk, identities, n = Chunk([], resolve=self.mode == "update"), [], 0
        if chunk.decided or merger.items:
            yield self._close(chunk, merger, identities)

    def _plan(
        self, p: Problems, merger: Merger, chunk: Chunk, record: Mapping[str, Any], i: int
    ) -> tuple[Any, ...] | None:
        """Check and plan one record into ``merger`` (or decide it in ``chunk``); its identity when planned."""
        body, values = _checked(p, self.meta, self.mode, record, f"$.records[{i}]")
        if p.items:
            if self.first:  # nothing sent yet: the run is refused, as write_entities refuses a list
                raise InputError(p.items)
            own = record.get("id")
            message = "; ".join(f"{x.path}: {x.message}" for x in p.items)
            chunk.decided[i] = RowOutcome("failed", own if isinstance(own, str) else None, "InputError", message)
            p.items.clear()
            return None
        if values:
            chunk.decided[i] = _refusal(record, values)
            return None
        return merger.add(planned(self.connection, self.meta, self.mode, record, i, body, self.options))

    def _wait(self, earlier: Chunk) -> None:
        """Wait until a chunk in flight carrying the same row is written (or the run is cancelled)."""
        while not earlier.done.wait(0.05):
            if self.cancel is not None and self.cancel.cancelled:
                return

    def _close(self, chunk: Chunk, merger: Merger, identities: list[tuple[Any, ...]]) -> Chunk:
        chunk.items = merger.take()
        self.first = False
        while self.sent and self.sent[0][0].done.is_set():  # forget the rows of chunks written
            done, names = self.sent.popleft()
            for name in names:
                if self.in_flight.get(name) is done:
                    del self.in_flight[name]
        for name in identities:
            self.in_flight[name] = chunk
        self.sent.append((chunk, identities))
        return chunk
