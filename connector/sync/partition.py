"""Partitioned syncs: ``d365 sync run DEF --partition K/N`` sends only the source rows whose match key hashes to K.

Why by the match key: a row always lands in the same partition whatever worker reads the source, so N workers (any
orchestrator: a shell loop, Kubernetes jobs, Airflow) split one load without talking to each other, and two partitions
never write the same Dataverse row. The hash is stable and documented: the first 8 bytes of SHA-256 of the match key
(UTF-8), big-endian, modulo N; partitions are numbered 0 to N-1. The match key is the mapper's: the row's key columns
as compact JSON with sorted names (``{"accountnumber":"N-00001"}``), or its id when matched by id.

Each partition keeps its own state under the sync name ``NAME#K/N`` in the definition's state store; with the store in
PostgreSQL (``state: postgresql+psycopg://...``, extra ``postgres``) any worker on any machine continues any
partition. A **partition lease** in the same store keeps two workers off one partition: a worker takes it for
``ttl_s``, renews it every third of that while it runs, and lets go at the end; a worker killed stops renewing, so
another may take the partition once the lease has expired (times are the store's clock: ``CURRENT_TIMESTAMP``).
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import InputError, InputProblem
from connector.sync.state import create_schema

__all__ = [
    "DEFAULT_LEASE_S",
    "Partition",
    "PartitionBusy",
    "create_lease_table",
    "held_lease",
    "partition_names",
    "partition_of",
    "partition_rows",
]

DEFAULT_LEASE_S = 30.0
"""How long a killed worker's partition stays taken before another worker may continue it."""

_md = sa.MetaData()
_leases = sa.Table(
    "sync_partition_leases",
    _md,
    sa.Column("sync", sa.String(220), primary_key=True),  # NAME#K/N
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),  # seconds since the epoch, on the store's clock
)


def partition_of(match_key: str, count: int) -> int:
    """The partition (0 to ``count`` - 1) of a match key; the same on every machine and Python version."""
    digest = hashlib.sha256(match_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Partition:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Partition:
        """``K/N`` with 0 <= K < N; a clear error naming the option otherwise."""
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if found is None or not 0 <= int(found.group(1)) < int(found.group(2)):
            raise InputError(
                [InputProblem("--partition", f"{text!r} is not K/N with 0 <= K < N, such as 0/4 (partitions 0 to 3)")]
            )
        return cls(int(found.group(1)), int(found.group(2)))

    def state_name(self, sync: str) -> str:
        """The sync name this partition's state is kept under."""
        return f"{sync}#{self.index}/{self.count}"

    def holds(self, match_key: str) -> bool:
        return partition_of(match_key, self.count) == self.index


def partition_rows(
    source: Iterable[list[dict[str, Any]]],
    match_key: Callable[[list[dict[str, Any]], int], list[str]],
    partition: Partition,
) -> Iterator[list[dict[str, Any]]]:
    """The source's groups, each keeping only this partition's rows; ``match_key(rows, start)`` gives each row's
    match key (the mapper's). Row numbers in the ledger count this partition's rows."""
    start = 0
    for rows in source:
        keys = match_key(rows, start)
        start += len(rows)
        kept = [row for row, key in zip(rows, keys, strict=True) if partition.holds(key)]
        if kept:
            yield kept


class PartitionBusy(InputError):
    """Another live worker holds the partition's lease."""


def _db_now(db: Any) -> float:
    if db.dialect.name == "sqlite":
        return float(db.execute(sa.text("SELECT CAST(strftime('%s','now') AS REAL)")).scalar_one())
    return float(db.execute(sa.text("SELECT EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)")).scalar_one())


def _take(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """One transaction: take the lease when nobody holds it, its holder is this worker, or it has expired."""
    with engine.begin() as db:
        now = _db_now(db)
        query = sa.select(_leases.c.holder, _leases.c.expires).where(_leases.c.sync == name).with_for_update()
        found = db.execute(query).first()
        if found is None:
            try:
                with db.begin_nested():
                    db.execute(_leases.insert().values(sync=name, holder=holder, expires=now + ttl_s))
            except sa.exc.IntegrityError:
                return False  # another worker inserted it first
            return True
        if found.holder != holder and found.expires > now:
            return False
        db.execute(_leases.update().where(_leases.c.sync == name).values(holder=holder, expires=now + ttl_s))
        return True


def create_lease_table(engine: Engine) -> None:
    """Create the lease table when missing (safe when workers start together on an empty store)."""
    create_schema(engine, _md)


@contextmanager
def held_lease(engine: Engine, name: str, ttl_s: float = DEFAULT_LEASE_S) -> Iterator[str]:
    """Hold the lease of partition state ``name`` while the block runs (renewed by a thread); raise
    :class:`PartitionBusy` when another worker holds it."""
    create_lease_table(engine)
    holder = uuid.uuid4().hex
    if not _take(engine, name, holder, ttl_s):
        raise PartitionBusy(
            [InputProblem("--partition", f"{name} is being run by another worker; its lease ends within {ttl_s:g} s")]
        )
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            _take(engine, name, holder, ttl_s)

    thread = threading.Thread(target=renew, name="d365-partition-lease", daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        stop.set()
        thread.join()
        with engine.begin() as db:
            db.execute(_leases.delete().where(_leases.c.sync == name, _leases.c.holder == holder))


def partition_names(engine: Engine, sync: str) -> list[str]:
    """The partition state names of ``sync`` found in the store (its runs), for ``d365 sync status``."""
    runs = sa.table("sync_runs", sa.column("sync"))
    with engine.connect() as db:
        query = sa.select(runs.c.sync).where(runs.c.sync.like(f"{sync}#%")).distinct()
        return sorted(db.execute(query).scalars(), key=lambda s: [int(x) for x in s.rsplit("#", 1)[1].split("/")])
