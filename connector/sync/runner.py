"""A definition run end to end: its mapper checked, its source read (twice, see :mod:`connector.sync.engine`), its
state store opened and closed. The one entry point of ``d365 sync run`` and the ``sync_records`` action."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem
from connector.inputs import SyncRecords
from connector.policy import OperatorPolicy
from connector.progress import CancellationToken, Reporter
from connector.sync.audience import audience_of, run_audience
from connector.sync.definition import load_definition
from connector.sync.engine import SyncResult, job_from_definition, run_sync
from connector.sync.mapping import Mapper
from connector.sync.partition import DEFAULT_LEASE_S, Partition, held_lease, partition_rows
from connector.sync.sources import read_rows
from connector.sync.state import StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.sync.definition import SyncDefinition

__all__ = ["definition_of", "run_definition", "sync_records_problems"]

_RUN_ONLY = ("full", "dry_run", "force")
_OBJECTS = ("destination_filter", "audience")  # absent, not null, when not given


def definition_of(inputs: SyncRecords, policy: OperatorPolicy) -> SyncDefinition:
    """The ``sync_records`` action's definition: its inputs but ``full``, ``dry_run`` and ``force``, relative paths
    taken from the working directory, the operator policy applied."""
    data = {k: v for k, v in inputs.model_dump().items() if k not in _RUN_ONLY and not (v is None and k in _OBJECTS)}
    return load_definition(data, policy=policy, base_dir=Path.cwd())


def sync_records_problems(inputs: SyncRecords, connection: Connection) -> list[InputProblem]:
    """Phase two of ``sync_records``: the definition's checks, then the mapping's against the table's metadata."""
    try:
        definition = definition_of(inputs, OperatorPolicy.from_env())
    except InputError as exc:
        return exc.problems
    return list(Mapper(definition, connection).problems())


def run_definition(
    definition: SyncDefinition,
    connection: Connection,
    *,
    policy: OperatorPolicy,
    base_dir: Path,
    stdin: Path | None = None,
    full: bool = False,
    dry_run: bool = False,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
    force: bool = False,
    partition: Partition | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> SyncResult:
    """Run ``definition`` once; mapping problems (unknown columns, a bad key) raise :class:`InputError` before any
    row is read. ``stdin``: a file holding what standard input gave (it is read twice). ``partition``: only its rows,
    its own state, under its lease (:mod:`connector.sync.partition`)."""
    mapper = Mapper(definition, connection)
    problems: list[InputProblem] = list(mapper.problems())
    if problems:
        raise InputError(problems)

    def whole() -> Iterator[list[dict[str, Any]]]:
        if stdin is None:
            yield from read_rows(definition.source, policy=policy, base_dir=base_dir)
            return
        with stdin.open("rb") as handle:
            yield from read_rows(definition.source, policy=policy, base_dir=base_dir, stdin=handle)

    def source() -> Iterator[list[dict[str, Any]]]:
        if partition is None:
            return whole()
        return partition_rows(whole(), mapper.match_keys, partition)

    name = definition.name if partition is None else partition.state_name(definition.name)
    store = StateStore(str(definition.state), name)
    try:
        job = job_from_definition(definition)
        audience = audience_of(definition)
        if audience is not None:
            if partition is not None:
                raise InputError("an audience sync runs whole: --partition is for row syncs")
            return run_audience(
                connection, job, mapper, source, store, audience,
                full=full, dry_run=dry_run, progress=progress, cancel=cancel, force=force,
            )  # fmt: skip
        with held_lease(store.engine, name, lease_s) if partition is not None and not dry_run else nullcontext():
            return run_sync(
                connection, job, mapper, source, store,
                full=full, dry_run=dry_run, progress=progress, cancel=cancel, force=force,
            )  # fmt: skip
    finally:
        store.close()
