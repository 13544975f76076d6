"""The sync action: a thin hook over :func:`connector.sync.runner.run_definition`, the same run as ``d365 sync run``.

The inputs are a definition (as a definition file holds it) plus ``full`` and ``dry_run``; relative paths are taken
from the working directory, and the operator policy of the environment (``hosted`` by default) rules every path, SQL
source and state URL before anything is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.inputs import SyncRecords
from connector.policy import OperatorPolicy
from connector.progress import current


@hookimpl
def validate_sync_records(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: the definition's own checks (match, mapping entries, the operator policy), then the mapping's."""
    from connector.sync import runner  # SQLAlchemy, DuckDB and Arrow load when a sync runs, not with every action

    return runner.sync_records_problems(SyncRecords.of(inputs), connection)


@hookimpl
def sync_records(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Run the sync once: new and changed rows sent, every source row ledgered; the counts and the run's id."""
    from connector.sync import runner
    from connector.sync.engine import job_from_definition

    typed = SyncRecords.of(inputs)
    definition = runner.definition_of(typed, OperatorPolicy.from_env())
    control = current()
    result = runner.run_definition(
        definition,
        connection,
        policy=OperatorPolicy.from_env(),
        base_dir=Path.cwd(),
        full=typed.full,
        dry_run=typed.dry_run,
        progress=control.progress,
        cancel=control.cancel,
        force=typed.force,
    )
    return result.to_dict(job_from_definition(definition).batch_size)
