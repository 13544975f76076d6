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

READ_AHEAD_CHUNKS = 2
"""Waiting chunks read ahead in one request: two keep the pre-reads at about half the writes in number, and a read of
two chunks of 1,000 is two ``In`` reads in one ``$batch``."""

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
    shared: SharedRead | None = None  # its pre-read, done ahead while the chunks before it write (ReadAhead)


@dataclass
class SharedRead:
    """A pre-read done ahead for this chunk (:class:`ReadAhead`): ``over`` once it is, with what it found (None: it
    failed, so this chunk reads for itself)."""

    over: threading.Event = field(default_factory=threading.Event)
    found: Found | None = None


class ReadAhead:
    """Upsert chunks taken from the stream and not yet begun, pre-read while the chunks before them write.

    Why: a chunk's pre-read (a round trip and the server's read) held its write place idle, at every turn of the
    chunks in flight, and ``x-ms-dop-hint`` bounds those places: issue 17 measured it as most of the share missing
    from the ceiling. So one reader beside the write places reads the chunks waiting for a place,
    :data:`READ_AHEAD_CHUNKS` to a request (:mod:`connector.bulk_reads`), and a chunk that begins finds its rows read.
    The writes keep to the hint; at most one read runs beside them. It cannot carry the run past the model's ceiling:
    the execution-time budget (1,200 s per 5 minutes) allows four seconds of execution a second, what four writes in
    flight spend, and a read costs one operation. Pairing keeps the requests counted against the 6,000 per 5 minutes
    at about half the writes. A chunk the reader has not reached (the first ones, a failed read) reads for itself.

    The rows found stay as true as a chunk's own read: a chunk is only taken from the stream once no chunk in flight
    carries its rows (``connector.bulk._StreamChunks``), a row created meanwhile by another writer meets the
    duplicate-key path any pre-read can meet, and what the read found is applied on the chunk's own thread."""

    def __init__(self, writer: ChunkWriter, cancel: CancellationToken | None = None) -> None:
        self.on = writer.mode == "upsert"
        self.writer, self.cancel = writer, cancel
        self.lock = threading.Lock()
        self.waiting: dict[int, Chunk] = {}
        self.reader: threading.Thread | None = None
        self.ended = self.closed = False

    def taken(self, chunk: Chunk) -> None:
        if self.on:
            with self.lock:
                self.waiting[id(chunk)] = chunk

    def end(self) -> None:
        """The stream has no more chunks: a last chunk waiting alone is worth reading ahead too."""
        self.ended = True
        self.kick()

    def known(self, chunk: Chunk, items: list[PlannedWrite]) -> Found | None:
        """What ``chunk``'s pre-read found: read ahead (waited for if still running), else read now; None when the
        mode pre-reads nothing."""
        if not self.on:
            return None
        with self.lock:
            self.waiting.pop(id(chunk), None)
        found = None
        if chunk.shared is not None:
            chunk.shared.over.wait()
            found = chunk.shared.found
        try:
            return found if found is not None else self.writer.lookup(items)
        except BaseException:
            self.kick()  # the chunk fails; the chunks behind it are still read ahead
            raise

    def kick(self) -> None:
        """Start the reader on the waiting chunks nobody reads yet, if it is idle and there are enough of them.

        Called as a chunk's write is let go (and when a read ends): on a cold run the first chunks' reads, and the
        CPU that applies them, then go before the reader's."""
        with self.lock:
            idle = self.reader is None or not self.reader.is_alive()
            if not idle or self.closed or (self.cancel is not None and self.cancel.cancelled):
                return
            fresh = [c for c in self.waiting.values() if c.shared is None][:READ_AHEAD_CHUNKS]
            if not fresh or (len(fresh) < READ_AHEAD_CHUNKS and not self.ended):
                return
            for c in fresh:
                c.shared = SharedRead()
            self.reader = threading.Thread(target=self._read, args=(fresh,), name="d365-read-ahead", daemon=True)
            try:
                self.reader.start()
            except RuntimeError:  # no thread to be had: the chunks read for themselves when they begin
                for c in fresh:
                    c.shared = None
                self.reader = None

    def _read(self, chunks: list[Chunk]) -> None:
        found: Found | None = None
        try:
            with self.writer.connection.governor.beside():
                found = self.writer.lookup([item for c in chunks for item in c.items])
        except Exception as exc:  # each chunk reads for itself, and meets the error there if it lasts
            log.debug("read ahead of %d chunks failed: %s", len(chunks), type(exc).__name__)
        finally:
            for c in chunks:
                assert c.shared is not None
                c.shared.found = found
                c.shared.over.set()
        with self.lock:
            self.reader = None
        self.kick()  # chunks taken while it read

    def close(self) -> None:
        """No more reads. The one running is waited for at the end of a run (it is then about over: every chunk it
        read for has begun), never after a cancel: the chunks it read for will not begin, and it may sit out a
        ``Retry-After``. It only fills in a chunk's read, so it is let go to end on its own."""
        with self.lock:
            self.closed = True
            reader = self.reader
        if reader is not None and not (self.cancel is not None and self.cancel.cancelled):
            reader.join()


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
    ahead = ReadAhead(writer, cancel)
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
            ahead.kick()  # this chunk's rows are ready: the chunks behind it may be read now
            return chunk.written

        try:
            done: dict[int, RowOutcome] = {}
            items = writer.resolve_keys(chunk.items, done)[0] if chunk.resolve else chunk.items
            return {**done, **writer.chunk(items, may_write, ahead.known(chunk, items))}
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
        ahead.end()

    source = iter(chunks)
    governor = writer.connection.governor
    try:
        left = governor.stream(write, sendable(source), cancel=cancel, on_outcome=finished)
    finally:
        ahead.close()
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
