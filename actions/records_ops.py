"""Status, owner and merge actions: thin hooks over :mod:`connector.record_ops`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import inputs as typed
from connector import record_ops
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl


@hookimpl
def validate_set_state(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return record_ops.set_state_problems(typed.SetState.of(inputs), connection)


@hookimpl
def validate_assign_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return record_ops.assign_entity_problems(typed.AssignEntity.of(inputs), connection)


@hookimpl
def validate_merge_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return record_ops.merge_entities_problems(typed.MergeEntities.of(inputs), connection)


@hookimpl
def set_state(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH statecode and statuscode together."""
    return record_ops.set_state(connection, typed.SetState.of(inputs))


@hookimpl
def assign_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH ownerid@odata.bind."""
    return record_ops.assign_entity(connection, typed.AssignEntity.of(inputs))


@hookimpl
def merge_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """POST the Merge action."""
    return record_ops.merge_entities(connection, typed.MergeEntities.of(inputs))
