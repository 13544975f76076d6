"""SQLite storage: one real table per Dataverse table, one real column per attribute.

Why real columns: filters and ordering compile to SQL, so they run at SQLite speed and with its semantics; strings use
``COLLATE NOCASE`` because Dataverse compares strings case-insensitively; datetimes are stored as canonical UTC text
(``YYYY-MM-DDTHH:MM:SSZ``) so text comparison equals time comparison. Lookups are two columns: the GUID and the target
table (polymorphic lookups need it to answer ``lookuplogicalname``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .model import Attribute, Key, Relationship, Table

SQL_TYPES = {
    "String": "TEXT COLLATE NOCASE",
    "Memo": "TEXT COLLATE NOCASE",
    "EntityName": "TEXT COLLATE NOCASE",
    "Uniqueidentifier": "TEXT COLLATE NOCASE",
    "Integer": "INTEGER",
    "BigInt": "INTEGER",
    "Picklist": "INTEGER",
    "State": "INTEGER",
    "Status": "INTEGER",
    "Boolean": "INTEGER",
    "Money": "REAL",
    "Decimal": "REAL",
    "Double": "REAL",
    "DateTime": "TEXT",
    "File": "TEXT COLLATE NOCASE",  # the file id; bytes live in _emulator_files (files.py)
    "Image": "TEXT COLLATE NOCASE",
}


def q(name: str) -> str:
    """Quote an identifier for SQLite (names come from metadata, never from users, but quote anyway)."""
    return '"' + name.replace('"', '""') + '"'


def type_col(attr: str) -> str:
    """The companion column holding a lookup's target table."""
    return f"{attr}__type"


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


def _dv_match(pattern: str | None, value: str | None) -> int | None:
    """SQLite function behind contains/startswith/endswith: ``pattern`` is a regex from odata.wildcard_to_regex."""
    if value is None or pattern is None:
        return None
    return 1 if _compiled(pattern).fullmatch(value) else 0


def _build_statement(kind: str, table: str, cols: tuple[str, ...]) -> str:
    """SQL text for ``Store._statement``: ``cols`` end with the primary id except for an insert."""
    if kind == "insert":
        return f"INSERT INTO {q(table)} ({', '.join(map(q, cols))}) VALUES ({', '.join('?' * len(cols))})"
    *named, pk = cols
    if kind in ("*", "1"):
        return f"SELECT {kind} FROM {q(table)} WHERE {q(pk)} = ?"
    if kind == "update":
        return f"UPDATE {q(table)} SET {', '.join(f'{q(c)} = ?' for c in named)} WHERE {q(pk)} = ?"
    conds = [f"{q(c)} IS ?" for c in named] + ([f"{q(pk)} <> ?"] if kind == "find_except" else [])
    return f"SELECT {q(pk)} FROM {q(table)} WHERE {' AND '.join(conds)} LIMIT 2"


class Store:
    """The emulator's data: rows in SQLite, alternate keys and a global row-version counter."""

    def __init__(
        self,
        tables: dict[str, Table],
        relationships: list[Relationship],
        db_path: str | None,
        clock: Callable[[], float],
        key_activation_s: float,
    ) -> None:
        self.tables = tables
        self.relationships = relationships
        self.clock = clock
        self.key_activation_s = key_activation_s
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(db_path or ":memory:", check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL" if db_path else "PRAGMA journal_mode=MEMORY")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.create_function("dv_match", 2, _dv_match, deterministic=True)
        self.keys: dict[str, list[Key]] = {}
        self._activated: set[str] = set()
        #: SQL text by (statement kind, table, columns): a bulk message writes thousands of rows with the same few
        #: statements, and quoting every column name again for each row cost more than SQLite's own work
        self._sql: dict[tuple[str, str, tuple[str, ...]], str] = {}
        #: the row-version counter while a transaction runs, written back before anything can see or keep it
        #: (``flush_version``): a bulk message takes a version per row, and one statement per row cost the most
        self._version: int | None = None
        self._create_schema()

    # -- schema -----------------------------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS _emulator_meta (k TEXT PRIMARY KEY, v TEXT)")
        c.execute("CREATE TABLE IF NOT EXISTS _emulator_deleted (tbl TEXT, id TEXT, version INTEGER)")
        c.execute(
            "CREATE TABLE IF NOT EXISTS _emulator_keys (metadataid TEXT PRIMARY KEY, entity TEXT, schemaname TEXT,"
            " attributes TEXT, created REAL, failed INTEGER, displayname TEXT)"
        )
        for t in self.tables.values():
            cols = []
            for a in t.attributes.values():
                if a.is_primary_id:
                    cols.append(f"{q(a.name)} TEXT COLLATE NOCASE PRIMARY KEY")
                elif a.is_lookup:
                    cols.append(f"{q(a.name)} TEXT COLLATE NOCASE")
                    cols.append(f"{q(type_col(a.name))} TEXT")
                else:
                    cols.append(f"{q(a.name)} {SQL_TYPES[a.type]}")
            c.execute(f"CREATE TABLE IF NOT EXISTS {q(t.logical_name)} ({', '.join(cols)})")
            for a in t.attributes.values():
                if a.is_lookup:
                    c.execute(
                        f"CREATE INDEX IF NOT EXISTS {q('ix_' + t.logical_name + '_' + a.name)} "
                        f"ON {q(t.logical_name)} ({q(a.name)})"
                    )
        for mid, entity, schema, attrs, created, failed, display in c.execute("SELECT * FROM _emulator_keys"):
            self.keys.setdefault(entity, []).append(
                Key(schema, entity, json.loads(attrs), created, mid, bool(failed), display)
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write request = one transaction (deep inserts and deferred binds are all-or-nothing)."""
        with self.lock:
            if self.conn.in_transaction:
                yield
                return
            self.conn.execute("BEGIN")
            try:
                yield
                self.flush_version()
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._version = None
                raise
            self.conn.execute("COMMIT")

    def savepoint(self, name: str) -> None:
        """``SAVEPOINT name``, with the row-version counter written first so that rolling back to it restores it."""
        self.flush_version()
        self.conn.execute(f"SAVEPOINT {name}")

    def release(self, name: str, rollback: bool) -> None:
        """End a savepoint: ``ROLLBACK TO`` it (the counter reverts with it) when asked, then ``RELEASE``."""
        if rollback:
            self.conn.execute(f"ROLLBACK TO {name}")
            self._version = None
        self.flush_version()
        self.conn.execute(f"RELEASE {name}")

    def next_version(self) -> int:
        """Dataverse row versions are one counter per organization; ETags are ``W/"<n>"``. Inside a transaction the
        counter is kept in memory and written back at its end (every written row takes a version)."""
        if self.conn.in_transaction:
            if self._version is None:
                row = self.conn.execute("SELECT v FROM _emulator_meta WHERE k='version'").fetchone()
                self._version = int(row[0]) if row else 999
            self._version += 1
            return self._version
        row = self.conn.execute(
            "UPDATE _emulator_meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k='version' RETURNING v"
        ).fetchone()
        if row is not None:
            return int(row[0])
        self.conn.execute("INSERT INTO _emulator_meta (k, v) VALUES ('version', '1000')")
        return 1000

    def flush_version(self) -> None:
        """Write the in-memory row-version counter back (before a commit, a savepoint, or a read of it)."""
        if self._version is not None:
            self.conn.execute(
                "INSERT OR REPLACE INTO _emulator_meta (k, v) VALUES ('version', ?)", (str(self._version),)
            )
            self._version = None

    def meta_get(self, k: str) -> str | None:
        """A value from the emulator's own key/value table."""
        if k == "version":
            self.flush_version()
        row = self.conn.execute("SELECT v FROM _emulator_meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else None

    def meta_set(self, k: str, v: str) -> None:
        """Store a value in the emulator's own key/value table."""
        self.conn.execute("INSERT OR REPLACE INTO _emulator_meta (k, v) VALUES (?, ?)", (k, v))

    # -- rows -------------------------------------------------------------------------------------------------------

    def _statement(self, kind: str, table: str, cols: tuple[str, ...]) -> str:
        """The SQL text of a ``kind`` statement on ``table`` naming ``cols`` (its primary id last, where it has one:
        a table can be deleted and created again), built once. The cache is emptied when it grows large (each set
        of columns a client sends is a key)."""
        key = (kind, table, cols)
        sql = self._sql.get(key)
        if sql is None:
            if len(self._sql) >= 4096:
                self._sql.clear()
            sql = self._sql[key] = _build_statement(kind, table, cols)
        return sql

    def _by_id(self, kind: str, table: str) -> str:
        """``SELECT * ... WHERE <primary id> = ?`` (kind ``*``) or ``SELECT 1 ...`` (kind ``1``)."""
        return self._statement(kind, table, (self.tables[table].primary_id,))

    def get(self, table: str, rid: str) -> dict[str, Any] | None:
        """One row by primary key, as a dict of SQL columns, or None."""
        cur = self.conn.execute(self._by_id("*", table), (rid,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def exists(self, table: str, rid: str) -> bool:
        """Whether a row with this primary key exists."""
        return self.conn.execute(self._by_id("1", table), (rid,)).fetchone() is not None

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Insert one row (a dict of SQL columns)."""
        self.conn.execute(self._statement("insert", table, tuple(row)), list(row.values()))

    def insert_many(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Bulk insert for the admin seed: one transaction, executemany per column set."""
        n = 0
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                groups: dict[tuple[str, ...], list[list[Any]]] = {}
                for row in rows:
                    cols = tuple(row)
                    groups.setdefault(cols, []).append([row[c] for c in cols])
                    n += 1
                for cols, values in groups.items():
                    sql = f"INSERT INTO {q(table)} ({', '.join(map(q, cols))}) VALUES ({', '.join('?' * len(cols))})"
                    self.conn.executemany(sql, values)
                self.flush_version()
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._version = None
                raise
        return n

    def update(self, table: str, rid: str, changes: dict[str, Any]) -> None:
        """Update columns of one row."""
        if not changes:
            return
        sql = self._statement("update", table, (*changes, self.tables[table].primary_id))
        self.conn.execute(sql, [*changes.values(), rid])

    def delete(self, table: str, rid: str) -> None:
        """Delete one row, keeping its id with a fresh version for change tracking's delta reads."""
        t = self.tables[table]
        self.conn.execute(f"DELETE FROM {q(table)} WHERE {q(t.primary_id)} = ?", (rid,))
        self.conn.execute("INSERT INTO _emulator_deleted VALUES (?, ?, ?)", (table, rid, self.next_version()))

    def find_ids(self, table: str, values: dict[str, Any], exclude: str | None = None) -> list[str]:
        """Ids of rows whose columns equal ``values`` (used for alternate keys)."""
        sql = self._statement("find_except" if exclude else "find", table, (*values, self.tables[table].primary_id))
        params = [*values.values(), exclude] if exclude else list(values.values())
        return [r[0] for r in self.conn.execute(sql, params)]

    def find_first_ids(self, table: str, lookups: list[dict[str, Any]]) -> list[str | None]:
        """For each lookup, what ``find_ids(table, values)[0]`` answers (or None), in a few statements instead of one
        per lookup: the lookups join the table as a ``VALUES`` list, each compared with ``IS`` as ``find_ids`` does, so
        the column's collation and affinity apply alike and its index serves each row."""
        out: list[str | None] = [None] * len(lookups)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, values in enumerate(lookups):
            groups.setdefault(tuple(values), []).append(i)
        pk = q(self.tables[table].primary_id)
        for cols, indexes in groups.items():
            on = " AND ".join(f"t.{q(c)} IS v.column{n + 2}" for n, c in enumerate(cols))
            row_sql = f"({', '.join('?' * (len(cols) + 1))})"
            for start in range(0, len(indexes), 500):
                part = indexes[start : start + 500]
                params = [p for i in part for p in (i, *lookups[i].values())]
                rows = ", ".join([row_sql] * len(part))
                sql = f"SELECT v.column1, t.{pk} FROM (VALUES {rows}) AS v JOIN {q(table)} AS t ON {on}"
                for i, rid in self.conn.execute(sql, params):
                    if out[i] is None:
                        out[i] = rid
        return out

    def query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        """Run a SELECT and return rows as dicts."""
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def scalar(self, sql: str, params: list[Any]) -> Any:
        """First column of the first row, or None."""
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def reset(self) -> None:
        """Drop all rows and keys (admin reset); metadata stays."""
        with self.lock:
            for t in self.tables:
                self.conn.execute(f"DELETE FROM {q(t)}")
            self.conn.execute("DELETE FROM _emulator_keys")
            self.conn.execute("DELETE FROM _emulator_deleted")
            self.keys.clear()

    # -- alternate keys ---------------------------------------------------------------------------------------------

    def add_key(self, key: Key) -> None:
        """Register an alternate key (persisted with ``--db``)."""
        self.keys.setdefault(key.entity, []).append(key)
        self.conn.execute(
            "INSERT INTO _emulator_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key.metadata_id,
                key.entity,
                key.schema_name,
                json.dumps(key.attributes),
                key.created_at,
                int(key.failed),
                key.display_name,
            ),
        )
        # Dataverse backs every alternate key with an index; without one, key lookups and the uniqueness check scan
        # the table and a 1,000-row UpsertMultiple by key grows quadratically (not unique: a Failed key has duplicates)
        cols = ", ".join(q(a) for a in key.attributes)
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {q('ix_key_' + key.metadata_id)} ON {q(key.entity)} ({cols})")

    def remove_key(self, key: Key) -> None:
        """Delete an alternate key definition."""
        self.keys[key.entity].remove(key)
        self.conn.execute(f"DROP INDEX IF EXISTS {q('ix_key_' + key.metadata_id)}")
        self.conn.execute("DELETE FROM _emulator_keys WHERE metadataid = ?", (key.metadata_id,))

    def has_duplicates(self, table: str, attrs: list[str]) -> bool:
        """Whether two rows share non-null values for all ``attrs`` (a key would fail)."""
        cols = ", ".join(q(a) for a in attrs)
        nn = " AND ".join(f"{q(a)} IS NOT NULL" for a in attrs)
        sql = f"SELECT 1 FROM {q(table)} WHERE {nn} GROUP BY {cols} HAVING COUNT(*) > 1 LIMIT 1"
        return self.conn.execute(sql).fetchone() is not None

    def key_status(self, key: Key) -> str:
        """``Pending`` for the first half of ``key_activation_s`` on the injected clock, ``InProgress`` for the second,
        then ``Active`` or ``Failed``."""
        if key.failed:
            return "Failed"
        age = self.clock() - key.created_at
        if age < self.key_activation_s / 2:
            return "Pending"
        if age < self.key_activation_s:
            return "InProgress"  # the index is being built (EntityKeyIndexStatus between Pending and Active)
        if key.metadata_id not in self._activated:
            # the index is built now: rows written while the key was pending can still make it fail
            self._activated.add(key.metadata_id)
            if self.has_duplicates(key.entity, key.attributes):
                key.failed = True
                self.conn.execute("UPDATE _emulator_keys SET failed = 1 WHERE metadataid = ?", (key.metadata_id,))
                return "Failed"
        return "Active"

    def active_keys(self, table: str) -> list[Key]:
        """Alternate keys usable for lookups and enforced on writes."""
        return [k for k in self.keys.get(table, []) if self.key_status(k) == "Active"]

    def attribute(self, table: str, name: str) -> Attribute | None:
        """Attribute metadata by name, or None."""
        return self.tables[table].attributes.get(name)
