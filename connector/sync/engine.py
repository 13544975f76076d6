"""One sync run: source rows mapped, compared with the state, planned, written in groups, every row ledgered.

Why two passes over the source: "the last row by source order wins" for duplicate match keys cannot be decided while
streaming (the winner may be the source's last row), and holding the source in memory is what the sync must not do.
The first pass maps rows and keeps only the last position of each key rows share; the second maps again and writes.
Rows are triaged in groups of ``batch_size x parallelism`` and gathered into units of that many changed rows (or 50
groups scanned), so an incremental run fills its chunks; the rows needing no write are committed a group at a time.
A unit's intents are committed before it is sent; it is sent through the streaming writer, and each chunk's outcomes
(ledger rows, confirmed hashes and ids) are committed in one transaction as the chunk is decided, so a crash
anywhere leaves the state consistent and the next run resends exactly what was not confirmed, with the same ids. One
unit is sent on a thread while the next is prepared. ``parallelism`` is also the run's cap on requests in flight
(``Governor.capped``, within the connection's own limit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from connector.bulk import DEFAULT_CHUNK_SIZE, RecordResult, WriteOptions, write_entities_stream
from connector.errors import ConnectorError, DataverseApiError
from connector.progress import CancellationToken, Reporter, Tracker
from connector.sync.destination import DestinationFilter, compile_filter, destination_of, gate, inside
from connector.sync.mapping import MappedRow, row_hash
from connector.sync.mirror import (
    MirrorSpec,
    RemovalRun,
    SourceKeys,
    check_cap,
    execute_removal,
    mirror_spec,
    plan_removal,
)
from connector.sync.planner import Decision, LastRows, MatchRule, decide, existing_rows, missing_lookups
from connector.sync.state import Intent, LedgerRow, StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata
    from connector.sync.definition import SyncDefinition

__all__ = [
    "EXIT_DONE",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "Plan",
    "RowMapper",
    "SyncJob",
    "SyncResult",
    "job_from_definition",
    "run_sync",
]

log = logging.getLogger("connector.sync")
EXIT_DONE = 0
EXIT_PARTIAL = 5  # as ``d365 run``: the run completed but some rows did not land
EXIT_INTERRUPTED = 130
_FIRST_ROWS = 5
Hook = Callable[[str], None]


class RowMapper(Protocol):
    """What the engine needs of :class:`connector.sync.mapping.Mapper` (tests give it doubles)."""

    def fingerprint(self) -> str: ...
    def map_rows(self, rows: Sequence[Mapping[str, Any]], start_index: int) -> Sequence[MappedRow]: ...


@dataclass(frozen=True)
class SyncJob:
    """The parts of a definition the engine acts on."""

    name: str
    table: str
    rule: MatchRule
    batch_size: int = DEFAULT_CHUNK_SIZE
    parallelism: int = 4
    bypass_business_logic: tuple[str, ...] = ()
    bypass_custom_plugins: bool = False
    mirror: MirrorSpec | None = None  # mode mirror: the rows that left the source are removed (connector.sync.mirror)
    destination: DestinationFilter | None = None  # which existing rows may be written (connector.sync.destination)

    @property
    def group_rows(self) -> int:
        return self.batch_size * max(1, self.parallelism)


def job_from_definition(definition: SyncDefinition) -> SyncJob:
    match = definition.match
    mode = "upsert" if definition.mode == "mirror" else definition.mode
    rule = MatchRule(kind=match.kind, mode=mode, id_insert=match.id_insert, column=match.column, stamp=match.stamp)
    return SyncJob(
        name=definition.name,
        table=definition.target,
        rule=rule,
        batch_size=definition.batch_size,
        parallelism=definition.parallelism or 4,
        bypass_business_logic=tuple(definition.bypass_business_logic),
        bypass_custom_plugins=definition.bypass_custom_plugins,
        mirror=mirror_spec(definition),
        destination=destination_of(definition),
    )


@dataclass
class Plan:
    """What a dry run would do: counts per action, the first rows of each, every problem by source row, the cost."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    reads: int = 0
    removal: dict[str, Any] | None = None  # mode mirror: what would be removed, and what Dataverse would cascade

    def add(self, action: str, row: MappedRow, message: str | None = None) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1
        first = self.first.setdefault(action, [])
        if len(first) < _FIRST_ROWS:
            first.append({"source_index": row.source_index, "match_key": row.match_key, "message": message})

    def write_requests(self, batch_size: int) -> int:
        return sum(-(-self.counts.get(a, 0) // batch_size) for a in ("create", "update"))

    def to_dict(self, batch_size: int) -> dict[str, Any]:
        writes = self.write_requests(batch_size)
        return {
            "counts": self.counts,
            "first_rows": self.first,
            "problems": self.problems,
            "api_requests": {"reads": self.reads, "writes": writes, "total": self.reads + writes},
            # GUESS: a bulk message counts as one API request but each of its rows as a Power Platform request
            "power_platform_requests": self.reads + self.counts.get("create", 0) + self.counts.get("update", 0),
        } | ({"removal": self.removal} if self.removal is not None else {})


@dataclass
class SyncResult:
    run: int | None
    status: str  # done | cancelled | dry_run
    counts: dict[str, int]
    exit_code: int
    plan: Plan | None = None
    interrupted_runs: list[int] = field(default_factory=list)

    def to_dict(self, batch_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Any]:
        out: dict[str, Any] = {"run": self.run, "status": self.status, "counts": self.counts}
        out["exit_code"] = self.exit_code
        if self.plan is not None:
            out["plan"] = self.plan.to_dict(batch_size)
        if self.interrupted_runs:
            out["interrupted_runs"] = self.interrupted_runs
        return out


def _groups(source: Iterable[list[dict[str, Any]]], mapper: RowMapper, size: int) -> Iterator[list[MappedRow]]:
    """Mapped rows in groups of ``size``, in source order."""
    index = 0
    pending: list[MappedRow] = []
    for batch in source:
        for start in range(0, len(batch), size):
            part = batch[start : start + size]
            pending += mapper.map_rows(part, index)
            index += len(part)
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]
    if pending:
        yield pending


def _last_positions(
    source: Iterable[list[dict[str, Any]]], mapper: RowMapper, size: int, seen: SourceKeys | None = None
) -> dict[str, int]:
    """The last source position of each match key that more than one row carries; any other key is its own last."""
    last = LastRows()
    try:
        for group in _groups(source, mapper, size):
            if seen is not None:
                for row in group:
                    seen.add(row)
            last.add(group)
        return last.duplicated()
    finally:
        last.close()


def _wins(row: MappedRow, last: Mapping[str, int]) -> bool:
    """Whether ``row`` is its match key's last row in the source (``last`` holds the duplicated keys only)."""
    return last.get(row.match_key, row.source_index) == row.source_index


def run_sync(
    connection: Connection,
    job: SyncJob,
    mapper: RowMapper,
    source: Callable[[], Iterable[list[dict[str, Any]]]],
    store: StateStore,
    *,
    full: bool = False,
    dry_run: bool = False,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
    hook: Hook | None = None,
    force: bool = False,
) -> SyncResult:
    """Run ``job`` once: ``source()`` is called twice (see the module docstring). ``hook`` (tests) is called with
    ``before_send`` for each unit, ``after_send`` and ``mid_commit`` for each chunk (``before_remove``/``after_remove``
    for each chunk of a mirror's removals), to crash at deterministic points. ``force``: a mirror over its cap removes
    anyway."""
    meta = connection.metadata.table(job.table)
    fingerprint = mapper.fingerprint()
    seen = SourceKeys() if job.mirror is not None else None
    last = _last_positions(source(), mapper, job.group_rows, seen)
    run = _Run(connection, job, meta, store, fingerprint, full=full, hook=hook, cancel=cancel)
    if job.destination is not None:
        run.filter_text = compile_filter(connection, meta, job.destination)
    removal = None
    if job.mirror is not None and seen is not None:
        filtered = run.filter_text
        keep = (lambda ids: inside(connection, meta, filtered, ids)) if filtered is not None else None
        removal = plan_removal(connection, meta, job.mirror, store, seen, keep)
    cap = connection.governor.capped(job.parallelism)  # the run's requests in flight: at most its parallelism
    if dry_run:
        plan = Plan()
        with cap:
            for group in _groups(source(), mapper, job.group_rows):
                run.plan_group(group, last, plan)
        if removal is not None and job.mirror is not None:
            plan.removal, plan.reads = removal.to_dict(job.mirror), plan.reads + removal.reads
            _add(plan.counts, removal.counts())
        code = EXIT_PARTIAL if plan.counts.get("failed") else EXIT_DONE  # as the real run would end
        return SyncResult(None, "dry_run", dict(plan.counts), code, plan)
    if removal is not None and job.mirror is not None:
        check_cap(removal, job.mirror, force=force)  # before anything is written
    run.id, stale = store.start_run("mirror" if job.mirror else job.rule.mode, full=full)
    try:
        with cap:
            status = _send_all(run, source, mapper, last, progress)
            if removal is not None and job.mirror is not None and status == "done":
                first = seen.rows if seen else 0
                where = RemovalRun(
                    connection, job.table, store, run.id, first, run.options, job.group_rows, hook, cancel
                )
                execute_removal(removal, job.mirror, where)
    except Exception as exc:  # the run stops here: closed failed now, not left running for the next run to find
        _close_failed(store, run.id, exc)
        raise
    counts = store.ledger_counts(run.id)
    interrupted = status == "cancelled" or (cancel is not None and cancel.cancelled)
    bad = counts.get("failed", 0) + counts.get("not_sent", 0)
    code = EXIT_INTERRUPTED if interrupted else (EXIT_PARTIAL if bad else EXIT_DONE)
    status = "cancelled" if interrupted else "done"
    store.end_run(run.id, status, counts, code)
    return SyncResult(run.id, status, counts, code, interrupted_runs=stale)


def _send_all(
    run: _Run,
    source: Callable[[], Iterable[list[dict[str, Any]]]],
    mapper: RowMapper,
    last: Mapping[str, int],
    progress: Reporter | None,
) -> str:
    """The second pass: every group triaged, gathered into units, written and ledgered; ``done`` or ``cancelled``."""
    governor, cancel = run.connection.governor, run.cancel
    tracker = Tracker("sync", progress, total=None, clock=governor.clock, throttle=governor)
    status = "done"
    with tracker:
        try:
            for group in _groups(source(), mapper, run.job.group_rows):
                if cancel is not None and cancel.cancelled:
                    status = "cancelled"
                    tracker.advance(run.flush(sent=False))
                    tracker.advance(run.not_sent(group))
                    continue
                tracker.advance(run.take(group, last))
                if run.full_unit():
                    tracker.advance(run.flush())
            tracker.advance(run.flush(sent=not (cancel is not None and cancel.cancelled)))
            tracker.advance(run.in_flight.wait())
        finally:
            run.in_flight.close()  # the unit in flight ends before the run is closed; the first error is the run's
    return status


def _close_failed(store: StateStore, run: int, exc: Exception) -> None:
    """Close ``run`` ``failed`` with ``exc`` (its exit code when it is a connector error); a store that fails too
    (the database gone) leaves it ``running``, and the next run closes it ``interrupted``."""
    code = exc.exit_code if isinstance(exc, ConnectorError) else 1
    text = exc.message if isinstance(exc, ConnectorError) else str(exc)
    try:
        store.end_run(run, "failed", store.ledger_counts(run), code, error=f"{type(exc).__name__}: {text}"[:2000])
    except Exception:
        log.exception("sync run %d could not be closed failed", run)


class _Run:
    """The per-group work of one run."""

    def __init__(
        self,
        connection: Connection,
        job: SyncJob,
        meta: TableMetadata,
        store: StateStore,
        fingerprint: str,
        *,
        full: bool,
        hook: Hook | None,
        cancel: CancellationToken | None,
    ) -> None:
        self.connection, self.job, self.meta, self.store = connection, job, meta, store
        self.fingerprint, self.full, self.hook, self.cancel = fingerprint, full, hook, cancel
        self.id = 0
        self.chunk = 0
        self.ledger: list[LedgerRow] = []  # rows triaged but not yet committed: a unit gathers changed rows first
        self.changed: list[tuple[MappedRow, str]] = []
        self.scanned = 0
        self.in_flight = _InFlight()
        url = store.engine.url  # an in-memory SQLite store is one database per thread: its units are not overlapped
        self.pipelined = not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"))
        self.filter_text: str | None = None  # the destination filter, compiled
        self.options = WriteOptions(
            chunk_size=job.batch_size,
            bypass_business_logic=job.bypass_business_logic,
            bypass_custom_plugins=job.bypass_custom_plugins,
        )

    def _triage(
        self, group: Sequence[MappedRow], last: Mapping[str, int]
    ) -> tuple[list[LedgerRow], list[tuple[MappedRow, str]]]:
        """Rows that need no write (problems, duplicates, unchanged) ledgered; the others with their hash."""
        ledger: list[LedgerRow] = []
        live = [r for r in group if not r.problems and _wins(r, last)]
        states = self.store.row_states([r.match_key for r in live])
        changed: list[tuple[MappedRow, str]] = []
        for row in group:
            if row.problems:
                message = "; ".join(str(p) for p in row.problems)
                ledger.append(LedgerRow(row.source_index, row.match_key, "failed", code="InputError", message=message))
            elif not _wins(row, last):
                ledger.append(
                    LedgerRow(row.source_index, row.match_key, "duplicate_of", duplicate_of=last[row.match_key])
                )
            else:
                digest = row_hash(row, self.fingerprint)
                state = states.get(row.match_key)
                if not self.full and state is not None and state.hash == digest:
                    ledger.append(LedgerRow(row.source_index, row.match_key, "unchanged", state.dataverse_id))
                else:
                    changed.append((row, digest))
        return ledger, changed

    def _decide(self, changed: Sequence[tuple[MappedRow, str]]) -> tuple[list[Decision], int]:
        rows = [r for r, _ in changed]
        found, reads = existing_rows(self.connection, self.meta, rows, self.job.rule)
        pending = self.store.pending_ids([r.match_key for r in rows])
        table = self.meta.logical_name
        decisions = [
            decide(r, self.job.rule, table, found.get(r.match_key, []), pending.get(r.match_key)) for r in rows
        ]
        if self.job.destination is not None and self.filter_text is not None:
            reads += gate(self.connection, self.meta, self.job.destination, self.filter_text, decisions)
        return decisions, reads

    def plan_group(self, group: Sequence[MappedRow], last: Mapping[str, int], plan: Plan) -> None:
        ledger, changed = self._triage(group, last)
        by_index = {r.source_index: r for r in group}
        for entry in ledger:
            plan.add(entry.outcome, by_index[entry.source_index], entry.message)
            if entry.outcome == "failed":
                plan.problems.append({"source_index": entry.source_index, "message": entry.message})
        decisions, reads = self._decide(changed)
        missing, more = missing_lookups(self.connection, [d.row for d in decisions if d.action in ("create", "update")])
        plan.reads += reads + more
        for d in decisions:
            if d.row.source_index in missing:
                d.action, d.message = "failed", "; ".join(missing[d.row.source_index])
            plan.add(d.action, d.row, d.message)
            if d.action == "failed":
                plan.problems.append({"source_index": d.row.source_index, "message": d.message})

    def not_sent(self, group: Sequence[MappedRow]) -> dict[str, int]:
        message = "not sent: the run was cancelled before this row was reached"
        ledger = [LedgerRow(r.source_index, r.match_key, "not_sent", message=message) for r in group]
        self.store.commit_outcomes(self.id, ledger, {})
        return {"not_sent": len(ledger)}

    def take(self, group: Sequence[MappedRow], last: Mapping[str, int]) -> dict[str, int]:
        """Triage a group into the unit being gathered. Why gather: an incremental run changes few rows per group, and
        writing each group's few rows alone sent chunks of 4 where 100 fit (1,000 changed rows of 100,000 took 250
        writes); a unit is written once it holds a group's worth of changed rows, or has scanned 50 groups. The rows
        that need no write are committed once a group's worth of them is held (their counts returned): held for the
        unit, they grew the run's memory with its size (40,000 ledger rows in an incremental run's unit)."""
        ledger, changed = self._triage(group, last)
        self.ledger += ledger
        self.changed += changed
        self.scanned += len(group)
        if len(self.ledger) < self.job.group_rows:
            return {}
        ledger, self.ledger = self.ledger, []
        self.store.commit_outcomes(self.id, ledger, {})
        return _count(ledger)

    def full_unit(self) -> bool:
        return len(self.changed) >= self.job.group_rows or self.scanned >= 50 * self.job.group_rows

    def flush(self, *, sent: bool = True) -> dict[str, int]:
        """Write and commit the gathered unit; ``sent=False`` (a cancelled run) ledgers its changed rows not_sent."""
        ledger, changed = self.ledger, self.changed
        self.ledger, self.changed, self.scanned = [], [], 0
        if not ledger and not changed:
            return {}
        if not sent:
            message = "not sent: the run was cancelled before this row was reached"
            ledger += [LedgerRow(r.source_index, r.match_key, "not_sent", message=message) for r, _ in changed]
            self.store.commit_outcomes(self.id, ledger, {})
            return _count(ledger)
        unit = self.prepare(ledger, changed)
        if not self.pipelined:
            return self.send(unit)
        return self.in_flight.start(lambda: self.send(unit))

    def prepare(self, ledger: list[LedgerRow], changed: Sequence[tuple[MappedRow, str]]) -> _Unit:
        """Decide the unit's rows (the existence reads) and commit their intents: what :meth:`send` sends."""
        hashes = {r.match_key: digest for r, digest in changed}
        try:
            decisions, _ = self._decide(changed)
        except DataverseApiError as exc:  # the read's retries spent: these rows fail, the next run retries them
            message = f"not sent: reading which rows exist failed: {exc}"
            code = exc.code or type(exc).__name__
            decisions = [Decision(r, "failed", message=message, code=code) for r, _ in changed]
        held = _Held(ledger, [])
        for d in decisions:
            if d.action in ("skipped", "failed", "skipped_by_filter"):
                entry = LedgerRow(d.row.source_index, d.row.match_key, d.action, d.id, code=d.code, message=d.message)
                held.ledger.append(entry)
                held.failed.append(d.row.match_key)
        writes = [d for d in decisions if d.action in ("create", "update")]
        self.store.record_intents(
            self.id,
            self.chunk,
            [
                Intent(d.row.source_index, d.row.match_key, d.action, d.id if d.action == "create" else None)
                for d in writes
            ],
        )
        self.chunk += 1
        return _Unit(writes, hashes, held)

    def send(self, unit: _Unit) -> dict[str, int]:
        """Send a prepared unit; each chunk is ledgered as it is confirmed, and the rows that need no write are
        committed with the first chunk (or alone, when nothing is sent)."""
        self._point("before_send")
        counts: dict[str, int] = {}
        writes, hashes, held = unit.writes, unit.hashes, unit.held
        for action in ("create", "update"):
            part = [d for d in writes if d.action == action]
            if part:
                self._write(action, part, hashes, held, counts)
        if held.ledger or held.failed:
            self.store.commit_outcomes(self.id, held.ledger, {}, held.failed)
            _add(counts, _count(held.ledger))
        return counts

    def _point(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    def _write(
        self, action: str, part: Sequence[Decision], hashes: Mapping[str, str], held: _Held, counts: dict[str, int]
    ) -> None:
        """The one place rows are sent: the streaming writer, each chunk's outcomes (ledger rows, confirmed hashes and
        ids) committed in one transaction as the chunk is decided, with what ``held`` still holds."""

        def on_chunk(results: list[RecordResult]) -> None:
            ledger, confirmed, failed = held.take()
            for result in results:
                d = part[result.index]
                entry = _ledger_row(d, result)
                ledger.append(entry)
                if entry.outcome in ("created", "updated"):
                    confirmed[d.row.match_key] = (hashes[d.row.match_key], entry.dataverse_id)
                elif entry.outcome == "failed":
                    failed.append(d.row.match_key)
            self._point("after_send")
            self.store.commit_outcomes(self.id, ledger, confirmed, failed, hook=self.hook)
            _add(counts, _count(ledger))

        records = (d.record for d in part)
        write_entities_stream(
            self.connection, self.job.table, action, records, self.options, on_chunk=on_chunk, cancel=self.cancel
        )


@dataclass
class _Unit:
    writes: list[Decision]
    hashes: dict[str, str]
    held: _Held


class _InFlight:
    """At most one unit written on a thread of its own while the calling thread prepares the next (maps, triages,
    reads which rows exist, commits its intents), so the run's requests do not stop between units. Units are
    independent: a match key lives in one unit of a run, and its intents are committed before it is sent. One thread
    for the whole run (a thread per unit grew the process's memory by its allocator's per-thread arenas)."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.future: Future[tuple[dict[str, int], BaseException | None]] | None = None

    def start(self, send: Callable[[], dict[str, int]]) -> dict[str, int]:
        """Wait for the unit in flight (its counts returned, its error raised), then send the next."""
        done = self.wait()
        self.pool = self.pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="d365-sync-unit")
        self.future = self.pool.submit(_caught, send)
        return done

    def wait(self) -> dict[str, int]:
        """The counts of the unit in flight once it is done; its error (a crash in tests included) raised here."""
        future, self.future = self.future, None
        if future is None:
            return {}
        counts, error = future.result()
        if error is not None:
            raise error
        return counts

    def close(self) -> None:
        """Wait for the unit in flight, its error dropped (the caller is raising its own or is done)."""
        try:
            self.wait()
        except BaseException:
            log.debug("a sync unit failed while the run was stopping", exc_info=True)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _caught(send: Callable[[], dict[str, int]]) -> tuple[dict[str, int], BaseException | None]:
    """``send()``'s counts, or its error as a value: a BaseException (a crash in tests) must reach the caller too."""
    try:
        return send(), None
    except BaseException as exc:
        return {}, exc


@dataclass
class _Held:
    """Ledger rows and failed keys waiting for the unit's next commit."""

    ledger: list[LedgerRow]
    failed: list[str]

    def take(self) -> tuple[list[LedgerRow], dict[str, tuple[str, str | None]], list[str]]:
        ledger, failed = self.ledger, self.failed
        self.ledger, self.failed = [], []
        return ledger, {}, failed


def _add(counts: dict[str, int], more: Mapping[str, int]) -> None:
    for outcome, n in more.items():
        counts[outcome] = counts.get(outcome, 0) + n


def _count(ledger: Iterable[LedgerRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in ledger:
        counts[entry.outcome] = counts.get(entry.outcome, 0) + 1
    return counts


def _ledger_row(d: Decision, result: RecordResult) -> LedgerRow:
    """A write's outcome in the ledger's words; an unknown outcome is ``failed`` and resent (same id) next run."""
    index, key = d.row.source_index, d.row.match_key
    if result.status in ("created", "already_present"):
        return LedgerRow(index, key, "created", result.id or d.id)
    if result.status == "updated":
        return LedgerRow(index, key, "updated", result.id or d.id)
    if result.status == "not_sent":
        return LedgerRow(index, key, "not_sent", message=result.message)
    code = result.code or ("OutcomeUnknown" if result.status == "unknown" else None)
    own = d.id if d.action == "update" else None
    return LedgerRow(index, key, "failed", own, code=code, message=result.message, request_id=result.request_id)
