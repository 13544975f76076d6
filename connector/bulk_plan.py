"""Planning a checked list of records into the writes of a bulk run, one chunk at a time, as the run takes them.

Why lazily: planning 20,000 records (keys typed, duplicates merged, client ids made) costs a sizeable part of a second
of CPU, and planned all before the first request, the service's allowed parallelism waits idle for it. So one cheap
pass finds which records name the same row (their identities), and each chunk is planned only when the governor takes
it, while the chunks before it are in flight. A record merged into an earlier one is planned with that one, in its
chunk, so the writes are exactly those of the whole list planned at once (:class:`connector.bulk_run.Merger`: the later
record's fields win). Records whose lookups only a read can resolve are planned in the first pass, so a failing read
still refuses the run before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.addressing import key_value
from connector.body import build_body
from connector.bulk_chunks import PlannedWrite, row_identity
from connector.bulk_run import Merger
from connector.metadata import TableMetadata
from connector.odata import CHOICE_TYPES, key_is_url_safe

if TYPE_CHECKING:
    from connector.bulk import WriteOptions
    from connector.connection import Connection

__all__ = ["ListPlan", "planned"]

_NONE: Mapping[str, Any] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types no lookup is given as: checked by identity first, since ``isinstance(v, Mapping)`` costs a microsecond."""


def planned(
    connection: Connection,
    meta: TableMetadata,
    mode: str,
    record: Mapping[str, Any],
    i: int,
    body: dict[str, Any],
    options: WriteOptions,
) -> PlannedWrite:
    """A checked record as a write: its key values typed, a lookup by a key that cannot be a URL found by a read (the
    checked body left it unbound), the caller's id."""
    fields = record.get("fields") or {}
    given = record.get("id") or fields.get(meta.primary_id)
    key = dict(record["key"]) if record.get("key") and given is None else None
    if _has_unbound_lookup(fields):
        fields = {
            c: v for c, v in fields.items() if c != meta.primary_id and not (mode == "upsert" and c in (key or {}))
        }
        path = f"$.records[{i}].fields"
        body = build_body(connection, meta, fields, path, for_create=mode != "update", impersonate=options.impersonate)
    if key:
        key = {c: key_value(connection, meta, c, v) for c, v in key.items()}
    return PlannedWrite(index=i, body=body, id=str(given).lower() if given else None, key=key)


def _has_unbound_lookup(fields: Mapping[str, Any]) -> bool:
    if _SCALARS.issuperset(map(type, fields.values())):  # most records: asked without a Python frame per value
        return False
    return any(type(v) not in _SCALARS and _unbound_lookup(v) for v in fields.values())


def _unbound_lookup(value: Any) -> bool:
    """A lookup given by an alternate key whose values cannot be written in a URL: only a read finds its GUID."""
    return (
        isinstance(value, Mapping)
        and value.get("id") is None
        and bool(value.get("key"))
        and (not key_is_url_safe(value["key"]) if isinstance(value["key"], Mapping) else False)
    )


class ListPlan:
    """The records of one list, checked (``bodies``: each sendable record's body), grouped by the row they name; its
    :meth:`parts` plan the writes chunk by chunk."""

    def __init__(
        self,
        connection: Connection,
        meta: TableMetadata,
        mode: str,
        records: Sequence[Mapping[str, Any]],
        bodies: Mapping[int, dict[str, Any]],
        options: WriteOptions,
    ) -> None:
        self.connection, self.meta, self.mode, self.records, self.bodies = connection, meta, mode, records, bodies
        self.options = options
        self.order: list[int] = []  # the first record of each row, in input order: one write each
        self.later: dict[int, list[int]] = {}  # the first record of a row -> the later records merged into it
        self.eager: dict[int, PlannedWrite] = {}  # records planned in this pass (their lookups needed a read)
        first: dict[tuple[Any, ...], int] = {}
        choice_keys: dict[tuple[str, ...], bool] = {}  # key columns -> whether one is a choice (asked once per set)
        pid, attributes = meta.primary_id, meta.attributes
        for i in bodies:  # a hot loop (every record of the list, before the first request): kept lean
            record = records[i]
            fields = record.get("fields") or _NONE
            if _has_unbound_lookup(fields):
                self.eager[i] = planned(connection, meta, mode, record, i, bodies[i], options)
            given = record.get("id") or fields.get(pid)
            key = record.get("key") if not given else None
            if given:  # the row a record names, as planned() and Merger will see it (ids lowered, keys typed)
                ident: tuple[Any, ...] | None = ("id", str(given).lower())
            elif not key:
                ident = None
            else:
                columns = tuple(key)
                choice = choice_keys.get(columns)
                if choice is None:
                    choice = choice_keys[columns] = any(attributes[c].type in CHOICE_TYPES for c in columns)
                if choice:  # a choice label becomes its value first
                    key = {c: key_value(connection, meta, c, v) for c, v in key.items()}
                ident = row_identity(None, key)
            at = first.setdefault(ident, i) if ident is not None else i
            if at == i:
                self.order.append(i)
            else:
                self.later.setdefault(at, []).append(i)

    def parts(self) -> Iterator[list[PlannedWrite]]:
        """The writes, ``chunk_size`` at a time, each part planned when it is taken."""
        size = self.options.chunk_size
        for start in range(0, len(self.order), size):
            merger = Merger(self.mode, self.options)
            for i in self.order[start : start + size]:
                for j in (i, *self.later.get(i, ())):
                    item = self.eager.pop(j, None)
                    if item is None:
                        item = planned(
                            self.connection, self.meta, self.mode, self.records[j], j, self.bodies[j], self.options
                        )
                    merger.add(item)
            yield merger.take()
