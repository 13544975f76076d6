"""One chunk of a bulk write: the pre-reads, the bulk message or the ``$batch`` fallback, and the halving that isolates
bad rows.

:func:`connector.bulk.write_entities` plans the rows (bodies built, keys typed, duplicates merged) and hands chunks of
:class:`PlannedWrite` to a :class:`ChunkWriter` on the governor's threads; every planned write comes back as one
:class:`RowOutcome`, whatever happened to the requests that carried it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from connector.addressing import predicate
from connector.batch import post_batch
from connector.body import key_body
from connector.bulk_reads import READ_VALUES, read_parts, read_rows
from connector.client import DUPLICATE_RECORD
from connector.errors import DataverseApiError, FatalApiError, OutcomeUnknownError, RetriableApiError
from connector.governor import Outcome
from connector.ids import new_id
from connector.metadata import TableMetadata
from connector.multipart import BatchOperation, OperationResponse
from connector.odata import build_query_string, entity_id, filter_column, format_literal, key_is_url_safe, quote_string
from connector.written import Verdict, compare_written, conflicting_columns, read_columns

if TYPE_CHECKING:
    from connector.bulk import WriteOptions
    from connector.connection import Connection
    from connector.progress import CancellationToken

__all__ = [
    "NOT_SENT_MESSAGE",
    "ChunkWriter",
    "Found",
    "PlannedWrite",
    "RowOutcome",
    "created_ids",
    "failed_outcome",
    "not_sent",
    "row_identity",
]

R = TypeVar("R")
Found = tuple[set[str], dict[tuple[Any, ...], str]]
NOT_FOUND = "0x80040217"
_NS = "Microsoft.Dynamics.CRM."
_DUPLICATE_CODES = frozenset({DUPLICATE_RECORD, "0x80060892"})  # duplicate primary key; duplicate alternate key
_NO_SPLIT_STATUS = frozenset({401, 403})  # the caller's rights, not a row: every half would fail the same way


def _norm(value: Any) -> Any:
    """Key values compared as Dataverse compares them: text case-insensitively (default collation)."""
    return value.casefold() if isinstance(value, str) else value


def row_identity(item_id: str | None, key: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if item_id is not None:
        return ("id", str(item_id).lower())
    if key:
        if len(key) == 1:  # the common case, without sorting (a few microseconds a record on 20,000)
            ((column, value),) = key.items()
            return ("key", ((column, value.casefold() if isinstance(value, str) else value),))
        return ("key", tuple(sorted((c, _norm(v)) for c, v in key.items())))
    return None


@dataclass
class PlannedWrite:
    """One write after merging duplicates: the last record with this id or key, and the earlier ones merged into it."""

    index: int
    body: dict[str, Any]
    id: str | None = None
    key: dict[str, Any] | None = None
    generated: bool = False  # the id was generated here (so it cannot have existed before this run)
    exists: bool | None = None  # upsert: whether the pre-read found the row
    merged: list[int] = field(default_factory=list)


@dataclass
class RowOutcome:
    status: str
    id: str | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None  # Dataverse's x-ms-service-request-id of the failed request: what support asks for


NOT_SENT_MESSAGE = "not sent: the run was cancelled before this record was sent"


def not_sent(item: PlannedWrite) -> RowOutcome:
    """A record a cancelled run never sent: no row was written for it (a generated id names nothing)."""
    return RowOutcome("not_sent", None if item.generated else item.id, None, NOT_SENT_MESSAGE)


def failed_outcome(item: PlannedWrite, exc: DataverseApiError) -> RowOutcome:
    """A failed record keeps its id only when the row exists (an update); an id generated here names no row."""
    own = None if item.generated else item.id
    return RowOutcome("failed", own, exc.code or type(exc).__name__, str(exc), getattr(exc, "request_id", None))


class ChunkWriter:
    """The per-chunk work, run on the governor's threads; counters are shared, so they are locked."""

    def __init__(
        self,
        connection: Connection,
        meta: TableMetadata,
        mode: str,
        options: WriteOptions,
        headers: Mapping[str, str],
        use_bulk: bool,
        *,
        cancel: CancellationToken | None = None,
    ) -> None:
        self.connection = connection
        self.cancel = cancel
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
    def chunk(
        self, items: list[PlannedWrite], may_write: Callable[[], bool] | None = None, known: Found | None = None
    ) -> dict[int, RowOutcome]:
        """Prepare (pre-reads, or ``known``: see :meth:`pre_read`) and write one chunk; one result per item.
        ``may_write`` is asked right before the write: False (the run was cancelled) leaves its writes ``not_sent``."""
        done: dict[int, RowOutcome] = {}
        if self.mode == "create":
            ready = self._drop_existing_ids(items, done)
        elif self.mode == "update":
            ready = items  # keys were resolved before chunking (resolve_keys)
        else:
            ready = self.pre_read(items, known)
        if not ready:
            return done
        if may_write is not None and not may_write():
            return {**done, **{item.index: not_sent(item) for item in ready}}
        send: Callable[[list[PlannedWrite]], dict[int, RowOutcome]] = self._bulk if self.use_bulk else self._batch
        done.update(send(ready))
        return done

    # -- reads ------------------------------------------------------------------------------------------------------
    def _fetch(self, urls: Sequence[str]) -> list[list[dict[str, Any]]]:
        """The rows of each read, all sent as one request (:func:`connector.bulk_reads.read_rows`)."""
        if not urls:
            return []
        self._count("pre_reads")
        return read_rows(self.client, urls, self.options.impersonate)

    def _url(self, filter_: str, select: Sequence[str]) -> str:
        query = build_query_string({"$select": ",".join(dict.fromkeys(select)), "$filter": filter_})
        return f"{self.meta.entity_set}?{query}"

    def _in_urls(self, column: str, typ: str, values: Sequence[Any], select: Sequence[str]) -> list[str]:
        """The ``In`` reads of the rows whose ``column`` is one of ``values`` (:func:`read_parts` packs them)."""
        name = filter_column(column, typ)
        return [
            self._url(f"{_NS}In(PropertyName='{name}',PropertyValues=[{','.join(part)}])", select)
            for part in read_parts([quote_string(str(v)) for v in values])
        ]

    def _existing_ids(self, ids: Sequence[str]) -> set[str]:
        return set(self._rows_by_id(ids, [self.meta.primary_id]))

    def _rows_by_id(self, ids: Sequence[str], select: Sequence[str]) -> dict[str, dict[str, Any]]:
        pid = self.meta.primary_id
        rows = [r for part in self._fetch(self._in_urls(pid, "Uniqueidentifier", list(ids), select)) for r in part]
        return {str(r[pid]).lower(): r for r in rows if r.get(pid)}

    def _select(self, items: Sequence[PlannedWrite]) -> list[str]:
        """The columns that read back what ``items`` write."""
        return list(dict.fromkeys(c for item in items for c in read_columns(self.meta, item.body)))

    def _find_keys(self, items: Sequence[PlannedWrite]) -> dict[tuple[Any, ...], str]:
        """GUIDs of the rows with these keys: ``In`` over a one-column key, ``or`` of ``and`` for a composite key."""
        groups = self._key_reads(items)
        return self._keys_found(groups, self._fetch([url for _, urls in groups for url in urls]))

    def _key_reads(self, items: Sequence[PlannedWrite]) -> list[tuple[dict[str, str], list[str]]]:
        """Per set of key columns: each column's filter name, and the reads of its rows."""
        meta, pid = self.meta, self.meta.primary_id
        by_columns: dict[tuple[str, ...], list[PlannedWrite]] = {}
        for item in items:
            assert item.key is not None
            by_columns.setdefault(tuple(sorted(item.key)), []).append(item)
        out = []
        for columns, group in by_columns.items():
            props = {c: filter_column(c, meta.attributes[c].type) for c in columns}
            select = [pid, *props.values()]
            if len(columns) == 1:
                (column,) = columns
                values = list(dict.fromkeys(item.key[column] for item in group if item.key is not None))
                out.append((props, self._in_urls(column, meta.attributes[column].type, values, select)))
                continue
            urls = []
            for start in range(0, len(group), READ_VALUES // 2):
                clauses = []
                for item in group[start : start + READ_VALUES // 2]:
                    assert item.key is not None
                    parts = [f"{props[c]} eq {format_literal(item.key[c], meta.attributes[c].type)}" for c in columns]
                    clauses.append("(" + " and ".join(parts) + ")")
                urls.append(self._url(" or ".join(clauses), select))
            out.append((props, urls))
        return out

    def _keys_found(
        self, groups: list[tuple[dict[str, str], list[str]]], answers: list[list[dict[str, Any]]]
    ) -> dict[tuple[Any, ...], str]:
        """The GUID of each key the reads of :meth:`_key_reads` found (``answers``: their rows, in order)."""
        found: dict[tuple[Any, ...], str] = {}
        rows_of = iter(answers)
        for props, urls in groups:
            for _ in urls:
                for row in next(rows_of):
                    ident = ("key", tuple(sorted((c, _norm(row.get(p))) for c, p in props.items())))
                    found[ident] = str(row[self.meta.primary_id]).lower()
        return found

    def _drop_existing_ids(self, items: list[PlannedWrite], done: dict[int, RowOutcome]) -> list[PlannedWrite]:
        """Creates with ids the caller chose: rows that already have them are decided now, before the write (see
        :meth:`_already_present`). Afterwards a duplicate-key answer can only mean that an earlier send of this very
        chunk was applied."""
        given = [item for item in items if item.id is not None and not item.generated]
        if not given:
            return items
        existing = self._rows_by_id([item.id for item in given if item.id is not None], self._select(given))
        ready = []
        for item in items:
            row = None if item.generated or item.id is None else existing.get(item.id)
            if row is None:
                ready.append(item)
            else:
                done[item.index] = self._already_present(item, row)
        return ready

    def _already_present(self, item: PlannedWrite, row: Mapping[str, Any]) -> RowOutcome:
        """A create whose own id a row already holds, as when the same input is run again after a kill: the row is
        ``already_present`` when it holds every value of the record, else the create fails naming the conflict."""
        conflicts = conflicting_columns(self.meta, item.body, row)
        if not conflicts:
            return RowOutcome("already_present", item.id)
        return RowOutcome(
            "failed",
            item.id,
            DUPLICATE_RECORD,
            f"a row with id {item.id} already exists and does not hold this record's values in: {', '.join(conflicts)}",
        )

    def resolve_keys(
        self, items: list[PlannedWrite], done: dict[int, RowOutcome]
    ) -> tuple[list[PlannedWrite], list[PlannedWrite]]:
        """Update by alternate key: keys become GUIDs (one ``In`` read per chunk of keys, in parallel), since
        UpdateMultiple over the Web API takes no alternate keys. A key with no row fails as not found. Records that
        now name the same row are merged (later fields win): UpdateMultiple would apply only the first of them.
        Returns the items to write and the items already decided."""
        keyed = [item for item in items if item.id is None]
        size = self.options.chunk_size
        parts = [keyed[i : i + size] for i in range(0, len(keyed), size)]
        decided: list[PlannedWrite] = []
        if len(parts) == 1:  # one chunk of a stream, already on a governor thread: read here
            outcomes = [_run(0, self._find_keys, parts[0])]
        else:
            outcomes = self.connection.governor.map(self._find_keys, parts)
        for part, outcome in zip(parts, outcomes, strict=True):
            found = outcome.value if outcome.ok and outcome.value is not None else {}
            for item in part:
                ident = row_identity(None, item.key)
                if outcome.error is not None:
                    code = getattr(outcome.error, "code", None) or type(outcome.error).__name__
                    done[item.index] = RowOutcome("failed", None, code, f"the key could not be read: {outcome.error}")
                elif ident in found:
                    item.id = found[ident]
                    continue
                else:
                    done[item.index] = RowOutcome("failed", None, NOT_FOUND, self._missing(item))
                decided.append(item)
        ready: list[PlannedWrite] = []
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

    def lookup(self, items: Sequence[PlannedWrite]) -> Found:
        """An upsert's pre-read, one request: the ids that exist, and the GUIDs of the keys found."""
        pid = self.meta.primary_id
        ids = [item.id for item in items if item.id is not None]
        by_id = self._in_urls(pid, "Uniqueidentifier", ids, [pid]) if ids else []
        groups = self._key_reads([item for item in items if item.id is None])
        answers = self._fetch([*by_id, *(url for _, urls in groups for url in urls)])
        existing = {str(r[pid]).lower() for rows in answers[: len(by_id)] for r in rows if r.get(pid)}
        return existing, self._keys_found(groups, answers[len(by_id) :])

    def pre_read(self, items: list[PlannedWrite], known: Found | None = None) -> list[PlannedWrite]:
        """Upsert: which rows exist already (UpsertMultiple answers 204 without per-record results, reference 15.3),
        read here unless ``known`` (another chunk's :meth:`lookup` read them). Rows found by key are then addressed by
        their GUID; rows to create get a new client id (with the key columns in the body), so every result carries
        its id and a resend after a lost answer updates instead of duplicating."""
        existing, found = known if known is not None else self.lookup(items)
        for item in items:
            if item.id is not None:
                item.exists = item.id in existing
                continue
            ident = row_identity(None, item.key)
            assert ident is not None and item.key is not None
            if ident in found:
                item.id, item.exists = found[ident], True
                continue
            item.exists = False
            if self.options.client_ids or not key_is_url_safe(item.key):
                item.id, item.generated = new_id(), True
                item.body = {**item.body, **key_body(self.connection, self.meta, item.key)}
        return items

    def confirm(self, items: Sequence[PlannedWrite]) -> dict[int, RowOutcome]:
        """The rows of a chunk given up on (no answer in time) that a read finds: one ``In`` read by id (or by key).

        Only a row that did not exist before this run proves its write: a create with an id generated here, an upsert
        whose pre-read found nothing. An update's row existed already, so finding it says nothing; and a row not
        found is not proof of absence either (the request may still land): those stay ``unknown``.
        """
        provable = [
            item
            for item in items
            if (self.mode == "create" and item.generated) or (self.mode == "upsert" and item.exists is False)
        ]
        by_id = [item for item in provable if item.id is not None]
        by_key = [item for item in provable if item.id is None and item.key]
        existing = self._existing_ids([item.id for item in by_id if item.id is not None]) if by_id else set()
        found = self._find_keys(by_key) if by_key else {}
        out = {item.index: RowOutcome("created", item.id) for item in by_id if item.id in existing}
        for item in by_key:
            row = found.get(row_identity(None, item.key) or ())
            if row is not None:
                out[item.index] = RowOutcome("created", row)
        return out

    def _verify(self, items: Sequence[PlannedWrite], exc: DataverseApiError) -> dict[int, RowOutcome]:
        """Writes whose answer was lost (retries spent after a send that may have been applied), read back by id: each
        row gets what the read proves (:mod:`connector.written`), else ``unknown`` with the reason. After a timeout
        the request may still be running on the server, so a read can prove it applied, never that it was not."""
        code = exc.code or type(exc).__name__
        ids = [item.id for item in items if item.id is not None]
        try:
            rows = self._rows_by_id(ids, self._select(items)) if ids else {}
        except DataverseApiError as read_exc:
            why = f"{exc}; the read to check the rows failed too ({read_exc})"
            return {item.index: RowOutcome("unknown", item.id, code, why) for item in items}
        out: dict[int, RowOutcome] = {}
        for item in items:
            row = rows.get(item.id) if item.id is not None else None
            verdict = compare_written(self.meta, item.body, row) if item.id is not None else Verdict.UNPROVABLE
            if verdict is Verdict.APPLIED or (row is not None and self.mode == "create" and item.generated):
                status = "updated" if self.mode == "update" or (self.mode == "upsert" and item.exists) else "created"
                out[item.index] = RowOutcome(status, item.id)
            elif verdict is Verdict.NOT_APPLIED and code != "Timeout":
                found = "no row" if row is None else "the row without the written values"
                message = f"not applied: a read after the last attempt found {found} ({exc})"
                out[item.index] = RowOutcome("failed", None if item.generated else item.id, code, message)
            else:
                why = "the row has no id to read it by" if item.id is None else "the read back proves neither"
                out[item.index] = RowOutcome("unknown", item.id, code, f"{exc}; {why}")
        return out

    def _missing(self, item: PlannedWrite) -> str:
        named = ", ".join(f"{c}={v!r}" for c, v in (item.key or {}).items()) or f"id {item.id}"
        return f"{self.meta.logical_name} With {named} Does Not Exist"

    # -- bulk messages ----------------------------------------------------------------------------------------------
    def _target(self, item: PlannedWrite) -> dict[str, Any]:
        meta = self.meta
        target: dict[str, Any] = {"@odata.type": f"{_NS}{meta.logical_name}"}
        if item.id is not None:
            target[meta.primary_id] = item.id
        elif item.key:  # an upsert to create by a URL-safe key without client ids
            target["@odata.id"] = f"{meta.entity_set}({predicate(self.connection, meta, item.key)})"
        target.update(item.body)
        return target

    def _bulk(self, items: list[PlannedWrite], *, split: bool = False) -> dict[int, RowOutcome]:
        """Send one bulk message; on a row's failure, split in halves until the bad rows stand alone.

        A cancelled run sends no more halves: the failed chunk was all-or-nothing, so their rows were not written."""
        if split and self.cancel is not None and self.cancel.cancelled:
            return {item.index: not_sent(item) for item in items}
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
                return {item.index: failed_outcome(item, exc) for item in items}
            half = math.ceil(len(items) / 2)
            return {**self._bulk(items[:half], split=True), **self._bulk(items[half:], split=True)}
        except (OutcomeUnknownError, RetriableApiError) as exc:
            return self._verify(items, exc)  # the retry budget is spent, and a send may have been applied
        if self.mode == "create":
            ids = created_ids(response) or [item.id for item in items]
            return {item.index: RowOutcome("created", rid or item.id) for item, rid in zip(items, ids, strict=False)}
        if self.mode == "update":
            return {item.index: RowOutcome("updated", item.id) for item in items}
        return {item.index: RowOutcome("created" if not item.exists else "updated", item.id) for item in items}

    def _created_meanwhile(self, item: PlannedWrite, exc: FatalApiError) -> bool:
        """An upsert planned as a create by key met "duplicate key": another writer created the key after the pre-read.
        Re-read the key; if the row is there, re-address the item to it (an update) and say so."""
        if self.mode != "upsert" or item.exists or not item.generated or item.key is None:
            return False
        if (exc.code or "").lower() not in _DUPLICATE_CODES and exc.status_code != 412:
            return False
        try:
            found = self._find_keys([item]).get(row_identity(None, item.key) or ())
        except DataverseApiError:  # nothing was written: the duplicate-key failure stands
            return False
        if found is None:
            return False
        item.id, item.exists, item.generated = found, True, False
        return True

    def _confirm_created(self, items: list[PlannedWrite]) -> dict[int, RowOutcome] | None:
        """A create chunk met "duplicate key" and every id is ours: rows that exist were created by an earlier send
        whose answer was lost (all-or-nothing: usually all of them); the rest are sent again. None if none exist."""
        ids = [item.id for item in items if item.id is not None]
        try:
            existing = self._existing_ids(ids)
        except DataverseApiError as exc:  # an earlier send may have created them: only a read could tell
            return self._verify(items, exc)
        if not existing:
            return None
        done = {item.index: RowOutcome("created", item.id) for item in items if item.id in existing}
        rest = [item for item in items if item.id not in existing]
        if rest:
            done.update(self._bulk(rest))
        return done

    # -- $batch fallback --------------------------------------------------------------------------------------------

    def send_batch(
        self,
        items: list[PlannedWrite],
        operations: list[BatchOperation],
        *,
        idempotent: bool,
        lost: Callable[[list[PlannedWrite], DataverseApiError], dict[int, RowOutcome]],
    ) -> list[Any] | dict[int, RowOutcome]:
        """One continue-on-error ``$batch`` of ``operations`` (one per item, in order): the answers, or every item's
        outcome when the batch failed as a whole (``lost`` decides the items of a batch whose answer was lost)."""
        try:
            prefer, impersonate = ["odata.continue-on-error"], self.options.impersonate
            return post_batch(self.client, operations, prefer=prefer, impersonate=impersonate, idempotent=idempotent)[1]
        except (OutcomeUnknownError, RetriableApiError) as exc:
            return lost(items, exc)
        except DataverseApiError as exc:  # an unreadable answer too
            return {item.index: failed_outcome(item, exc) for item in items}

    def _batch(self, items: list[PlannedWrite]) -> dict[int, RowOutcome]:
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
                    else predicate(self.connection, meta, item.key or {})  # upsert by a URL-safe key
                )
                method, url = "PATCH", f"{api_path}/{meta.entity_set}({address})"
                if self.mode == "update":
                    headers.append(("If-Match", "*"))
            headers += list(self.headers.items())
            operations.append(BatchOperation(method, url, tuple(headers), json.dumps(body).encode()))
        retry_safe = self.mode != "create" or all(item.id is not None for item in items)  # a PATCH-like write is safe
        answers = self.send_batch(items, operations, idempotent=retry_safe, lost=self._verify)
        if isinstance(answers, dict):
            return answers
        done: dict[int, RowOutcome] = {}
        duplicates: list[PlannedWrite] = []
        for n, item in enumerate(items):
            answer = answers[n] if n < len(answers) else None
            if not isinstance(answer, OperationResponse):
                done[item.index] = RowOutcome(
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
                done[item.index] = RowOutcome("created", item.id)  # an id made in this run: an earlier send created it
                continue
            if self.mode == "create" and code == DUPLICATE_RECORD:  # the pre-read found no row with this own id
                duplicates.append(item)
                continue
            message = str(detail.get("message") or answer.reason or "failed")
            done[item.index] = RowOutcome("failed", None if item.generated else item.id, code, message)
        if duplicates:  # so an earlier send of this batch created them, unless another writer did: the values say
            done.update(self._verify(duplicates, FatalApiError("a resend met duplicate key", code=DUPLICATE_RECORD)))
        return done

    def _batch_success(self, item: PlannedWrite, answer: OperationResponse) -> RowOutcome:
        if self.mode == "create":
            return RowOutcome("created", item.id or entity_id(answer.header("OData-EntityId")))
        if self.mode == "update":
            return RowOutcome("updated", item.id)
        created = item.id or entity_id(answer.header("OData-EntityId"))
        return RowOutcome("updated" if item.exists else "created", created)


def _run(index: int, fn: Callable[[list[PlannedWrite]], R], items: list[PlannedWrite]) -> Outcome[R]:
    """``fn(items)`` as the one outcome of a map (its error kept, not raised)."""
    try:
        return Outcome(index, value=fn(items))
    except Exception as exc:
        return Outcome(index, error=exc)


def created_ids(response: Any) -> list[str | None]:
    try:
        body = response.json()
    except ValueError:
        return []
    ids = body.get("Ids") if isinstance(body, dict) else None
    return [str(i).lower() if i else None for i in ids] if isinstance(ids, list) else []
