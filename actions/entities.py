"""The record actions: thin hooks over :mod:`connector.records` and :mod:`connector.paging`.

Inputs arrive validated (schema, then :func:`validate_inputs` below against cached metadata); these functions only
translate them into library calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import associations, paging, records
from connector import inputs as typed
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl


@hookimpl
def validate_inputs(action_id: str, inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem] | None:
    """Phase two for the record actions: columns, keys, option labels, navigation properties, page tokens."""
    if action_id not in records.RECORD_ACTIONS:
        return None
    return records.input_problems(action_id, inputs, connection)


@hookimpl
def get_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """GET one row by id or key."""
    return records.get_entity(connection, typed.GetEntity.of(inputs))


@hookimpl
def create_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """POST a row with lookups bound and labels mapped."""
    return records.create_entity(connection, typed.CreateEntity.of(inputs))


@hookimpl
def update_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH an existing row (If-Match)."""
    return records.update_entity(connection, typed.UpdateEntity.of(inputs))


@hookimpl
def upsert_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Create or update by id or key; says which."""
    return records.upsert_entity(connection, typed.UpsertEntity.of(inputs))


@hookimpl
def delete_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """DELETE by id or key."""
    return records.delete_entity(connection, typed.DeleteEntity.of(inputs))


@hookimpl
def query_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One page, or every page up to max_records."""
    return paging.query_entities(connection, typed.QueryEntities.of(inputs))


@hookimpl
def associate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Link two rows ($ref)."""
    return associations.associate_entities(connection, typed.AssociateEntities.of(inputs))


@hookimpl
def disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Unlink two rows ($ref)."""
    return associations.disassociate_entities(connection, typed.DisassociateEntities.of(inputs))
