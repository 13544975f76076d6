"""Driving the chunks of a bulk write through the governor, and the results they yield, chunk by chunk.

Why apart from :mod:`connector.bulk`: the list form (``write_entities``) and the streaming form
(``write_entities_stream``) plan their chunks differently (the whole list at once, or record by record from an
iterator) but send, account and confirm them the same way. :func:`run_chunks` takes chunks from an iterator and keeps
at most a window of them (``2 x max_parallelism``) alive, so memory stays bounded however long the stream, and hands
each chunk's :class:`RecordResult` list to a callback as soon as the chunk is decided.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.bulk_chunks import ChunkWriter, Found, PlannedWrite, RowOutcome, not_sent, row_identity
from connector.governor import Outcome
from connector.ids import new_id

if TYPE_CHECKING:
    from connector.bulk import WriteOptions
    from connector.progress import CancellationToken, Tracker

__all__ = [
    "NO_ANSWER_MESSAGE",
    "Chunk",
    "Merger",
    "RecordResult",
    "RunStats",
    "StreamSummary",
    "run_chunks",
    "sorted_results",
]

log = logging.getLogger("connector.bulk")

NO_ANSWER_MESSAGE = "sent, but the run stopped waiting for the answer (aborted); read the row to know its outcome"


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
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status, "id": self.id}
        if self.status in ("failed", "unknown", "not_sent"):
            out["code"] = self.code
            out["message"] = self.message
            if self.request_id is not None:
                out["request_id"] = self.request_id
        if self.merged_into is not None:
            out["merged_into"] = self.merged_into
        return out


@dataclass
class Chunk:
    """The planned writes of one request, and records already decided (refused, not sent) delivered with them.

    ``done`` is set on the worker once the chunk's writes are over, so a later chunk carrying the same row can wait
    for it (rows of one identity are written in input order)."""

    items: list[PlannedWrite]
    decided: dict[int, RowOutcome] = field(default_factory=dict)
    send: bool = True  # False: every item is decided already (delivered at once, with what it merged)
    resolve: bool = False  # update by key: resolve this chunk's keys to GUIDs before writing
    done: threading.Event = field(default_factory=threading.Event)
    written: bool | None = None  # its write was let go (True) or held back by a cancel (False); only reads before
    shared: SharedRead | None = None  # an upsert chunk begun before this one pre-reads this one's rows with its own


@dataclass
class SharedRead:
    """A pre-read another chunk does for this one: ``over`` once it is, with what it found (None: it failed, so this
    chunk reads for itself)."""

    over: threading.Event = field(default_factory=threading.Event)
    found: Found | None = None


class ReadAhead:
    """Upsert chunks taken from the stream and not yet begun; a chunk about to pre-read takes along the rows of the
    first of them no other chunk took along, and reads both in one request (:mod:`connector.bulk_reads`).

    Why: each pre-read holds one of the request places ``x-ms-dop-hint`` allows while the writes wait for it, so
    halving them is throughput (issue 17), and it halves the requests counted against the 6,000 per 5 minutes. The
    rows found stay as true as a chunk's own read: a chunk is only taken from the stream once no chunk in flight
    carries its rows (``connector.bulk._StreamChunks``), a row created meanwhile by another writer meets the
    duplicate-key path any pre-read can meet, and what the read found is applied on the chunk's own thread."""

    def __init__(self, mode: str) -> None:
        self.on = mode == "upsert"
        self.lock = threading.Lock()
        self.waiting: dict[int, Chunk] = {}

    def taken(self, chunk: Chunk) -> None:
        if self.on:
            with self.lock:
                self.waiting[id(chunk)] = chunk

    def begin(self, chunk: Chunk) -> Chunk | None:
        """``chunk`` begins: the next chunk whose rows its pre-read takes along, if any (marked as taken along)."""
        if not self.on:
            return None
        with self.lock:
            self.waiting.pop(id(chunk), None)
            nxt = next((c for c in self.waiting.values() if c.shared is None), None)
            if chunk.shared is not None or nxt is None:
                return None
            nxt.shared = SharedRead()
            return nxt

    def known(self, chunk: Chunk, items: list[PlannedWrite], writer: ChunkWriter) -> Found | None:
        """What ``chunk``'s pre-read needs when another chunk read it (waited for) or it reads for two; None: its own
        pre-read reads it."""
        along = self.begin(chunk)
        if chunk.shared is not None:
            chunk.shared.over.wait()
            return chunk.shared.found
        if along is None or along.shared is None:
            return None
        try:
            along.shared.found = writer.lookup([*items, *along.items])
        finally:
            along.shared.over.set()
        return along.shared.found


@dataclass
class RunStats:
    """What a run took: chunks sent, and whether it was cancelled."""

    chunks: int = 0
    cancelled: bool = False


@dataclass
class StreamSummary:
    """What a streamed write did: records per status (as :meth:`WriteReport.summary` counts them), and what it took."""

    table: str
    mode: str
    route: str
    counts: dict[str, int]
    chunks: int = 0
    split_requests: int = 0
    pre_reads: int = 0
    cancelled: bool = False

    def summary(self) -> dict[str, int]:
        counts = {"total": 0, "created": 0, "updated": 0, "failed": 0, "unknown": 0, "already_present": 0}
        counts |= {"merged": 0, **({"not_sent": 0} if self.cancelled else {})}
        for name, n in self.counts.items():
            counts[name] = counts.get(name, 0) + n
        return {**counts, "chunks": self.chunks, "split_requests": self.split_requests, "pre_reads": self.pre_reads}


class Merger:
    """Duplicates (same id or key) merged into the later record, whose fields win: UpsertMultiple refuses duplicates
    and UpdateMultiple silently applies only the first."""

    def __init__(self, mode: str, options: WriteOptions) -> None:
        self.mode, self.options = mode, options
        self.items: list[PlannedWrite] = []
        self.by_identity: dict[tuple[Any, ...], PlannedWrite] = {}

    def add(self, item: PlannedWrite) -> tuple[Any, ...] | None:
        """Add ``item``; returns its identity."""
        ident = row_identity(item.id, item.key)
        previous = self.by_identity.get(ident) if ident is not None else None
        if previous is not None:
            previous.merged.append(previous.index)
            previous.index = item.index
            previous.body = {**previous.body, **item.body}
            previous.key = item.key or previous.key  # the same key up to case: the last spelling wins too
            return ident
        self.items.append(item)
        if ident is not None:
            self.by_identity[ident] = item
        return ident

    def take(self) -> list[PlannedWrite]:
        """The writes so far (creates given client ids), and a fresh start."""
        items, self.items, self.by_identity = self.items, [], {}
        if self.mode == "create" and self.options.client_ids:
            for item in items:
                if item.id is None:
                    item.id, item.generated = new_id(), True
        return items


def run_chunks(
    writer: ChunkWriter,
    chunks: Iterable[Chunk],
    *,
    tracker: Tracker,
    cancel: CancellationToken | None,
    on_chunk: Callable[[list[RecordResult]], None],
) -> RunStats:
    """Write every chunk at the allowed parallelism; ``on_chunk`` gets each chunk's results, on the calling thread,
    as the chunk is decided. Once ``cancel`` is cancelled no chunk is taken any more: the records left are
    ``not_sent`` (delivered too), the chunks in flight are waited for unless the token is aborted or its grace period
    ends (their rows are then ``unknown``, or ``created`` when a read right after finds them)."""
    stats = RunStats()
    ahead = ReadAhead(writer.mode)
    gate = threading.Lock()  # a chunk's write is let go, or refused after a cancel, never both: see may_write

    def deliver(chunk: Chunk, outcomes: Mapping[int, RowOutcome]) -> None:
        decided = {**chunk.decided, **outcomes}
        if not decided:
            return
        tracker.advance(_tally(chunk, decided))
        on_chunk(_results(chunk, decided))

    def write(chunk: Chunk) -> dict[int, RowOutcome]:
        def may_write() -> bool:
            with gate:
                chunk.written = not (cancel is not None and cancel.cancelled)
                return chunk.written

        try:
            done: dict[int, RowOutcome] = {}
            items = writer.resolve_keys(chunk.items, done)[0] if chunk.resolve else chunk.items
            return {**done, **writer.chunk(items, may_write, ahead.known(chunk, items, writer))}
        finally:
            chunk.done.set()

    def finished(chunk: Chunk, outcome: Outcome[dict[int, RowOutcome]]) -> None:
        if chunk.written is False:  # held back by a cancel: not a chunk sent
            stats.chunks -= 1
        deliver(chunk, _chunk_outcomes(chunk.items, outcome))

    def sendable(source: Iterator[Chunk]) -> Iterator[Chunk]:
        for chunk in source:
            if chunk.send and chunk.items:
                stats.chunks += 1
                ahead.taken(chunk)
                yield chunk
            else:  # nothing to send: delivered at once, on this thread
                deliver(chunk, {})

    source = iter(chunks)
    governor = writer.connection.governor
    left = governor.stream(write, sendable(source), cancel=cancel, on_outcome=finished)
    with gate:  # a chunk stopped before its write was let go never sends it: its rows are not_sent, not unknown
        left = [(c, o if c.written is True else Outcome(o.index, started=False, finished=False)) for c, o in left]
    lost_outcomes: dict[int, RowOutcome] = {}
    lost = [chunk for chunk, outcome in left if outcome.started]
    if lost and cancel is not None and not cancel.aborted:
        lost_outcomes = _confirm(writer, [c.items for c in lost], cancel)
    stats.chunks -= sum(1 for _, outcome in left if not outcome.started)
    for chunk, outcome in left:
        outcomes = _chunk_outcomes(chunk.items, outcome)
        deliver(chunk, outcomes | {i: lost_outcomes[i] for i in outcomes if i in lost_outcomes})
    for chunk in source:  # cancelled: what was never taken from the stream is not sent
        deliver(chunk, {item.index: not_sent(item) for item in chunk.items} if chunk.send else {})
    stats.cancelled = cancel is not None and cancel.cancelled
    return stats


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
            code = getattr(err, "code", None) or type(err).__name__
            out[item.index] = RowOutcome("failed", own_id, code, str(err), getattr(err, "request_id", None))
    return out


def _tally(chunk: Chunk, done: Mapping[int, RowOutcome]) -> dict[str, int]:
    """Records per status in a chunk (each write counts with the earlier records merged into it)."""
    counts: dict[str, int] = {}
    for outcome in done.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    for item in chunk.items:
        if item.merged and item.index in done:  # an item merged away while resolving keys is in a later one's merged
            counts[done[item.index].status] += len(item.merged)
    return counts


def _results(chunk: Chunk, done: Mapping[int, RowOutcome]) -> list[RecordResult]:
    """The chunk's results, each merged record with the outcome of the write it was merged into."""
    results = [RecordResult(i, d.status, d.id, d.code, d.message, request_id=d.request_id) for i, d in done.items()]
    for item in chunk.items:
        d = done.get(item.index)
        if d is not None:
            results += [
                RecordResult(e, d.status, d.id, d.code, d.message, merged_into=item.index, request_id=d.request_id)
                for e in item.merged
            ]
    return results


def sorted_results(n: int, parts: Sequence[RecordResult]) -> list[RecordResult]:
    """Results in input order (a run delivers them chunk by chunk, in completion order)."""
    out: list[RecordResult] = [RecordResult(i, "unknown") for i in range(n)]
    for r in parts:
        out[r.index] = r
    return out
