"""Mirror: after the upsert, the rows this sync follows that left the source are removed, deactivated or cleared.

Why the scope is the state store and never a query of the table: a mirror must not remove what it did not bring. The
rows it may touch are the ones this sync created or matched before (``sync_rows``, with their Dataverse ids), whose
match key no source row carries any more (a row whose mapping failed still counts as present: a bad value must not
read as a departure), intersected with the destination filter when there is one (:mod:`connector.sync.destination`).
A row created by hand in Dynamics is in no sync's state, so no mirror ever touches it, nor its children.

Why a cap: an empty or truncated extract looks exactly like "every row left". ``max_delete_fraction`` (default 0.2)
is checked against the rows followed before anything is written; above it the run refuses, unless ``--force``.

Why ``auto``: deleting a row deletes its children under a parental relationship (``CascadeConfiguration.Delete`` =
``Cascade``: an account's contacts, opportunities...). Those children are read from relationship metadata and listed
by the dry run; with ``delete: auto`` (the default) a row that has such children is deactivated instead, the others
deleted; ``remove`` deletes them all (cascade included), ``deactivate`` and ``clear`` never delete.

Every removal is an intent committed before it is sent, then one transaction (ledger rows, rows no longer followed,
intents confirmed) after each chunk: a run interrupted mid-way leaves the rows not yet confirmed followed, and the next
run removes them again (a delete of a row already gone answers 404: ``removed``, "already gone").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from connector.bulk import WriteOptions, write_entities
from connector.errors import InputError, InputProblem
from connector.odata import build_query_string, filter_column, format_literal
from connector.sync.state import Intent, LedgerRow, StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata
    from connector.progress import CancellationToken
    from connector.sync.definition import SyncDefinition
    from connector.sync.mapping import MappedRow

__all__ = [
    "DELETE_CHOICES",
    "Departed",
    "MirrorSpec",
    "RemovalPlan",
    "SourceKeys",
    "check_cap",
    "execute_removal",
    "mirror_spec",
    "parental_children",
    "plan_removal",
]

DELETE_CHOICES = ("auto", "remove", "deactivate", "clear")
_MODE = {"remove": "delete", "deactivate": "deactivate", "clear": "update"}
_OUTCOME = {"deleted": "removed", "deactivated": "deactivated", "updated": "cleared"}
_READ_IDS = 40  # ids per child read: 40 ``or`` terms keep the URL short (as the planner's existence reads)
_FIRST = 20
_NOT_FOUND = ("0x80040217", "HTTP 404")


@dataclass(frozen=True)
class MirrorSpec:
    """The definition's ``delete`` and ``max_delete_fraction``; ``clear_columns``: what ``clear`` sets to null (the
    mapped columns but the match key's)."""

    delete: Literal["auto", "remove", "deactivate", "clear"] = "auto"
    max_delete_fraction: float = 0.2
    clear_columns: tuple[str, ...] = ()


def mirror_spec(definition: SyncDefinition) -> MirrorSpec | None:
    """The definition's mirror, when its mode is mirror; ``clear`` empties the mapped columns but the match's own
    (the key columns, the matched column and its stamp stay, so the row can be matched again; the table's alternate
    key columns are left out too, when the removal runs)."""
    if definition.mode != "mirror":
        return None
    match = definition.match
    kept = {c for c in (match.column, match.stamp) if c} | set(match.key if isinstance(match.key, list) else [])
    columns = tuple(e.target for e in definition.mapping if not e.create_only and e.target not in kept)
    return MirrorSpec(definition.delete, definition.max_delete_fraction, columns)


@dataclass
class SourceKeys:
    """Every match key the source carries (rows with problems included) and how many rows it has: the first pass
    fills it, so the mirror needs no pass of its own."""

    keys: set[str] = field(default_factory=set)
    rows: int = 0

    def add(self, row: MappedRow) -> None:
        self.keys.add(row.match_key)
        self.rows = max(self.rows, row.source_index + 1)


@dataclass
class Departed:
    """A followed row that left the source, what the mirror will do to it, and its children a delete would take."""

    match_key: str
    id: str
    action: str  # remove | deactivate | clear | skipped_by_filter
    children: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"match_key": self.match_key, "id": self.id, "action": self.action, "cascade": self.children}


@dataclass
class RemovalPlan:
    """What a mirror run removes: the rows, the cascade they carry, the share of the followed rows."""

    tracked: int
    rows: list[Departed]
    reads: int = 0

    @property
    def removing(self) -> list[Departed]:
        return [d for d in self.rows if d.action != "skipped_by_filter"]

    @property
    def fraction(self) -> float:
        return len(self.removing) / self.tracked if self.tracked else 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.rows:
            out[d.action] = out.get(d.action, 0) + 1
        return out

    def cascade(self) -> dict[str, int]:
        """Children per table that the planned deletes take with them (direct children under parental relationships;
        their own parental children go too, and are not counted)."""
        out: dict[str, int] = {}
        for d in self.rows:
            if d.action == "remove":
                for table, n in d.children.items():
                    out[table] = out.get(table, 0) + n
        return out

    def to_dict(self, spec: MirrorSpec) -> dict[str, Any]:
        return {
            "delete": spec.delete,
            "followed": self.tracked,
            "counts": self.counts(),
            "fraction": round(self.fraction, 4),
            "max_delete_fraction": spec.max_delete_fraction,
            "over_cap": self.fraction > spec.max_delete_fraction,
            "cascade": self.cascade(),
            "first_rows": [d.to_dict() for d in self.rows[:_FIRST]],
        }


def plan_removal(
    connection: Connection,
    meta: TableMetadata,
    spec: MirrorSpec,
    store: StateStore,
    seen: SourceKeys,
    inside: Callable[[Sequence[str]], set[str]] | None = None,
) -> RemovalPlan:
    """The followed rows whose key the source no longer carries, each with its action; ``inside`` (the destination
    filter) says which ids the sync may touch: the others are ``skipped_by_filter``."""
    tracked = 0
    rows: list[Departed] = []
    for key, id_ in store.tracked_rows():
        tracked += 1
        if key not in seen.keys:
            rows.append(Departed(key, id_.lower(), spec.delete))
    plan = RemovalPlan(tracked, rows)
    allowed = inside([d.id for d in rows]) if inside is not None and rows else None
    for d in rows:
        if allowed is not None and d.id not in allowed:
            d.action = "skipped_by_filter"
    if spec.delete in ("auto", "remove"):
        children, plan.reads = parental_children(connection, meta, [d.id for d in plan.removing])
        for d in plan.removing:
            d.children = children.get(d.id, {})
            if spec.delete == "auto":
                d.action = "deactivate" if d.children else "remove"
    return plan


def check_cap(plan: RemovalPlan, spec: MirrorSpec, *, force: bool) -> None:
    """Refuse (before anything is written) a mirror that would remove more than ``max_delete_fraction`` of the rows
    it follows, unless forced."""
    if force or plan.fraction <= spec.max_delete_fraction:
        return
    n, total = len(plan.removing), plan.tracked
    raise InputError(
        [
            InputProblem(
                "$.max_delete_fraction",
                f"the mirror would remove {n} of the {total} rows this sync follows ({plan.fraction:.0%}), above "
                f"max_delete_fraction {spec.max_delete_fraction}: nothing was written. Check the source (an empty or "
                "partial extract reads as rows that left), then raise max_delete_fraction or run with --force",
            )
        ]
    )


def parental_children(
    connection: Connection, meta: TableMetadata, ids: Sequence[str]
) -> tuple[dict[str, dict[str, int]], int]:
    """For each id, its direct children per table under the table's parental relationships (Delete = Cascade, from
    ``OneToManyRelationships``' ``CascadeConfiguration``); and the reads it took."""
    if not ids:
        return {}, 0
    path = f"EntityDefinitions(LogicalName='{meta.logical_name}')/OneToManyRelationships"
    query = build_query_string({"$select": "SchemaName,ReferencingEntity,ReferencingAttribute,CascadeConfiguration"})
    body = connection.client.get_json(f"{path}?{query}")
    reads = 1
    out: dict[str, dict[str, int]] = {}
    for rel in body.get("value", []) if isinstance(body, dict) else []:
        if (rel.get("CascadeConfiguration") or {}).get("Delete") != "Cascade":
            continue
        child = connection.metadata.table(str(rel["ReferencingEntity"]))
        attribute = str(rel["ReferencingAttribute"])
        column = filter_column(attribute, child.types.get(attribute, "Lookup"))
        for start in range(0, len(ids), _READ_IDS):
            part = ids[start : start + _READ_IDS]
            terms = " or ".join(f"{column} eq {format_literal(i, 'Uniqueidentifier')}" for i in part)
            for row in _read_all(connection, child.entity_set, terms, [child.primary_id, column]):
                parent = str(row.get(column) or "").lower()
                counts = out.setdefault(parent, {})
                counts[child.logical_name] = counts.get(child.logical_name, 0) + 1
            reads += 1
    return out, reads


def _read_all(connection: Connection, entity_set: str, filter_: str, select: Sequence[str]) -> list[dict[str, Any]]:
    query = build_query_string({"$select": ",".join(select), "$filter": filter_})
    out: list[dict[str, Any]] = []
    url: str | None = f"{entity_set}?{query}"
    while url:
        body = connection.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        out += [r for r in body.get("value", []) if isinstance(r, dict)] if isinstance(body, dict) else []
        url = body.get("@odata.nextLink") if isinstance(body, dict) else None
    return out


@dataclass
class RemovalRun:
    """Where a mirror's removals go: the run's ledger (source indexes after the source's rows), its hook and chunk."""

    connection: Connection
    table: str
    store: StateStore
    run: int
    first_index: int
    options: WriteOptions
    unit: int
    hook: Callable[[str], None] | None = None
    cancel: CancellationToken | None = None
    chunk: int = 1_000_000  # intents' chunk numbers: apart from the upsert's


def execute_removal(plan: RemovalPlan, spec: MirrorSpec, where: RemovalRun) -> dict[str, int]:
    """Remove the plan's rows, chunk by chunk: intents committed, the chunk sent, its outcomes committed (the hook
    points ``before_remove`` and ``after_remove``, for tests, fall between). Returns the counts per outcome."""
    counts: dict[str, int] = {}
    index = {id(d): where.first_index + i for i, d in enumerate(plan.rows)}
    skipped = [
        LedgerRow(index[id(d)], d.match_key, "skipped_by_filter", d.id, message="outside the destination filter")
        for d in plan.rows
        if d.action == "skipped_by_filter"
    ]
    if skipped:
        where.store.commit_removals(where.run, skipped, [])
        counts["skipped_by_filter"] = len(skipped)
    for action in ("remove", "deactivate", "clear"):
        rows = [d for d in plan.rows if d.action == action]
        for start in range(0, len(rows), where.unit):
            part = rows[start : start + where.unit]
            for outcome, n in _remove_chunk(part, [index[id(d)] for d in part], action, spec, where).items():
                counts[outcome] = counts.get(outcome, 0) + n
    return counts


def _remove_chunk(
    part: Sequence[Departed], indexes: Sequence[int], action: str, spec: MirrorSpec, where: RemovalRun
) -> dict[str, int]:
    intents = [Intent(i, d.match_key, action, d.id) for i, d in zip(indexes, part, strict=True)]
    where.store.record_intents(where.run, where.chunk, intents)
    where.chunk += 1
    _point(where, "before_remove")
    if where.cancel is not None and where.cancel.cancelled:
        message = "not sent: the run was cancelled before this removal"
        unsent = [
            LedgerRow(i, d.match_key, "not_sent", d.id, message=message) for i, d in zip(indexes, part, strict=True)
        ]
        where.store.commit_removals(where.run, unsent, [])
        return {"not_sent": len(unsent)}
    records: list[Mapping[str, Any]]
    if action == "clear":
        keys = where.connection.metadata.table(where.table).key_columns()
        fields = {c: None for c in spec.clear_columns if c not in keys}
        records = [{"id": d.id, "fields": fields} for d in part]
    else:
        records = [{"id": d.id} for d in part]
    report = write_entities(where.connection, where.table, _MODE[action], records, where.options, cancel=where.cancel)
    _point(where, "after_remove")
    ledger: list[LedgerRow] = []
    done: list[str] = []
    for i, d, result in zip(indexes, part, report.results, strict=True):
        if result.status in _OUTCOME:
            ledger.append(LedgerRow(i, d.match_key, _OUTCOME[result.status], d.id))
        elif result.status == "absent" or (result.status == "failed" and result.code in _NOT_FOUND):
            ledger.append(
                LedgerRow(i, d.match_key, "removed", d.id, message="already gone (removed before or by hand)")
            )
        elif result.status == "not_sent":
            ledger.append(LedgerRow(i, d.match_key, "not_sent", d.id, message=result.message))
            continue
        else:
            code = result.code or ("OutcomeUnknown" if result.status == "unknown" else None)
            entry = LedgerRow(i, d.match_key, "failed", d.id, code=code, message=result.message)
            ledger.append(entry)
            continue
        done.append(d.match_key)
    where.store.commit_removals(where.run, ledger, done)
    counts: dict[str, int] = {}
    for entry in ledger:
        counts[entry.outcome] = counts.get(entry.outcome, 0) + 1
    return counts


def _point(where: RemovalRun, name: str) -> None:
    if where.hook is not None:
        where.hook(name)
