"""Audiences: a segment (the source rows) kept in step with a marketing list or with a membership column.

Why apart from the row sync: an audience writes membership, not the rows' fields. Each source row is matched to its
Dataverse row as the sync matches (the definition's ``match``: key, id or column), then:

* ``add``: the matched rows join the audience; a row that matches nothing is ``skipped`` (add never creates);
* ``remove``: the matched rows leave the audience (``removed``);
* ``mirror``: the rows join, and the members this sync added before whose source row left are removed, within
  ``max_delete_fraction`` (checked before anything is written; ``--force`` overrides), as the row mirror;
* ``upsert``: the rows are upserted first (the ordinary sync, its own ledger and run), then added.

A marketing list (``list``: its id or its name; a static list whose member type is the target table) is joined through
``AddListMembersList`` and left through ``RemoveMemberList``; a column (``column``: a boolean or a choice) is set to
``value`` (default true) to join and to ``out_value`` (default false for a boolean, null for a choice) to leave.

The members this sync added are followed in the state store under the sync's name + ``#audience`` (apart from the rows
the upsert follows): a member already followed is ``unchanged`` and not sent again, and only followed members are ever
removed by ``mirror``: a member added by hand is never touched. Ledger outcomes: ``added``, ``removed``,
``unchanged``, ``skipped``, ``failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from connector.bulk import WriteOptions, write_entities
from connector.errors import DataverseApiError, InputError, InputProblem
from connector.inputs import GUID
from connector.odata import build_query_string, quote_string
from connector.sync.engine import EXIT_DONE, EXIT_INTERRUPTED, EXIT_PARTIAL, SyncResult, run_sync
from connector.sync.mirror import Departed, MirrorSpec, RemovalPlan, check_cap
from connector.sync.planner import existing_rows
from connector.sync.state import LedgerRow, StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata
    from connector.progress import CancellationToken, Reporter
    from connector.sync.definition import SyncDefinition
    from connector.sync.engine import RowMapper, SyncJob
    from connector.sync.mapping import MappedRow

__all__ = ["AudienceSpec", "Membership", "audience_of", "run_audience", "run_membership"]

_MEMBER_TYPES = {1: "account", 2: "contact", 4: "lead"}  # list.createdfromcode
_NS = "Microsoft.Dynamics.CRM."
Rows = Callable[[], Iterable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class AudienceSpec:
    mode: Literal["add", "remove", "mirror", "upsert"]
    list: str | None = None
    column: str | None = None
    value: Any = None
    out_value: Any = None
    max_delete_fraction: float = 0.2


def audience_of(definition: SyncDefinition) -> AudienceSpec | None:
    spec = definition.audience
    if spec is None:
        return None
    return AudienceSpec(spec.mode, spec.list, spec.column, spec.value, spec.out_value, definition.max_delete_fraction)


class Membership:
    """How rows join and leave one audience: a list's messages, or a column's update."""

    def __init__(self, connection: Connection, meta: TableMetadata, spec: AudienceSpec, options: WriteOptions) -> None:
        self.connection, self.meta, self.spec, self.options = connection, meta, spec, options
        self.list_id = self._list() if spec.list is not None else None
        self.values = self._column_values() if spec.column is not None else {}

    def _list(self) -> str:
        """The list's id, checked: static, and of the target table's members (before anything is written)."""
        name = str(self.spec.list)
        clause = f"listid eq {name}" if GUID.fullmatch(name) else f"listname eq {quote_string(name)}"
        query = build_query_string({"$select": "listid,createdfromcode,type", "$filter": clause})
        rows = self.connection.client.get_json(f"lists?{query}").get("value", [])
        if len(rows) != 1:
            found = "no marketing list" if not rows else f"{len(rows)} marketing lists"
            raise InputError([InputProblem("$.audience.list", f"{found} named {name!r}: give the list's id or name")])
        member = _MEMBER_TYPES.get(rows[0].get("createdfromcode") or 0)
        if rows[0].get("type") or member != self.meta.logical_name:
            why = "is dynamic" if rows[0].get("type") else f"holds {member} members, not {self.meta.logical_name}"
            raise InputError([InputProblem("$.audience.list", f"the list {name!r} {why}: pick a static list of it")])
        return str(rows[0]["listid"]).lower()

    def _column_values(self) -> dict[str, Any]:
        column = str(self.spec.column)
        typ = self.meta.types.get(column)
        if typ not in ("Boolean", "Picklist"):
            what = "is not a column of the table" if typ is None else f"is a {typ} column"
            raise InputError([InputProblem("$.audience.column", f"{column!r} {what}: give a boolean or choice column")])
        inside = True if self.spec.value is None and typ == "Boolean" else self.spec.value
        outside = False if self.spec.out_value is None and typ == "Boolean" else self.spec.out_value
        if inside is None:
            raise InputError([InputProblem("$.audience.value", f"{column!r} is a choice: give the value of a member")])
        return {"in": self._choice(inside), "out": self._choice(outside)}

    def _choice(self, value: Any) -> Any:
        if isinstance(value, str) and self.spec.column is not None:
            try:
                return self.connection.metadata.choice_value(self.meta.logical_name, self.spec.column, value)
            except ValueError as exc:
                raise InputError([InputProblem("$.audience.value", str(exc))]) from None
        return value

    def apply(self, ids: Sequence[str], join: bool) -> dict[str, tuple[str, str | None]]:
        """Join (or leave) the audience: each id's ``(status, message)``, status ``done`` or ``failed``."""
        if self.list_id is None:
            field = {str(self.spec.column): self.values["in" if join else "out"]}
            report = write_entities(
                self.connection,
                self.meta.logical_name,
                "update",
                [{"id": i, "fields": field} for i in ids],
                self.options,
            )
            return {
                i: ("done", None) if r.status == "updated" else ("failed", r.message)
                for i, r in zip(ids, report.results, strict=True)
            }
        out: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(ids), self.options.chunk_size):
            part = ids[start : start + self.options.chunk_size]
            out |= self._join(part) if join else {i: self._leave(i) for i in part}
        return out

    def _join(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        body = {
            "List": {"@odata.type": f"{_NS}list", "listid": self.list_id},
            "Members": [{"@odata.type": f"{_NS}{self.meta.logical_name}", self.meta.primary_id: i} for i in ids],
        }
        try:
            self.connection.client.request("POST", "AddListMembersList", json=body, idempotent=True)
        except DataverseApiError as exc:  # all or nothing: the message has no per-member answer
            return dict.fromkeys(ids, ("failed", str(exc)))
        return dict.fromkeys(ids, ("done", None))

    def _leave(self, member: str) -> tuple[str, str | None]:
        try:
            self.connection.client.request(
                "POST", f"lists({self.list_id})/{_NS}RemoveMemberList", json={"EntityId": member}, idempotent=True
            )
        except DataverseApiError as exc:
            return "failed", str(exc)
        return "done", None


def run_audience(
    connection: Connection,
    job: SyncJob,
    mapper: RowMapper,
    source: Rows,
    store: StateStore,
    spec: AudienceSpec,
    *,
    full: bool = False,
    dry_run: bool = False,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
    force: bool = False,
) -> SyncResult:
    """An audience sync: (``upsert``: the rows upserted first, a run of their own) then the membership run, whose
    result this is; with ``upsert`` the result's counts hold both runs' outcomes."""
    if dry_run:
        raise InputError([InputProblem("$.audience", "a dry run of an audience is not available yet: run without it")])
    before: dict[str, int] = {}
    if spec.mode == "upsert":
        upserted = run_sync(connection, job, mapper, source, store, full=full, progress=progress, cancel=cancel)
        if upserted.exit_code == EXIT_INTERRUPTED:
            return upserted
        before = upserted.counts
    run, counts = run_membership(connection, job, mapper, source, store, spec, force=force, cancel=cancel)
    interrupted = cancel is not None and cancel.cancelled
    bad = counts.get("failed", 0) + before.get("failed", 0) + before.get("not_sent", 0)
    code = EXIT_INTERRUPTED if interrupted else (EXIT_PARTIAL if bad else EXIT_DONE)
    merged = dict(before)
    for outcome, n in counts.items():
        merged[outcome] = merged.get(outcome, 0) + n
    return SyncResult(run, "cancelled" if interrupted else "done", merged, code)


def run_membership(
    connection: Connection,
    job: SyncJob,
    mapper: RowMapper,
    source: Rows,
    store: StateStore,
    spec: AudienceSpec,
    *,
    force: bool = False,
    cancel: CancellationToken | None = None,
) -> tuple[int, dict[str, int]]:
    """One audience run (``upsert``: the membership step after the upsert): the run's id and its counts."""
    meta = connection.metadata.table(job.table)
    members = StateStore("", f"{store.sync}#audience", engine=store.engine)
    options = WriteOptions(chunk_size=job.batch_size)
    membership = Membership(connection, meta, spec, options)
    join = spec.mode != "remove"
    departed: RemovalPlan | None = None
    if spec.mode == "mirror":
        seen = {r.match_key for batch in source() for r in mapper.map_rows(batch, 0)}
        rows = [Departed(k, i, "remove") for k, i in members.tracked_rows() if k not in seen]
        departed = RemovalPlan(sum(1 for _ in members.tracked_rows()), rows)
        check_cap(departed, MirrorSpec("remove", spec.max_delete_fraction), force=force)
    run, _ = members.start_run(f"audience:{spec.mode}", full=False)
    index = 0
    for batch in source():
        if cancel is not None and cancel.cancelled:
            break
        mapped = list(mapper.map_rows(batch, index))
        index += len(batch)
        _step(connection, meta, job, members, run, membership, mapped, join)
    if departed is not None and departed.rows:
        ids = [d.id for d in departed.rows]
        answers = membership.apply(ids, join=False)
        ledger = [
            LedgerRow(
                index + n,
                d.match_key,
                "removed" if answers[d.id][0] == "done" else "failed",
                d.id,
                message=answers[d.id][1],
            )
            for n, d in enumerate(departed.rows)
        ]
        members.commit_removals(run, ledger, [e.match_key or "" for e in ledger if e.outcome == "removed"])
    counts = members.ledger_counts(run)
    interrupted = cancel is not None and cancel.cancelled
    code = EXIT_INTERRUPTED if interrupted else (EXIT_PARTIAL if counts.get("failed") else EXIT_DONE)
    members.end_run(run, "cancelled" if interrupted else "done", counts, code)
    return run, counts


def _step(
    connection: Connection,
    meta: TableMetadata,
    job: SyncJob,
    members: StateStore,
    run: int,
    membership: Membership,
    mapped: list[MappedRow],
    join: bool,
) -> None:
    """One batch of source rows: matched, joined (or made to leave), ledgered and followed in one commit."""
    ledger: list[LedgerRow] = []
    live = [r for r in mapped if not r.problems]
    known = members.row_states([r.match_key for r in live])
    for r in mapped:
        if r.problems:
            message = "; ".join(str(p) for p in r.problems)
            ledger.append(LedgerRow(r.source_index, r.match_key, "failed", code="InputError", message=message))
    todo = [r for r in live if not (join and r.match_key in known)]
    ledger += [
        LedgerRow(r.source_index, r.match_key, "unchanged", known[r.match_key].dataverse_id)
        for r in live
        if join and r.match_key in known
    ]
    found, _ = existing_rows(connection, meta, todo, job.rule)
    ids: dict[int, str] = {}
    for r in todo:
        hits = found.get(r.match_key, [])
        if len(hits) == 1:
            ids[r.source_index] = hits[0].lower()
        else:
            why = "no row matches" if not hits else f"ambiguous: {len(hits)} rows match"
            ledger.append(LedgerRow(r.source_index, r.match_key, "failed" if hits else "skipped", message=why))
    answers = membership.apply(sorted(set(ids.values())), join) if ids else {}
    confirmed: dict[str, tuple[str, str | None]] = {}
    gone: list[str] = []
    for r in todo:
        if r.source_index not in ids:
            continue
        status, said = answers[ids[r.source_index]]
        outcome = ("added" if join else "removed") if status == "done" else "failed"
        ledger.append(LedgerRow(r.source_index, r.match_key, outcome, ids[r.source_index], message=said))
        if outcome == "added":
            confirmed[r.match_key] = ("member", ids[r.source_index])
        elif outcome == "removed":
            gone.append(r.match_key)
    members.commit_outcomes(run, ledger, confirmed)
    if gone:
        members.commit_removals(run, [], gone)
