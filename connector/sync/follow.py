"""Follow mode: a stream of JSON lines (standard input, or a file tailed) synced in micro-batches as it arrives.

Why a sync run per micro-batch, not one run with many flushes: a run is already the unit the engine makes crash-safe
(intents before sending, outcomes in one transaction after, an interrupted run closed and its unconfirmed rows resent
with the same ids); a micro-batch that is a run inherits all of it unchanged, ``d365 sync history`` and ``results``
show each batch with its counts, and a follow session killed at any point leaves at most one run ``interrupted``.
The cost is a ledger split into many small runs, which ``results`` exports one by one.

Delivery: a tailed file's byte offset is checkpointed in the state store after each batch's run is committed (and
written back), so a restart resumes after the last committed batch: at-least-once, then idempotent by match key (a
replayed row's hash is unchanged and nothing is sent). Standard input cannot be re-read: lines buffered when the
process dies are lost (at-most-once); SIGTERM and Ctrl-C stop reading, flush what was read and exit.

Events for one match key within a batch are merged as a source's duplicates are: the last wins and is written, the
earlier ones are ledgered ``duplicate_of`` it.

Retries: a consumed event is never read again, so a row Dataverse refused (a throttle that outlasted the retries, a
lost answer, a lookup whose parent row arrives in a later event) would be lost to the stream. Such rows are carried
into the next ``RETRY_BATCHES`` batches, after that batch's own events (a parent event in it is written first) and
dropped when a newer event for the same key arrives (the newer one wins). They are kept in the state store
(``sync_follow_retries``) before the offset moves, so a restart carries them on. A row refused before sending (its
mapping, code ``InputError``) is not retried: it would be refused again.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import sqlalchemy as sa

from connector.clock import Clock
from connector.errors import InputError, InputProblem
from connector.strict_json import StrictJsonError
from connector.strict_json import loads as strict_loads
from connector.sync.definition import file_format
from connector.sync.engine import EXIT_DONE, EXIT_PARTIAL, SyncResult, job_from_definition, run_sync
from connector.sync.mapping import Mapper
from connector.sync.state import StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.sync.definition import SyncDefinition

__all__ = [
    "RETRY_BATCHES",
    "Batch",
    "Batcher",
    "Event",
    "Follower",
    "follow",
    "follow_path",
    "saved_offset",
    "stdin_events",
    "tail",
]

Row = dict[str, Any]
Stop = Callable[[], bool]

_md = sa.MetaData()
_offsets = sa.Table(
    "sync_follow_offsets",
    _md,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),  # bytes of the file consumed and committed
    sa.Column("updated", sa.String(40), nullable=False),
)
_retries = sa.Table(
    "sync_follow_retries",
    _md,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("match_key", sa.Text, primary_key=True),
    sa.Column("row", sa.Text, nullable=False),  # the source row as JSON
    sa.Column("attempts", sa.Integer, nullable=False),  # batches that tried it
)
#: Later batches a failed row is carried into before it is given up (reported ``gave_up``).
RETRY_BATCHES = 3


@dataclass(frozen=True)
class Event:
    """One line: its row, or why it was rejected; ``offset`` (tailed files) is the file position after it."""

    line: int
    row: Row | None
    offset: int | None = None
    problem: str | None = None


@dataclass
class Batch:
    rows: list[Row] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    offset: int | None = None
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected)


class Batcher:
    """Events gathered into micro-batches: due at ``max_rows`` events, or ``max_wait_s`` after the batch's first."""

    def __init__(self, max_rows: int, max_wait_s: float) -> None:
        self.max_rows, self.max_wait_s = max_rows, max_wait_s
        self.batch = Batch()

    def add(self, event: Event, now: float) -> None:
        if not self.batch:
            self.batch.started = now
        if event.row is not None:
            self.batch.rows.append(event.row)
        else:
            self.batch.rejected.append({"line": event.line, "message": event.problem})
        if event.offset is not None:
            self.batch.offset = event.offset

    def due(self, now: float) -> bool:
        return len(self.batch) >= self.max_rows or (bool(self.batch) and now - self.batch.started >= self.max_wait_s)

    def take(self) -> Batch:
        batch, self.batch = self.batch, Batch()
        return batch


def follow(
    events: Iterable[Event | None],
    flush: Callable[[Batch], None],
    *,
    clock: Clock,
    max_rows: int,
    max_wait_s: float,
    stop: Stop,
    pending: Callable[[], bool] | None = None,
) -> None:
    """Feed ``events`` (None: nothing arrived for a while) into micro-batches and ``flush`` each when due, and what is
    left when the events end (EOF) or ``stop()`` turns true (SIGTERM, Ctrl-C). A source told to stop gives the lines
    it already read, then ends; an idle tick after ``stop()`` ends the loop for a source that does not end itself.

    ``pending()`` says rows are waiting for a retry: a quiet stream then flushes an empty batch ``max_wait_s`` after
    the last flush, and once more at the end, so they are tried without waiting for the next event."""
    batcher = Batcher(max_rows, max_wait_s)
    last_flush = clock.monotonic()

    def take(batch: Batch) -> None:
        nonlocal last_flush
        flush(batch)
        last_flush = clock.monotonic()

    for event in events:
        if event is None and stop():
            break
        if event is not None:
            batcher.add(event, clock.monotonic())
        if batcher.batch and batcher.due(clock.monotonic()):
            take(batcher.take())
        elif event is None and pending is not None and pending() and clock.monotonic() - last_flush >= max_wait_s:
            take(Batch())
    if batcher.batch or (pending is not None and pending()):
        take(batcher.take())


def _event(line: bytes, number: int, offset: int | None) -> Event:
    try:
        row = strict_loads(line)
    except StrictJsonError as exc:
        return Event(number, None, offset, exc.reason)
    if not isinstance(row, dict):
        return Event(number, None, offset, "not a JSON object: give one object per line")
    return Event(number, row, offset)


def tail(path: Path, start: int, *, clock: Clock, poll_s: float, until_eof: bool, stop: Stop) -> Iterator[Event | None]:
    """The complete lines of ``path`` from byte ``start``, waiting ``poll_s`` for more at its end (None each wait);
    a last line without its newline is left for later (it may be half written). ``until_eof``: end there instead."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset, number = start, 0
        while not stop():
            line = handle.readline()
            if line.endswith(b"\n"):
                offset += len(line)
                number += 1
                if line.strip():
                    yield _event(line, number, offset)
                continue
            handle.seek(offset)
            if until_eof:
                return
            yield None
            clock.sleep(poll_s)


def stdin_events(stream: BinaryIO, *, poll_s: float, stop: Stop) -> Iterator[Event | None]:
    """Lines of a pipe, read on a thread so that a quiet pipe still lets time-based batches flush (None each
    ``poll_s`` without a line). On ``stop()`` the lines already read are still given, then the events end."""
    lines: queue.Queue[bytes | None] = queue.Queue(maxsize=10_000)

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="d365-follow-stdin", daemon=True).start()
    number = 0
    while True:
        try:
            line = lines.get_nowait() if stop() else lines.get(timeout=poll_s)
        except queue.Empty:
            if stop():
                return
            yield None
            continue
        if line is None:
            return
        number += 1
        if line.strip():
            yield _event(line, number, None)


def follow_path(definition: SyncDefinition) -> Path | None:
    """The file a follow session tails (None: standard input); other sources are refused, naming the fix."""
    spec = definition.source
    if spec.stdin:
        return None
    path = spec.path or ""
    if spec.kind == "file" and spec.sql is None and _no_glob(path) and (spec.format or file_format(path)) == "jsonl":
        return Path(path)
    raise InputError(
        [
            InputProblem(
                "$.source",
                "--follow reads JSON lines: give source {stdin: true} (a pipe) or {path: events.jsonl} (one file, "
                "tailed; no glob, not compressed, no sql)",
            )
        ]
    )


def _no_glob(path: str) -> bool:
    """One plain file: a glob has no single end to tail, and a compressed file cannot be read by the line."""
    return not any(ch in path for ch in "*?[") and not path.lower().endswith(".gz")


def saved_offset(store: StateStore, path: Path) -> int:
    _md.create_all(store.engine)
    with store.engine.connect() as db:
        found = db.execute(
            sa.select(_offsets.c.position).where(_offsets.c.sync == store.sync, _offsets.c.path == str(path))
        ).scalar_one_or_none()
    return int(found or 0)


def _save_offset(store: StateStore, path: Path, position: int) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    key = (_offsets.c.sync == store.sync) & (_offsets.c.path == str(path))
    with store.engine.begin() as db:
        done = db.execute(_offsets.update().where(key).values(position=position, updated=now))
        if done.rowcount == 0:
            db.execute(_offsets.insert().values(sync=store.sync, path=str(path), position=position, updated=now))


class Follower:
    """One follow session: the mapper checked and the state store opened once; a sync run per micro-batch, then
    ``after_run`` (the write-back), then the file's offset checkpoint, in that order (see the module docstring)."""

    def __init__(
        self,
        definition: SyncDefinition,
        connection: Connection,
        store: StateStore,
        *,
        path: Path | None = None,
        after_run: Callable[[SyncResult], None] | None = None,
        report: Callable[[dict[str, Any]], None] | None = None,
        hook: Callable[[str], None] | None = None,
        full: bool = False,
    ) -> None:
        self.mapper = Mapper(definition, connection)
        problems = self.mapper.problems()
        if problems:
            raise InputError(list(problems))
        self.connection, self.store, self.path = connection, store, path
        self.job = job_from_definition(definition)
        self.after_run, self.report, self.hook, self.full = after_run, report, hook, full
        self._exit_code = EXIT_DONE
        self.runs: list[SyncResult] = []
        self.carried: dict[str, tuple[Row, int]] = _load_retries(store)  # match key -> (row, retry batches so far)
        self._stored = bool(self.carried)  # whether the store holds carried rows (else an empty list needs no write)
        self.gave_up: list[dict[str, Any]] = []

    @property
    def exit_code(self) -> int:
        """Partial while a failed row is still carried or was given up: it is not in Dataverse."""
        return max(self._exit_code, EXIT_PARTIAL if self.carried or self.gave_up else EXIT_DONE)

    def pending(self) -> bool:
        """Whether rows wait for a retry (``follow`` then flushes a quiet stream on time)."""
        return bool(self.carried)

    def start(self) -> int:
        """Where the tailed file is resumed: the checkpoint, refused when the file is now shorter (replaced)."""
        if self.path is None:
            return 0
        position = saved_offset(self.store, self.path)
        size = self.path.stat().st_size if self.path.exists() else 0
        if position > size:
            raise InputError(
                [
                    InputProblem(
                        "$.source.path",
                        f"the file has {size} bytes but {position} were already synced: it was truncated or "
                        "replaced; append to it instead, or give the sync a new name (or state) to start over",
                    )
                ]
            )
        return position

    def flush(self, batch: Batch) -> None:
        result: SyncResult | None = None
        retried = self._still_carried(batch.rows)
        rows = batch.rows + [row for _, row, _ in retried]
        gave_up_before = len(self.gave_up)
        if rows:
            result = run_sync(self.connection, self.job, self.mapper, lambda: [rows], self.store, full=self.full)
            self.runs.append(result)
            carried_now = self._carry_failures(result, rows, len(batch.rows), retried)
            counts = result.counts
            only_carried = counts.get("not_sent", 0) == 0 and counts.get("failed", 0) == carried_now
            self._exit_code = max(self._exit_code, EXIT_DONE if only_carried else result.exit_code)
            if self.after_run is not None:
                self.after_run(result)
        if batch.rejected:
            self._exit_code = max(self._exit_code, EXIT_PARTIAL)
        if self.carried or self._stored:  # before the offset moves past the events they came from
            _save_retries(self.store, self.carried)
            self._stored = bool(self.carried)
        if self.hook is not None:
            self.hook("before_checkpoint")
        if batch.offset is not None and self.path is not None:
            _save_offset(self.store, self.path, batch.offset)
        if self.report is not None:
            line: dict[str, Any] = {"events": len(batch.rows), **(result.to_dict() if result else {})}
            if retried:
                line["retried"] = len(retried)
            if self.carried:
                line["carried"] = len(self.carried)
            if len(self.gave_up) > gave_up_before:
                line["gave_up"] = self.gave_up[gave_up_before:]
            if batch.rejected:
                line["rejected_lines"] = batch.rejected
            if batch.offset is not None:
                line["offset"] = batch.offset
            self.report(line)

    def _still_carried(self, rows: list[Row]) -> list[tuple[str, Row, int]]:
        """The carried rows to try with this batch: all of them but those a newer event in it replaces."""
        if not self.carried:
            return []
        newer = set(self.mapper.match_keys(rows, 0)) if rows else set()
        for key in newer & self.carried.keys():
            del self.carried[key]
        return [(key, row, tries) for key, (row, tries) in self.carried.items()]

    def _carry_failures(
        self, result: SyncResult, rows: list[Row], first_retry: int, retried: list[tuple[str, Row, int]]
    ) -> int:
        """Carry this run's rows Dataverse refused into the next batches; give up after ``RETRY_BATCHES``. Returns
        how many of this run's failures are carried on (they do not make the session partial yet)."""
        tries_of = {first_retry + i: tries + 1 for i, (_, _, tries) in enumerate(retried)}
        self.carried = {}
        if result.run is None or not result.counts.get("failed"):
            return 0
        carried = 0
        for entry in self.store.ledger(result.run):
            if entry.outcome != "failed" or entry.match_key is None or entry.code in (None, "InputError"):
                continue
            tries = tries_of.get(entry.source_index, 0)
            if tries >= RETRY_BATCHES:
                self.gave_up.append({"match_key": entry.match_key, "code": entry.code, "batches": tries + 1})
                continue
            self.carried[entry.match_key] = (rows[entry.source_index], tries)
            carried += 1
        return carried


def _load_retries(store: StateStore) -> dict[str, tuple[Row, int]]:
    """The rows an earlier session left carried, so a restart tries them on."""
    _md.create_all(store.engine)
    with store.engine.connect() as db:
        found = db.execute(sa.select(_retries).where(_retries.c.sync == store.sync)).mappings()
        return {r["match_key"]: (strict_loads(r["row"]), int(r["attempts"])) for r in found}


def _save_retries(store: StateStore, carried: dict[str, tuple[Row, int]]) -> None:
    with store.engine.begin() as db:
        db.execute(_retries.delete().where(_retries.c.sync == store.sync))
        if carried:
            db.execute(
                _retries.insert(),
                [
                    {"sync": store.sync, "match_key": key, "row": json.dumps(row), "attempts": tries}
                    for key, (row, tries) in carried.items()
                ],
            )
