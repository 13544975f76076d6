"""Deduplication of webhook redeliveries: a bounded store of the delivery keys already handed on.

Why a module of its own: the runtime keeps one store per trigger configuration and imports this module, so it must not
import the runtime (or anything that does); it holds nothing but the stores.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from connector.policy import OperatorPolicy

__all__ = [
    "DEFAULT_DEDUPE_CAPACITY",
    "DedupeStore",
    "MemoryDedupeStore",
    "SqliteDedupeStore",
    "dedupe_store_for",
    "default_dedupe_path",
]

DEFAULT_DEDUPE_CAPACITY = 10_000


def default_dedupe_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``d365 webhook serve`` remembers deliveries unless told otherwise: ``$XDG_STATE_HOME/d365/
    webhook-dedupe.sqlite`` (``~/.local/state/d365/...`` when unset), so a replay after a restart is still refused.

    State, not configuration or cache (the XDG base directory spec): losing it lets old deliveries in again.
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "d365" / "webhook-dedupe.sqlite"


class DedupeStore(Protocol):
    """Remembers delivery keys; ``add`` is atomic and says whether the key is new."""

    def add(self, key: str) -> bool: ...

    def discard(self, key: str) -> None: ...

    def close(self) -> None: ...


class MemoryDedupeStore:
    """The last ``capacity`` keys in one process (oldest forgotten first); enough for one worker."""

    def __init__(self, capacity: int = DEFAULT_DEDUPE_CAPACITY) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return False
            self._keys[key] = None
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            return True

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def close(self) -> None:
        """Nothing to release; here so every store closes alike."""

    def __len__(self) -> int:
        return len(self._keys)


class SqliteDedupeStore:
    """Keys in a SQLite file shared by several worker processes; the primary key makes ``add`` atomic across them."""

    def __init__(self, path: str | Path, capacity: int = DEFAULT_DEDUPE_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")

    def add(self, key: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM seen").fetchone()[0]
                cur = self._db.execute("INSERT OR IGNORE INTO seen (key, n) VALUES (?, ?)", (key, n))
                added = cur.rowcount == 1
                if added:
                    self._db.execute("DELETE FROM seen WHERE n <= ?", (n - self.capacity,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return added

    def discard(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def close(self) -> None:
        self._db.close()


def dedupe_store_for(
    capacity: int | None = None, sqlite_path: str | None = None, policy: OperatorPolicy | None = None
) -> DedupeStore:
    """In memory without a path; a SQLite file (checked against the operator ``policy`` before it is opened, so a
    hosted trigger configuration cannot make the receiver create or overwrite a file outside the operator's folders)
    when several worker processes share one configuration or deliveries must be remembered across restarts."""
    size = capacity or DEFAULT_DEDUPE_CAPACITY
    if sqlite_path:
        (policy if policy is not None else OperatorPolicy.from_env()).check_path(
            Path(sqlite_path), "dedupe_sqlite_path"
        )
        return SqliteDedupeStore(sqlite_path, size)
    return MemoryDedupeStore(size)
