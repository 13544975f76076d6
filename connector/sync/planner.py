"""What each mapped row becomes: unchanged, a create (with the id it will carry), an update by id, skipped or failed.

Why every write is planned as a create with an id or an update by id, whatever the match (alternate key, GUID column,
non-key column): the planner reads which rows exist first (``In`` reads packed to the URL's size, in parallel), so
every create carries a client-generated id that is committed as an intent before the chunk is sent. A resumed run
reuses the id of an unconfirmed create: if the row landed unseen, the read finds it under that id and the resend is
confirmed by ``write_entities`` as ``already_present``; nothing is created twice, whatever the match. The same read
answers the modes' questions (``insert`` skips existing rows, ``update`` reports missing ones) and refuses ambiguous
matches on a non-key column.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from connector.addressing import key_value
from connector.bulk_reads import read_parts
from connector.ids import new_id
from connector.odata import build_query_string, filter_column, format_literal, quote_string

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata
    from connector.sync.mapping import MappedRow

__all__ = ["Decision", "LastRows", "MatchRule", "decide", "existing_rows", "find_rows", "missing_lookups"]


@dataclass(frozen=True)
class MatchRule:
    """How rows are matched, from the definition's ``match`` and ``mode``."""

    kind: Literal["key", "id", "column"]
    mode: Literal["upsert", "insert", "update"] = "upsert"
    id_insert: bool = False
    column: str | None = None  # kind "column": the Dataverse column matched by query
    stamp: str | None = None  # kind "column": the key column written so that later runs match by key


@dataclass
class Decision:
    row: MappedRow
    action: Literal["create", "update", "skipped", "failed", "skipped_by_filter"]
    id: str | None = None
    record: dict[str, Any] = field(default_factory=dict)  # the write_entities record
    message: str | None = None
    code: str | None = None


def _norm(value: Any) -> Any:
    """Values compared as Dataverse compares them: text case-insensitively, 1.0 as 1."""
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _probe(row: MappedRow, rule: MatchRule) -> dict[str, Any] | None:
    """The column values a row is looked up by; None when it has none (it is then planned as missing)."""
    if rule.kind == "id":
        return {"@id": row.row_id} if row.row_id else None
    if rule.kind == "column":
        assert rule.column is not None
        value = row.fields.get(rule.column, (row.key or {}).get(rule.column))
        return None if value is None else {rule.column: value}
    return dict(row.key) if row.key else None


def existing_rows(
    connection: Connection, meta: TableMetadata, rows: Sequence[MappedRow], rule: MatchRule
) -> tuple[dict[str, list[str]], int]:
    """The ids of the rows in Dataverse matching each row (by match key), and the number of reads it took."""
    probed = [(row, p) for row in rows if (p := _probe(row, rule)) is not None]
    found, reads = find_rows(connection, meta, [p for _, p in probed])
    return {row.match_key: ids for (row, _), ids in zip(probed, found, strict=True)}, reads


def find_rows(
    connection: Connection, meta: TableMetadata, probes: Sequence[Mapping[str, Any]]
) -> tuple[list[list[str]], int]:
    """For each probe (column values; ``@id`` for the row's id), the ids of the rows holding them; reads taken.

    Why ``In`` reads packed to the URL's size, run in parallel: one ``$filter`` per 40 rows, one after the other, left a
    first sync waiting on its reads. Probes on one column become ``In`` reads of as many values as
    :func:`connector.bulk_reads.read_parts` packs into a URL (the bulk writer's pre-reads do the same); probes on
    several columns become ``or`` of ``and`` clauses packed the same way. The reads run on the governor's threads
    (within the run's cap); memory stays bounded by the caller's group of probes.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, probe in enumerate(probes):
        groups.setdefault(tuple(sorted(probe)), []).append(i)
    reads: list[tuple[tuple[str, ...], str, list[str]]] = []
    for columns, indices in groups.items():
        select = [meta.primary_id, *(filter_column(c, meta.types[c]) for c in columns if c != "@id")]
        reads += [(columns, f, select) for f in _filters(connection, meta, columns, [probes[i] for i in indices])]

    def read(item: tuple[tuple[str, ...], str, list[str]]) -> list[dict[str, Any]]:
        return _get_all(connection, meta, item[1], item[2])

    answers = [read(reads[0])] if len(reads) == 1 else [o.result() for o in connection.governor.map(read, reads)]
    index: dict[tuple[str, ...], dict[tuple[Any, ...], list[str]]] = {}
    for (columns, _, _), rows in zip(reads, answers, strict=True):
        found = index.setdefault(columns, {})
        for r in rows:
            ids = found.setdefault(tuple(_norm(_read_value(r, meta, c)) for c in columns), [])
            if str(r[meta.primary_id]) not in ids:  # a row two reads returned (values equal but for case) counts once
                ids.append(str(r[meta.primary_id]))
    out = []
    for probe in probes:
        columns = tuple(sorted(probe))
        wanted = tuple(_norm(_typed(connection, meta, c, probe[c])) for c in columns)
        out.append(list(index.get(columns, {}).get(wanted, [])))
    return out, len(reads)


_IN_TYPES = frozenset({"String", "Memo", "Uniqueidentifier", "Integer", "BigInt", "Picklist", "Lookup"})
"""Column types whose values an ``In`` read takes as text (the others, dates and decimals, are compared with ``eq``)."""


def _filters(
    connection: Connection, meta: TableMetadata, columns: tuple[str, ...], probes: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The ``$filter`` of each read finding ``probes`` (all on ``columns``), packed to the URL's size."""
    if len(columns) == 1 and (columns[0] == "@id" or meta.types[columns[0]] in _IN_TYPES):
        (column,) = columns
        prop = meta.primary_id if column == "@id" else filter_column(column, meta.types[column])
        literals = dict.fromkeys(quote_string(str(_typed(connection, meta, column, p[column]))) for p in probes)
        parts = read_parts(list(literals))
        return [f"Microsoft.Dynamics.CRM.In(PropertyName='{prop}',PropertyValues=[{','.join(x)}])" for x in parts]
    clauses = dict.fromkeys(
        "(" + " and ".join(_term(connection, meta, c, v) for c, v in sorted(p.items())) + ")" for p in probes
    )
    return [" or ".join(part) for part in read_parts(list(clauses))]


def _typed(connection: Connection, meta: TableMetadata, column: str, value: Any) -> Any:
    return value if column == "@id" else key_value(connection, meta, column, value)


def missing_lookups(connection: Connection, rows: Sequence[MappedRow]) -> tuple[dict[int, list[str]], int]:
    """Lookups naming a related row that does not exist, by source index (a dry run's check; a real run's write
    fails such a row by itself); and the reads it took, one per related table and few dozen values."""
    wanted: dict[str, dict[str, tuple[dict[str, Any], list[tuple[int, str]]]]] = {}
    for row in rows:
        for column, value in {**row.fields, **row.create_only}.items():
            if isinstance(value, Mapping) and isinstance(value.get("table"), str):
                probe = {"@id": value["id"]} if value.get("id") else dict(value.get("key") or {})
                if probe:
                    text = json.dumps(probe, sort_keys=True, default=str).casefold()
                    entry = wanted.setdefault(value["table"], {}).setdefault(text, (probe, []))
                    entry[1].append((row.source_index, column))
    out: dict[int, list[str]] = {}
    reads = 0
    for table, probes in wanted.items():
        meta = connection.metadata.table(table)
        items = list(probes.values())
        found, n = find_rows(connection, meta, [p for p, _ in items])
        reads += n
        for (probe, users), ids in zip(items, found, strict=True):
            if not ids:
                shown = ", ".join(f"{c}={v!r}" for c, v in probe.items())
                for index, column in users:
                    out.setdefault(index, []).append(f"{column}: no {table} row with {shown}")
    return out, reads


def _term(connection: Connection, meta: TableMetadata, column: str, value: Any) -> str:
    if column == "@id":
        return f"{meta.primary_id} eq {format_literal(value, 'Uniqueidentifier')}"
    typ = meta.types[column]
    return f"{filter_column(column, typ)} eq {format_literal(key_value(connection, meta, column, value), typ)}"


def _read_value(row: Mapping[str, Any], meta: TableMetadata, column: str) -> Any:
    if column == "@id":
        return str(row.get(meta.primary_id, "")).lower()
    return row.get(filter_column(column, meta.types[column]))


def _get_all(connection: Connection, meta: TableMetadata, filter_: str, select: Sequence[str]) -> list[dict[str, Any]]:
    query = build_query_string({"$select": ",".join(dict.fromkeys(select)), "$filter": filter_})
    out: list[dict[str, Any]] = []
    url: str | None = f"{meta.entity_set}?{query}"
    while url:
        body = connection.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        out += [r for r in body.get("value", []) if isinstance(r, dict)] if isinstance(body, dict) else []
        url = body.get("@odata.nextLink") if isinstance(body, dict) else None
    return out


def decide(
    row: MappedRow,
    rule: MatchRule,
    table: str,
    found: Sequence[str],
    pending_id: str | None,
) -> Decision:
    """One row's action from what the read found and the id an interrupted run intended for it."""
    if _probe(row, rule) is None:
        what = {"id": "no id", "column": f"no value for {rule.column}", "key": "no key value"}[rule.kind]
        return Decision(row, "failed", message=f"{what}: the row cannot be matched")
    if len(found) > 1:
        return Decision(
            row,
            "failed",
            message=f"ambiguous: {len(found)} rows of {table} match {row.match_key}; matching refused (give the rows "
            "distinct values or match by an alternate key)",
        )
    key_fields = dict(row.key or {}) if rule.kind in ("key", "column") else {}
    if found:
        existing = found[0].lower()
        if rule.mode == "insert" and existing != (pending_id or "").lower():
            return Decision(row, "skipped", existing, message="the row exists; mode insert never updates")
        # found under the id an interrupted run intended: that run created it; this one writes the current values
        fields = dict(row.fields)
        if rule.kind == "column":
            fields.update(key_fields)  # the stamp: later runs match by key
        else:
            for column in key_fields:
                fields.pop(column, None)
        return Decision(row, "update", existing, {"id": existing, "fields": fields})
    if rule.mode == "update":
        return Decision(row, "skipped", message=f"no row of {table} matches; mode update never creates")
    if rule.kind == "id" and not rule.id_insert:
        return Decision(
            row,
            "skipped",
            message=f"no row of {table} has id {row.row_id}; id_insert is false: ids are matched, "
            "never created (set id_insert: true to create rows with these ids)",
        )
    new = (row.row_id if rule.kind == "id" else pending_id) or new_id()
    return Decision(
        row, "create", new.lower(), {"id": new.lower(), "fields": {**row.fields, **row.create_only, **key_fields}}
    )


class LastRows:
    """Which row of each match key comes last in the source ("the last row by source order wins"), from the run's
    first pass.

    Why a scratch database rather than a dict of every key: the dict held some 160 bytes a row for the whole run (16 MB
    at 100,000 rows, most of what a run's memory grew by with its size). SQLite's private temporary database (an empty
    file name) keeps its pages in a bounded cache and spills the rest to a file no other process can open, deleted
    when it is closed; only the keys several rows share come back into memory."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute("CREATE TABLE keys (match_key TEXT NOT NULL, source_index INTEGER NOT NULL)")

    def add(self, rows: Iterable[MappedRow]) -> None:
        """Rows with problems are left out: they are never written, so they never win."""
        batch = [(row.match_key, row.source_index) for row in rows if not row.problems]
        self._db.executemany("INSERT INTO keys VALUES (?, ?)", batch)

    def duplicated(self) -> dict[str, int]:
        """The last source position of each match key more than one row carries."""
        query = "SELECT match_key, MAX(source_index) FROM keys GROUP BY match_key HAVING COUNT(*) > 1"
        return {str(key): int(index) for key, index in self._db.execute(query)}

    def close(self) -> None:
        self._db.close()
