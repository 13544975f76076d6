"""Workers starting together on an empty store all create its schema at once: partition workers on a fresh PostgreSQL
database (the state tables and the partition lease table), schedulers on a fresh SQLite file (the scheduler's lease).
Each thread opens its engine and connects first, then waits at a barrier, so the schema creations start together;
every round uses a new, empty database, and enough rounds run for the race to show without the fix."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from connector.clock import FakeClock
from connector.sync.lease import Lease
from connector.sync.partition import create_lease_table
from connector.sync.state import StateStore

THREADS, ROUNDS = 8, 12


def race(opens: list[Callable[[], None]]) -> list[BaseException]:
    """Run every ``opens`` at once, after a barrier; the errors the threads raised."""
    barrier = threading.Barrier(len(opens), timeout=60)  # a thread failing before it must not hang the others
    errors: list[BaseException] = []

    def run(open_: Callable[[], None]) -> None:
        try:
            barrier.wait()
            open_()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(o,)) for o in opens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _worker(engine: sa.Engine, name: str) -> Callable[[], None]:
    """What a partition worker does first: open its state and make sure the lease table exists."""

    def open_() -> None:
        StateStore("", name, engine=engine)
        create_lease_table(engine)

    return open_


def test_partition_workers_create_the_schema_of_an_empty_postgresql_together(postgres_url: str) -> None:
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    base = postgres_url.rsplit("/", 1)[0]
    for attempt in range(ROUNDS):
        database = f"race_{attempt}_{threading.get_ident()}"
        with admin.connect() as db:
            db.execute(sa.text(f"CREATE DATABASE {database}"))
        engines = [sa.create_engine(f"{base}/{database}") for _ in range(THREADS)]
        for engine in engines:
            engine.connect().close()  # connected before the barrier: the race is the schema's, not the connections'
        errors = race([_worker(engine, f"sync#{k}/{THREADS}") for k, engine in enumerate(engines)])
        for engine in engines:
            engine.dispose()
        assert errors == [], (attempt, errors[0])
        with admin.connect() as db:
            db.execute(sa.text(f"DROP DATABASE {database}"))
    admin.dispose()


def test_schedulers_and_workers_create_the_schema_of_a_fresh_sqlite_store_together(tmp_path: Path) -> None:
    for attempt in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'store-{attempt}.sqlite'}"

        def scheduler(holder: str, url: str = url) -> Callable[[], None]:
            return lambda: Lease(url, "run-all", ttl_s=600, clock=FakeClock(), holder=holder).close()

        def worker(name: str, url: str = url) -> Callable[[], None]:
            return lambda: StateStore(url, name).close()

        opens = [scheduler(f"s{k}") for k in range(THREADS // 2)] + [worker(f"w{k}") for k in range(THREADS // 2)]
        errors = race(opens)
        assert errors == [], (attempt, errors[0])
