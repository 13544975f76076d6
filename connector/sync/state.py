"""The sync's memory: runs, the confirmed state of every row, the intents written before a chunk is sent, the ledger.

Why a store of its own, behind SQLAlchemy rather than a JSON file: the engine commits twice per chunk (the intents
before sending, the outcomes after) and a crash may fall anywhere; each commit is one transaction, so after a crash the
store holds either all of a chunk's outcomes or none of them, and the intents say which rows may have landed unseen.
SQLite beside the definition by default; any SQLAlchemy URL (a later issue may put it in PostgreSQL).

Outcomes of the ledger: ``created``, ``updated``, ``unchanged``, ``skipped``, ``failed``, ``duplicate_of`` and
``not_sent``; one ledger row per source row and run (the primary key enforces it).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.engine import Engine

__all__ = [
    "OUTCOMES",
    "REMOVAL_OUTCOMES",
    "SCHEMA_VERSION",
    "Intent",
    "LedgerRow",
    "RowState",
    "RunRecord",
    "StateStore",
    "create_schema",
]

SCHEMA_VERSION = 2
"""2 added ``sync_runs.error`` (a version 1 store gains the column on open)."""
OUTCOMES = ("created", "updated", "unchanged", "skipped", "failed", "duplicate_of", "not_sent")
REMOVAL_OUTCOMES = ("removed", "deactivated", "cleared", "skipped_by_filter")
"""A mirror's outcomes (:mod:`connector.sync.mirror`): ledgered after the source rows, one per row it left."""
_IN_CHUNK = 500  # match keys per IN (...) query: well under SQLite's bound-parameter limit
_WAL_ATTEMPTS = 20  # switches to WAL tried while other connections write the fresh file
_SCHEMA_LOCK = 0x64333635  # the PostgreSQL advisory lock key this connector's schema creation takes ("d365")

_md = sa.MetaData()
_meta = sa.Table(
    "sync_schema", _md, sa.Column("name", sa.String(64), primary_key=True), sa.Column("value", sa.String(64))
)
_runs = sa.Table(
    "sync_runs",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("started", sa.String(40), nullable=False),
    sa.Column("ended", sa.String(40)),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("full", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | cancelled | interrupted | failed
    sa.Column("counts", sa.Text),
    sa.Column("exit_status", sa.Integer),
    sa.Column("error", sa.Text),  # a failed run: the error that stopped it
)
_rows = sa.Table(
    "sync_rows",
    _md,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("match_key", sa.Text, primary_key=True),
    sa.Column("hash", sa.String(64)),  # of the mapped row last confirmed written; None after a failure
    sa.Column("dataverse_id", sa.String(36)),
    sa.Column("last_run", sa.Integer),
)
_intents = sa.Table(
    "sync_intents",
    _md,
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("source_index", sa.Integer, primary_key=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("chunk", sa.Integer, nullable=False),
    sa.Column("match_key", sa.Text, nullable=False),
    sa.Column("action", sa.String(10), nullable=False),  # create | update
    sa.Column("client_id", sa.String(36)),
    sa.Column("state", sa.String(12), nullable=False),  # pending | confirmed
)
_ledger = sa.Table(
    "sync_ledger",
    _md,
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("source_index", sa.Integer, primary_key=True),
    sa.Column("match_key", sa.Text),
    sa.Column("outcome", sa.String(24), nullable=False),  # skipped_by_filter: 17
    sa.Column("dataverse_id", sa.String(36)),
    sa.Column("duplicate_of", sa.Integer),
    sa.Column("code", sa.String(40)),
    sa.Column("message", sa.Text),
    sa.Column("request_id", sa.String(64)),
)


@dataclass(frozen=True)
class RunRecord:
    id: int
    sync: str
    started: str
    ended: str | None
    mode: str
    full: bool
    status: str
    counts: dict[str, int]
    exit_status: int | None
    error: str | None = None


@dataclass(frozen=True)
class RowState:
    hash: str | None
    dataverse_id: str | None


@dataclass(frozen=True)
class Intent:
    source_index: int
    match_key: str
    action: str
    client_id: str | None


@dataclass(frozen=True)
class LedgerRow:
    source_index: int
    match_key: str | None
    outcome: str
    dataverse_id: str | None = None
    duplicate_of: int | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_index": self.source_index,
            "match_key": self.match_key,
            "outcome": self.outcome,
            "dataverse_id": self.dataverse_id,
            "duplicate_of": self.duplicate_of,
            "code": self.code,
            "message": self.message,
            "request_id": self.request_id,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _sqlite_wal(dbapi_connection: Any, _: Any) -> None:
    """Why WAL with ``synchronous=NORMAL``: a run commits several times per group, and SQLite's default journal
    syncs the disk at each (about 10 ms here, a fifth of a first sync's time). In WAL mode a commit is durable
    through a crash or ``kill -9`` of the process (what resume relies on); only a power cut may lose the last
    commits, which a resumed run reads back from Dataverse by key or id like any unconfirmed group.

    The switch to WAL (once per file: the mode is kept in it) fails at once, without SQLite's busy wait, while another
    connection writes, as when workers start together on a fresh file: then it waits for that writer by taking and
    dropping the write lock (which does wait) and tries again."""
    cursor = dbapi_connection.cursor()
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_schema(engine: Engine, metadata: sa.MetaData, then: Callable[[SAConnection], None] | None = None) -> None:
    """Create ``metadata``'s missing tables, then run ``then`` in the same transaction; safe when several workers or
    schedulers start at once on an empty store.

    Why: ``create_all`` looks, then creates, so processes starting together all see no table and all but one fail
    (PostgreSQL: a duplicate ``pg_type`` row; SQLite: "table ... already exists"). Each takes a lock first: PostgreSQL
    a transaction-level advisory lock (its DDL is transactional, so the next holder finds the tables and creates
    nothing), SQLite the write lock with ``BEGIN IMMEDIATE`` (the others wait for it, up to the busy timeout)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            db = conn.execution_options(isolation_level="AUTOCOMMIT")  # the driver's own BEGIN would come too late
            db.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                metadata.create_all(db)
                if then is not None:
                    then(db)
            except BaseException:
                with contextlib.suppress(sa.exc.OperationalError):  # SQLite may have rolled back already
                    db.exec_driver_sql("ROLLBACK")
                raise
            db.exec_driver_sql("COMMIT")
            return
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
            if then is not None:
                then(conn)


def _check_version(db: SAConnection) -> None:
    found = db.execute(sa.select(_meta.c.value).where(_meta.c.name == "version")).scalar_one_or_none()
    if found is None:
        db.execute(_meta.insert().values(name="version", value=str(SCHEMA_VERSION)))
    elif found == "1":  # the only change since: a column, added in place
        db.execute(sa.text("ALTER TABLE sync_runs ADD COLUMN error TEXT"))
        db.execute(_meta.update().where(_meta.c.name == "version").values(value=str(SCHEMA_VERSION)))
    elif found != str(SCHEMA_VERSION):
        raise RuntimeError(
            f"the sync state store has schema version {found}; this connector reads version {SCHEMA_VERSION}: "
            "use a matching connector version or point state to a new URL"
        )


class StateStore:
    """One sync's state in a SQLAlchemy database (schema created on first use, its version checked after)."""

    def __init__(self, url: str, sync: str, *, engine: Engine | None = None) -> None:
        self.sync = sync
        self.engine = engine or sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        self._ensure_schema()

    def close(self) -> None:
        self.engine.dispose()

    def _ensure_schema(self) -> None:
        create_schema(self.engine, _md, _check_version)

    # -- runs -----------------------------------------------------------------------------------------------------
    def start_run(self, mode: str, *, full: bool) -> tuple[int, list[int]]:
        """A new run, after closing the runs of this sync a crash left ``running`` (returned: their ids)."""
        with self.engine.begin() as db:
            stale = list(
                db.execute(
                    sa.select(_runs.c.id).where(_runs.c.sync == self.sync, _runs.c.status == "running")
                ).scalars()
            )
            if stale:
                db.execute(_runs.update().where(_runs.c.id.in_(stale)).values(status="interrupted", ended=_now()))
            result = db.execute(
                _runs.insert().values(sync=self.sync, started=_now(), mode=mode, full=full, status="running")
            )
            key = result.inserted_primary_key
            assert key is not None
            run_id = int(key[0])
        return run_id, stale

    def end_run(
        self, run: int, status: str, counts: Mapping[str, int], exit_status: int, *, error: str | None = None
    ) -> None:
        """Close ``run``; ``error`` (status ``failed``): what stopped it, kept for ``d365 sync history``."""
        values = {"status": status, "ended": _now(), "counts": json.dumps(dict(counts)), "exit_status": exit_status}
        with self.engine.begin() as db:
            db.execute(_runs.update().where(_runs.c.id == run).values(**values, error=error))

    def runs(self, limit: int = 50) -> list[RunRecord]:
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(_runs).where(_runs.c.sync == self.sync).order_by(_runs.c.id.desc()).limit(limit)
            ).mappings()
            return [
                RunRecord(
                    id=r["id"],
                    sync=r["sync"],
                    started=r["started"],
                    ended=r["ended"],
                    mode=r["mode"],
                    full=bool(r["full"]),
                    status=r["status"],
                    counts=json.loads(r["counts"]) if r["counts"] else self.ledger_counts(r["id"]),
                    exit_status=r["exit_status"],
                    error=r["error"],
                )
                for r in rows
            ]

    # -- row state ------------------------------------------------------------------------------------------------
    def row_states(self, match_keys: Sequence[str]) -> dict[str, RowState]:
        out: dict[str, RowState] = {}
        with self.engine.connect() as db:
            for part in _chunks(list(dict.fromkeys(match_keys))):
                query = sa.select(_rows.c.match_key, _rows.c.hash, _rows.c.dataverse_id).where(
                    _rows.c.sync == self.sync, _rows.c.match_key.in_(part)
                )
                for key, hash_, id_ in db.execute(query):
                    out[key] = RowState(hash_, id_)
        return out

    def pending_ids(self, match_keys: Sequence[str]) -> dict[str, str]:
        """Client ids of creates an earlier run intended and never confirmed: a resend reuses them, so a row that
        landed unseen is found (``already_present``) instead of created twice."""
        out: dict[str, str] = {}
        with self.engine.connect() as db:
            for part in _chunks(list(dict.fromkeys(match_keys))):
                query = (
                    sa.select(_intents.c.match_key, _intents.c.client_id)
                    .where(
                        _intents.c.sync == self.sync,
                        _intents.c.state == "pending",
                        _intents.c.action == "create",
                        _intents.c.match_key.in_(part),
                    )
                    .order_by(_intents.c.run)
                )
                for key, client_id in db.execute(query):
                    if client_id:
                        out[key] = client_id
        return out

    # -- intents and outcomes -------------------------------------------------------------------------------------
    def record_intents(self, run: int, chunk: int, intents: Sequence[Intent]) -> None:
        """Committed before the chunk is sent."""
        if not intents:
            return
        with self.engine.begin() as db:
            db.execute(
                _intents.insert(),
                [
                    {
                        "run": run,
                        "source_index": i.source_index,
                        "sync": self.sync,
                        "chunk": chunk,
                        "match_key": i.match_key,
                        "action": i.action,
                        "client_id": i.client_id,
                        "state": "pending",
                    }
                    for i in intents
                ],
            )

    def commit_outcomes(
        self,
        run: int,
        ledger: Sequence[LedgerRow],
        confirmed: Mapping[str, tuple[str, str | None]],
        failed_keys: Iterable[str] = (),
        *,
        hook: Any = None,
    ) -> None:
        """One transaction: the ledger rows, the confirmed rows' hash and id, and the pending intents of those keys
        confirmed (this run's and any an interrupted run left); other intents stay pending, their ids reusable.
        ``failed_keys`` lose their hash, so the next run resends them.
        ``hook`` (tests) is called between the ledger insert and the rest: a crash there rolls everything back."""
        with self.engine.begin() as db:
            if ledger:
                db.execute(_ledger.insert(), [{"run": run, **row.to_dict()} for row in ledger])
            if hook is not None:
                hook("mid_commit")
            self._confirm_rows(db, run, confirmed)
            self._forget_hashes(db, list(failed_keys))
            for part in _chunks(list(confirmed)):
                db.execute(
                    _intents.update()
                    .where(_intents.c.sync == self.sync, _intents.c.state == "pending", _intents.c.match_key.in_(part))
                    .values(state="confirmed")
                )

    def _confirm_rows(self, db: SAConnection, run: int, confirmed: Mapping[str, tuple[str, str | None]]) -> None:
        if not confirmed:
            return
        keys = list(confirmed)
        existing: set[str] = set()
        for part in _chunks(keys):
            existing |= set(
                db.execute(
                    sa.select(_rows.c.match_key).where(_rows.c.sync == self.sync, _rows.c.match_key.in_(part))
                ).scalars()
            )
        new = [
            {"sync": self.sync, "match_key": k, "hash": h, "dataverse_id": i, "last_run": run}
            for k, (h, i) in confirmed.items()
            if k not in existing
        ]
        if new:
            db.execute(_rows.insert(), new)
        old = [{"k": k, "h": h, "i": i, "r": run} for k, (h, i) in confirmed.items() if k in existing]
        if old:
            db.execute(
                _rows.update()
                .where(_rows.c.sync == self.sync, _rows.c.match_key == sa.bindparam("k"))
                .values(hash=sa.bindparam("h"), dataverse_id=sa.bindparam("i"), last_run=sa.bindparam("r")),
                old,
            )

    def _forget_hashes(self, db: SAConnection, keys: Sequence[str]) -> None:
        for part in _chunks(keys):
            db.execute(_rows.update().where(_rows.c.sync == self.sync, _rows.c.match_key.in_(part)).values(hash=None))

    # -- the ledger -----------------------------------------------------------------------------------------------
    def ledger(self, run: int) -> Iterator[LedgerRow]:
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(_ledger).where(_ledger.c.run == run).order_by(_ledger.c.source_index)
            ).mappings()
            for r in rows:
                yield LedgerRow(
                    source_index=r["source_index"],
                    match_key=r["match_key"],
                    outcome=r["outcome"],
                    dataverse_id=r["dataverse_id"],
                    duplicate_of=r["duplicate_of"],
                    code=r["code"],
                    message=r["message"],
                    request_id=r["request_id"],
                )

    def ledger_counts(self, run: int) -> dict[str, int]:
        with self.engine.connect() as db:
            query = (
                sa.select(_ledger.c.outcome, sa.func.count()).where(_ledger.c.run == run).group_by(_ledger.c.outcome)
            )
            return {outcome: int(n) for outcome, n in db.execute(query)}

    # -- a mirror's scope -----------------------------------------------------------------------------------------
    def tracked_rows(self) -> Iterator[tuple[str, str]]:
        """``(match key, Dataverse id)`` of every row this sync created or matched and still follows: a mirror's
        scope. Read in one pass; the caller keeps only the rows that left the source."""
        with self.engine.connect() as db:
            query = sa.select(_rows.c.match_key, _rows.c.dataverse_id).where(
                _rows.c.sync == self.sync, _rows.c.dataverse_id.is_not(None)
            )
            for key, id_ in db.execute(query):
                yield str(key), str(id_)

    def commit_removals(self, run: int, ledger: Sequence[LedgerRow], done_keys: Sequence[str]) -> None:
        """One transaction: the removals' ledger rows, the rows removed (deleted, deactivated, cleared) no longer
        followed, and their pending intents confirmed; a failed removal stays followed, so the next run retries it."""
        with self.engine.begin() as db:
            if ledger:
                db.execute(_ledger.insert(), [{"run": run, **row.to_dict()} for row in ledger])
            for part in _chunks(list(done_keys)):
                db.execute(_rows.delete().where(_rows.c.sync == self.sync, _rows.c.match_key.in_(part)))
                db.execute(
                    _intents.update()
                    .where(_intents.c.sync == self.sync, _intents.c.state == "pending", _intents.c.match_key.in_(part))
                    .values(state="confirmed")
                )

    def pending_intents(self, run: int | None = None) -> list[Intent]:
        with self.engine.connect() as db:
            query = sa.select(_intents).where(_intents.c.sync == self.sync, _intents.c.state == "pending")
            if run is not None:
                query = query.where(_intents.c.run == run)
            return [
                Intent(r["source_index"], r["match_key"], r["action"], r["client_id"])
                for r in db.execute(query).mappings()
            ]
