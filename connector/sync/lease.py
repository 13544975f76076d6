"""The scheduler's lock: a lease (holder, expiry) in a table of the state store, so two schedulers sharing a store
cannot both run, whether they are two processes on one machine or two machines on one PostgreSQL store.

Why a lease and not a lock file or a held database lock: a file lock does not reach another machine, and a database
lock held for the hours a scheduler lives would block every other writer of the store; a row with an expiry is taken
and renewed in short transactions, and a scheduler that died (SIGKILL, power loss) leaves a lease that simply expires,
so nothing has to be cleaned up by hand. Taking it is one conditional UPDATE (ours already, or expired) or, when no
row exists, one INSERT whose primary key refuses the second of two schedulers racing for it.

Times are wall-clock seconds (``Clock.time``): two processes cannot compare monotonic clocks. A scheduler renews its
lease before every definition it runs and while it waits; one definition that runs longer than the lease's time to
live lets another scheduler take over (the default, 10 minutes, is well above a round of most folders; raise it with
``--lease`` otherwise).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from connector.clock import Clock
from connector.errors import ConnectorError
from connector.sync.state import create_schema

__all__ = ["Lease", "LeaseInfo", "ScheduleLocked"]

_md = sa.MetaData()
_leases = sa.Table(
    "sync_leases",
    _md,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)


class ScheduleLocked(ConnectorError):
    """Another scheduler holds the lease (exit 1: nothing was run)."""

    kind = "locked"


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    expires: float


class Lease:
    """A named lease in the store at ``url``; ``acquire`` takes or renews it, ``release`` gives it up."""

    def __init__(self, url: str, name: str, *, ttl_s: float, clock: Clock, holder: str | None = None) -> None:
        self.name, self.ttl_s, self.clock = name, ttl_s, clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.engine = sa.create_engine(url, future=True)
        create_schema(self.engine, _md)  # safe when schedulers start together on a fresh store

    def close(self) -> None:
        self.engine.dispose()

    def acquire(self) -> bool:
        """Take the lease (free, expired, or ours: then renewed) for ``ttl_s`` more seconds; False if another holds
        it. A store busy with the other scheduler's transaction counts as held by it."""
        now = self.clock.time()
        free = (_leases.c.name == self.name) & ((_leases.c.holder == self.holder) | (_leases.c.expires <= now))
        try:
            with self.engine.begin() as db:
                done = db.execute(_leases.update().where(free).values(holder=self.holder, expires=now + self.ttl_s))
                if done.rowcount == 1:
                    return True
                if self._info(db) is not None:
                    return False
                db.execute(_leases.insert().values(name=self.name, holder=self.holder, expires=now + self.ttl_s))
                return True
        except IntegrityError:  # the other scheduler inserted first
            return False
        except OperationalError as exc:
            if "locked" in str(exc).lower():  # SQLite: the other scheduler's transaction outlasted the busy timeout
                return False
            raise

    def renew(self) -> None:
        """Renew or raise: a scheduler that lost its lease must stop before running anything else."""
        if not self.acquire():
            raise self.refusal()

    def release(self) -> None:
        with self.engine.begin() as db:
            db.execute(_leases.delete().where((_leases.c.name == self.name) & (_leases.c.holder == self.holder)))

    def info(self) -> LeaseInfo | None:
        with self.engine.connect() as db:
            return self._info(db)

    def _info(self, db: sa.Connection) -> LeaseInfo | None:
        row = db.execute(sa.select(_leases.c.holder, _leases.c.expires).where(_leases.c.name == self.name)).first()
        return None if row is None else LeaseInfo(str(row[0]), float(row[1]))

    def refusal(self) -> ScheduleLocked:
        found = self.info()
        who = f"{found.holder}, for {max(0.0, found.expires - self.clock.time()):.0f} s more" if found else "another"
        return ScheduleLocked(
            f"another scheduler holds the lock {self.name!r} in this state store ({who}): let it run, stop it, or "
            "wait for its lease to expire"
        )
