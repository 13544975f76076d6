"""A definition run end to end: its mapper checked, its source read (twice, see :mod:`connector.sync.engine`), its
state store opened and closed. The one entry point of ``d365 sync run`` and the ``sync_records`` action."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem
from connector.progress import CancellationToken, Reporter
from connector.sync.engine import SyncResult, job_from_definition, run_sync
from connector.sync.sources import read_rows
from connector.sync.state import StateStore

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.policy import OperatorPolicy
    from connector.sync.definition import SyncDefinition

__all__ = ["make_mapper", "run_definition"]


def make_mapper(definition: SyncDefinition, connection: Connection) -> Any:
    """:class:`connector.sync.mapping.Mapper` (looked up per call, so tests can swap it)."""
    return importlib.import_module("connector.sync.mapping").Mapper(definition, connection)


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
) -> SyncResult:
    """Run ``definition`` once; mapping problems (unknown columns, a bad key) raise :class:`InputError` before any
    row is read. ``stdin``: a file holding what standard input gave (it is read twice)."""
    mapper = make_mapper(definition, connection)
    problems: list[InputProblem] = list(mapper.problems())
    if problems:
        raise InputError(problems)

    def source() -> Iterator[list[dict[str, Any]]]:
        if stdin is None:
            yield from read_rows(definition.source, policy=policy, base_dir=base_dir)
            return
        with stdin.open("rb") as handle:
            yield from read_rows(definition.source, policy=policy, base_dir=base_dir, stdin=handle)

    store = StateStore(str(definition.state), definition.name)
    try:
        job = job_from_definition(definition)
        return run_sync(
            connection, job, mapper, source, store, full=full, dry_run=dry_run, progress=progress, cancel=cancel
        )
    finally:
        store.close()
