"""The ``run_batch_operations`` action: a thin hook over :mod:`connector.batch`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import batch
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.inputs import RunBatchOperations
from connector.progress import current


@hookimpl
def validate_run_batch_operations(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: every operation against its table's metadata, and the change set rules, before anything is sent."""
    return batch.run_batch_operations_problems(RunBatchOperations.of(inputs), connection)


@hookimpl
def run_batch_operations(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One $batch request; one result per operation."""
    control = current()
    return batch.run_batch_operations(
        connection, RunBatchOperations.of(inputs), progress=control.progress, cancel=control.cancel
    )
