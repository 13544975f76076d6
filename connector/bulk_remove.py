"""Removing rows in bulk: ``delete`` and ``deactivate``, with one result per record, as the other modes of the writer.

Why a module of its own rather than more branches in :mod:`connector.bulk_chunks`: a removal carries no fields, so
none of the create/update planning applies, but the rest does, and is reused as it is: records addressed by id or
by alternate key (keys resolved to GUIDs chunk by chunk), duplicates merged, chunks driven in parallel through the
connection's governor (:func:`connector.bulk_run.run_chunks`), cancellation, progress.

* ``delete`` sends each chunk as one ``$batch`` of ``DELETE`` requests with ``Prefer: odata.continue-on-error``: every
  operation gets its own answer, so no bisection is needed. Dataverse's ``DeleteMultiple`` exists for elastic tables
  only (deletemultiple.md, "Delete multiple rows of data in elastic tables") and its Web API form is not documented,
  so it is not used: every table takes the ``$batch`` route. A delete is idempotent, so a lost answer is resent; a
  row already gone answers 404 and is reported ``absent`` (nothing left to remove), which is what a resumed run meets.
* ``deactivate`` is an update of ``statecode``/``statuscode`` to the table's inactive state and its default status,
  read from the table's metadata (``StatusAttributeMetadata`` options carry the state they belong to): sent as
  ``UpdateMultiple`` where the table supports it (one request per chunk, halved around a bad row) or as a ``$batch``
  of ``PATCH`` requests, exactly as mode ``update`` is.

Statuses: ``deleted``, ``deactivated``, ``absent`` (no such row), ``failed`` (Dataverse's code and message; a delete
that a ``Restrict`` relationship refuses fails with 0x80040227), ``unknown``, ``not_sent``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.bulk_chunks import NOT_FOUND, ChunkWriter, Found, PlannedWrite, RowOutcome, not_sent
from connector.bulk_run import Chunk, Merger, RecordResult, RunStats, run_chunks, sorted_results
from connector.errors import (
    DataverseApiError,
    InputError,
    InputProblem,
)
from connector.metadata import TableMetadata
from connector.multipart import BatchOperation, OperationResponse
from connector.odata import quote_string
from connector.problems import Problems, check_guid, check_key
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.bulk import WriteOptions
    from connector.connection import Connection

__all__ = [
    "REMOVE_MODES",
    "Removal",
    "RemovalWriter",
    "inactive_state",
    "removal_chunks",
    "removal_problems",
    "remove_entities",
    "run_removal",
]

REMOVE_MODES = ("delete", "deactivate")
_DONE = {"delete": "deleted", "deactivate": "deactivated"}


def removal_problems(
    p: Problems, meta: TableMetadata, mode: str, records: Sequence[Mapping[str, Any]]
) -> dict[int, RowOutcome]:
    """Each record names one row, by ``id`` or by ``key``, and carries nothing else: a removal writes no fields.
    Problems of structure go to ``p.items`` (the run is refused); a value that cannot name a row (an id that is not
    a GUID) fails its record only: returned, by index."""
    refused: dict[int, RowOutcome] = {}
    for i, record in enumerate(records):
        path = f"$.records[{i}]"
        id_, key = record.get("id"), record.get("key")
        extra = sorted(set(record) - {"id", "key"})
        if extra:
            p.add(f"{path}.{extra[0]}", f"mode {mode} takes only id or key: remove {', '.join(extra)}")
        before = len(p.values)
        if (id_ is None) == (not key):
            p.add(f"{path}.id", f"mode {mode} needs the row's id or an alternate key (one of the two)")
        elif id_ is not None:
            check_guid(p, id_, f"{path}.id")
        elif isinstance(key, Mapping):
            check_key(p, meta, key, f"{path}.key")
        else:
            p.add(f"{path}.key", "a key is an object: {column: value}")
        if len(p.values) > before:
            refused[i] = RowOutcome("failed", None, "InputError", f"not sent: {p.values[before]}")
            del p.values[before:]
        if len(p.items) >= 50:
            p.add("$.records", "more problems not listed; fix these first")
            break
    return refused


def inactive_state(connection: Connection, meta: TableMetadata) -> dict[str, int]:
    """``statecode`` and ``statuscode`` of a deactivated row of this table: the state named Inactive (else the lowest
    state other than 0, Active) and the first status belonging to it (its default, as Dataverse lists them)."""
    if "statecode" not in meta.attributes or "statuscode" not in meta.attributes:
        why = f"table {meta.logical_name!r} has no statecode: its rows cannot be deactivated; use mode delete"
        raise InputError([InputProblem("$.mode", why)])
    base = f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})/Attributes"
    expand = "$select=LogicalName&$expand=OptionSet($select=Options)"
    cast = "Microsoft.Dynamics.CRM"
    states = connection.client.get_json(f"{base}(LogicalName='statecode')/{cast}.StateAttributeMetadata?{expand}")
    statuses = connection.client.get_json(f"{base}(LogicalName='statuscode')/{cast}.StatusAttributeMetadata?{expand}")
    state_options = [o for o in (states.get("OptionSet") or {}).get("Options", []) if isinstance(o.get("Value"), int)]
    named = [o["Value"] for o in state_options if str(o.get("InvariantName", "")).lower() == "inactive"]
    others = sorted(o["Value"] for o in state_options if o["Value"] != 0)
    state = named[0] if named else (others[0] if others else None)
    status = next(
        (o["Value"] for o in (statuses.get("OptionSet") or {}).get("Options", []) if o.get("State") == state), None
    )
    if state is None or not isinstance(status, int):
        why = f"table {meta.logical_name!r} has no inactive state with a status: use mode delete"
        raise InputError([InputProblem("$.mode", why)])
    return {"statecode": state, "statuscode": status}


def removal_chunks(
    meta: TableMetadata,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions,
    body: Mapping[str, Any],
    refused: Mapping[int, RowOutcome],
) -> list[Chunk]:
    """Checked records as chunks: ids lowered, keys kept for resolving, duplicates merged (the later record decides).
    ``body``: what each write carries (the inactive state, or nothing for a delete)."""
    merger = Merger(mode, options)
    for i, record in enumerate(records):
        if i in refused:
            continue
        given = record.get("id")
        key = dict(record["key"]) if given is None else None
        merger.add(PlannedWrite(index=i, body=dict(body), id=str(given).lower() if given else None, key=key))
    items = merger.take()
    size = options.chunk_size
    chunks = [Chunk([], dict(refused), send=False)]
    for start in range(0, len(items), size):
        part = items[start : start + size]
        chunks.append(Chunk(part, resolve=any(item.id is None for item in part)))
    return chunks


class RemovalWriter(ChunkWriter):
    """A :class:`ChunkWriter` whose ``delete`` chunks go out as a ``$batch`` of DELETEs; ``deactivate`` chunks are
    the parent's updates (mode ``update`` underneath)."""

    def chunk(
        self, items: list[PlannedWrite], may_write: Callable[[], bool] | None = None, known: Found | None = None
    ) -> dict[int, RowOutcome]:
        if self.mode != "delete":
            return super().chunk(items, may_write, known)
        if items and may_write is not None and not may_write():
            return {item.index: not_sent(item) for item in items}
        return self._delete_batch(items) if items else {}

    def _delete_batch(self, items: list[PlannedWrite]) -> dict[int, RowOutcome]:
        api_path = urlsplit(self.connection.api_url).path.rstrip("/")
        operations = [
            BatchOperation("DELETE", f"{api_path}/{self.meta.entity_set}({item.id})", tuple(self.headers.items()))
            for item in items
        ]
        # deleting twice removes nothing more: the second answer is a 404, so a lost batch may be sent again
        answers = self.send_batch(items, operations, idempotent=True, lost=self._deleted_or_unknown)
        if isinstance(answers, dict):
            return answers
        done: dict[int, RowOutcome] = {}
        for n, item in enumerate(items):
            answer = answers[n] if n < len(answers) else None
            if not isinstance(answer, OperationResponse):
                done[item.index] = RowOutcome("failed", item.id, "NoAnswer", "Dataverse sent no answer for this row")
            elif answer.status < 400:
                done[item.index] = RowOutcome("deleted", item.id)
            else:
                error = answer.json()
                detail = error.get("error", {}) if isinstance(error, dict) else {}
                code = str(detail.get("code") or f"HTTP {answer.status}")
                message = str(detail.get("message") or answer.reason or "failed")
                done[item.index] = RowOutcome("failed", item.id, code, message)
        return done

    def _deleted_or_unknown(self, items: list[PlannedWrite], exc: DataverseApiError) -> dict[int, RowOutcome]:
        """The answer was lost after the retries: a row a read no longer finds was deleted (by this send, most likely);
        a row still there may yet be deleted by a request still running, so it stays ``unknown``."""
        code = exc.code or type(exc).__name__
        try:
            existing = self._existing_ids([item.id for item in items if item.id is not None])
        except DataverseApiError as read_exc:
            why = f"{exc}; the read to check the rows failed too ({read_exc})"
            return {item.index: RowOutcome("unknown", item.id, code, why) for item in items}
        return {
            item.index: RowOutcome("deleted", item.id)
            if item.id not in existing
            else RowOutcome("unknown", item.id, code, f"{exc}; the row is still there")
            for item in items
        }


@dataclass
class Removal:
    """What :func:`remove_entities` did: every record's result in input order, the route, what it took."""

    route: str
    results: list[RecordResult]
    chunks: int
    split_requests: int
    pre_reads: int
    cancelled: bool


def remove_entities(
    connection: Connection,
    meta: TableMetadata,
    mode: str,
    records: Sequence[Mapping[str, Any]],
    options: WriteOptions,
    supports: Callable[[str], bool],
    progress: Reporter | None,
    cancel: CancellationToken | None,
) -> Removal:
    """``delete`` or ``deactivate`` the rows the records name (``write_entities`` with a removal mode). Problems of
    structure raise :class:`InputError` before anything is sent. A deactivation is an update of the state columns,
    so it takes UpdateMultiple where the table supports it (``supports``: the writer's probe)."""
    p = Problems(connection, defer_values=True)
    refused = removal_problems(p, meta, mode, records)
    if p.items:
        raise InputError(p.items)
    body = inactive_state(connection, meta) if mode == "deactivate" else {}
    chunks = removal_chunks(meta, mode, records, options, body, refused)
    use_bulk = mode == "deactivate" and len(chunks) > 1 and supports("UpdateMultiple")
    kind = "update" if mode == "deactivate" else "delete"
    writer = RemovalWriter(connection, meta, kind, options, options.headers(), use_bulk, cancel=cancel)
    governor = connection.governor
    collected: list[RecordResult] = []
    tracker = Tracker(
        "write_entities", progress, total=len(records), clock=governor.clock, throttle=governor, cancel=cancel
    )
    with tracker:
        stats = run_removal(writer, mode, chunks, tracker=tracker, cancel=cancel, on_chunk=collected.extend)
    route = "bulk" if use_bulk else "batch"
    results = sorted_results(len(records), collected)
    return Removal(route, results, stats.chunks, writer.split_requests, writer.pre_reads, stats.cancelled)


def run_removal(
    writer: RemovalWriter,
    mode: str,
    chunks: list[Chunk],
    *,
    tracker: Tracker,
    cancel: CancellationToken | None,
    on_chunk: Callable[[list[RecordResult]], None],
) -> RunStats:
    """Drive the chunks; each result in the removal's words (``updated`` -> ``deactivated``; a row not found ->
    ``absent``, for it is gone already: a resumed run meets the rows the interrupted one removed)."""

    def worded(results: list[RecordResult]) -> None:
        for r in results:
            if r.status == "updated":
                r.status = _DONE[mode]
            elif r.status == "failed" and r.code in (NOT_FOUND, "HTTP 404"):
                r.status, r.code, r.message = "absent", None, None
        on_chunk(results)

    return run_chunks(writer, chunks, tracker=tracker, cancel=cancel, on_chunk=worded)
